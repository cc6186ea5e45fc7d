"""One resolution of defaults (issue 14, item 3): a config file that sets no source and no model
runs the bundled demo, alike in `run`, `detect` and `bench`, and `config show` prints what they use."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edge_agent import embedded

CONFIG = "[agent]\ninterval = 0.0\n[mqtt]\nbroker = \"\"\n"  # sets neither a source nor a model


def edge_agent(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(HOME=str(tmp_path / "home"), EDGE_AGENT_MODEL_MAX_NEW_TOKENS="8")
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "only-agent.toml"
    path.write_text(CONFIG)
    return path


def test_config_show_prints_the_demo_that_run_uses(tmp_path, config):
    shown = edge_agent(tmp_path, "config", "show", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert f'dir = "{embedded.DEMO_MODEL}"' in shown.stdout and f'source = "{embedded.SAMPLE_VIDEO}"' in shown.stdout
    run = edge_agent(tmp_path, "run", "--once", "--config", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("{")))
    assert result["camera_id"] == "shelf" and result["model"]["name"] == "shelf-florence2"
    assert "synthetic" in result["model"]["note"] and "SYNTHETIC" in run.stderr


def test_detect_and_bench_use_the_same_demo(tmp_path, config):
    image = tmp_path / "shelf.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.full((120, 160, 3), 90, np.uint8))
    detect = edge_agent(tmp_path, "detect", str(image), "--config", str(config), "--json")
    assert detect.returncode == 0, detect.stderr[-3000:]
    out = json.loads(detect.stdout)
    assert out["model"]["name"] == "shelf-florence2" and "synthetic" in out["model"]["note"] and "SYNTHETIC" in detect.stderr
    bench = edge_agent(tmp_path, "bench", "--config", str(config), "--quick", "--tiles", "1", "--tokens", "2", "--json")
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert json.loads(bench.stdout.strip().splitlines()[-1])["model"]["name"] == "shelf-florence2"
    assert "SYNTHETIC" in bench.stderr
