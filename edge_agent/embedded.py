"""The embedded default: run with nothing configured.

`edge-agent run` with no config file, no `--model` (and no `[model] dir`) and no source
uses the tiny random-weight Florence-2 that ships with the repository's tests
(`tests/fixtures/tiny-florence2`) and the bundled sample shelf video
(`tests/fixtures/sample/shelf.mp4`), and prints JSON lines on stdout when no broker is
configured.  It shows the whole pipeline working; the tiny model's detections are noise,
which a warning on stderr and a `note` in the result's model info both say.

Both files are found relative to this source file, so they exist in a git checkout or an
editable install only; elsewhere the error says to pass --model and --source.
"""
from __future__ import annotations

from pathlib import Path

from edge_agent.errors import ConfigError, ModelError

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / "tests" / "fixtures" / "tiny-florence2"
SAMPLE_VIDEO = REPO / "tests" / "fixtures" / "sample" / "shelf.mp4"
SAMPLE_IMAGE = REPO / "tests" / "fixtures" / "sample" / "shelf.jpg"

NOTE = "bundled tiny random-weight demo model: detections are noise"
WARNING = ("edge-agent: warning: no model configured: using the bundled tiny random-weight demo model "
           f"({TINY_MODEL}); its detections are NOISE. Pass --model DIR (see `edge-agent models pull`) for real results.")


def tiny_model_dir() -> Path:
    if not (TINY_MODEL / "config.json").is_file():
        raise ModelError(f"no model configured and the bundled demo model {TINY_MODEL} is absent "
                         "(not a source checkout?); pass --model DIR or set [model] dir")
    return TINY_MODEL


def sample_video() -> Path:
    if not SAMPLE_VIDEO.is_file():
        raise ConfigError(f"no camera configured and the bundled sample video {SAMPLE_VIDEO} is absent "
                          "(not a source checkout?); pass --camera N or --source PATH_OR_URL")
    return SAMPLE_VIDEO
