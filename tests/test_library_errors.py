"""The one map from errors onto exit statuses (edge_agent/cli.py exit_codes), the library
packages' included, and its use by the CLI: the same one-line message, no traceback."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_agent.cli import cli, exit_status
from edge_agent.errors import ConfigError, RuntimeFailure
from edge_agent.models.errors import DownloadError, InferenceError, ModelDirError, ModelError, ModelSettingError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.make_tiny_model import DEFAULT_OUT as TINY  # noqa: E402


@pytest.mark.parametrize("error,status", [(InferenceError("inference failed: Fail: x"), 1),
                                          (DownloadError("repo: cannot download: offline"), 1),
                                          (ModelDirError("dir/onnx/a.onnx: file missing"), 2),
                                          (ModelSettingError("unknown task 'seg'"), 2),
                                          (ModelError("huggingface_hub is not installed"), 2)])
def test_each_library_error_maps_to_its_exit_status(error, status):
    assert exit_status(error) == status


def test_edge_agents_own_errors_map_too_and_other_exceptions_are_not_user_errors():
    assert exit_status(ConfigError("x")) == 2 and exit_status(RuntimeFailure("x")) == 1
    assert exit_status(ValueError("tiling: overlap 2.5")) is None and exit_status(KeyError("x")) is None


def test_a_library_error_escaping_a_command_is_one_line(tmp_path):
    (tmp_path / "onnx").mkdir()
    r = CliRunner().invoke(cli, ["bench", "--model", str(tmp_path), "--quick"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-agent: error: ") and "file missing" in lines[0]
    r = CliRunner().invoke(cli, ["bench", "--model", str(TINY), "--variant", "int4", "--quick"])
    lines = r.output.strip().splitlines()  # checked by [model] variant's own class first, naming the flag
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("edge-agent: error: command line --variant = 'int4'")
