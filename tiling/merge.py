"""Vectorised, edge-aware NMS and greedy NMM for boxes gathered from overlapping tiles.

No Python loop runs over pairs and no N x N matrix is built.  Candidate pairs come from a
sort-and-sweep along x within horizontal bands about a box tall, per class (a pair counted
once, in the band holding the top of its intersection); the greedy keep/suppress decisions
are then settled by a few vectorised passes over the sparse match edges (each pass settles
every box whose higher-ranked matches are all settled).

Ranking, and therefore who wins a match:
1. whole boxes before boxes cut by an interior tile edge (`Regions.cut`): a cut box loses to an
   overlapping box from a tile where the object lies whole, whatever the scores;
2. then, among cut boxes, larger area (the largest part of an object overlaps its other parts);
3. then higher score;
4. then smaller x0, y0, x1, y1, then input order: ties break deterministically (the same order
   as SAHI's `_score_tiebreak_order` when nothing is cut).

Defaults, chosen for tiled Florence-2 output (measured in benchmarks/dense_scenes.py):
- ``method="nmm"``: an object larger than the overlap is seen by two tiles as two cut parts;
  merging keeps their union, suppression would keep one part.  When the winner lies whole its
  own box is kept (a whole view is the truth; unions with cut or re-quantised copies only grow it).
- ``metric="ios"`` (intersection over the smaller box): a cut part lies inside the whole box, so
  its IoU with it is as small as the part (a 10 % sliver has IoU 0.1) while its IoS is ~1.
- ``threshold=0.5``: products side by side on a shelf touch or overlap a few pixels (IoS << 0.5),
  copies of one object overlap almost completely.
- class-aware: two classes on one spot are kept, as the issue asks.  Florence-2 names an object
  the same way in two tiles that both see it whole, so this rarely leaves a duplicate.
"""
from __future__ import annotations

import numpy as np

from edge_agent.tiling.regions import Regions

METHODS = ("nms", "nmm")
METRICS = ("iou", "ios")

_MAX_GRID = 2048  # bands at most
_MAX_ENTRIES_PER_BOX = 16  # bands a box spans, on average, at most
_MAX_PAIRS = 1_000_000  # candidate pairs beyond this (~100 MB): boxes piled up; use the survivor loop
_MAX_ROUNDS = 3  # NMM rounds while unions grow
_MAX_PASSES = 48  # then settle the rest one box at a time (long chains of overlaps only)


def merge_boxes(regions: Regions, method: str = "nmm", metric: str = "ios", threshold: float = 0.5,
                class_agnostic: bool = False, edge_aware: bool = True) -> Regions:
    """Merge duplicate boxes (frame pixels).  Returns the kept boxes in rank order.

    nms: the winner keeps its own box and score.  nmm: the winner absorbs every box it matches
    that no earlier winner took (greedy NMM, as SAHI's `greedy_nmm`); the result is the union of
    the group, or the winner's own box if it is whole and `edge_aware`; the score is the group's max.
    When a union grew, the merge runs again on its output (at most `_MAX_ROUNDS` times): an
    object cut into four parts at a tile corner may only match its largest part once two
    parts are joined.  With `edge_aware=False` cut flags are ignored: plain score-ranked
    greedy NMM with unions, in one round, as SAHI's GreedyNMMPostprocess.
    """
    _check(method, metric, threshold)
    for _ in range(_MAX_ROUNDS if edge_aware else 1):
        if not len(regions):
            return regions
        cut = regions.cut if edge_aware else np.zeros(len(regions), bool)
        groups = None if class_agnostic else _label_ids(regions.labels)
        order = rank_order(regions.boxes, regions.scores, cut)
        keep, owner = greedy_groups(regions.boxes, order, metric, threshold, groups)
        if method == "nms":
            return regions.take(keep)
        union = cut[keep] if edge_aware else np.ones(len(keep), bool)
        regions, grew = _merge_groups(regions, keep, owner, union)
        if not grew:
            break  # else a grown union may now cover parts it missed: merge once more
    return regions


