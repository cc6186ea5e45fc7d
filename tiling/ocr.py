"""Merge OCR lines read by overlapping tiles (frame pixels).  Pure numpy (+ str).

Lines whose rectangles overlap (intersection over the smaller rectangle >= threshold) read
the same text line and collapse to one.  Which reading survives:
1. a reading from a tile where the line lies whole (not `cut`) beats any cut reading; among
   whole readings the higher confidence wins;
2. among cut readings only: where one is contained in the other (a prefix or suffix cut off
   by a seam) the longer wins; where the end of the left one is the start of the right one
   (a line longer than the overlap, read in two parts) they are stitched; otherwise the
   higher confidence wins.
"""
from __future__ import annotations

import numpy as np

from tiling.merge import greedy_groups, rank_order
from tiling.regions import Regions

MIN_STITCH = 2  # characters two cut parts must share to be stitched


def merge_text(regions: Regions, threshold: float = 0.5) -> Regions:
    """Collapse duplicate OCR lines from overlapping tiles.  Returns lines in rank order."""
    if not 0 < threshold <= 1:
        raise ValueError(f"text merge threshold must be in (0, 1], got {threshold!r}")
    n = len(regions)
    if n == 0:
        return regions if regions.is_ocr else Regions.empty(ocr=True)
    if not regions.is_ocr:
        raise ValueError("merge_text needs OCR regions (with quads)")
    order = rank_order(regions.boxes, regions.scores, regions.cut)
    keep, owner = greedy_groups(regions.boxes, order, "ios", threshold)
    merged = owner != np.arange(n)
    if not merged.any():
        return regions.take(keep)
    members: dict[int, list[int]] = {int(k): [int(k)] for k in keep[np.isin(keep, owner[merged])]}
    for i in np.flatnonzero(merged):
        members[int(owner[i])].append(int(i))
    parts = [_resolve(regions, members.get(int(k), [int(k)])) for k in keep]
    return Regions.concat(parts, ocr=True)


def _resolve(regions: Regions, idx: list[int]) -> Regions:
    """One line out of readings of it (indices into `regions`)."""
    if len(idx) == 1:
        return regions.take(idx)
    whole = [i for i in idx if not regions.cut[i]]
    if whole:
        best = max(whole, key=lambda i: (regions.scores[i], -i))
        return regions.take([best])
    return _combine_cut(regions, sorted(idx, key=lambda i: (regions.boxes[i, 0], i)))


def _combine_cut(regions: Regions, idx: list[int]) -> Regions:
    """Cut readings of one line, left to right: keep the longer, stitch, or keep the surer."""
    first = idx[0]
    text, score, box, src = regions.labels[first], regions.scores[first], regions.boxes[first], first
    for i in idx[1:]:
        joined = _join(text, regions.labels[i])
        if joined is None:  # different readings: the surer one
            if regions.scores[i] > score:
                text, score, box, src = regions.labels[i], regions.scores[i], regions.boxes[i], i
            continue
        score = max(score, regions.scores[i])
        if joined == text:
            continue
        if joined == regions.labels[i]:
            text, box, src = joined, regions.boxes[i], i
            continue
        text, src = joined, None  # stitched: the union of both rectangles
        box = np.concatenate([np.minimum(box[:2], regions.boxes[i, :2]), np.maximum(box[2:], regions.boxes[i, 2:])])
    if src is not None:
        return Regions(regions.boxes[[src]], [score], [text], regions.quads[[src]], [True])
    x0, y0, x1, y1 = box
    return Regions([box], [score], [text], [[x0, y0, x1, y0, x1, y1, x0, y1]], [True])


def _join(left: str, right: str) -> str | None:
    """`left` and `right` as one reading, or None if they read different things.

    The longer one if either contains the other (a part cut off by a seam); `left` + the
    rest of `right` if the end of `left` is the start of `right` (at least MIN_STITCH chars)."""
    a, b = left.strip(), right.strip()
    if not a or not b:
        return a or b
    if b in a:
        return left
    if a in b:
        return right
    for k in range(min(len(a), len(b)) - 1, MIN_STITCH - 1, -1):
        if a.endswith(b[:k]):
            return a + b[k:]
    return None
