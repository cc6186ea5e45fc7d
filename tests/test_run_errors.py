"""`edge-agent run` with a bad model or source: one error line on stderr, exit 2, nothing started."""
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).parent / "fixtures" / "sample" / "shelf.mp4"
TINY = Path(__file__).parent / "fixtures" / "tiny-florence2"


def run(tmp_path, *args):
    cmd = [sys.executable, "-m", "edge_agent", "run", "--once", "--state-dir", str(tmp_path / "state"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("args, names", [
    (["--model", "/nonexistent-model", "--source", str(SAMPLE)], "/nonexistent-model: model directory not found"),
    (["--model", str(TINY), "--source", "/nonexistent.mp4"], "/nonexistent.mp4"),
])
def test_bad_model_or_source_is_one_line_exit_2(tmp_path, args, names):
    res = run(tmp_path, *args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("edge-agent: error:") and names in lines[0], res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
