"""Write the bundled demo video: synthetic shelves drawn as the demo model was trained to see them.

    python scripts/make_demo_sample.py [OUT_DIR]     # default: edge_agent/demo/synthetic

One shelf scene from models/synth.py (the generator the demo model was trained on), 1280x720,
drawn at twice the scale of the training frames: the default tiling cuts 768-pixel tiles and
the demo model's input is 384, so each tile reaches the model at the training scale.  The
frames drift by a few pixels, as a fixed camera does, and carry fresh sensor noise.  Writes
shelf.mp4 (mp4v, 5 frames at 1 fps), shelf.jpg (the first frame) and shelf.json (the
first frame's annotations, COCO-style, for `edge-agent models evaluate`).  Deterministic.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from edge_agent.models.synth import CATEGORIES, ShelfOptions, coco_annotations, render_shelf

WIDTH, HEIGHT, FRAMES, FPS = 1280, 720, 5, 1.0
SEED = 11  # a scene with four shelf rows, 50 products and tags in several formats
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "edge_agent" / "demo" / "synthetic"


def scene():
    return render_shelf(ShelfOptions(width=WIDTH, height=HEIGHT, occlusion=0.0, blur=0.8), seed=SEED)


def frames(image_rgb: np.ndarray, n: int = FRAMES):
    rng = np.random.default_rng(SEED)
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    for i in range(n):
        m = np.float32([[1, 0, 2 * i], [0, 1, i]])  # slight camera drift
        f = cv2.warpAffine(bgr, m, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        f += rng.normal(0, 2.0, f.shape)
        yield np.clip(f, 0, 255).astype(np.uint8)


def main(out_dir: str | None = None) -> None:
    out = Path(out_dir) if out_dir else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    frame = scene()
    video = out / "shelf.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {video}")
    for i, f in enumerate(frames(frame.image)):
        writer.write(f)
        if i == 0:
            first = f
    writer.release()
    still = out / "shelf.jpg"
    cv2.imwrite(str(still), first, [cv2.IMWRITE_JPEG_QUALITY, 90])
    coco = {"images": [{"id": 1, "file_name": still.name, "width": WIDTH, "height": HEIGHT}],
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CATEGORIES)],
            "annotations": coco_annotations(frame, 1, 1)}
    (out / "shelf.json").write_text(json.dumps(coco, indent=1) + "\n")
    print(f"{len(frame.objects)} products, {len(frame.lines)} price lines: "
          + ", ".join(line.text for line in frame.lines))
    for p in (video, still, out / "shelf.json"):
        print(f"{p}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
