"""What the engine returns for one tile and one task."""
from __future__ import annotations

from dataclasses import dataclass

from edge_agent.tiling.regions import Regions

TASKS = ("od", "ocr")  # short names used in config, CLI and results


@dataclass(frozen=True)
class TaskOutput:
    task: str  # "od" or "ocr"
    regions: Regions  # in the tile's pixel coordinates
    saturated: bool  # generation hit max_new_tokens before EOS
    raw: str  # generated text with its special tokens
    token_ids: tuple[int, ...]  # generated ids, decoder start token included
