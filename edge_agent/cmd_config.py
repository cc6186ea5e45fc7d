"""`edge-agent config check FILE` and `edge-agent config show [--config FILE]`."""
from __future__ import annotations

import click


@click.group()
def config():
    """Check a config file, or show the effective configuration (secrets masked)."""


@config.command()
@click.argument("file", type=click.Path(dir_okay=False))
def check(file):
    """Validate FILE (with the EDGE_AGENT_* environment applied); exit 2 naming the bad key."""
    from edge_agent.settings import load_settings

    s = load_settings(file)
    cams = ", ".join(f"{c.id}={c.source}" for c in s.cameras)
    broker = s.mqtt.broker or "none (JSON lines on stdout)"
    click.echo(f"{file}: ok (cameras: {cams}; model: {s.model.dir or 'bundled demo model'}; broker: {broker})")


@config.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML config file (default: $EDGE_AGENT_CONFIG, or $CONFIGURATION_DIRECTORY/edge-agent.toml).")
def show(config_file):
    """Print the effective configuration (file, then environment) as TOML; secrets are masked."""
    from edge_agent.settings import config_path, load_settings, to_toml

    click.echo(to_toml(load_settings(config_path(config_file))), nl=False)
