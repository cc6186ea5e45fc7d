"""Run a model over a tile plan, re-split saturated tiles, merge back into frame pixels.

The model is any callable ``infer(tiles) -> [{task: output}, ...]`` (one dict per tile, in
order) whose outputs carry ``.regions`` (tile pixels) and ``.saturated`` (generation hit its
token budget), as `models.outputs.TaskOutput` does.  It is called once per round with every
tile of that round, so an engine can batch them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from edge_agent.tiling.merge import METHODS, METRICS, merge_boxes
from edge_agent.tiling.ocr import merge_text
from edge_agent.tiling.plan import Tile, mark_cut, overlap_pixels, plan_tiles, split_tile, tile_size_for_density
from edge_agent.tiling.regions import Regions

Infer = Callable[[Sequence[Tile]], Sequence[dict]]


@dataclass(frozen=True)
class TilingOptions:
    """How a frame is tiled and merged (the `[tiling]` config section).

    enabled:        tile frames larger than one tile; off: one pass over the whole frame
    tile_size:      tile side in frame pixels (768 = the model's input, no down-scaling)
    overlap:        between neighbouring tiles: ratio of tile_size (< 1) or pixels (>= 1)
    max_depth:      how many times a saturated tile may be split into 4 (0: never)
    full_frame:     also run one down-scaled pass over the whole frame (objects larger than a tile)
    method:         "nmm" (merge a group into one box) or "nms" (keep the winner's box)
    metric:         "ios" (intersection over the smaller box) or "iou"
    threshold:      overlap at which two boxes are one object, (0, 1]
    class_agnostic: merge boxes of different labels too
    text_threshold: overlap (IoS of rectangles) at which two OCR lines are one line, (0, 1]
    cut_margin:     pixels from an interior tile edge within which a box counts as cut
    """

    enabled: bool = True
    tile_size: int = 768
    overlap: float = 0.2
    max_depth: int = 1
    full_frame: bool = False
    method: str = "nmm"
    metric: str = "ios"
    threshold: float = 0.5
    class_agnostic: bool = False
    text_threshold: float = 0.5
    cut_margin: float = 4.0

    def __post_init__(self):
        checks = {
            "tile_size": self.tile_size >= 16,
            "max_depth": 0 <= self.max_depth <= 4,
            "method": self.method in METHODS,
            "metric": self.metric in METRICS,
            "threshold": 0 < self.threshold <= 1,
            "text_threshold": 0 < self.text_threshold <= 1,
            "cut_margin": 0 <= self.cut_margin < self.tile_size / 4,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"tiling.{key}: invalid value {getattr(self, key)!r}")
        try:
            overlap_pixels(self.overlap, self.tile_size)
        except ValueError as e:
            raise ValueError(f"tiling.overlap: {e}") from None


@dataclass
class TiledResult:
    od: Regions  # merged detections, frame pixels
    ocr: Regions  # merged text lines, frame pixels
    tiles: list[Tile]  # every tile run, in order (planned ones first, then sub-tiles)
    resplit: list[Tile]  # tiles whose output saturated and that were split into 4
    rounds: int = 1  # calls to infer
    saturated: list[Tile] = field(default_factory=list)  # saturated tiles that could not be split further
    unmerged: dict = field(default_factory=dict)  # task -> Regions before the merge (frame pixels, cut marked)

    def density(self, width: int, height: int) -> float:
        """Detections per megapixel: the hint for the next frame's tile size."""
        return len(self.od) / max(width * height / 1e6, 1e-9)


def detect_tiled(width: int, height: int, infer: Infer, opts: TilingOptions = TilingOptions(),
                 density: float | None = None) -> TiledResult:
    """Plan, run, re-split saturated tiles up to `opts.max_depth`, map and merge.

    `density` (objects per megapixel seen in the previous frame) may shrink the tile size so
    a tile's objects fit the token budget up front.
    """
    first = _first_round(width, height, opts, density)
    split_overlap = overlap_pixels(opts.overlap, opts.tile_size)  # 0 for overlap 0
    max_depth = opts.max_depth if opts.enabled else 0
    gathered: dict[str, list[Regions]] = {}
    run, resplit, stuck = [], [], []
    pending = [(t, None) for t in first]  # (tile, tasks wanted from it: None = all)
    rounds = 0
    while pending:
        tiles = [t for t, _ in pending]
        outs = list(infer(tiles))
        if len(outs) != len(tiles):
            raise RuntimeError(f"infer returned {len(outs)} results for {len(tiles)} tiles")
        rounds += 1
        run.extend(tiles)
        nxt = []
        for (tile, wanted), out in zip(pending, outs):
            can_split = _splittable(tile, max_depth, len(first), width, height)
            redo = _collect(tile, wanted, out, gathered, (width, height), opts.cut_margin, can_split)
            if redo and can_split:
                resplit.append(tile)
                nxt.extend((sub, redo) for sub in split_tile(tile, split_overlap))
            elif redo:
                stuck.append(tile)
        pending = nxt
    raw = {"od": Regions.concat(gathered.get("od", [])), "ocr": Regions.concat(gathered.get("ocr", []), ocr=True)}
    od = merge_boxes(raw["od"], opts.method, opts.metric, opts.threshold, opts.class_agnostic)
    ocr = merge_text(raw["ocr"], opts.text_threshold)
    return TiledResult(od, ocr, run, resplit, rounds, stuck, raw)


def _first_round(width: int, height: int, opts: TilingOptions, density: float | None) -> list[Tile]:
    if not opts.enabled:
        return [Tile(0, 0, int(width), int(height))]
    size = opts.tile_size
    if density:
        size = tile_size_for_density(density, overlap=opts.overlap, max_size=opts.tile_size,
                                     min_size=min(256, opts.tile_size))
    overlap = opts.overlap if opts.overlap < 1 else min(opts.overlap, math.floor(size / 2))
    return plan_tiles(width, height, size, overlap, opts.full_frame)


def _splittable(tile: Tile, max_depth: int, planned: int, width: int, height: int) -> bool:
    """A saturated tile is split unless at max depth, too small, or the full-frame pass beside tiles."""
    if tile.depth >= max_depth or min(tile.width, tile.height) < 64:
        return False
    return not (planned > 1 and tile.depth == 0 and tile.box == (0, 0, width, height))


def _collect(tile: Tile, wanted, out: dict, gathered: dict, frame: tuple[int, int], margin: float,
             will_split: bool) -> set[str]:
    """Keep this tile's outputs (frame pixels, cut marked) for the tasks wanted from it.

    A saturated output is dropped when the tile will be split (its sub-tiles read it again);
    returns the tasks that saturated.
    """
    width, height = frame
    saturated = set()
    for task, res in out.items():
        if wanted is not None and task not in wanted:
            continue
        if getattr(res, "saturated", False):
            saturated.add(task)
            if will_split:
                continue
        regions = _clip(tile.to_frame(res.regions), width, height)
        edge = margin
        if regions.is_ocr:  # a reader stops at the last whole character: up to about a line height short
            edge = np.maximum(margin, regions.boxes[:, 3] - regions.boxes[:, 1])
        gathered.setdefault(task, []).append(mark_cut(regions, tile, width, height, edge))
    return saturated


def _clip(regions: Regions, width: int, height: int) -> Regions:
    """Boxes clipped to the frame; regions left with no area dropped."""
    if not len(regions):
        return regions
    b = regions.boxes.copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    keep = np.flatnonzero((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
    clipped = Regions(b, regions.scores, regions.labels, regions.quads, regions.cut)
    return clipped.take(keep) if len(keep) < len(regions) else clipped
