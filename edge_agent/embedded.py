"""The embedded default: run with nothing configured.

With no model dir set (`--model`, `[model] dir`) and no camera source set (`--camera`,
`--source`, `[camera] source`), with or without a config file, `run`, `detect` and `bench`
use the tiny random-weight Florence-2 (`edge_agent/demo/tiny-florence2`, which the tests
use as `tests/fixtures/tiny-florence2`) and the sample shelf video
(`edge_agent/demo/sample/shelf.mp4`), and print JSON lines on stdout when no broker is
configured.  It shows the whole pipeline working; the tiny model's detections are noise,
which a warning on stderr and a `note` in the result's model info both say.

Both ship as package data (pyproject.toml), so a checkout, an editable install and an
installed wheel all have them.
"""
from __future__ import annotations

from pathlib import Path

from edge_agent.errors import ConfigError, ModelError

DEMO = Path(__file__).resolve().parent / "demo"
TINY_MODEL = DEMO / "tiny-florence2"
SAMPLE_VIDEO = DEMO / "sample" / "shelf.mp4"

NOTE = "bundled tiny random-weight demo model: detections are noise"
WARNING = ("edge-agent: warning: no model configured: using the bundled tiny random-weight demo model "
           f"({TINY_MODEL}); its detections are NOISE. Pass --model DIR (see `edge-agent models pull`) for real results.")


def tiny_model_dir() -> Path:
    if not (TINY_MODEL / "config.json").is_file():
        raise ModelError(f"no model configured and the bundled demo model {TINY_MODEL} is absent (a broken install?); "
                         "pass --model DIR or set [model] dir")
    return TINY_MODEL


def sample_video() -> Path:
    if not SAMPLE_VIDEO.is_file():
        raise ConfigError(f"no camera configured and the bundled sample video {SAMPLE_VIDEO} is absent (a broken install?); "
                          "pass --camera N or --source PATH_OR_URL")
    return SAMPLE_VIDEO

