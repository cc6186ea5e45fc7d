"""Usage errors (bad option value, missing argument, unknown command) are one line, exit 2."""
import pytest
from click.testing import CliRunner

from edge_agent.cli import cli


@pytest.mark.parametrize("argv, names", [
    (["run", "--interval", "-1"], ["--interval", "-1", "edge-agent run --help"]),
    (["tiles", "x.jpg", "--tile-size", "0"], ["--tile-size", "0"]),
    (["models", "quantize"], ["DIR", "edge-agent models quantize --help"]),
    (["models", "nosuch"], ["nosuch"]),
    (["nosuch"], ["nosuch"]),
    (["run", "--password", "x"], ["--password"]),
])
def test_usage_error_is_one_line_exit_2(argv, names):
    res = CliRunner().invoke(cli, argv, prog_name="edge-agent")
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("edge-agent: error: "), res.output
    assert all(n in lines[0] for n in names)


def test_group_without_subcommand_still_prints_help():
    res = CliRunner().invoke(cli, ["models"], prog_name="edge-agent")
    assert "Commands:" in res.output and "quantize" in res.output
