"""Pictures for people: a tile plan or a frame's results drawn on the image, and encoded.

Images are RGB uint8 (edge_agent/images.py), as everywhere in edge-agent.  Used by
`edge-agent tiles --draw`, `edge-agent detect --draw` and the agent's snapshots; the last
two share `picture` (annotate and encode).  Every function returns a new image and leaves
the input untouched.  A picture of a frame in which nothing was found says so on the image
(`annotate`), with the model's note (the bundled demo model's "trained on synthetic shelves") when
there is one: an unchanged picture teaches nothing.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from edge_agent.tiling.plan import Tile
from edge_agent.tiling.regions import Regions

# distinct RGB colours, cycled
PALETTE = [(255, 48, 48), (48, 200, 48), (0, 128, 255), (255, 200, 0), (200, 0, 200), (0, 255, 255),
           (255, 128, 0), (255, 0, 128), (128, 255, 0), (160, 160, 160)]
TEXT_COLOUR = (255, 255, 0)
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
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    cv2.putText(img, text, (x + 1, y - base - 1), FONT, font_scale, (0, 0, 0) if luma > 128 else (255, 255, 255),
                thick, cv2.LINE_AA)


def draw_tiles(image: np.ndarray, tiles: Sequence[Tile]) -> np.ndarray:
    """Each tile's outline in its own colour with its number, overlaps shaded lighter.

    A whole-frame pass beside other tiles is drawn as a white frame labelled "full frame"."""
    img = np.ascontiguousarray(image).copy()
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


def draw_regions(image: np.ndarray, od: Regions | None = None, ocr: Regions | None = None) -> np.ndarray:
    """Detections as boxes labelled "label 0.87" (one colour per label); text lines as quads with the text."""
    img = np.ascontiguousarray(image).copy()
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


def caption(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """`lines` in a dark banner at the top left of a copy of the image, wrapped to its width."""
    img = np.ascontiguousarray(image).copy()
    h, w = img.shape[:2]
    thick, font_scale = _scale(img)
    wrapped: list[str] = []
    for line in lines:
        words, cur = line.split(), ""
        for word in words:
            trial = f"{cur} {word}".strip()
            if cur and cv2.getTextSize(trial, FONT, font_scale, thick)[0][0] > w - 8 * thick:
                wrapped.append(cur)
                cur = word
            else:
                cur = trial
        wrapped.append(cur)
    y = 0
    for line in wrapped:
        (tw, th), base = cv2.getTextSize(line, FONT, font_scale, thick)
        y += th + base + 4 * thick
        _label(img, line, 2 * thick, y, (32, 32, 32), font_scale, thick)
    return img


def annotate(image: np.ndarray, od: Regions | None, ocr: Regions | None, note: str = "") -> np.ndarray:
    """draw_regions, and when nothing at all was found a caption saying so (and `note`)."""
    img = draw_regions(image, od, ocr)
    if (od is None or len(od.boxes) == 0) and (ocr is None or len(ocr.labels) == 0):
        img = caption(img, ["no detections, no text found"] + ([note] if note else []))
    return img


ZONE_COLOUR = (0, 160, 255)  # RGB


def draw_zones(image: np.ndarray, zones: Sequence, counts: dict | None = None) -> np.ndarray:
    """Zone polygons (edge_agent.zones.Zone, frame pixels), lightly filled, each with its name
    and, given `counts` (zone name -> {"total": n, ...}), its stable total."""
    img = np.ascontiguousarray(image).copy()
    thick, font_scale = _scale(img)
    overlay = img.copy()
    for zone in zones:
        pts = np.round(zone.polygon).astype(np.int32)
        cv2.fillPoly(overlay, [pts], ZONE_COLOUR)
    img = cv2.addWeighted(overlay, 0.15, img, 0.85, 0)
    for zone in zones:
        pts = np.round(zone.polygon).astype(np.int32)
        cv2.polylines(img, [pts], True, ZONE_COLOUR, thick * 2)
        text = zone.name
        if counts and zone.name in counts:
            text += f": {counts[zone.name]['total']}"
        x, y = int(pts[:, 0].min()), int(pts[:, 1].min())
        _label(img, text, x + 2 * thick, y + int(30 * font_scale) + 2 * thick, ZONE_COLOUR, font_scale, thick)
    return img


def encode(image: np.ndarray, suffix: str = ".jpg", max_bytes: int | None = None) -> bytes | None:
    """An RGB image as JPEG/PNG bytes (by `suffix`).  With max_bytes: lower JPEG quality,
    then halve the size, until it fits; None if it never does."""
    img = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    if max_bytes is None:
        try:
            ok, buf = cv2.imencode(suffix, img)
        except cv2.error:  # a suffix OpenCV has no encoder for
            return None
        return buf.tobytes() if ok else None
    for _ in range(8):
        for quality in (85, 70, 50):
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and len(buf) <= max_bytes:
                return buf.tobytes()
        img = cv2.resize(img, (max(1, img.shape[1] // 2), max(1, img.shape[0] // 2)), interpolation=cv2.INTER_AREA)
    return None


def picture(image: np.ndarray, result, suffix: str = ".jpg", max_bytes: int | None = None,
            zones: Sequence = (), note: str = "") -> bytes | None:
    """A FrameResult's zones, boxes and text drawn on its RGB image (`annotate`: an empty one
    says so, with `note`), encoded: snapshots and --draw."""
    if zones:
        image = draw_zones(image, zones, result.zones)
    return encode(annotate(image, result.detections, result.text, note), suffix, max_bytes)


def save(path: str, encode_as) -> None:
    """`--draw PATH`: the picture `encode_as(suffix)` returns (bytes, or None when OpenCV has no
    encoder for the suffix) written to PATH; ConfigError naming it otherwise."""
    from pathlib import Path

    from edge_agent.errors import ConfigError

    data = encode_as(Path(path).suffix.lower() or ".jpg")
    try:
        if data is None:
            raise OSError("no encoder for this suffix")
        Path(path).write_bytes(data)
    except OSError:
        raise ConfigError(f"--draw {path}: cannot write the image there (directory missing, or not .jpg/.png)") from None
