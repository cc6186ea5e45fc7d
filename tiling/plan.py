"""Tile plans: where to look in a frame so each look stays under the model's token budget.

All coordinates are integer frame pixels.  A tile is the half-open rectangle
``[x0, x1) x [y0, y1)``.  Pure numpy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_agent.tiling.regions import Regions

DEFAULT_TILE = 768  # Florence-2's input side
TOKENS_PER_OBJECT = 7.0  # one label (1-3 tokens) + 4 <loc_> tokens, as Florence-2 writes <od>


@dataclass(frozen=True)
class Tile:
    x0: int
    y0: int
    x1: int
    y1: int
    depth: int = 0  # 0: planned up front; k: made by splitting a saturated tile k times

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def to_frame(self, regions: Regions) -> Regions:
        """Tile pixels -> frame pixels (boxes and quads)."""
        return regions.shifted(self.x0, self.y0)


def overlap_pixels(overlap: float, size: int) -> int:
    """Overlap given as a ratio of `size` (0 <= r < 1) or as whole pixels (>= 1), in whole pixels."""
    if not math.isfinite(overlap) or overlap < 0:
        raise ValueError(f"overlap must be a ratio in [0, 1) or pixels >= 1, got {overlap!r}")
    if overlap >= 1 and overlap != int(overlap):
        raise ValueError(f"overlap {overlap!r}: a ratio must be < 1 and pixels a whole number (0.25 or 25, not 2.5)")
    px = math.ceil(overlap * size - 1e-9) if overlap < 1 else math.ceil(overlap)
    if px >= size:
        raise ValueError(f"overlap {overlap!r} ({px} px) must be smaller than the tile ({size} px)")
    return px


def _starts(length: int, size: int, overlap_px: int) -> list[int]:
    """Starts of full-size windows covering [0, length), spread evenly, each step <= size - overlap."""
    if length <= size:
        return [0]
    stride = size - overlap_px
    steps = -(-(length - size) // stride)  # ceil
    span = length - size
    return [(k * span) // steps for k in range(steps + 1)]


def plan_tiles(width: int, height: int, tile_size: int = DEFAULT_TILE, overlap: float = 0.2,
               full_frame: bool = False) -> list[Tile]:
    """Overlapping full-size tiles covering a `width` x `height` frame, row by row.

    Tiles are spread evenly, so none is a sliver and neighbours overlap by at least the
    requested amount.  Along an axis shorter than `tile_size` the tile spans the frame.
    `full_frame` appends one more tile covering the whole frame (the engine scales it down):
    it catches objects larger than a tile.
    """
    width, height, tile_size = int(width), int(height), int(tile_size)
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if tile_size < 16:
        raise ValueError(f"tile_size must be >= 16 pixels, got {tile_size}")
    opx = overlap_pixels(overlap, tile_size)
    tw, th = min(tile_size, width), min(tile_size, height)
    tiles = [Tile(x, y, x + tw, y + th) for y in _starts(height, tile_size, opx)
             for x in _starts(width, tile_size, opx)]
    if full_frame and len(tiles) > 1:
        tiles.append(Tile(0, 0, width, height))
    return tiles


def split_tile(tile: Tile, overlap: float = 0.2) -> list[Tile]:
    """Four overlapping sub-tiles of `tile` (row by row), one level deeper.

    `overlap` is a ratio of the sub-tile's side or pixels, as in `plan_tiles`.
    """
    out_x = _halves(tile.x0, tile.x1, overlap)
    out_y = _halves(tile.y0, tile.y1, overlap)
    return [Tile(x0, y0, x1, y1, tile.depth + 1) for (y0, y1) in out_y for (x0, x1) in out_x]


def _halves(a: int, b: int, overlap: float) -> list[tuple[int, int]]:
    n = b - a
    if n < 2:
        return [(a, b)]
    if overlap < 1:
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be a ratio in [0, 1) or pixels >= 1, got {overlap!r}")
        side = math.ceil(n / (2 - overlap) - 1e-9)  # two sides overlapping by overlap * side
    else:
        side = math.ceil((n + overlap) / 2)
    side = min(max(side, (n + 1) // 2), n)
    return [(a, a + side), (b - side, b)]


def tile_size_for_density(objects_per_megapixel: float, max_new_tokens: int = 1024,
                          tokens_per_object: float = TOKENS_PER_OBJECT, overlap: float = 0.2,
                          fill: float = 0.6, min_size: int = 256, max_size: int = DEFAULT_TILE,
                          step: int = 32) -> int:
    """Largest tile side (a multiple of `step`) whose expected objects fit the token budget.

    The hint comes from the previous frame: objects it found per megapixel.  Objects cut by a
    tile's edge are counted too (the tile grows by the overlap), and only `fill` of the budget is
    planned for, since objects cluster.  The result is clamped to [min_size, max_size].
    """
    if not objects_per_megapixel or objects_per_megapixel <= 0:
        return max_size
    objects = fill * max_new_tokens / tokens_per_object
    grown = 1.0 + (overlap if overlap < 1 else 0.0)
    side = math.sqrt(objects / objects_per_megapixel * 1e6) / grown
    side = int(side // step * step)
    return int(min(max(side, min_size), max_size))


def mark_cut(regions: Regions, tile: Tile, frame_w: int, frame_h: int, margin=4) -> Regions:
    """Set `.cut` for regions (frame pixels) that touch an interior edge of `tile`.

    `margin` (pixels, a number or one per region) is how near the edge counts as touching.
    An edge on the frame's border is not interior: nothing lies beyond it, so a region
    there is as whole as any view of it can be.  Cut flags already set are kept.
    """
    if not len(regions):
        return regions
    b = regions.boxes
    margin = np.asarray(margin, np.float64)
    cut = regions.cut.copy()
    if tile.x0 > 0:
        cut |= b[:, 0] <= tile.x0 + margin
    if tile.y0 > 0:
        cut |= b[:, 1] <= tile.y0 + margin
    if tile.x1 < frame_w:
        cut |= b[:, 2] >= tile.x1 - margin
    if tile.y1 < frame_h:
        cut |= b[:, 3] >= tile.y1 - margin
    return regions.with_cut(cut)
