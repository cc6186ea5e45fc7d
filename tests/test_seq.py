"""Persistent per-camera `seq` (issue 14, item 4): edge_agent/seqstore.py, and a real
`edge-agent run` killed with SIGKILL mid-run and started again: no seq is ever repeated."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge_agent.seqstore import SeqStore

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "fixtures" / "sample" / "shelf.jpg"


def test_take_counts_per_camera_and_survives_a_new_store(tmp_path):
    s = SeqStore(tmp_path)
    assert [s.take("a"), s.take("a"), s.take("b"), s.take("a")] == [0, 1, 0, 2]
    again = SeqStore(tmp_path)
    assert again.take("a") == 3 and again.take("b") == 1 and again.take("new") == 0
    assert json.loads((tmp_path / "seq.json").read_text()) == {"a": 4, "b": 2, "new": 1}
    assert not list(tmp_path.glob(".seq.json.*"))  # no temporary file left behind


def test_a_damaged_file_is_set_aside_and_numbering_restarts(tmp_path, caplog):
    (tmp_path / "seq.json").write_text('{"a": 5')
    s = SeqStore(tmp_path)
    assert s.take("a") == 0
    assert "unreadable" in caplog.text
    assert len(list(tmp_path.glob("seq.json.corrupt-*"))) == 1


def test_an_unwritable_state_dir_numbers_on_in_memory(tmp_path, caplog):
    ro = tmp_path / "ro"
    ro.mkdir()
    s = SeqStore(ro)
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores the mode bits
            import pytest

            pytest.skip("running as root: a read-only directory is still writable")
        assert [s.take("a"), s.take("a")] == [0, 1]
        assert caplog.text.count("cannot write") == 1
    finally:
        ro.chmod(0o700)


def read_results(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_seq_never_repeats_across_sigkill(tmp_path):
    """A looping image source, results on stdout; SIGKILL after the second result, then a
    bounded second run: its seqs start after every seq the first one handed out."""
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLE, images / "a.jpg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_") and k != "NOTIFY_SOCKET"}
    env.update({"EDGE_AGENT_CAMERA_LOOP": "true", "EDGE_AGENT_CAMERA_SOURCE": str(images),
                "EDGE_AGENT_CAMERA_ID": "shelf", "EDGE_AGENT_AGENT_INTERVAL": "0",
                "EDGE_AGENT_AGENT_STATE_DIR": str(tmp_path / "state"), "EDGE_AGENT_MODEL_MAX_NEW_TOKENS": "8"})
    cmd = [sys.executable, "-m", "edge_agent", "run", "--no-tiling"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while len(lines) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("{"):
                lines.append(line)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = [json.loads(line) for line in lines]
    assert [r["seq"] for r in first] == [0, 1]
    reserved = json.loads((tmp_path / "state" / "seq.json").read_text())["shelf"]
    assert reserved >= 2  # what the killed run had reserved (a frame in flight counts)

    res = subprocess.run([*cmd, "--max-frames", "2"], capture_output=True, text=True, timeout=180, env=env,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    second = [r["seq"] for r in read_results(res.stdout)]
    assert second == [reserved, reserved + 1], (reserved, second)
