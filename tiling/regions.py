"""The one small result type carried from the engine through the merge to publishing.

`Regions` holds N boxes (or text lines) with a score and a label each.  For OCR the
label is the text read and `quads` holds the 8-number quadrilateral.  Coordinates are
pixels of the image they refer to: a tile while they come out of the engine, the frame
after `shifted` / the merge.  Pure numpy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _f64(a, cols: int) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(-1, cols)


@dataclass(frozen=True)
class Regions:
    boxes: np.ndarray  # (N, 4) float64: x0, y0, x1, y1
    scores: np.ndarray  # (N,) float64 in [0, 1]
    labels: tuple[str, ...]  # class label (OD) or text read (OCR)
    quads: np.ndarray | None = None  # (N, 8) float64 for OCR lines, else None
    cut: np.ndarray = field(default=None)  # (N,) bool: touches an interior tile edge

    def __post_init__(self):
        object.__setattr__(self, "boxes", _f64(self.boxes, 4))
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.quads is not None:
            object.__setattr__(self, "quads", _f64(self.quads, 8))
        cut = np.zeros(len(self.labels), bool) if self.cut is None else np.asarray(self.cut, bool).reshape(-1)
        object.__setattr__(self, "cut", cut)
        n = len(self.labels)
        sizes = {len(self.boxes), len(self.scores), len(self.cut)}
        if self.quads is not None:
            sizes.add(len(self.quads))
        if sizes != {n}:
            raise ValueError(f"Regions: inconsistent lengths {sorted(sizes)} for {n} labels")

    @classmethod
    def empty(cls, ocr: bool = False) -> "Regions":
        return cls(np.zeros((0, 4)), np.zeros(0), (), np.zeros((0, 8)) if ocr else None)

    @classmethod
    def from_quads(cls, quads, scores, texts) -> "Regions":
        """OCR lines: the box is the quad's bounding rectangle."""
        q = _f64(quads, 8)
        xs, ys = q[:, 0::2], q[:, 1::2]
        boxes = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1) if len(q) else np.zeros((0, 4))
        return cls(boxes, scores, texts, q)

    @property
    def is_ocr(self) -> bool:
        return self.quads is not None

    def __len__(self) -> int:
        return len(self.labels)

    def shifted(self, dx: float, dy: float) -> "Regions":
        """Translate by (dx, dy): tile pixels -> frame pixels."""
        quads = None
        if self.quads is not None:
            quads = self.quads + np.tile([dx, dy], 4)
        return Regions(self.boxes + [dx, dy, dx, dy], self.scores, self.labels, quads, self.cut)

    def take(self, idx) -> "Regions":
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        quads = None if self.quads is None else self.quads[idx]
        return Regions(self.boxes[idx], self.scores[idx], tuple(self.labels[i] for i in idx), quads, self.cut[idx])

    def with_cut(self, cut) -> "Regions":
        return Regions(self.boxes, self.scores, self.labels, self.quads, cut)

    @staticmethod
    def concat(parts: "list[Regions]", ocr: bool = False) -> "Regions":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Regions.empty(ocr)
        quads = None
        if parts[0].quads is not None:
            quads = np.concatenate([p.quads for p in parts])
        return Regions(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            tuple(label for p in parts for label in p.labels),
            quads,
            np.concatenate([p.cut for p in parts]),
        )
