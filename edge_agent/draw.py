"""Pictures for people: a tile plan or a frame's results drawn on the image (OpenCV, BGR).

Used by `edge-agent tiles --draw`, `edge-agent detect --draw` and the agent's snapshots.
Both functions return a new image and leave the input untouched.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from tiling.plan import Tile
from tiling.regions import Regions

# distinct BGR colours, cycled
PALETTE = [(48, 48, 255), (48, 200, 48), (255, 128, 0), (0, 200, 255), (200, 0, 200), (255, 255, 0),
           (0, 128, 255), (128, 0, 255), (0, 255, 128), (160, 160, 160)]
TEXT_COLOUR = (0, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _scale(image: np.ndarray) -> tuple[int, float]:
    """Line thickness and font scale that read well at this image size."""
    side = max(image.shape[:2])
    return max(1, round(side / 800)), max(0.4, side / 2400)


def _label(img: np.ndarray, text: str, x: int, y: int, colour, font_scale: float, thick: int) -> None:
    """Text on a filled background, kept inside the image."""
    (tw, th), base = cv2.getTextSize(text, FONT, font_scale, thick)
    h, w = img.shape[:2]
    x = int(min(max(x, 0), max(w - tw - 2, 0)))
    y = int(min(max(y, th + base + 2), h - 1))
    cv2.rectangle(img, (x, y - th - base - 2), (x + tw + 2, y), colour, -1)
    luma = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2]
    cv2.putText(img, text, (x + 1, y - base - 1), FONT, font_scale, (0, 0, 0) if luma > 128 else (255, 255, 255),
                thick, cv2.LINE_AA)


def draw_tiles(image_bgr: np.ndarray, tiles: Sequence[Tile]) -> np.ndarray:
    """Each tile's outline in its own colour with its number, overlaps shaded lighter.

    A whole-frame pass beside other tiles is drawn as a white frame labelled "full frame"."""
    img = np.ascontiguousarray(image_bgr).copy()
    h, w = img.shape[:2]
    thick, font_scale = _scale(img)
    full = [t for t in tiles if len(tiles) > 1 and t.box == (0, 0, w, h)]
    parts = [t for t in tiles if t not in full]
    count = np.zeros((h, w), np.uint8)
    for t in parts:
        count[t.y0:t.y1, t.x0:t.x1] += 1
    shade = count > 1
    img[shade] = (img[shade] * 0.7 + np.array([255, 255, 255]) * 0.3).astype(np.uint8)
    for k, t in enumerate(parts):
        colour = PALETTE[k % len(PALETTE)]
        inset = thick * (k % 3)  # neighbours' shared edges stay visible
        cv2.rectangle(img, (t.x0 + inset, t.y0 + inset), (t.x1 - 1 - inset, t.y1 - 1 - inset), colour, thick * 2)
        _label(img, f"{k + 1}" + (f" d{t.depth}" if t.depth else ""), t.x0 + inset + 3 * thick,
               t.y0 + inset + int(30 * font_scale) + 3 * thick, colour, font_scale, thick)
    for t in full:
        cv2.rectangle(img, (0, 0), (w - 1, h - 1), (255, 255, 255), thick)
        _label(img, "full frame", 3 * thick, h - 3 * thick, (255, 255, 255), font_scale, thick)
    return img


def draw_regions(image_bgr: np.ndarray, od: Regions | None = None, ocr: Regions | None = None) -> np.ndarray:
    """Detections as boxes labelled "label 0.87" (one colour per label); text lines as quads with the text."""
    img = np.ascontiguousarray(image_bgr).copy()
    thick, font_scale = _scale(img)
    colours: dict[str, tuple] = {}
    if od is not None:
        for box, label, score in zip(od.boxes, od.labels, od.scores):
            colour = colours.setdefault(label, PALETTE[len(colours) % len(PALETTE)])
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            cv2.rectangle(img, (x0, y0), (x1, y1), colour, thick)
            _label(img, f"{label} {score:.2f}", x0, y0, colour, font_scale * 0.8, max(1, thick - 1))
    if ocr is not None and ocr.quads is not None:
        for quad, text in zip(ocr.quads, ocr.labels):
            pts = np.round(quad.reshape(4, 2)).astype(np.int32)
            cv2.polylines(img, [pts], True, TEXT_COLOUR, thick)
            _label(img, text, int(pts[:, 0].min()), int(pts[:, 1].max()) + int(22 * font_scale), TEXT_COLOUR,
                   font_scale * 0.8, max(1, thick - 1))
    return img
