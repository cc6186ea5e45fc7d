"""The `[model]` section: which Florence-2 ONNX model runs, and how (`ModelOptions`).

`ModelOptions.engine_options()` builds the engine's own `models.engine.EngineOptions`;
`build_engine(options)` loads it.  models/ imports nothing from here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from edge_agent.models.rowscale import BITS as ACTIVATION_BITS
from edge_agent.models.variants import canonical

TASKS = ("od", "ocr")


MAX_NEW_TOKENS = 1024  # the decoder's max_position_embeddings
MAX_BEAMS = 8
GRAPH_CACHE_DIR = "graph-cache"  # under the state dir (models/graphcache.py)


@dataclass(frozen=True)
class ModelOptions:
    """The `[model]` section."""

    dir: str = ""  # onnx-community Florence-2 layout; "" -> the bundled tiny demo model
    variant: str = "auto"  # models/variants.py: a suffix (int8 or _int8), one per graph (vision_encoder=fp32,int8), auto
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 0  # ONNX Runtime intra-op threads, 0: its default
    tasks: tuple[str, ...] = TASKS
    num_beams: int = 0  # 0: as generation_config.json says
    max_new_tokens: int = 1024
    decode_batch: int = 0  # sequences decoded together (bounds KV-cache memory), 0: see kv_cache_mb
    kv_cache_mb: int = 256  # with decode_batch 0: worst-case KV-cache size per decode call; 0: no bound
    load_per_stage: bool = False  # hold one stage's graphs at a time (less memory, a reload per frame)
    graph_cache: bool = True  # keep ONNX Runtime's optimized vision tower in <state_dir>/graph-cache
    mmap_threshold_kb: int = 128  # glibc's mmap threshold, fixed (models/engine.py); 0: glibc's dynamic one
    row_activation_bits: int = 0  # per-row int8 decoders' activations, 7 or 8; 0: 7 on x86 without VNNI
    telemetry: bool = False  # allow onnxruntime's own telemetry (device id + events file under $HOME/.cache)

    def __post_init__(self):
        try:
            object.__setattr__(self, "variant", canonical(self.variant))
        except ValueError as e:
            raise ValueError(f"variant: {e}") from None
        object.__setattr__(self, "providers", tuple(self.providers))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.providers:
            raise ValueError("providers: must name at least one execution provider")
        if not self.tasks or any(t not in TASKS for t in self.tasks):
            raise ValueError(f"tasks: must be a non-empty list of {', '.join(map(repr, TASKS))}")
        for key in ("threads", "num_beams", "decode_batch", "kv_cache_mb", "mmap_threshold_kb"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key}: must be >= 0")
        if self.row_activation_bits not in (0, *ACTIVATION_BITS):
            raise ValueError("row_activation_bits: must be 0 (by the CPU), 7 or 8")
        if not 0 < self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens: must be 1..{MAX_NEW_TOKENS} (Florence-2's decoder has "
                             f"{MAX_NEW_TOKENS} positions)")
        if self.num_beams > MAX_BEAMS:
            raise ValueError(f"num_beams: at most {MAX_BEAMS} (each beam is a decoder row: on Florence-2-base "
                             "43 MB of attention cache at 1024 tokens, so 8 beams hold 350 MB per sequence)")
        cpus = os.cpu_count() or 1
        if self.threads > cpus:
            raise ValueError(f"threads: at most the {cpus} CPUs of this machine (0: ONNX Runtime's default, "
                             "one per core)")

    def engine_options(self, **overrides):
        """The engine's EngineOptions for these settings (`overrides`: EngineOptions fields)."""
        from edge_agent.models.engine import EngineOptions

        kw = dict(model_dir=self.dir, variant=self.variant, providers=self.providers, intra_op_threads=self.threads,
                  num_beams=self.num_beams or None, max_new_tokens=self.max_new_tokens,
                  decode_batch=self.decode_batch, kv_cache_mb=self.kv_cache_mb,
                  load_per_stage=self.load_per_stage, mmap_threshold_kb=self.mmap_threshold_kb,
                  row_activation_bits=self.row_activation_bits)
        kw.update(overrides)
        return EngineOptions(**kw)


def build_engine(options: ModelOptions, state_dir: str | os.PathLike | None = None, **overrides):
    """Load the engine (the slow part: graphs and tokenizer).  state_dir: where the agent keeps its
    state; with `graph_cache` on, the optimized vision tower is kept under it (GRAPH_CACHE_DIR)."""
    from edge_agent import telemetry

    if options.graph_cache and state_dir:
        overrides.setdefault("graph_cache_dir", os.path.join(state_dir, GRAPH_CACHE_DIR))

    telemetry.apply(options.telemetry)  # before onnxruntime is imported
    from edge_agent.models.engine import Florence2Engine

    return Florence2Engine(options.engine_options(**overrides))
