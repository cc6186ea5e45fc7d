"""Logging to stderr, friendly to journald.

Under systemd (`JOURNAL_STREAM` set) lines carry no timestamp (the journal adds its own)
and start with a syslog priority prefix such as `<4>`, which journald turns into the
entry's priority.  Elsewhere lines carry a short local timestamp.
"""
from __future__ import annotations

import logging
import os
import sys
import time

LOGGER = "edge_agent"
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record):
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{super().format(record)}"


def under_journal(env=None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("JOURNAL_STREAM"))


def setup_logging(level: str = "info", stream=None) -> logging.Logger:
    """Configure the `edge_agent` logger (idempotent: replaces its handler)."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    for h in list(logger.handlers):
        if getattr(h, "_edge_agent", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._edge_agent = True
    if under_journal():
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.propagate = False
    # Libraries we use log under their own names; keep them quiet unless debugging.
    if level.lower() != "debug":
        for name in ("paho", "urllib3", "PIL"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return logger


def get(name: str) -> logging.Logger:
    """A child of the edge_agent logger: get("capture") -> edge_agent.capture."""
    return logging.getLogger(f"{LOGGER}.{name}" if not name.startswith(LOGGER) else name)


class Progress:
    """Log "what: i/n" lines at most every `every` seconds, for long work."""

    def __init__(self, what: str, total: int | None, logger: logging.Logger | None = None, every: float = 5.0):
        self.what, self.total, self.every = what, total, every
        self.log = logger or get("progress")
        self.done = 0
        self.t0 = self._last = time.monotonic()

    def step(self, n: int = 1, detail: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every or (self.total and self.done >= self.total):
            self._last = now
            of = f"/{self.total}" if self.total else ""
            rate = self.done / max(now - self.t0, 1e-9)
            self.log.info("%s: %d%s (%.2f/s)%s", self.what, self.done, of, rate, f" {detail}" if detail else "")
