"""The synthetic shelf generator (models/synth.py, scripts/synth_shelves.py): seeded
determinism, annotations inside the image for both tasks, dense frames, the COCO file."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.models.cocodata import load_dataset
from edge_agent.models.errors import ModelSettingError
from edge_agent.models.synth import SHAPES, ShelfOptions, price_text, render_shelf, write_dataset

ROOT = Path(__file__).resolve().parents[1]
PRICE = re.compile(r"^(\$\d+\.\d\d(/lb)?|\d+,\d\d €|\d FOR \$\d+|\d/\$\d+|£\d+\.\d\d|€\d+\.\d\d|\d+\.\d\d)$")


def test_same_seed_same_frame_other_seed_other_frame():
    opts = ShelfOptions(width=320, height=240)
    a, b, c = render_shelf(opts, seed=7), render_shelf(opts, seed=7), render_shelf(opts, seed=8)
    assert a.image.shape == (240, 320, 3) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and a.objects == b.objects and a.lines == b.lines
    assert not np.array_equal(a.image, c.image)


def test_annotations_inside_the_image_for_both_tasks():
    labels, texts = set(), []
    for seed in range(6):
        f = render_shelf(ShelfOptions(width=512, height=384), seed=seed)
        h, w = f.image.shape[:2]
        assert f.objects and f.lines
        for o in f.objects:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            labels.add(o.label)
        for ln in f.lines:
            xs, ys = ln.quad[0::2], ln.quad[1::2]
            assert min(xs) >= 0 and max(xs) <= w and min(ys) >= 0 and max(ys) <= h
            assert ln.quad[0] < ln.quad[2] and ln.quad[5] > ln.quad[3]  # clockwise from the top-left
            texts.append(ln.text)
    assert labels == set(SHAPES)
    assert all(PRICE.match(t) for t in texts), texts


def test_boxes_are_what_is_visible():
    """A box holds pixels that differ from the plain background around it; a heavily occluded
    product is not annotated (min_visible)."""
    f = render_shelf(ShelfOptions(width=400, height=300, occlusion=1.0, min_visible=0.9), seed=3)
    g = render_shelf(ShelfOptions(width=400, height=300, occlusion=1.0, min_visible=0.0), seed=3)
    assert np.array_equal(f.image, g.image)
    assert len(f.objects) < len(g.objects)


def test_price_formats():
    rng = np.random.default_rng(0)
    seen = {price_text(rng) for _ in range(400)}
    assert all(PRICE.match(t) for t in seen)
    for pattern in (r"^\$\d+\.\d\d$", r"^\d+,\d\d €$", r"^\d FOR \$\d+$"):  # $2.99, 2,49 €, 2 FOR $5
        assert any(re.match(pattern, t) for t in seen), pattern


def test_dense_frame_for_the_tiling_benchmark():
    f = render_shelf(ShelfOptions(width=1600, height=900, objects=300), seed=1)
    assert 200 <= len(f.objects) <= 800


def test_write_dataset_is_coco_and_loads(tmp_path):
    path = write_dataset(tmp_path / "d", count=3, seed=5, options=ShelfOptions(width=256, height=192))
    coco = json.loads(path.read_text())
    assert [im["file_name"] for im in coco["images"]] == ["images/000000.jpg", "images/000001.jpg", "images/000002.jpg"]
    assert {c["name"] for c in coco["categories"]} == set(SHAPES) | {"text"}
    ds = load_dataset(tmp_path / "d")
    assert len(ds.samples) == 3
    assert all(s.objects and s.lines for s in ds.samples)
    assert ds.samples[0].load().shape == (192, 256, 3)
    again = write_dataset(tmp_path / "e", count=3, seed=5, options=ShelfOptions(width=256, height=192))
    assert json.loads(again.read_text())["annotations"] == coco["annotations"]


def test_script_and_bad_font(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "synth_shelves.py"), str(tmp_path / "s"),
                        "--count", "2", "--size", "128"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(json.loads((tmp_path / "s" / "annotations.json").read_text())["images"]) == 2
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "synth_shelves.py"), str(tmp_path / "t"),
                        "--count", "1", "--font", str(tmp_path / "none.ttf")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "none.ttf: not found" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(ModelSettingError):
        render_shelf(ShelfOptions(font=str(tmp_path / "none.ttf")))
    with pytest.raises(ValueError, match="occlusion"):
        ShelfOptions(occlusion=2)
