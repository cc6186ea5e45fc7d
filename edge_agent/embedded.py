"""The embedded default: run with nothing configured.

With no model dir set (`--model`, `[model] dir`) and no camera source set (`--camera`,
`--source`, `[camera] source`), with or without a config file, `run`, `detect` and `bench`
use the bundled demo model (`edge_agent/demo/shelf-florence2`: a small Florence-2 trained here
on synthetic shelves, see its README.md) and the synthetic sample video
(`edge_agent/demo/synthetic/shelf.mp4`, drawn by `scripts/make_demo_sample.py` at the scale
the model was trained on), and print JSON lines on stdout when no broker is configured.  It
shows the whole pipeline end to end with a model that sees; on real photos the demo model is
useless, which a warning on stderr and a `note` in the result's model info both say.

The tiny random-weight model (`edge_agent/demo/tiny-florence2`, the tests' parity fixture
`tests/fixtures/tiny-florence2`) and the first sample video (`edge_agent/demo/sample`, the
tests' `tests/fixtures/sample`) stay beside them.

All ship as package data (pyproject.toml), so a checkout, an editable install and an
installed wheel all have them.
"""
from __future__ import annotations

from pathlib import Path

from edge_agent.errors import ConfigError, ModelError

DEMO = Path(__file__).resolve().parent / "demo"
DEMO_MODEL = DEMO / "shelf-florence2"
TINY_MODEL = DEMO / "tiny-florence2"
SAMPLE_VIDEO = DEMO / "synthetic" / "shelf.mp4"
SAMPLE_FRAME = DEMO / "synthetic" / "shelf.jpg"  # the video's first frame

NOTE = "bundled demo model trained on synthetic shelves: useless on real photos"
WARNING = ("edge-agent: warning: no model configured: using the bundled demo model "
           f"({DEMO_MODEL}), trained on SYNTHETIC shelves; it is useless on real photos. "
           "Pass --model DIR (see `edge-agent models pull`) for real results.")


def _bundled(path: Path, what: str) -> Path:
    if not (path / "config.json").is_file():
        raise ModelError(f"no model configured and the bundled {what} {path} is absent (a broken install?); "
                         "pass --model DIR or set [model] dir")
    return path


def demo_model_dir() -> Path:
    """The model `run`, `detect` and `bench` use when none is configured."""
    return _bundled(DEMO_MODEL, "demo model")


def tiny_model_dir() -> Path:
    """The tiny random-weight fixture (fast; its output is noise)."""
    return _bundled(TINY_MODEL, "tiny model")


def sample_video() -> Path:
    if not SAMPLE_VIDEO.is_file():
        raise ConfigError(f"no camera configured and the bundled sample video {SAMPLE_VIDEO} is absent (a broken install?); "
                          "pass --camera N or --source PATH_OR_URL")
    return SAMPLE_VIDEO


def calibration_tiles() -> list | None:
    """The bundled sample frame as two square tiles (its left and right ends), for `models quantize`'s
    int8 calibration (models/calibrate.py); None when it cannot be read (calibrate's stand-in)."""
    try:
        import numpy as np
        from PIL import Image

        frame = np.asarray(Image.open(SAMPLE_FRAME).convert("RGB"))
    except (OSError, ImportError):
        return None
    side = min(frame.shape[:2])
    return [np.ascontiguousarray(frame[:side, :side]), np.ascontiguousarray(frame[:side, -side:])]
