"""A scripted shelf engine and a small video for the shelf tests (tests/test_shelf_mqtt.py,
tests/shelf_driver.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.models.outputs import TaskOutput
from edge_agent.tiling.regions import Regions

W, H = 320, 240


class ScriptedShelf:
    """An engine whose detections follow a script: frame i has script[i] cans in the left
    half of the shelf and 2 bottles in the right half, and one price tag line.  `before(i)`
    runs before frame i's answer (the tests stop and start the broker there)."""

    info = {"name": "scripted", "variant": "fp32"}

    def __init__(self, script, before=None, cycle: bool = False):
        self.script, self.before, self.cycle, self.calls = list(script), before, cycle, 0

    def run(self, crops, tasks=("od", "ocr")):
        i = self.calls
        self.calls += 1
        if self.before is not None:
            self.before(i)
        n = self.script[i % len(self.script) if self.cycle else min(i, len(self.script) - 1)]
        boxes = [[10 + 25 * k, 60, 30 + 25 * k, 110] for k in range(n)] + [[200, 60, 230, 110], [240, 60, 270, 110]]
        od = Regions(np.array(boxes, dtype=float).reshape(-1, 4), np.full(len(boxes), 0.9),
                     tuple(["can"] * n + ["bottle", "bottle"]))
        ocr = Regions.from_quads(np.array([[10, 112, 40, 112, 40, 120, 10, 120]], dtype=float), np.array([0.9]), ("2/$5",))
        out = {"od": TaskOutput("od", od, False, "", ()), "ocr": TaskOutput("ocr", ocr, False, "", ())}
        return [{t: out[t] for t in tasks} for _ in crops]


def make_video(path: Path, frames: int) -> Path:
    import cv2

    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (W, H))
    assert out.isOpened()
    for i in range(frames):
        img = np.full((H, W, 3), 200, np.uint8)
        cv2.rectangle(img, (10, 60), (110, 110), (40, 120, 200), -1)
        out.write(img)
    out.release()
    return path
