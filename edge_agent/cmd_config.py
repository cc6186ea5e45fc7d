"""`edge-agent config check FILE` and `edge-agent config show [--config FILE]`."""
from __future__ import annotations

import click


def missing_paths(settings) -> list[str]:
    """Files and folders the settings name that do not exist here (they may exist on the
    device the config is meant for, so `config check` warns and `run` fails)."""
    from pathlib import Path

    from edge_agent.settings import password_file_path

    out = []
    if not Path(settings.model.dir).is_dir():
        out.append(f"[model] dir = {settings.model.dir!r}: no such directory")
    m = settings.mqtt
    if m.password_file:
        p = password_file_path(m.password_file, settings.path)
        if not p.is_file():
            out.append(f"[mqtt] password_file = {m.password_file!r}: no such file ({p})")
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(m, key)
        if value and not Path(value).expanduser().is_file():
            out.append(f"[mqtt] {key} = {value!r}: no such file")
    return out


@click.group()
def config():
    """Check a config file, or show the effective configuration (secrets masked)."""


@config.command()
@click.argument("file", type=click.Path(dir_okay=False))
def check(file):
    """Validate FILE (with the EDGE_AGENT_* environment applied); exit 2 naming the bad key.

    Paths that do not exist here (model dir, password file, TLS files) are warnings."""
    from edge_agent.settings import load_settings

    s = load_settings(file, read_secrets=False)
    from edge_agent.redact import redact

    for line in missing_paths(s):
        click.echo(redact(f"edge-agent: warning: {file}: {line}"), err=True)
    cams = ", ".join(f"{c.id}={c.source}" for c in s.cameras)
    broker = s.mqtt.broker or "none (JSON lines on stdout)"
    model = "bundled demo model" if s.model_note else s.model.dir
    click.echo(redact(f"{file}: ok (cameras: {cams}; model: {model}; broker: {broker})"))


@config.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML config file (default: $EDGE_AGENT_CONFIG, or $CONFIGURATION_DIRECTORY/edge-agent.toml).")
def show(config_file):
    """Print the effective configuration (file, then environment, then the defaults `run`
    resolves, the bundled demo included) as TOML; secrets are masked."""
    from edge_agent.settings import resolve, to_toml

    click.echo(to_toml(resolve(config_file)), nl=False)
