"""onnxruntime's telemetry: off unless `[model] telemetry = true`.

Measured here (onnxruntime 1.32.0, Linux x86_64, a fresh $HOME, CI unset): creating a
session writes `$HOME/.cache/Microsoft/DeveloperTools/.onnxruntime/deviceid` (a persistent
device id) and `onnxruntime.db` (a telemetry events database).

- `onnxruntime.disable_telemetry_events()`, called before the session: both files are
  still written.
- `ORT_DISABLE_TELEMETRY=1` in the environment before onnxruntime is imported: nothing is
  written.  Set after the import: both files are written (it is read when onnxruntime loads).
- `CI=true` in the environment: nothing is written either (onnxruntime keeps out of CI
  runs), so the test of this unsets CI.

So the CLI sets ORT_DISABLE_TELEMETRY=1 at start (unless the environment already sets it),
and `apply` takes it away again, before onnxruntime is imported, when the operator allows
telemetry.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

ENV = "ORT_DISABLE_TELEMETRY"
_set_by_us = False


def off_by_default() -> None:
    """At process start: telemetry off unless the environment says otherwise."""
    global _set_by_us
    if ENV not in os.environ:
        os.environ[ENV] = "1"
        _set_by_us = True


def apply(allowed: bool) -> None:
    """Before onnxruntime is imported: allow its telemetry, or keep it off."""
    global _set_by_us
    if allowed and _set_by_us:
        os.environ.pop(ENV, None)
        _set_by_us = False
    elif not allowed and ENV not in os.environ:
        os.environ[ENV] = "1"
        _set_by_us = True
    if "onnxruntime" in sys.modules:
        log.debug("onnxruntime was imported before the telemetry setting (%s) was applied",
                  "allowed" if allowed else "off")
