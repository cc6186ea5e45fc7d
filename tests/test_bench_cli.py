"""`edge-agent bench` on the tiny fixture model: the table, JSON, progress on stderr, clear errors."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.make_tiny_model import DEFAULT_OUT as TINY  # noqa: E402

from edge_agent.bench import (QUICK as QUICK_WORK, FrameWorkload, StageClock, frame_tiles,  # noqa: E402
                               measure_engine, synthetic_shelf, task_settings)
from edge_agent.cli import cli  # noqa: E402

QUICK = ["--model", str(TINY), "--variant", "fp32", "--quick", "--tiles", "2", "--tokens", "6"]


def test_bench_prints_stage_table_and_progress():
    r = CliRunner().invoke(cli, ["bench", *QUICK, "--decode"])
    assert r.exit_code == 0, r.output + str(r.exception)
    out = r.stdout
    assert "workload: 1920x1080 frame, 2 tiles at 768, <OD> 6 + <OCR_WITH_REGION> 3" in out
    from edge_agent.models.cpu import int8_isa, u8s8_saturates

    assert (f"int8 instructions: {int8_isa()}; int8 decoders' activations: "
            f"{7 if u8s8_saturates() else 8}-bit") in out  # issue 17: the ISA and what it makes the engine do
    header = next(line for line in out.splitlines() if "vision s" in line)
    for col in ("preproc s", "reload s", "encoder s", "decode ms/step", "frame s", "peak RSS MB", "decode b2 od"):
        assert col in header
    row = next(line for line in out.splitlines() if line.startswith("edge-agent fp32"))
    assert len(row.split()) == 2 + 10
    assert row.split()[3] == "0.00"  # reload s: every graph stays loaded by default (load_per_stage off)
    assert "bench: frame: 2 tiles, 4 sequences, 6 batched steps" in r.stderr
    for line in ("bench: vision 2/2", "bench: encoder 1/1", "bench: decode 1/1"):  # the engine's own progress
        assert line in r.stderr.splitlines()
    assert float(out.strip().splitlines()[-1].split()[-1]) > 0


def test_bench_json():
    r = CliRunner().invoke(cli, ["bench", *QUICK, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout.strip().splitlines()[-1])
    assert data["model"]["variant"] == "fp32"
    from edge_agent.models.cpu import int8_isa

    assert data["int8_isa"] == int8_isa()  # the instruction set that decides int8's speed (issue 17)
    assert data["row_activation_bits"] in (7, 8)
    for key in ("vision_s", "encoder_s", "decode_s", "frame_s", "peak_rss_mb"):
        assert data[key] > 0
    # the stages are the engine's own progress reports inside one engine.run: they add up to the frame
    parts = data["vision_s"] + data["encoder_s"] + data["decode_s"] + data["parse_s"]
    assert abs(data["frame_s"] - parts) < 1e-6


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


def test_stage_clock_charges_each_report_to_its_stage():
    ticks = iter([10.0, 11.0, 11.5, 14.0, 14.25])
    lines = []
    clock = StageClock(lines.append, clock=lambda: next(ticks))  # started at 10.0
    clock("vision", 1, 2)
    clock("vision", 2, 2)
    clock("decode", 1, 1)
    clock("load", 1, 0)
    assert clock.times == {"vision": 1.5, "decode": 2.5, "load": 0.25}
    assert (clock.started, clock.last) == (10.0, 14.25)
    assert lines == ["vision 1/2", "vision 2/2", "decode 1/1", "load 1"]


def test_bench_measures_what_run_returns():
    """measure_engine goes through engine.run: its sequences are the ones run gives for the same
    tiles and settings, and the clock saw every stage of that run."""
    from edge_agent.models.engine import EngineOptions, Florence2Engine

    work = QUICK_WORK
    clock = StageClock()
    engine = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1, max_new_tokens=work.od_tokens,
                                           progress=clock))
    frame = synthetic_shelf(work.width, work.height)
    res = measure_engine(engine, clock, frame, work, progress=lambda msg: None)
    assert set(clock.times) == {"vision", "encoder", "decode"}
    outs = engine.run(frame_tiles(frame, work), ("od", "ocr"), settings=task_settings(engine, work))
    assert res["token_ids"] == [list(o[t].token_ids) for o in outs for t in ("od", "ocr")]
    assert [len(ids) for ids in res["token_ids"]] == [1 + work.od_tokens, 1 + work.ocr_tokens] * work.tiles


def test_peak_rss_is_the_process_own_not_its_parents():
    """A child started by a process that has touched 600 MB reports its own peak: getrusage's
    ru_maxrss carries the parent's across fork and exec on Linux (benchmarks/variants.py's first
    run reported its preparation's 3.3 GB as every mix's peak)."""
    import subprocess

    import pytest

    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc/self/status here: peak_rss_mb falls back to ru_maxrss")
    parent = ("import subprocess, sys\n"
              "a = bytearray(600 * 2**20)\n"
              "a[::4096] = b'\\x01' * len(a[::4096])\n"
              "code = 'import resource; from edge_agent.bench import peak_rss_mb; "
              "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)'\n"
              "print(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout)\n")
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    own, maxrss = float(out[0]), float(out[1])
    print(f"child's peak: {own:.0f} MB (VmHWM); its ru_maxrss: {maxrss:.0f} MB")
    assert 0 < own < 300, (own, maxrss)
