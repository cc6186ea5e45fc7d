"""`edge-agent detect IMAGE` through the tiny Florence-2 model: --json, --raw, --draw, errors."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_agent.cli import cli

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "tests" / "fixtures" / "tiny-florence2"


def invoke(*args):
    return CliRunner().invoke(cli, ["detect", *args], env={"EDGE_AGENT_CONFIG": None}, catch_exceptions=False)


def test_json_raw_and_draw(tmp_path):
    img = tmp_path / "tag.png"
    cv2.imwrite(str(img), np.full((240, 900, 3), 200, np.uint8))  # wider than one tile: 2 tiles
    out = tmp_path / "drawn.jpg"
    r = invoke(str(img), "--model", str(MODEL), "--max-new-tokens", "24", "--num-beams", "1", "--json", "--raw",
               "--draw", str(out))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert (doc["image"], doc["width"], doc["height"]) == (str(img), 900, 240)
    assert doc["model"]["name"] == "tiny-florence2" and doc["model"]["num_beams"] == 1
    assert isinstance(doc["od"]["detections"], list) and isinstance(doc["ocr"]["lines"], list)
    for d in doc["od"]["detections"]:
        assert set(d) == {"label", "box", "score"} and len(d["box"]) == 4
    # issue 2: each task object carries "raw", one generated text per model pass (tile), in pass order
    tiles = doc["tiles"]["count"]
    assert tiles >= 2 and "raw" not in doc
    for task in ("od", "ocr"):
        raw = doc[task]["raw"]
        assert len(raw) == tiles and all(isinstance(t, str) and t for t in raw)
    drawn = cv2.imread(str(out))
    assert drawn is not None and drawn.shape == (240, 900, 3)


def test_task_od_no_tiling_plain_output(tmp_path):
    img = tmp_path / "x.jpg"
    cv2.imwrite(str(img), np.full((300, 1000, 3), 90, np.uint8))
    r = invoke(str(img), "--model", str(MODEL), "--task", "od", "--no-tiling", "--max-new-tokens", "16", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert "od" in doc and "ocr" not in doc and "raw" not in doc and "raw" not in doc["od"] and doc["tiles"]["count"] == 1


def test_unreadable_image_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_text("this is not a picture")
    r = invoke(str(bad), "--model", str(MODEL))
    assert r.exit_code == 2 and r.output.count("\n") == 1 and str(bad) in r.output
    r = invoke(str(tmp_path / "absent.png"))
    assert r.exit_code == 2 and "absent.png" in r.output


def test_draw_into_a_missing_directory_fails_before_loading_the_model(tmp_path, monkeypatch):
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.full((64, 64, 3), 90, np.uint8))
    import edge_agent.model

    monkeypatch.setattr(edge_agent.model, "build_engine", lambda s: pytest.fail("model loaded before the --draw check"))
    target = tmp_path / "missing-dir" / "out.jpg"
    r = invoke(str(img), "--model", str(MODEL), "--draw", str(target))
    assert r.exit_code == 2 and r.output.strip().splitlines() == [f"edge-agent: error: --draw {target}: cannot write the image there (directory missing)"]