def _check(method: str, metric: str, threshold: float) -> None:
    if method not in METHODS:
        raise ValueError(f"merge method must be one of {METHODS}, got {method!r}")
    if metric not in METRICS:
        raise ValueError(f"merge metric must be one of {METRICS}, got {metric!r}")
    if not 0 < threshold <= 1:
        raise ValueError(f"merge threshold must be in (0, 1], got {threshold!r}")


def _label_ids(labels: tuple[str, ...]) -> np.ndarray:
    ids: dict[str, int] = {}
    return np.fromiter((ids.setdefault(lab, len(ids)) for lab in labels), np.int64, len(labels))


def rank_order(boxes: np.ndarray, scores: np.ndarray, cut: np.ndarray | None = None) -> np.ndarray:
    """Indices best first: whole before cut, higher score, then x0, y0, x1, y1, then index.

    Cut boxes rank by area first (the largest part of an object is the view that overlaps its
    other parts most), then by score."""
    neg = -np.asarray(scores, np.float64).reshape(-1)
    if not np.isfinite(neg).all():
        raise ValueError("merge: scores must be finite")
    n = len(neg)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cut = np.zeros(n, bool) if cut is None else np.asarray(cut, bool).reshape(-1)
    order = np.argsort(neg)
    keys = [neg]
    if cut.any():
        part = np.where(cut, -(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 0.0)
        order = order[np.argsort(part[order], kind="stable")]
        order = order[np.argsort(cut[order], kind="stable")]
        keys = [neg, part, cut]
    tie = np.ones(max(n - 1, 0), bool)
    for key in keys:
        k = key[order]
        tie &= k[1:] == k[:-1]
    if not tie.any():
        return order
    # equal-key runs: order each by coordinates, then index (sorting only the ties)
    run = np.cumsum(np.concatenate([[True], ~tie]))
    tied = np.zeros(n, bool)
    tied[1:] |= tie
    tied[:-1] |= tie
    pos = np.flatnonzero(tied)
    idx = order[pos]
    bt = b[idx]
    order[pos] = idx[np.lexsort((idx, bt[:, 3], bt[:, 2], bt[:, 1], bt[:, 0], run[pos]))]
    return order


def greedy_groups(boxes: np.ndarray, order: np.ndarray, metric: str, threshold: float,
                  groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy NMS/NMM over boxes visited in `order`.

    Returns (keep, owner): the kept indices in `order`, and for every box the kept index it
    went to (itself for a kept box): the first kept box, in `order`, that matches it.
    """
    pairs = match_pairs(boxes, metric, threshold, groups)
    if pairs is None:
        return _survivor_loop(np.asarray(boxes, np.float64).reshape(-1, 4), order, metric, threshold, groups)
    return greedy_from_pairs(len(boxes), order, *pairs)


def greedy_from_pairs(n: int, order: np.ndarray, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`greedy_groups` given the matching pairs (i[k], j[k]) of n items visited in `order`."""
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    src = np.where(rank[i] < rank[j], i, j)
    dst = np.where(rank[i] < rank[j], j, i)
    state = _settle(n, src, dst, order)
    owner = np.arange(n)
    taken = (state[src] == 1) & (state[dst] == 2)
    s, d = src[taken], dst[taken]
    first = np.lexsort((rank[s], d))
    s, d = s[first], d[first]
    lead = np.ones(len(d), bool)
    lead[1:] = d[1:] != d[:-1]
    owner[d[lead]] = s[lead]
    keep = order[state[order] == 1]
    return keep, owner


def _settle(n: int, src: np.ndarray, dst: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Keep (1) or suppress (2) each box: kept iff no kept box ranked before it matches it."""
    state = np.zeros(n, np.int8)
    for _ in range(_MAX_PASSES):
        live = (state[src] != 2) & (state[dst] == 0)
        src, dst = src[live], dst[live]
        blocked = np.zeros(n, bool)
        blocked[dst] = True
        state[(state == 0) & ~blocked] = 1
        state[dst[state[src] == 1]] = 2
        if not (state == 0).any():
            return state
    return _settle_sequential(state, src, dst, order)


def _settle_sequential(state: np.ndarray, src: np.ndarray, dst: np.ndarray, order: np.ndarray) -> np.ndarray:
    """What the passes left, one box at a time in rank order (a loop over boxes, not pairs)."""
    live = (state[src] != 2) & (state[dst] == 0)
    src, dst = src[live], dst[live]
    by_src = np.argsort(src, kind="stable")
    src, dst = src[by_src], dst[by_src]
    starts = np.searchsorted(src, np.arange(len(state) + 1))
    for b in order[state[order] == 0]:
        if state[b] == 0:
            state[b] = 1
            targets = dst[starts[b]:starts[b + 1]]
            state[targets[state[targets] == 0]] = 2
    return state


def _survivor_loop(boxes: np.ndarray, order: np.ndarray, metric: str, threshold: float,
                   groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy NMM for boxes piled on each other: each winner against all unsettled boxes at once.

    A loop over the kept boxes only (few, when boxes pile up), each step vectorised."""
    n = len(boxes)
    owner = np.arange(n)
    g = np.zeros(n, np.int64) if groups is None else np.asarray(groups, np.int64)
    rest, keep = np.asarray(order), []
    while len(rest):
        k, cand = rest[0], rest[1:]
        keep.append(k)
        inter, denom = _overlap(boxes[[k]], boxes[cand], metric)  # one row, broadcast
        hit = (g[cand] == g[k]) & (inter > 0)
        hit[hit] = inter[hit] / denom[hit] >= threshold
        owner[cand[hit]] = k
        rest = cand[~hit]
    return np.asarray(keep, np.int64), owner


def match_pairs(boxes: np.ndarray, metric: str, threshold: float,
                groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """All pairs (i, j), i != j, each once, in the same group with metric >= threshold.

    Zero-area boxes match nothing (their metric is 0, as in SAHI).  None when boxes pile up
    so much that the candidate pairs would exceed `_MAX_PAIRS`.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise ValueError("merge: boxes must be finite")
    valid = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    empty = np.zeros(0, np.int64)
    if len(valid) < 2:
        return empty, empty
    b = boxes[valid]
    g = np.zeros(len(b), np.int64) if groups is None else np.asarray(groups, np.int64)[valid]
    pairs = _sweep_pairs(b, g, metric, threshold)
    if pairs is None:
        return None
    return valid[pairs[0]], valid[pairs[1]]


def _bands(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last horizontal band of each box; bands are 1.5 median box heights tall.

    The bands double while the boxes would fill more than `_MAX_ENTRIES_PER_BOX` bands on
    average (a few huge boxes among small ones)."""
    lo = float(b[:, 1].min())
    extent = max(float(b[:, 3].max()) - lo, 1e-9)
    height = max(1.5 * float(np.median(b[:, 3] - b[:, 1])), extent / _MAX_GRID)
    while True:
        first = ((b[:, 1] - lo) / height).astype(np.int64)
        last = ((b[:, 3] - lo) / height).astype(np.int64)
        if int((last - first + 1).sum()) <= _MAX_ENTRIES_PER_BOX * len(b) + 4096:
            return first, last
        height *= 2.0


def _ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts c_k: (k repeated c_k times, 0..c_k-1 for each k)."""
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(total) - starts[owner]


def _sweep_pairs(b: np.ndarray, g: np.ndarray, metric: str, threshold: float):
    """Matching pairs, found by sort-and-sweep along x within horizontal bands, per group.

    Each box is entered in every band it touches; entries are sorted by (group, band, x0),
    and an entry's candidates are the entries after it, in its run, that start before it
    ends (one `searchsorted`).  A pair is counted only in the band holding the top of the
    two boxes' intersection, so each appears once.  Per-candidate work reads entry-ordered
    arrays at nearby positions (cache friendly)."""
    first, last = _bands(b)
    box, k = _ragged(last - first + 1)
    band = first[box] + k
    xmin = float(b[:, 0].min())
    xs, xe = b[:, 0] - xmin, b[:, 2] - xmin
    span = float(xe.max()) + 1.0  # > any x offset: (group, band) runs never interleave
    comb = (g[box] * (int(last.max()) + 1) + band).astype(np.float64) * span + xs[box]
    srt = np.argsort(comb)  # any order among equal x0 finds each pair once
    comb, box, band = comb[srt], box[srt], band[srt]
    limit = comb - xs[box] + xe[box]
    limit += np.abs(limit) * 1e-14  # rounding slack: only ever adds candidates, filtered exactly below
    partners = np.maximum(np.searchsorted(comb, limit, side="left") - np.arange(len(comb)) - 1, 0)
    if int(partners.sum()) > _MAX_PAIRS:
        return None
    left, off = _ragged(partners)
    right = left + 1 + off
    # candidates overlap along x by construction; test y and the band first
    top = first[box]
    x0, y0, x1, y1 = (np.ascontiguousarray(b[box, c]) for c in range(4))
    ih = np.minimum(y1[left], y1[right]) - np.maximum(y0[left], y0[right])
    hit = (ih > 0) & (band[left] == np.maximum(top[left], top[right]))
    left, right, ih = left[hit], right[hit], ih[hit]
    iw = np.minimum(x1[left], x1[right]) - np.maximum(x0[left], x0[right])
    hit = iw > 0
    left, right = left[hit], right[hit]
    inter = iw[hit] * ih[hit]
    area = (x1 - x0) * (y1 - y0)
    ai, aj = area[left], area[right]
    denom = ai + aj - inter if metric == "iou" else np.minimum(ai, aj)
    ok = inter / denom >= threshold
    return box[left[ok]], box[right[ok]]


def _overlap(bi: np.ndarray, bj: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise intersection area and the metric's denominator (SAHI's arithmetic)."""
    iw = np.minimum(bi[:, 2], bj[:, 2]) - np.maximum(bi[:, 0], bj[:, 0])
    ih = np.minimum(bi[:, 3], bj[:, 3]) - np.maximum(bi[:, 1], bj[:, 1])
    inter = np.maximum(0, iw) * np.maximum(0, ih)
    ai = (bi[:, 2] - bi[:, 0]) * (bi[:, 3] - bi[:, 1])
    aj = (bj[:, 2] - bj[:, 0]) * (bj[:, 3] - bj[:, 1])
    denom = ai + aj - inter if metric == "iou" else np.minimum(ai, aj)
    return inter, denom


def _merge_groups(regions: Regions, keep: np.ndarray, owner: np.ndarray, union: np.ndarray) -> tuple[Regions, bool]:
    """NMM result: per kept box, the group's union box where `union` (else the winner's own box)
    and the group's max score; and whether any union grew beyond its winner's box."""
    n = len(regions)
    slot = np.full(n, -1, np.int64)
    slot[keep] = np.arange(len(keep))
    grp = slot[owner]
    b = regions.boxes
    own_box = b[keep]
    box = own_box.copy()
    np.minimum.at(box[:, 0], grp, b[:, 0])
    np.minimum.at(box[:, 1], grp, b[:, 1])
    np.maximum.at(box[:, 2], grp, b[:, 2])
    np.maximum.at(box[:, 3], grp, b[:, 3])
    own = ~union
    box[own] = own_box[own]
    grew = bool((box != own_box).any())
    scores = regions.scores[keep].copy()
    np.maximum.at(scores, grp, regions.scores)
    quads = None if regions.quads is None else regions.quads[keep]
    labels = regions.labels
    return Regions(box, scores, [labels[k] for k in keep.tolist()], quads, regions.cut[keep]), grew
