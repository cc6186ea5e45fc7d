"""The errors models/ raises on purpose.  Plain exceptions: they depend on nothing (no click, no
edge_agent); their message is one line fit for a user, naming the file, setting or value.
Which exit status each one means is the CLI's business (edge_agent/errors.py).

Anything else escaping models/ (a numpy or onnxruntime exception outside Florence2Engine.run,
an assertion) is a bug, not a user error."""
from __future__ import annotations


class ModelError(Exception):
    """Base class.  Raised as such for problems of the environment (an optional package missing,
    a destination that cannot be written)."""


class ModelDirError(ModelError):
    """A model directory, or a file in it, is missing, unreadable or not what the engine needs.
    The message names the file."""


class ModelSettingError(ModelError, ValueError):
    """A setting or argument the engine does not accept: an unknown task, provider, variant,
    model name, dtype or generation setting, or an out-of-range value.  The message names it.
    A ValueError too, so that an options class may let it through as its own validation error."""


class InferenceError(ModelError):
    """A loaded model failed while running (onnxruntime at run time)."""


class DownloadError(ModelError):
    """A download failed: the Hub is unreachable, offline mode, or the repository is missing or gated."""
