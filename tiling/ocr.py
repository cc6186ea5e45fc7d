"""Merge OCR lines read by overlapping tiles (frame pixels).  Pure numpy (+ str).

Lines whose rectangles overlap (intersection over the smaller rectangle >= threshold) read
the same text line and collapse to one.  Which reading survives:
1. a reading from a tile where the line lies whole (not `cut`) beats any cut reading; among
   whole readings the higher confidence wins;
2. among cut readings only: where one is contained in the other (a prefix or suffix cut off
   by a seam, its rectangle within the other's) the longer wins; where the end of the left
   one is the start of the right one (a line longer than the overlap, read in two parts) they
   are stitched, sharing as many characters as their rectangles share; otherwise the higher
   confidence wins.
"""
from __future__ import annotations

import numpy as np

from edge_agent.tiling.merge import greedy_from_pairs, greedy_groups, match_pairs, rank_order
from edge_agent.tiling.regions import Regions

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
    pairs = _line_pairs(regions, threshold)
    if pairs is None:  # lines piled on one spot: plain IoS groups, one winner at a time
        keep, owner = greedy_groups(regions.boxes, order, "ios", threshold)
    else:
        keep, owner = greedy_from_pairs(n, order, *pairs)
    merged = owner != np.arange(n)
    if not merged.any():
        return regions.take(keep)
    members: dict[int, list[int]] = {int(k): [int(k)] for k in keep[np.isin(keep, owner[merged])]}
    for i in np.flatnonzero(merged):
        members[int(owner[i])].append(int(i))
    out = regions.take(keep)  # single readings as they are; groups resolved below
    boxes, scores, quads, cut = out.boxes.copy(), out.scores.copy(), out.quads.copy(), out.cut.copy()
    labels = list(out.labels)
    for slot in np.flatnonzero(np.isin(keep, list(members))):
        one = _resolve(regions, members[int(keep[slot])])
        boxes[slot], scores[slot], quads[slot], cut[slot] = one.boxes[0], one.scores[0], one.quads[0], one.cut[0]
        labels[slot] = one.labels[0]
    return Regions(boxes, scores, labels, quads, cut)


def _line_pairs(regions: Regions, threshold: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Pairs of readings of one line: rectangles with IoS >= threshold, or two cut parts that
    overlap along x and share most of their height (a line longer than the overlap, read in
    two tiles, shares only the overlap band)."""
    pairs = match_pairs(regions.boxes, "ios", threshold)
    cut = np.flatnonzero(regions.cut)
    near = match_pairs(regions.boxes[cut], "ios", 1e-12) if len(cut) > 1 else None
    if pairs is None or (len(cut) > 1 and near is None):
        return None
    i, j = pairs
    if near is not None:
        ci, cj = cut[near[0]], cut[near[1]]
        b = regions.boxes
        iy = np.minimum(b[ci, 3], b[cj, 3]) - np.maximum(b[ci, 1], b[cj, 1])
        h = np.minimum(b[ci, 3] - b[ci, 1], b[cj, 3] - b[cj, 1])
        same_row = iy >= 0.5 * h
        i, j = np.concatenate([i, ci[same_row]]), np.concatenate([j, cj[same_row]])
        key = np.unique(np.minimum(i, j) * len(regions) + np.maximum(i, j))
        i, j = key // len(regions), key % len(regions)
    return i, j


def _resolve(regions: Regions, idx: list[int]) -> Regions:
    """One line out of several readings of it (indices into `regions`)."""
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
        joined = _join(text, box, regions.labels[i], regions.boxes[i])
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


def _join(a: str, box_a: np.ndarray, b: str, box_b: np.ndarray) -> str | None:
    """Readings `a` (starting further left) and `b` of one line as one reading, or None.

    If one rectangle lies within the other (give or take half a character: a reading one
    character longer on a side is not within) and its text is part of the other's, the longer
    reading.  Else, if `b` runs on past `a`, `a` + the rest of `b`
    where the end of `a` is the start of `b`: the shared length closest to the number of
    characters the two rectangles share (their overlap over the character width)."""
    if not a.strip() or not b.strip():
        return a if a.strip() else b
    char_w = max(((box_a[2] - box_a[0]) / len(a) + (box_b[2] - box_b[0]) / len(b)) / 2, 1e-9)
    slack = 0.5 * char_w
    if box_b[0] >= box_a[0] - slack and box_b[2] <= box_a[2] + slack and b in a:
        return a
    if box_a[0] >= box_b[0] - slack and box_a[2] <= box_b[2] + slack and a in b:
        return b
    shared = (min(box_a[2], box_b[2]) - max(box_a[0], box_b[0])) / char_w
    ks = [k for k in range(MIN_STITCH, min(len(a), len(b)) + 1) if a.endswith(b[:k])]
    if not ks:
        return None
    k = min(ks, key=lambda k: (abs(k - shared), -k))
    if abs(k - shared) > max(2.0, 0.3 * shared):
        return None
    return a + b[k:]
