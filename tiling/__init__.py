"""Tile plans, coordinate mapping and merges for dense scenes. Pure numpy."""
from tiling.merge import merge_boxes
from tiling.ocr import merge_text
from tiling.plan import Tile, mark_cut, plan_tiles, split_tile, tile_size_for_density
from tiling.regions import Regions
from tiling.runner import TiledResult, TilingOptions, detect_tiled

__all__ = [
    "Regions",
    "Tile",
    "TiledResult",
    "TilingOptions",
    "detect_tiled",
    "mark_cut",
    "merge_boxes",
    "merge_text",
    "plan_tiles",
    "split_tile",
    "tile_size_for_density",
]
