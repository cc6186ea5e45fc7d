"""Logging to stderr, friendly to journald.

Under systemd (`JOURNAL_STREAM` set) lines carry no timestamp (the journal adds its own)
and start with a syslog priority prefix such as `<4>`, which journald turns into the
entry's priority.  Elsewhere lines carry a short local timestamp.
"""
from __future__ import annotations

import logging
import os
import sys

from edge_agent import models
from edge_agent import tiling

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def package_loggers(names=None) -> tuple[str, ...]:
    """The loggers the handler goes on: edge_agent's and the library packages' (their modules log
    under `logging.getLogger(__name__)`).  Named after the packages as imported, so that
    installed as `edge_agent.models`/`edge_agent.tiling` they fall under `edge_agent`'s logger
    and get no second handler."""
    names = names or ("edge_agent", models.__name__, tiling.__name__)
    return tuple(n for n in names if not any(n.startswith(other + ".") for other in names))


class _JournalFormatter(logging.Formatter):
    def format(self, record):
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{super().format(record)}"


def under_journal(env=None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("JOURNAL_STREAM"))


def setup_logging(level: str = "info", stream=None) -> logging.Handler:
    """Configure the loggers of package_loggers() with one handler (idempotent: replaces it)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._edge_agent = True
    if under_journal():
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    for name in package_loggers():
        logger = logging.getLogger(name)
        logger.setLevel(getattr(logging, level.upper(), logging.INFO))
        for h in list(logger.handlers):
            if getattr(h, "_edge_agent", False):
                logger.removeHandler(h)
        logger.addHandler(handler)
        logger.propagate = False
    # Libraries we use log under their own names; keep them quiet unless debugging.
    if level.lower() != "debug":
        for name in ("paho", "urllib3", "PIL"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return handler
