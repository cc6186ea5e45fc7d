"""A Florence-2 model directory in onnx-community's layout.

    DIR/config.json, generation_config.json, preprocessor_config.json, tokenizer files
    DIR/onnx/{vision_encoder,embed_tokens,encoder_model,decoder_model_merged}{S}.onnx

where each part's suffix S is one of SUFFIXES, chosen per part by a variant mix
(models/variants.py: `int8`, `vision_encoder=q4,int8`, `auto`).  A graph file is *usable*
when it exists and its external-data files hold every byte the graph says they do.
`open_model_dir` checks that the chosen files are usable and the JSON parses; `verify` also
checks tensor names, dtypes and shapes of every graph (read without loading weights, see
models/onnxmeta.py), that the tokenizer fits the embedding table, and that the installed
ONNX Runtime can create each session.  Every problem is a ModelDirError whose one line names
the file.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.models.errors import ModelDirError, ModelSettingError
from edge_agent.models.variants import AUTO, PARTS, SUFFIXES, Mix, label, normalize_suffix, parse_mix

if TYPE_CHECKING:
    from edge_agent.models.tokens import Tokenizer

log = logging.getLogger(__name__)

VARIANTS = SUFFIXES
FAST_PARTS = ("decoder_cross_kv", "decoder_step")  # optional: edge-agent's fast decoder (models/export_step.py)

# `auto` takes, per part, the first usable file in this order.  Measured on a base-sized model
# in onnx-community's layout (benchmarks/variants.py, docs/models.md): int8 in every part had
# the lowest peak memory (744 MB) and the only one within 800 MB; decode is weight-bandwidth
# bound, so 8-bit text graphs decode faster than fp32.  onnx-community's "_quantized" and
# "_uint8" are the same kind of dynamic 8-bit quantization.  4-bit MatMulNBits next, then fp32,
# then the half-float and NF4 graphs, which ONNX Runtime's CPU kernels mostly run through casts.
AUTO_ORDER = ("_int8", "_quantized", "_uint8", "_q4", "", "_fp16", "_q4f16", "_bnb4")

BUNDLED_TOKENIZER = Path(__file__).resolve().parent / "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def normalize_variant(variant: str) -> str:
    """One suffix: 'int8' / '_int8' -> '_int8'; '', 'fp32', 'default' -> ''.  Unknown -> ModelSettingError."""
    try:
        return normalize_suffix(variant)
    except ValueError as exc:
        raise ModelSettingError(str(exc)) from None


def read_mix(variant) -> Mix:
    """A variant spelling (models/variants.py) as a Mix; ModelSettingError on a bad one."""
    try:
        return parse_mix(variant)
    except ValueError as exc:
        raise ModelSettingError(str(exc)) from None


def read_json(file: Path) -> dict:
    """A model directory's JSON object; ModelDirError naming the file otherwise."""
    if not file.is_file():
        raise ModelDirError(f"{file}: file missing")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{file}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{file}: expected a JSON object")
    return data


def part_file(path: Path, part: str, suffix: str) -> Path:
    return Path(path) / "onnx" / f"{part}{suffix}.onnx"


def variant_files(path: Path, variant) -> list[Path]:
    """The four graph files of a suffix or a concrete Mix."""
    mix = variant if isinstance(variant, Mix) else Mix.uniform(variant)
    return [part_file(path, part, s) for part, s in mix.items()]


def external_data(file: Path) -> Path:
    """Where edge-agent (and onnx-community) keep a graph's external data: `<name>_data` beside it."""
    return file.with_name(file.name + "_data")


def graph_bytes(file: Path) -> int:
    """Size of an ONNX graph with its external-data files, if any."""
    from edge_agent.models.onnxmeta import OnnxFormatError, read_graph_meta

    try:
        locations = read_graph_meta(file).external_files or {external_data(file).name}
    except (OSError, OnnxFormatError):
        locations = {external_data(file).name}
    extra = [file.parent / loc for loc in locations]
    return file.stat().st_size + sum(p.stat().st_size for p in extra if p.is_file())


def graph_problem(file: Path) -> str | None:
    """Why `file` is not usable (missing, unreadable, external data missing or truncated), else None.
    Cached on the files' sizes and times, so that listing a folder twice scans it once."""
    file = Path(file)
    try:
        st = file.stat()
    except OSError:
        return "file missing"
    data = external_data(file)
    dst = data.stat() if data.is_file() else None
    return _graph_problem(str(file), st.st_size, st.st_mtime_ns, dst and (dst.st_size, dst.st_mtime_ns))


@lru_cache(maxsize=256)
def _graph_problem(file: str, size: int, mtime: int, data_stat) -> str | None:
    from edge_agent.models.onnxmeta import OnnxFormatError, missing_external_data, read_graph_meta

    try:
        meta = read_graph_meta(file)
    except (OSError, OnnxFormatError) as exc:
        return f"cannot read ONNX graph: {exc}"
    return missing_external_data(file, meta)


def part_suffixes(path, part: str) -> list[str]:
    """Suffixes of `part` whose graph file exists (usable or not), in SUFFIXES order."""
    return [s for s in SUFFIXES if part_file(path, part, s).is_file()]


def usable_suffixes(path, part: str) -> list[str]:
    return [s for s in part_suffixes(path, part) if graph_problem(part_file(path, part, s)) is None]


