"""`--source picamera2:N`, the Raspberry Pi Camera Module (issue 14, item 6).

picamera2 needs libcamera and a Pi, so it cannot be installed here.  What is tested:
- without picamera2, the run exits 2 before loading anything, with one line saying what to
  install (python3-picamera2, a venv with --system-site-packages);
- a malformed `picamera2:x` is exit 2 naming the value;
- the adapter (edge_agent/picam.py) against a stand-in module written to picamera2's
  documented API (Picamera2(n), create_video_configuration(main={...}), configure, start,
  capture_array("main"), stop, close): a frame reaches a result, and a camera number that
  does not exist is given up after open_timeout with what to check.  The stand-in is a test
  double of the API, not the library: on a Pi the real one is used.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "fixtures" / "sample" / "shelf.jpg"

STANDIN = textwrap.dedent('''
    """Stand-in for picamera2 (tests only): its documented API, frames from one image."""
    import os

    import cv2


    class Picamera2:
        def __init__(self, camera_num=0):
            if camera_num != 0:
                raise IndexError("list index out of range")  # what picamera2 raises for a missing camera
            self.config = None

        def create_video_configuration(self, main=None, **kw):
            return {"main": dict(main or {})}

        def configure(self, config):
            assert config["main"]["format"] == "RGB888"
            self.config = config

        def start(self):
            assert self.config is not None

        def capture_array(self, name="main"):
            return cv2.imread(os.environ["PICAMERA2_STANDIN_IMAGE"])  # RGB888 is B, G, R in memory

        def stop(self):
            pass

        def close(self):
            pass
''')


def run(tmp_path, source, pythonpath=None, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_") and k != "NOTIFY_SOCKET"}
    env.update({"EDGE_AGENT_AGENT_STATE_DIR": str(tmp_path / "state"), "EDGE_AGENT_CAMERA_SOURCE": source,
                "EDGE_AGENT_MODEL_MAX_NEW_TOKENS": "8", **extra})
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "edge_agent", "run", "--once", "--no-tiling"], capture_output=True,
                          text=True, timeout=180, env=env, cwd=tmp_path)


def test_without_picamera2_exit_2_says_what_to_install(tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import picamera2"], capture_output=True)
    if probe.returncode == 0:
        import pytest

        pytest.skip("picamera2 is installed here")
    res = run(tmp_path, "picamera2:0")
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("edge-agent: warning: no model")]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("edge-agent: error: camera picam0: source 'picamera2:0' needs the picamera2 module")
    assert "sudo apt install python3-picamera2" in lines[0] and "--system-site-packages" in lines[0]
    assert "loaded in" not in res.stderr and res.stdout == ""


def test_a_malformed_picamera2_source_is_exit_2(tmp_path):
    res = run(tmp_path, "picamera2:front")
    assert res.returncode == 2 and "picamera2:front" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_the_adapter_delivers_frames_through_the_picamera2_api(tmp_path):
    (tmp_path / "standin").mkdir()
    (tmp_path / "standin" / "picamera2.py").write_text(STANDIN)
    res = run(tmp_path, "picamera2:0", pythonpath=tmp_path / "standin", PICAMERA2_STANDIN_IMAGE=str(SAMPLE))
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["camera_id"] == "picam0" and result["frame"] == {"width": 1280, "height": 720}


def test_a_missing_pi_camera_is_given_up_after_open_timeout(tmp_path):
    (tmp_path / "standin").mkdir()
    (tmp_path / "standin" / "picamera2.py").write_text(STANDIN)
    res = run(tmp_path, "picamera2:1", pythonpath=tmp_path / "standin", PICAMERA2_STANDIN_IMAGE=str(SAMPLE),
              EDGE_AGENT_CAMERA_OPEN_TIMEOUT="3")
    assert res.returncode == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "no frame from Pi camera 1 (picamera2) within open_timeout 3 s" in last and "rpicam-hello" in last
    assert "next try in" in res.stderr
