"""edge-agent command line.  Each command lives in its own module and is imported only
when used, so `edge-agent config show` does not pay for onnxruntime.

This is the one place where exceptions become exit statuses and one-line messages
(`exit_codes`, `exit_status`): 2 for usage, config and model errors, 1 for runtime
failures.  Commands and the library packages raise their own exception types and never
choose an exit status."""
from __future__ import annotations

import importlib
import sys

import click

# name -> "module:attribute" of a click.Command
COMMANDS = {
    "run": "edge_agent.cmd_run:run",
    "detect": "edge_agent.cmd_detect:detect",
    "tiles": "edge_agent.cmd_tiles:tiles",
    "zones": "edge_agent.cmd_zones:zones",
    "models": "edge_agent.cmd_models:models",
    "config": "edge_agent.cmd_config:config",
    "service": "edge_agent.cmd_service:service",
    "bench": "edge_agent.cmd_bench:bench",
}


def exit_codes() -> list[tuple[type, int]]:
    """Exception type -> exit status, the first match wins.  Extend here, nowhere else.
    Anything not listed (tiling's ValueErrors included) is a bug once it reaches the CLI:
    it keeps its traceback."""
    from edge_agent.errors import ConfigError, ModelError, RuntimeFailure
    from edge_agent.models import errors as library

    return [(ConfigError, 2), (ModelError, 2), (RuntimeFailure, 1),
            (library.InferenceError, 1), (library.DownloadError, 1), (library.ModelError, 2)]


def exit_status(error: BaseException) -> int | None:
    """The exit status of an error the user sees as one line; None: not a user error."""
    for cls, code in exit_codes():
        if isinstance(error, cls):
            return code
    return None


class UsageLine(click.ClickException):
    """An error as one line on stderr, "edge-agent: error: ...", with its exit status
    (click's usage errors: 2, not click's four-line block)."""
    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code

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
        except click.ClickException:
            raise
        except Exception as e:  # our and the library packages' errors: one line and their exit status
            code = exit_status(e)
            if code is None:
                raise
            raise UsageLine(str(e), code) from None

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
    from edge_agent import telemetry

    telemetry.off_by_default()  # before anything imports onnxruntime; [model] telemetry may allow it
    try:
        cli.main(args=argv, prog_name="edge-agent", standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
