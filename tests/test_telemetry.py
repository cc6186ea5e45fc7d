"""onnxruntime's telemetry files: none under a fresh HOME unless `[model] telemetry = true`.

CI=true alone keeps onnxruntime from writing them (measured), so CI is removed from the
environment of the runs here; the allowed run shows the files would be seen."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ORT_DIR = Path(".cache/Microsoft/DeveloperTools/.onnxruntime")


def run_once(tmp_path: Path, allowed: bool | None) -> tuple[subprocess.CompletedProcess, list[str]]:
    home = tmp_path / f"home-{allowed}"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ORT_DISABLE_TELEMETRY") and not k.startswith("EDGE_AGENT_")}
    env["HOME"] = str(home)
    args = [sys.executable, "-m", "edge_agent", "run", "--once", "--state-dir", str(tmp_path / "state")]
    if allowed is not None:
        from edge_agent import embedded

        cfg = tmp_path / f"c-{allowed}.toml"
        cfg.write_text(f'[model]\ndir = "{embedded.tiny_model_dir()}"\ntelemetry = {str(allowed).lower()}\n'
                       f'[camera]\nsource = "{embedded.sample_video()}"\n')
        args += ["--config", str(cfg)]
    p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    files = sorted(str(f.relative_to(home)) for f in home.rglob("*") if f.is_file())
    return p, files


@pytest.mark.parametrize("allowed", [None, False])
def test_no_telemetry_files_by_default_or_when_off(tmp_path, allowed):
    p, files = run_once(tmp_path, allowed)
    assert p.returncode == 0, p.stderr[-2000:]
    assert files == []


def test_telemetry_key_allows_onnxruntimes_files(tmp_path):
    p, files = run_once(tmp_path, True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert str(ORT_DIR / "deviceid") in files
