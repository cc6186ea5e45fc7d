"""A Florence-2 model directory in onnx-community's layout.

    DIR/config.json, generation_config.json, preprocessor_config.json, tokenizer files
    DIR/onnx/{vision_encoder,embed_tokens,encoder_model,decoder_model_merged}{S}.onnx

where the variant suffix S is one of VARIANTS.  `open_model_dir` checks that the files
exist and the JSON parses; `verify` also checks tensor names, dtypes and shapes of every
graph (read without loading weights, see models/onnxmeta.py) and that the tokenizer fits
the embedding table.  Every problem is a ModelError whose one line names the file.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.errors import ModelError

log = logging.getLogger(f"edge_agent.{__name__}")

VARIANTS = ("", "_fp16", "_int8", "_uint8", "_quantized", "_q4", "_q4f16")
PARTS = ("vision_encoder", "embed_tokens", "encoder_model", "decoder_model_merged")
FAST_PARTS = ("decoder_cross_kv", "decoder_step")  # optional: edge-agent's fast decoder (models/export_step.py)

# variant=None picks the first complete variant in this order.  On CPU the int8 graphs
# decode ~2.7x faster than fp32 (decode is weight-bandwidth bound) at a small accuracy
# cost; onnx-community's "_quantized" and "_uint8" are the same kind of dynamic 8-bit
# quantization.  fp32 next; 4-bit MatMulNBits after it (smaller, less accurate); fp16 last
# because most CPUs have no fast fp16 kernels in ONNX Runtime.
CPU_PREFERENCE = ("_int8", "_quantized", "_uint8", "", "_q4", "_fp16", "_q4f16")

BUNDLED_TOKENIZER = Path(__file__).resolve().parent / "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
ROOT_JSONS = ("config.json", "generation_config.json")


def normalize_variant(variant: str) -> str:
    """'int8' / '_int8' -> '_int8'; '', 'fp32', 'default' -> ''.  Unknown -> ModelError."""
    v = (variant or "").strip().lower()
    if v in ("", "fp32", "default", "none"):
        return ""
    v = v if v.startswith("_") else "_" + v
    if v not in VARIANTS:
        names = ", ".join(repr(x.lstrip("_") or "fp32") for x in VARIANTS)
        raise ModelError(f"unknown model variant {variant!r}: expected one of {names}")
    return v


def read_json(file: Path) -> dict:
    """A model directory's JSON object; ModelError naming the file otherwise."""
    if not file.is_file():
        raise ModelError(f"{file}: file missing")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{file}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{file}: expected a JSON object")
    return data


def variant_files(path: Path, variant: str) -> list[Path]:
    return [path / "onnx" / f"{part}{variant}.onnx" for part in PARTS]


def external_data(file: Path) -> Path:
    """Where edge-agent (and onnx-community) keep a graph's external data: `<name>_data` beside it."""
    return file.with_name(file.name + "_data")


def graph_bytes(file: Path) -> int:
    """Size of an ONNX graph with its external-data file, if any."""
    data = external_data(file)
    return file.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def present_variants(path) -> list[str]:
    """Variants with at least one of their four files present (complete or not)."""
    path = Path(path)
    return [v for v in VARIANTS if any(f.is_file() for f in variant_files(path, v))]


@dataclass
class ModelDir:
    path: Path
    variant: str
    config: dict = field(repr=False)
    generation_config: dict = field(repr=False)

    def onnx_path(self, part: str) -> Path:
        if part not in PARTS:
            raise ValueError(f"unknown model part {part!r}: expected one of {PARTS}")
        return self.path / "onnx" / f"{part}{self.variant}.onnx"

    def fast_decoder_paths(self) -> tuple[Path, Path] | None:
        """(decoder_cross_kv, decoder_step) of this variant when both exist (models/export_step.py)."""
        paths = tuple(self.path / "onnx" / f"{part}{self.variant}.onnx" for part in FAST_PARTS)
        return paths if all(p.is_file() for p in paths) else None

    def available_variants(self) -> list[str]:
        """Complete variants (all four files present), in VARIANTS order."""
        return [v for v in VARIANTS if all(f.is_file() for f in variant_files(self.path, v))]

    def has_tokenizer(self) -> bool:
        return any((self.path / name).is_file() for name in TOKENIZER_FILES)

    def tokenizer_dir(self) -> Path:
        if self.has_tokenizer():
            return self.path
        log.warning("%s has no tokenizer files; using the bundled Florence-2 tokenizer %s", self.path, BUNDLED_TOKENIZER)
        return BUNDLED_TOKENIZER

    def load_tokenizer(self):
        """tokenizer.json through `tokenizers` (models/tokens.py: ~190 MB less resident memory than
        transformers); a folder with only vocab.json + merges.txt through transformers.  No torch."""
        src = self.tokenizer_dir()
        try:
            if (src / "tokenizer.json").is_file():
                from models.tokens import LeanTokenizer

                return LeanTokenizer(src / "tokenizer.json")
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(src), clean_up_tokenization_spaces=False)
        except ModelError:
            raise
        except Exception as exc:  # tokenizers/transformers raise Exception/OSError/ValueError/KeyError here
            raise ModelError(f"{src}: cannot load tokenizer: {type(exc).__name__}: {exc}".splitlines()[0]) from None

    def preprocess_config(self):
        from models.preprocess import PreprocessConfig

        return PreprocessConfig.from_dir(self.path)

    def text_config(self) -> dict:
        tc = self.config.get("text_config")
        return tc if isinstance(tc, dict) else self.config


def open_model_dir(path, variant: str | None = None) -> ModelDir:
    """Open DIR; `variant=None` picks the first complete one in CPU_PREFERENCE."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelError(f"{path}: model directory not found")
    config = read_json(path / "config.json")
    gen = read_json(path / "generation_config.json")
    if variant is None:
        chosen = _best_variant(path)
    else:
        chosen = normalize_variant(variant)
        for f in variant_files(path, chosen):
            if not f.is_file():
                raise ModelError(f"{f}: file missing (variant {chosen.lstrip('_') or 'fp32'}{_complete_hint(path)})")
    return ModelDir(path=path, variant=chosen, config=config, generation_config=gen)


def _complete_hint(path: Path) -> str:
    """'; complete: fp32 (--variant '')' so the user sees what the folder does hold."""
    done = [v for v in VARIANTS if all(f.is_file() for f in variant_files(path, v))]
    if not done:
        return ""
    return "; complete: " + ", ".join(f"{v.lstrip('_') or 'fp32'} (--variant '{v}')" for v in done)


def _best_variant(path: Path) -> str:
    for v in CPU_PREFERENCE:
        if all(f.is_file() for f in variant_files(path, v)):
            return v
    partial = present_variants(path) or [""]
    missing = next(f for f in variant_files(path, partial[0]) if not f.is_file())
    raise ModelError(f"{missing}: file missing (no complete model variant in {path / 'onnx'})")


def verify(path, variant: str | None = None) -> list[str]:
    """Check a model directory; returns report lines, raises ModelError on the first problem."""
    from models import verify as _v

    return _v.verify_dir(path, variant)
