"""Tile plans, coordinate mapping and merges for dense scenes. Pure numpy."""
from edge_agent.tiling.merge import merge_boxes
from edge_agent.tiling.ocr import merge_text
from edge_agent.tiling.plan import Tile, mark_cut, plan_tiles, split_tile, tile_size_for_density
from edge_agent.tiling.regions import Regions
from edge_agent.tiling.runner import TiledResult, TilingOptions, detect_tiled

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
