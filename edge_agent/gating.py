"""Change gating: a tile whose pixels did not change since it was last processed reuses its outputs.

Shelves are static most of the time.  For every (camera, tile box) the gate keeps a cheap
signature of the pixels the model last saw: the tile in grayscale, averaged over a
`downscale` x `downscale` grid of blocks (~24x24 pixels each for a 768 tile, which also
averages sensor noise away).  A new crop is "unchanged" when no block's mean moved by more
than `threshold` grey levels (0-255).  The largest block change is used rather than the
mean over the tile, so one product taken from a shelf (a few blocks) is not diluted by the
rest of the tile.  Signatures are compared with the pixels of the last *processed* frame,
so slow drift adds up and eventually triggers a re-run.

    gate = TileGate(GatingOptions(threshold=6.0, downscale=32, max_age_s=600))
    cached = gate.check(camera_id, tile, crop)       # outputs or None
    if cached is None:
        outputs = engine.run([crop], tasks)[0]
        gate.store(camera_id, tile, outputs)          # reuses the signature check computed
    gate.stats()                                      # {"hits", "misses", "hit_rate"}

A threshold of 0 disables the gate (every check misses and nothing is kept).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)  # channel order barely matters for a difference


def _box(tile) -> tuple[int, int, int, int]:
    box = tile.box if hasattr(tile, "box") else tile
    try:
        x0, y0, x1, y1 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"tile must be a Tile or an (x0, y0, x1, y1) box, got {tile!r}") from None
    return x0, y0, x1, y1


def signature(crop: np.ndarray, downscale: int = 32) -> np.ndarray:
    """Block means of the grayscale crop on a grid of at most downscale x downscale blocks."""
    img = np.asarray(crop)
    if img.ndim not in (2, 3) or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"crop must be an HxW or HxWxC image, got shape {img.shape}")
    if img.ndim == 3:
        img = img[..., :3] if img.shape[2] >= 3 else img[..., 0]
    gray = img.astype(np.float32) @ _LUMA if img.ndim == 3 else img.astype(np.float32)
    h, w = gray.shape
    ys = np.linspace(0, h, min(downscale, h) + 1).astype(np.int64)
    xs = np.linspace(0, w, min(downscale, w) + 1).astype(np.int64)
    sums = np.add.reduceat(np.add.reduceat(gray, ys[:-1], axis=0), xs[:-1], axis=1)
    return sums / (np.diff(ys)[:, None] * np.diff(xs)[None, :])


@dataclass(frozen=True)
class GatingOptions:
    """The `[gating]` section."""

    threshold: float = 6.0  # grey levels (0-255) a tile's block mean must move to be run again; 0: off
    downscale: int = 32  # signature grid: at most downscale x downscale blocks per tile
    max_age_s: float = 600.0  # re-run an unchanged tile after this many seconds; 0: never

    def __post_init__(self):
        if not self.threshold >= 0:
            raise ValueError("threshold: must be >= 0 grey levels")
        if not self.downscale >= 1:
            raise ValueError("downscale: must be >= 1")
        if not self.max_age_s >= 0:
            raise ValueError("max_age_s: must be >= 0 seconds (0: never)")


@dataclass
class _Entry:
    sig: np.ndarray
    outputs: Any
    stored_at: float


class TileGate:
    """Per (camera_id, tile box): the signature and outputs of the last processed crop; hit/miss counts."""

    def __init__(self, options: GatingOptions = GatingOptions(), clock: Callable[[], float] = time.monotonic):
        self.threshold, self.downscale = float(options.threshold), options.downscale
        self.max_age_s = options.max_age_s or None
        self._clock = clock
        self._entries: dict[tuple, _Entry] = {}
        self._pending: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def change(self, camera_id: str, tile, crop: np.ndarray) -> float | None:
        """Largest block change (grey levels) since the stored crop; None if nothing is stored."""
        entry = self._entries.get((camera_id, _box(tile)))
        if entry is None:
            return None
        sig = signature(crop, self.downscale)
        return float(np.abs(sig - entry.sig).max()) if sig.shape == entry.sig.shape else float("inf")

    def check(self, camera_id: str, tile, crop: np.ndarray):
        """The stored outputs if the crop did not change meaningfully (a hit), else None (a miss)."""
        if not self.enabled:
            with self._lock:
                self.misses += 1
            return None
        key = (camera_id, _box(tile))
        sig = signature(crop, self.downscale)
        with self._lock:
            entry = self._entries.get(key)
            fresh = entry is not None and (self.max_age_s is None or self._clock() - entry.stored_at < self.max_age_s)
            if fresh and sig.shape == entry.sig.shape and float(np.abs(sig - entry.sig).max()) <= self.threshold:
                self.hits += 1
                return entry.outputs
            self.misses += 1
            self._pending[key] = sig
            return None

    def store(self, camera_id: str, tile, outputs, crop: np.ndarray | None = None) -> None:
        """Remember the outputs of a processed crop (its signature from the last check, or from crop).

        The last check's signature stays available until the next check of that key, so a box
        that repeats within one round (same frame, same pixels) can be stored twice."""
        if not self.enabled:
            return
        key = (camera_id, _box(tile))
        sig = signature(crop, self.downscale) if crop is not None else None
        with self._lock:
            sig = sig if sig is not None else self._pending.get(key)
            if sig is None:
                raise ValueError(f"store({camera_id!r}, {key[1]}): no crop given and no check() before it")
            self._entries[key] = _Entry(sig, outputs, self._clock())

    def stats(self) -> dict:
        with self._lock:
            total = self.hits + self.misses
            return {"hits": self.hits, "misses": self.misses,
                    "hit_rate": round(self.hits / total, 4) if total else 0.0}
