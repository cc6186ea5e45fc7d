"""Tile plans, coordinate mapping and merges for dense scenes. Pure numpy."""
from tiling.regions import Regions

__all__ = ["Regions"]
