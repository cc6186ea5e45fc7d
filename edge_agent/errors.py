"""Errors that carry an exit status.  2: usage, config or model error; 1: runtime failure.

Raise these anywhere; the CLI turns them into one line on stderr and the exit status."""
from __future__ import annotations

import click


class EdgeAgentError(click.ClickException):
    exit_code = 1

    def show(self, file=None):
        click.echo(f"edge-agent: error: {self.format_message()}", err=True, file=file)


class ConfigError(EdgeAgentError):
    """Bad config file, key or value.  The message names the file/key and the value."""
    exit_code = 2


class ModelError(EdgeAgentError):
    """Missing or mismatched model file.  The message names the file."""
    exit_code = 2


class RuntimeFailure(EdgeAgentError):
    exit_code = 1
