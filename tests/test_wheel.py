"""A wheel built with `python -m build`, installed into a fresh venv, runs `edge-agent run --once`
on the demo it carries as package data (edge_agent/demo), away from the source tree."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
from source_build import build_lock

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_wheel_in_a_fresh_venv_runs_the_demo(tmp_path):
    dist = tmp_path / "dist"
    with build_lock():  # tests/source_build.py
        build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
                                str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    wheel = next(dist.glob("edge_agent-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"edge_agent/demo/synthetic/shelf.mp4", "edge_agent/demo/shelf-florence2/config.json",
            "edge_agent/demo/shelf-florence2/onnx/decoder_step_q4.onnx", "edge_agent/demo/tiny-florence2/config.json",
            "edge_agent/demo/tiny-florence2/onnx/vision_encoder.onnx"} <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env["HOME"] = str(tmp_path / "home")  # no user config, a fresh state dir
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                         env=env, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    run = subprocess.run([str(venv / "bin" / "edge-agent"), "run", "--once"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, run.stdout[-2000:]
    payload = json.loads(lines[0])
    jsonschema.validate(payload, json.loads((ROOT / "edge_agent" / "schema" / "result.schema.json").read_text()))
    assert payload["model"]["name"] == "shelf-florence2" and "synthetic" in payload["model"]["note"]
    assert payload["camera_id"] == "shelf"
    assert str(venv) in run.stderr and str(ROOT) not in run.stderr  # the installed demo, not the checkout's
