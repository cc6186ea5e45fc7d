"""`edge-agent bench` on the tiny fixture model: the table, JSON, progress on stderr, clear errors."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.make_tiny_model import DEFAULT_OUT as TINY  # noqa: E402

from edge_agent.bench import FrameWorkload, frame_tiles, synthetic_shelf  # noqa: E402
from edge_agent.cli import cli  # noqa: E402

QUICK = ["--model", str(TINY), "--variant", "fp32", "--quick", "--tiles", "2", "--tokens", "6"]


def test_bench_prints_stage_table_and_progress():
    r = CliRunner().invoke(cli, ["bench", *QUICK, "--decode"])
    assert r.exit_code == 0, r.output + str(r.exception)
    out = r.stdout
    assert "workload: 1920x1080 frame, 2 tiles at 768, <OD> 6 + <OCR_WITH_REGION> 3" in out
    header = next(line for line in out.splitlines() if "vision s" in line)
    for col in ("preproc s", "encoder s", "decode ms/step", "frame s", "peak RSS MB", "decode b2 od"):
        assert col in header
    row = next(line for line in out.splitlines() if line.startswith("edge-agent fp32"))
    assert len(row.split()) == 2 + 9
    assert "bench: vision: 2 tiles" in r.stderr and "bench: decode: 4 sequences, 6 batched steps" in r.stderr
    assert float(out.strip().splitlines()[-1].split()[-1]) > 0


def test_bench_json():
    r = CliRunner().invoke(cli, ["bench", *QUICK, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout.strip().splitlines()[-1])
    assert data["model"]["variant"] == "fp32"
    for key in ("vision_s", "encoder_s", "decode_s", "frame_s", "peak_rss_mb"):
        assert data[key] > 0
    assert data["frame_s"] >= data["vision_s"] + data["decode_s"]


def test_bench_bad_model_dir_and_image_exit_2(tmp_path):
    r = CliRunner().invoke(cli, ["bench", "--model", str(tmp_path / "nope"), "--quick"])
    assert r.exit_code == 2 and "nope" in r.output
    assert r.output.strip().splitlines() == [f"edge-agent: error: {tmp_path / 'nope'}: model directory not found"]
    r = CliRunner().invoke(cli, ["bench", *QUICK, "--image", str(tmp_path / "x.jpg")])
    assert r.exit_code == 2 and "x.jpg" in r.output


def test_frame_tiles_follow_the_plan():
    work = FrameWorkload()
    frame = synthetic_shelf()
    assert frame.shape == (1080, 1920, 3) and frame.dtype == np.uint8
    tiles = frame_tiles(frame, work)
    assert len(tiles) == 6 and all(t.shape == (768, 768, 3) for t in tiles)
    assert np.array_equal(tiles[1], frame[0:768, 576:1344])
    assert len(frame_tiles(frame, FrameWorkload(tiles=8))) == 8  # more tiles than the plan: repeats
