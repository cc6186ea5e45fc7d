"""`edge-agent tiles` and the drawing helpers."""
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_agent.cli import cli
from edge_agent.draw import draw_regions, draw_tiles
from edge_agent.tiling.plan import Tile, plan_tiles
from edge_agent.tiling.regions import Regions


@pytest.fixture
def frame_path(tmp_path):
    path = tmp_path / "shelf.jpg"
    assert cv2.imwrite(str(path), np.full((1080, 1920, 3), 80, np.uint8))
    return path


def run(*args):
    return CliRunner().invoke(cli, ["tiles", *map(str, args)])


def test_json_plan_exact_shape(frame_path):
    res = run(frame_path, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert set(data) == {"width", "height", "tiles"}
    assert (data["width"], data["height"]) == (1920, 1080)
    assert data["tiles"] == [list(t.box) for t in plan_tiles(1920, 1080)]


def test_tile_size_and_overlap_options(frame_path):
    data = json.loads(run(frame_path, "--json", "--tile-size", 512, "--overlap", 100).output)
    assert data["tiles"] == [list(t.box) for t in plan_tiles(1920, 1080, 512, 100)]
    assert all(x1 - x0 == 512 and y1 - y0 == 512 for x0, y0, x1, y1 in data["tiles"])


def test_text_output_lists_every_tile(frame_path):
    res = run(frame_path)
    assert res.exit_code == 0 and "6 tile(s)" in res.output
    assert "576,312 - 1344,1080" in res.output


def test_draw_writes_the_plan(frame_path, tmp_path):
    out = tmp_path / "plan.jpg"
    res = run(frame_path, "--draw", out, "--json")
    assert res.exit_code == 0, res.output
    drawn = cv2.imread(str(out))
    assert drawn.shape == (1080, 1920, 3)
    assert np.abs(drawn.astype(int) - 80).max() > 50  # outlines are there


@pytest.mark.parametrize("content", [None, b"not an image"])
def test_unreadable_image_is_one_line_exit_2(tmp_path, content):
    path = tmp_path / "broken.jpg"
    if content is not None:
        path.write_bytes(content)
    res = run(path)
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    why = "no such image file" if content is None else "cannot read this image"
    assert lines == [f"edge-agent: error: {path}: {why}" + ("" if content is None else lines[0].split(why)[1])]


def test_bad_overlap_and_unwritable_drawing_exit_2(frame_path, tmp_path):
    res = run(frame_path, "--overlap", 900)
    assert res.exit_code == 2 and "overlap" in res.output
    res = run(frame_path, "--overlap", 2.5)  # fractional pixels: a typo for 0.25 or 25
    assert res.exit_code == 2 and "2.5" in res.output and len(res.output.strip().splitlines()) == 1
    res = run(frame_path, "--draw", tmp_path / "missing-dir" / "x.jpg")
    assert res.exit_code == 2 and "missing-dir" in res.output


def test_draw_tiles_and_regions_leave_input_untouched():
    img = np.zeros((600, 800, 3), np.uint8)
    tiles = [Tile(0, 0, 500, 500), Tile(300, 100, 800, 600), Tile(0, 0, 800, 600)]
    out = draw_tiles(img, tiles)
    assert img.max() == 0 and out.shape == img.shape
    assert out[300, 400].max() > 0  # overlap shaded
    od = Regions([[10, 10, 100, 100]], [0.9], ["bottle"])
    ocr = Regions.from_quads([[200, 200, 300, 200, 300, 230, 200, 230]], [0.8], ["$2.49"])
    out = draw_regions(img, od, ocr)
    assert img.max() == 0
    assert out[10, 50].max() > 0 and out[200, 250].max() > 0
    assert draw_regions(img, Regions.empty(), Regions.empty(ocr=True)).max() == 0
