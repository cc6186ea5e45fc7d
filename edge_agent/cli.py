"""edge-agent command line.  Each command lives in its own module and is imported only
when used, so `edge-agent config show` does not pay for onnxruntime."""
from __future__ import annotations

import importlib
import sys

import click

# name -> "module:attribute" of a click.Command
COMMANDS = {
    "run": "edge_agent.cmd_run:run",
    "detect": "edge_agent.cmd_detect:detect",
    "tiles": "edge_agent.cmd_tiles:tiles",
    "models": "edge_agent.cmd_models:models",
    "config": "edge_agent.cmd_config:config",
    "service": "edge_agent.cmd_service:service",
    "bench": "edge_agent.cmd_bench:bench",
}


class UsageLine(click.ClickException):
    """A click usage error as one line on stderr (exit 2), not click's four-line block."""
    exit_code = 2

    def show(self, file=None):
        click.echo(f"edge-agent: error: {self.format_message()}", err=True, file=file)


def _one_line(err: click.UsageError) -> click.UsageError | UsageLine:
    if isinstance(err, getattr(click.exceptions, "NoArgsIsHelpError", ())):
        return err  # `edge-agent models` with no subcommand: click prints the help
    where = err.ctx.command_path if err.ctx else "edge-agent"
    return UsageLine(f"{err.format_message()} (see '{where} --help')")


class LazyGroup(click.Group):
    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            raise _one_line(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _one_line(e) from None

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-agent")
def cli():
    """Florence-2 shelf monitoring on the edge: capture, tile, detect, read text, publish over MQTT."""


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="edge-agent", standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