def auto_order(path, part: str) -> list[str]:
    """`auto`'s choices for one part, best first: usable files in AUTO_ORDER."""
    usable = set(usable_suffixes(path, part))
    return [s for s in AUTO_ORDER if s in usable]


def resolve_mix(path, mix: Mix) -> Mix:
    """Every AUTO part replaced by auto's choice; ModelDirError naming the first missing part."""
    chosen = {}
    for part, s in mix.items():
        if s == AUTO:
            order = auto_order(path, part)
            if not order:
                raise ModelDirError(f"{_first_problem(path, part)} (no usable {part} graph in {Path(path) / 'onnx'})")
            chosen[part] = order[0]
    return mix.replace(**chosen)


def _first_problem(path, part: str) -> str:
    for s in SUFFIXES:
        f = part_file(path, part, s)
        if f.is_file():
            return f"{f}: {graph_problem(f)}"
    return f"{part_file(path, part, '')}: file missing"


def present_variants(path) -> list[str]:
    """Suffixes with at least one of their four files present (complete or not)."""
    path = Path(path)
    return [v for v in SUFFIXES if any(f.is_file() for f in variant_files(path, v))]


def complete_variants(path) -> list[str]:
    """Suffixes whose four graphs are all usable, in SUFFIXES order."""
    return [v for v in SUFFIXES if all(graph_problem(f) is None for f in variant_files(Path(path), v))]


def complete_combinations(path) -> int:
    """How many mixes of usable graphs the folder holds (the product over parts)."""
    n = 1
    for part in PARTS:
        n *= len(usable_suffixes(path, part))
    return n


@dataclass
class ModelDir:
    path: Path
    mix: Mix  # concrete: one suffix per part
    config: dict = field(repr=False)
    generation_config: dict = field(repr=False)

    @property
    def variant(self) -> str:
        """The suffix when every part has the same one, else the mix's spelling."""
        s = set(self.mix.suffixes)
        return next(iter(s)) if len(s) == 1 else self.mix.spelling

    @property
    def label(self) -> str:
        """'int8', 'fp32', 'vision_encoder=q4,int8'."""
        return self.mix.spelling

    def onnx_path(self, part: str) -> Path:
        if part not in PARTS:
            raise ValueError(f"unknown model part {part!r}: expected one of {PARTS}")
        return part_file(self.path, part, self.mix[part])

    def fast_decoder_paths(self) -> tuple[Path, Path] | None:
        """(decoder_cross_kv, decoder_step) with the decoder's suffix, when both exist (models/export_step.py)."""
        s = self.mix["decoder_model_merged"]
        paths = tuple(part_file(self.path, part, s) for part in FAST_PARTS)
        return paths if all(p.is_file() for p in paths) else None

    def available_variants(self) -> list[str]:
        """Complete single-suffix variants (all four graphs usable), in SUFFIXES order."""
        return complete_variants(self.path)

    def has_tokenizer(self) -> bool:
        return any((self.path / name).is_file() for name in TOKENIZER_FILES)

    def tokenizer_dir(self) -> Path:
        if self.has_tokenizer():
            return self.path
        log.warning("%s has no tokenizer files; using the bundled Florence-2 tokenizer %s", self.path, BUNDLED_TOKENIZER)
        return BUNDLED_TOKENIZER

    def load_tokenizer(self) -> "Tokenizer":
        """A models.tokens.Tokenizer: tokenizer.json through `tokenizers` (models/tokens.py: ~190 MB less resident memory than
        transformers); a folder with only vocab.json + merges.txt through transformers.  No torch."""
        src = self.tokenizer_dir()
        try:
            if (src / "tokenizer.json").is_file():
                from edge_agent.models.tokens import LeanTokenizer

                return LeanTokenizer(src / "tokenizer.json")
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(src), clean_up_tokenization_spaces=False)
        except ModelDirError:
            raise
        except Exception as exc:  # tokenizers/transformers raise Exception/OSError/ValueError/KeyError here
            raise ModelDirError(f"{src}: cannot load tokenizer: {type(exc).__name__}: {exc}".splitlines()[0]) from None

    def preprocess_config(self):
        from edge_agent.models.preprocess import PreprocessConfig

        return PreprocessConfig.from_dir(self.path)

    def text_config(self) -> dict:
        tc = self.config.get("text_config")
        return tc if isinstance(tc, dict) else self.config


def open_model_dir(path, variant=None) -> ModelDir:
    """Open DIR with a variant spelling (models/variants.py) or Mix; None or 'auto' lets auto choose
    each part.  ModelDirError naming the first missing or incomplete file."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelDirError(f"{path}: model directory not found")
    config = read_json(path / "config.json")
    gen = read_json(path / "generation_config.json")
    mix = resolve_mix(path, read_mix(variant))
    for f in variant_files(path, mix):
        problem = graph_problem(f)
        if problem is not None:
            raise ModelDirError(f"{f}: {problem} (variant {mix.spelling}{_usable_hint(path)})")
    return ModelDir(path=path, mix=mix, config=config, generation_config=gen)


def _usable_hint(path: Path) -> str:
    """'; complete: fp32, int8' so the user sees what the folder does hold."""
    done = complete_variants(path)
    hint = f"; complete: {', '.join(label(s) for s in done)}" if done else ""
    return hint + f"; every part's files: edge-agent models list {path}"


def verify(path, variant=None) -> list[str]:
    """Check a model directory; returns report lines, raises ModelDirError on the first problem."""
    from edge_agent.models import verify as _v

    return _v.verify_dir(path, variant)
