"""edge_agent.gating.TileGate: unchanged tiles reuse their outputs; changes, other tiles and age re-run."""
from __future__ import annotations

import numpy as np
import pytest

from edge_agent.gating import GatingOptions, TileGate, signature
from edge_agent.tiling.plan import Tile

BOX = (0, 0, 768, 768)


def shelf(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((768, 768, 3), 200, np.uint8)
    for x in range(0, 760, 64):
        img[100:400, x + 4:x + 60] = rng.integers(20, 250, 3)
    return img


def noisy(img: np.ndarray, amp: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.int16) + rng.integers(-amp, amp + 1, img.shape), 0, 255).astype(np.uint8)


def test_first_check_misses_then_unchanged_crop_hits_with_stored_outputs():
    gate = TileGate(GatingOptions(threshold=6.0))
    img = shelf()
    assert gate.check("cam1", BOX, img) is None
    outputs = {"od": "result"}
    gate.store("cam1", BOX, outputs)
    assert gate.check("cam1", BOX, img.copy()) is outputs
    assert gate.check("cam1", Tile(*BOX), noisy(img, 10)) is outputs  # sensor noise averages out per block
    assert gate.stats() == {"hits": 2, "misses": 1, "hit_rate": round(2 / 3, 4)}


def test_one_product_removed_is_a_change():
    gate = TileGate(GatingOptions(threshold=6.0))
    img = shelf()
    gate.check("cam1", BOX, img)
    gate.store("cam1", BOX, "before")
    taken = img.copy()
    taken[100:400, 260:316] = 200  # one 56x300 product gone: ~3% of the tile
    assert gate.check("cam1", BOX, taken) is None
    assert gate.change("cam1", BOX, taken) > 6.0
    gate.store("cam1", BOX, "after")
    assert gate.check("cam1", BOX, taken) == "after"


def test_signature_compares_with_the_last_processed_pixels_so_drift_adds_up():
    gate = TileGate(GatingOptions(threshold=6.0))
    img = shelf().astype(np.int16)
    gate.check("cam1", BOX, img.astype(np.uint8))
    gate.store("cam1", BOX, "x")
    results = [gate.check("cam1", BOX, np.clip(img + 2 * k, 0, 255).astype(np.uint8)) for k in (1, 2, 6)]
    assert results == ["x", "x", None]  # +2, +4 hit; +12 misses


def test_other_camera_or_tile_box_misses():
    gate = TileGate()
    img = shelf()
    gate.check("cam1", BOX, img)
    gate.store("cam1", BOX, "x")
    assert gate.check("cam2", BOX, img) is None
    assert gate.check("cam1", (576, 0, 1344, 768), img) is None


def test_max_age_forces_a_refresh():
    now = [0.0]
    gate = TileGate(GatingOptions(threshold=6.0, max_age_s=60), clock=lambda: now[0])
    img = shelf()
    gate.check("c", BOX, img)
    gate.store("c", BOX, "x")
    now[0] = 59.0
    assert gate.check("c", BOX, img) == "x"
    now[0] = 61.0
    assert gate.check("c", BOX, img) is None


def test_threshold_zero_disables_the_gate():
    gate = TileGate(GatingOptions(threshold=0))
    img = shelf()
    assert gate.check("c", BOX, img) is None
    gate.store("c", BOX, "x")
    assert gate.check("c", BOX, img) is None
    assert gate.stats()["misses"] == 2 and gate.stats()["hits"] == 0


def test_store_with_crop_and_without_a_check():
    gate = TileGate()
    img = shelf()
    gate.store("c", BOX, "x", crop=img)
    assert gate.check("c", BOX, img) == "x"
    with pytest.raises(ValueError, match="no crop given"):
        gate.store("c", (1, 2, 3, 4), "y")


def test_signature_small_gray_and_rgba_crops():
    assert signature(np.zeros((5, 7), np.uint8)).shape == (5, 7)
    assert signature(np.zeros((100, 50, 4), np.uint8), 16).shape == (16, 16)
    sig = signature(np.full((64, 64, 3), 100, np.uint8), 8)
    np.testing.assert_allclose(sig, 100.0, atol=1e-3)
    with pytest.raises(ValueError, match="crop"):
        signature(np.zeros((0, 3, 3), np.uint8))


@pytest.mark.parametrize("kw, match", [({"threshold": -1}, "threshold"), ({"downscale": 0}, "downscale"),
                                       ({"max_age_s": -1}, "max_age_s")])
def test_bad_options_are_value_errors_naming_the_key(kw, match):
    with pytest.raises(ValueError, match=f"^{match}: "):
        GatingOptions(**kw)
