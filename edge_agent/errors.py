"""edge_agent's own error types: plain exceptions that depend on nothing.

`edge_agent.cli.exit_status` is the one place that turns these (and the library packages'
errors) into an exit status and a one-line message: 2 for usage, config or model errors,
1 for runtime failures.
"""
from __future__ import annotations


class EdgeAgentError(Exception):
    """Base of edge_agent's errors; the message is the one line the user sees."""


class ConfigError(EdgeAgentError):
    """Bad config file, key, value or input file.  The message names the file/key and the value."""


class ModelError(EdgeAgentError):
    """Missing or mismatched model file.  The message names the file."""


class RuntimeFailure(EdgeAgentError):
    """The agent could not go on (exit 1)."""
