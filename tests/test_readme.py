"""The README's two commands stay true: CI runs the second one verbatim, and the first one,
run as written in a clean clone, installs edge-agent and prints a schema-valid result."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n\s*```", text, flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_starts_with_two_commands():
    first, second = readme_commands()
    assert "pip install" in first and "edge-agent run" in first
    assert "pip install" in second and "pytest" in second


def test_ci_runs_exactly_the_readme_test_command():
    _, second = readme_commands()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert second in ci_lines


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed to make a clean clone")
def test_first_command_in_a_clean_clone(tmp_path):
    first, _ = readme_commands()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "VIRTUAL_ENV"))}
    env["HOME"] = str(tmp_path / "home")  # no user config, a fresh state dir
    proc = subprocess.run(["bash", "-c", first], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout[-2000:]
    payload = json.loads(lines[0])
    schema = json.loads((ROOT / "edge_agent" / "schema" / "result.schema.json").read_text())
    jsonschema.validate(payload, schema)
    assert payload["model"]["name"] == "shelf-florence2"
    assert "synthetic" in payload["model"]["note"]
    assert "synthetic" in proc.stderr.lower()
