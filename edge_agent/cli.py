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


class LazyGroup(click.Group):
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
