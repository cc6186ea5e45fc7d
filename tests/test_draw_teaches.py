"""Pictures that teach (issue 14, item 8): `--draw` says where it wrote the picture, and a
picture with nothing found says so on the image, with the demo model's note when it applies."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from edge_agent.cli import cli
from edge_agent.draw import annotate, caption
from edge_agent.embedded import NOTE
from edge_agent.tiling.regions import Regions

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "fixtures" / "sample" / "shelf.jpg"


def changed_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.any(a != b, axis=(1, 2)))


def test_an_empty_drawing_says_so_and_adds_the_note():
    img = np.full((480, 640, 3), 180, np.uint8)
    empty = annotate(img, Regions.empty(), Regions.empty(ocr=True))
    noted = annotate(img, Regions.empty(), Regions.empty(ocr=True), NOTE)
    assert img.max() == 180  # the input is untouched
    rows_empty, rows_noted = changed_rows(img, empty), changed_rows(img, noted)
    assert len(rows_empty) and rows_empty.max() < img.shape[0] // 4  # a banner at the top
    assert rows_noted.max() > rows_empty.max()  # the note is a further line below it
    assert np.array_equal(empty, caption(img, ["no detections, no text found"]))


def test_a_drawing_with_detections_has_no_empty_caption():
    img = np.full((480, 640, 3), 180, np.uint8)
    od = Regions(np.array([[300.0, 300, 400, 400]]), np.array([0.9]), ("bottle",))
    drawn = annotate(img, od, Regions.empty(ocr=True), NOTE)
    assert len(changed_rows(img, drawn)) and changed_rows(img, drawn).min() >= 250  # the box and its label only


def invoke(*args):
    return CliRunner().invoke(cli, list(args), env={"EDGE_AGENT_CONFIG": None}, catch_exceptions=False)


def test_detect_draw_prints_the_path_and_marks_an_empty_result(tmp_path):
    out = tmp_path / "drawn.jpg"
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 200, np.uint8))
    r = invoke("detect", str(blank), "--max-new-tokens", "8", "--num-beams", "1", "--no-tiling", "--draw", str(out))
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.stdout.splitlines()
    drawn = cv2.imread(str(out))
    assert drawn is not None and drawn.shape == (240, 320, 3)
    objects = [ln for ln in r.stdout.splitlines() if ln.startswith("objects (")]
    text = [ln for ln in r.stdout.splitlines() if ln.startswith("text (")]
    if objects == ["objects (0):"] and text == ["text (0):"]:  # what the tiny model usually finds
        rows = changed_rows(cv2.imread(str(blank)), drawn)
        assert len(rows) and rows.min() < 240 // 4, "an empty result must be said on the picture"


def test_detect_draw_with_json_keeps_stdout_one_object(tmp_path):
    out = tmp_path / "drawn.png"
    r = invoke("detect", str(SAMPLE), "--max-new-tokens", "8", "--num-beams", "1", "--no-tiling", "--json",
               "--draw", str(out))
    assert r.exit_code == 0, r.output
    json.loads(r.stdout)
    assert f"wrote {out}" in r.stderr.splitlines() and out.is_file()


def test_tiles_draw_prints_the_path(tmp_path):
    out = tmp_path / "plan.jpg"
    r = invoke("tiles", str(SAMPLE), "--draw", str(out))
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.stdout.splitlines() and out.is_file()
    r = invoke("tiles", str(SAMPLE), "--json", "--draw", str(out))
    assert r.exit_code == 0 and json.loads(r.stdout)["tiles"] and f"wrote {out}" in r.stderr
