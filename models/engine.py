"""Florence-2 with ONNX Runtime only: tiles in, parsed regions per task out.

    engine = Florence2Engine(EngineOptions(model_dir="DIR", variant="_int8"))
    outs = engine.run(tiles, tasks=("od", "ocr"))   # list (per tile) of {task: TaskOutput}

Per call: every tile is preprocessed and goes through the vision encoder once; its image
features are reused for each task; all (tile, task) prompts run through the text encoder
together (right-padded, masked); then one batched KV-cached generation decodes every
sequence (models/generate.py, over a runner of models/runners.py).  No torch is imported.
"""
from __future__ import annotations

import logging
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from edge_agent.models.convint import add_conv_overrides
from edge_agent.models.errors import InferenceError, ModelDirError, ModelError, ModelSettingError
from edge_agent.models.generate import Generated, generate
from edge_agent.models.generation import DEFAULT_MAX_NEW_TOKENS, GenerationSettings
from edge_agent.models.graphcache import GraphCache
from edge_agent.models.memory import advise_random, fix_mmap_threshold, trim_heap
from edge_agent.models.onnxmeta import OnnxFormatError
from edge_agent.models.outputs import TASKS, TaskOutput
from edge_agent.models.rowscale import activation_bits, add_overrides
from edge_agent.models.runners import BufferedRunner, DecoderRunner

log = logging.getLogger(__name__)

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


@dataclass(frozen=True)
class EngineOptions:
    model_dir: str | Path
    variant: str | None = None  # None: the best complete variant for CPU (models/modeldir.py)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (all cores)
    num_beams: int | None = None  # None: as generation_config.json says
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    # Tiles per vision-encoder call and sequences per text-encoder call; 0: auto (1 on CPU,
    # where single-item calls measured fastest: base fp32 vision 2.27 s/tile at 1 vs 3.01 at 4,
    # encoder 0.22 vs 0.28 s/tile at 1 vs 6, and the arena peak is lower; 8 on a GPU provider).
    vision_batch: int = 0
    encoder_batch: int = 0
    decode_batch: int = 0  # sequences decoded together (bounds the KV-cache memory); 0: see kv_cache_mb
    # With decode_batch 0: decode consecutive sequences together while their worst-case caches
    # (each row at its max_new_tokens; beams count as rows) fit this many MB; 0: all of them.
    # Pages are mapped as the caches fill, so sequences that end early cost less than this.
    # 256: the dense-1080p frame (12 greedy rows, 512/256 tokens: 236 MB) stays one batch, and
    # 3-beam 1024-token sequences (130 MB each) decode one at a time.
    kv_cache_mb: int = 256
    # ORT memory: the CPU arena keeps the largest activations' memory for the process's life.
    # The memory pattern pre-plans one block per input shape; off by default because that block
    # is allocated beside the arena's free chunks: base int8 vision tower, one 768 tile, second
    # run +171 MB peak RSS with it, +2 MB without, and 0.70 vs 0.73 s/tile.  See
    # benchmarks/frame-results.md.
    cpu_mem_arena: bool = True
    mem_pattern: bool = False
    # One CPU arena shared by the four sessions (ORT's environment allocator): the decoder reuses
    # the memory the vision tower freed instead of growing its own arena.  Base int8, 2 tiles:
    # peak RSS 1031 vs 1211 MB; 6 tiles + 64 decode steps: 1343 vs 1700 MB; speed unchanged
    # within this machine's noise (benchmarks/frame-results.md).
    shared_arena: bool = True
    # Decode with edge-agent's fast decoder graphs (decoder_cross_kv + decoder_step, written by
    # `models export`) when the model directory has them for this variant: the self-attention
    # cache is a pre-allocated buffer written in place, no per-step copy.  False, or a directory
    # without them (e.g. onnx-community downloads): decoder_model_merged.
    fast_decoder: bool = True
    # Return the arena's free memory to the OS after each stage's last vision-tower and
    # text-encoder call of a frame, and after the fast decoder's cross-attention call (ORT's
    # memory.enable_memory_arena_shrinkage), so the decode's caches do not sit on top of the
    # vision tower's activation memory.  Base int8, one 768 tile: +262 MB resident after the run
    # without, +8 MB with; the next call re-grows it (~0.05 s).
    arena_shrink: bool = True
    # Hold only one stage's graphs at a time: the vision tower is loaded for the vision stage and
    # released after it, the text encoder and decoders for the decode stage (the embedding table,
    # a mapped file, and the prompts stay).  The largest activations (the vision tower's) then
    # never sit on top of the decoders' weights, nor the decode's caches on the vision tower's:
    # for 2 GB devices.  Every graph is loaded once at start, so a broken model fails there; each
    # engine.run reloads both stages' graphs ("load" progress reports; measured in
    # benchmarks/frame-results.md, session 8).
    load_per_stage: bool = False
    # A directory where ONNX Runtime's optimized copy of the vision tower is kept, so that later
    # loads skip optimizing it (models/graphcache.py): base int8 0.73-0.81 -> 0.16-0.26 s per load,
    # load peak 282 -> 198 MB, features bit-identical (benchmarks/frame-results.md, session 17).
    # With load_per_stage that is every frame.  "": no cache.  The CPU provider only.
    graph_cache_dir: str = ""
    # glibc's mmap threshold, fixed for the process when the engine starts (KiB; 0 leaves glibc's
    # dynamic threshold).  glibc raises its threshold to each freed mapped block's size (up to
    # 32 MB), so after a graph's load or a stage's activations are freed, blocks below that size
    # come from the heap and stay resident.  Base int8, `load_per_stage`, 16 new tokens
    # (benchmarks/stage_peaks.py, MiB): vision stages 616/616 -> 500/541, decode calls 509-612 ->
    # 456-570 at 128 KiB (glibc's own starting value); 1024 KiB 533/581; 4096 KiB 574/618.
    # The default since session 10: until then every decode step allocated a few [rows, vocab]
    # arrays, each a fresh mapping above the threshold whose pages faulted in again (decode 28.1-28.3
    # against 25.3-25.7 ms per step on the dense-1080p frame, session 9); the steps now reuse one
    # buffer (models/runners.py BufferCache.logits_rows), and the dense frame's int8 decode took
    # 18.2-18.4 against 18.0-18.1 ms per step, peak 745 against 798-801 MB
    # (benchmarks/frame-results.md, session 10).  No-op off glibc.
    mmap_threshold_kb: int = 128
    # Bits of the per-row int8 decoders' activations (models/rowquant.py): 8 as written, or 7,
    # set when the graphs are loaded, so that x86 CPUs without VNNI (whose u8 x s8 matmuls add
    # pairs of products into a saturating int16, models/cpu.py) do not clip; 0: 7 on such a CPU,
    # else 8.  Graphs without per-row matmuls are unaffected.  Measured in
    # benchmarks/frame-results.md, session 14.
    row_activation_bits: int = 0
    # Called from inside the engine as progress(stage, done, total): "load" after each ONNX graph
    # is loaded (total 0: not known), "vision" after each vision-encoder chunk, "encoder" after
    # each decode chunk's text-encoder pass, "decode" after each decode chunk (text encoder +
    # generation of its sequences).  The agent feeds the systemd watchdog from it, so a slow
    # frame that is moving is not taken for a hung one; `edge-agent bench` times the stages by it.
    progress: Callable[[str, int, int], None] | None = None


def resolve_providers(requested: Sequence[str]) -> list[str]:
    """Map aliases to ORT names; keep those installed (warn about the rest); CPU always last."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen = []
    for name in requested:
        full = PROVIDER_ALIASES.get(str(name).lower(), str(name))
        if not full.endswith("ExecutionProvider"):
            raise ModelSettingError(f"model.providers: unknown execution provider {name!r}")
        if full not in available:
            log.warning("execution provider %s is not available in this onnxruntime; skipping it", full)
        elif full not in chosen:
            chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _session(path: Path, providers: list[str], opts: EngineOptions, row_bits: int = 8,
             cache: GraphCache | None = None, stats: dict | None = None):
    """An InferenceSession of the graph at `path`.  cache: keep ONNX Runtime's optimized copy of
    it there and load that next time (models/graphcache.py; CPU provider only); stats counts the
    cache's "hits" and "writes"."""
    entry = hit = None
    if cache is not None and list(providers) == ["CPUExecutionProvider"]:
        try:
            entry, hit = cache.entry(path, {"row_bits": row_bits})
        except OSError:
            pass  # the source cannot be read: ONNX Runtime's own error below says why
    if entry is not None:
        if hit:
            try:
                session = _new_session(entry, providers, opts, row_bits, optimized=True)
                cache.used(entry)
                if stats is not None:
                    stats["hits"] += 1
                log.debug("graph cache: %s loaded as %s", path, entry)
                return session
            except Exception as exc:  # onnxruntime's own types: a truncated or damaged entry
                log.warning("graph cache: %s cannot be loaded (%s); loading %s", entry,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__, path)
                cache.discard(entry)
        staged = cache.staging(entry)
        if staged is not None:
            try:
                session = _new_session(path, providers, opts, row_bits, save_to=staged)
            except Exception:  # perhaps writing the copy failed: load once more without it, below
                cache.give_up(entry, staged)
            else:
                cache.commit(entry, staged)
                if stats is not None:
                    stats["writes"] += 1
                log.info("graph cache: %s optimized once, kept as %s", path, entry)
                return session
    try:
        return _new_session(path, providers, opts, row_bits)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelDirError(f"{path}: cannot load ONNX graph: {str(exc).splitlines()[0]}") from None


def _new_session(path: Path, providers: list[str], opts: EngineOptions, row_bits: int = 8,
                 optimized: bool = False, save_to: Path | None = None):
    """optimized: `path` is ONNX Runtime's own optimized copy (GraphCache), loaded without
    optimizing it again.  The load-time constants apply to it as to the source: ONNX Runtime
    writes the graph's own initializers into that copy, not the ones given by add_initializer
    (an onnx-community int8 tower's ConvInteger weights come back int8, and would run on
    the slow kernel without the override).  save_to: write the optimized graph there."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    add_overrides(so, row_bits)
    try:
        add_conv_overrides(so, path)  # int8 ConvInteger weights as the same integers in uint8
    except (OSError, OnnxFormatError):
        pass  # a file it cannot read: ONNX Runtime's own error says why
    if optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    else:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if save_to is not None:
            so.optimized_model_filepath = str(save_to)
    if opts.intra_op_threads:
        so.intra_op_num_threads = int(opts.intra_op_threads)
    so.enable_cpu_mem_arena = bool(opts.cpu_mem_arena)
    so.enable_mem_pattern = bool(opts.mem_pattern)
    if opts.shared_arena and opts.cpu_mem_arena:
        _register_shared_arena()
        so.add_session_config_entry("session.use_env_allocators", "1")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)


_SHARED_ARENA: list = []
ARENA_STRATEGY = 0  # 0: kNextPowerOfTwo, 1: kSameAsRequested (measured worse: 1234 vs 1135 MB after vision)


def _register_shared_arena() -> None:
    """Register (once per process) one CPU arena for all sessions."""
    import onnxruntime as ort

    if _SHARED_ARENA:
        return
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, ARENA_STRATEGY, -1, -1))  # no cap
    _SHARED_ARENA.append(info)


def _shrink_options():
    """RunOptions returning the arena's free memory to the OS after the call."""
    import onnxruntime as ort

    ro = ort.RunOptions()
    ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return ro


def _run_into(session, feeds: dict, output: str, out: np.ndarray, run_options=None) -> None:
    """Run `session` with its output named `output` written into `out` (IO binding)."""
    import onnxruntime as ort

    io = session.io_binding()
    for name, value in feeds.items():
        io.bind_cpu_input(name, value)
    io.bind_ortvalue_output(output, ort.OrtValue.ortvalue_from_numpy(out))
    session.run_with_iobinding(io, run_options)


def _input_dtype(session, name: str):
    """numpy float dtype of the input called `name` (by name: onnx-community's graphs order their
    inputs differently from edge-agent's, e.g. the encoder's first input is attention_mask)."""
    t = next((i.type for i in session.get_inputs() if i.name == name), None)
    if t is None:
        raise ValueError(f"the graph has no input {name!r}")
    return np.float16 if "float16" in t else np.float32


def decode_chunks(costs: Sequence[int], budget: int, batch: int = 0) -> list[tuple[int, int]]:
    """[start, end) of each decode call over sequences whose worst-case cache bytes are `costs`:
    `batch` sequences per call when batch > 0; else consecutive sequences while their costs fit
    `budget` bytes (budget <= 0: all in one call); at least one sequence per call."""
    n = len(costs)
    if batch > 0:
        return [(i, min(i + batch, n)) for i in range(0, n, batch)]
    if budget <= 0:
        return [(0, n)] if n else []
    chunks, start, used = [], 0, 0
    for i, cost in enumerate(costs):
        if i > start and used + cost > budget:
            chunks.append((start, i))
            start, used = i, 0
        used += cost
    return chunks + ([(start, n)] if n else [])


class Florence2Engine:
    def __init__(self, opts: EngineOptions):
        from edge_agent.models.modeldir import open_model_dir
        from edge_agent.models.preprocess import PreprocessConfig

        self.opts = opts
        if opts.mmap_threshold_kb:
            fix_mmap_threshold(opts.mmap_threshold_kb * 1024)
        self.dir = open_model_dir(opts.model_dir, opts.variant)
        self.providers = resolve_providers(opts.providers)
        try:  # the per-row int8 decoders' activation bits on this CPU (`edge-agent bench` prints them)
            self.row_bits = activation_bits(opts.row_activation_bits)
        except ValueError as exc:
            raise ModelSettingError(f"row_activation_bits: {exc}") from None
        self._loads = 0
        self.graph_cache_stats = {"hits": 0, "writes": 0}
        self._graph_cache = None
        if opts.graph_cache_dir:
            import onnxruntime as ort

            self._graph_cache = GraphCache(opts.graph_cache_dir, ort.__version__)
        tc = self.dir.text_config()
        self._heads = tc.get("decoder_attention_heads")
        self._head_dim = tc["d_model"] // self._heads if self._heads and tc.get("d_model") else None
        self._shrink = _shrink_options() if opts.arena_shrink and opts.cpu_mem_arena else None
        self._fast = self.dir.fast_decoder_paths() if opts.fast_decoder else None
        self.vision = self.encoder = self.runner = None
        self._depth = {"vision": 0, "text": 0}  # _stage: blocks holding each stage's graphs
        self._load_stage("vision")
        self.embed = self._load("embed_tokens")
        self._load_stage("text")
        self.tokenizer = self.dir.load_tokenizer()
        self.pre_cfg = PreprocessConfig.from_dir(self.dir.path)
        self.settings = GenerationSettings.from_dir(self.dir.path, num_beams=opts.num_beams,
                                                    max_new_tokens=opts.max_new_tokens)
        self._prompt_cache: dict[str, np.ndarray] = {}
        self._out_shapes: dict[tuple, tuple] = {}  # _run_owned: output shape and dtype per input shape
        if opts.load_per_stage:
            self._unload_stage("vision")
            self._unload_stage("text")
        self._settle_memory()
        limit = tc.get("max_position_embeddings")
        if isinstance(limit, int) and self.settings.max_new_tokens > limit:
            raise ModelSettingError(f"max_new_tokens={self.settings.max_new_tokens} exceeds the decoder's "
                              f"max_position_embeddings={limit} ({self.dir.path / 'config.json'})")

    def _progress(self, stage: str, done: int, total: int) -> None:
        if self.opts.progress is not None:
            self.opts.progress(stage, done, total)

    def _load(self, part: str | Path):
        """One graph's session: a part name (its path in this variant) or a path."""
        path = part if isinstance(part, Path) else self.dir.onnx_path(part)
        cache = self._graph_cache if part == "vision_encoder" else None  # the one graph whose optimizing pays
        session = _session(path, self.providers, self.opts, self.row_bits, cache, self.graph_cache_stats)
        self._loads += 1
        self._progress("load", self._loads, 0)
        return session

    def _load_stage(self, stage: str) -> None:
        """Load the graphs of `stage`: "vision" (the vision tower) or "text" (the text encoder and
        the decoder graphs, behind self.runner)."""
        if stage == "vision":
            self.vision = self._load("vision_encoder")
            return
        self.encoder = self._load("encoder_model")
        fast = self._fast
        try:
            if fast:
                self.runner = BufferedRunner(self.embed, *(self._load(Path(p)) for p in fast),
                                             cross_run_options=self._run_options(True))
            else:
                self.runner = DecoderRunner(self.embed, self._load("decoder_model_merged"), self._heads, self._head_dim)
        except ValueError as exc:
            raise ModelDirError(f"{fast[1] if fast else self.dir.onnx_path('decoder_model_merged')}: {exc}") from None

    def _unload_stage(self, stage: str) -> None:
        if stage == "vision":
            self.vision = None
        else:
            self.encoder = self.runner = None

    @contextmanager
    def _stage(self, stage: str):
        """The graphs of `stage` loaded for the block (opts.load_per_stage: loaded at its start
        unless an enclosing block holds them, released at its end, then the heap trimmed)."""
        per_stage = self.opts.load_per_stage
        if per_stage and self._depth[stage] == 0:
            self._load_stage(stage)
        self._depth[stage] += 1
        try:
            yield
        finally:
            self._depth[stage] -= 1
            if per_stage and self._depth[stage] == 0:
                self._unload_stage(stage)
                self._release_memory()

    def _settle_memory(self) -> None:
        """Load-time memory choices.  The embedding table, when `models export`/`quantize` put it in
        an external-data file (ORT maps those), is advised for random access (models/memory.py):
        no read-ahead around the rows read.  The prompts are embedded now, so that the shared
        arena's first region is theirs (a few KB): ORT never shrinks the first region of a
        kNextPowerOfTwo arena, and the vision tower's first activation made it 32 MB.  Then the
        heap is trimmed."""
        from edge_agent.models.modeldir import external_data

        data = external_data(self.dir.onnx_path("embed_tokens"))
        if data.is_file():
            advise_random(data)
        try:
            for task in TASKS:
                self.prompt_embeds(task)
        except Exception as exc:  # onnxruntime's own error types
            raise ModelDirError(f"{self.dir.onnx_path('embed_tokens')}: cannot run: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        self._release_memory()  # what loading freed: base int8 437 -> 392 MB resident after loading

    def _chunk(self, value: int) -> int:
        if value > 0:
            return value
        return 1 if self.providers[0] == "CPUExecutionProvider" else 8

    @property
    def info(self) -> dict:
        return {"name": self.dir.path.name, "variant": self.dir.label,
                "dir": str(self.dir.path), "providers": list(self.providers),
                "num_beams": self.settings.num_beams, "max_new_tokens": self.settings.max_new_tokens}

    # -- stages ---------------------------------------------------------------------
    def image_features(self, pixel_values) -> np.ndarray:
        """[T,3,H,W] pixel values, or a list of T uint8 HxWx3 tiles (then preprocessed one vision
        chunk at a time: a 768 tile's float pixels are 7 MB) -> [T,577,D], in chunks of
        opts.vision_batch tiles."""
        from edge_agent.models.preprocess import preprocess

        self._release_memory()  # the vision tower's activations are the largest: start from a trimmed heap
        with self._stage("vision"):
            dtype = _input_dtype(self.vision, "pixel_values")
            step = self._chunk(self.opts.vision_batch)
            starts = range(0, len(pixel_values), step)
            parts = []
            for i in starts:
                chunk = pixel_values[i:i + step]
                px = preprocess(list(chunk), self.pre_cfg) if isinstance(pixel_values, list) else chunk
                parts.append(self._run_owned("vision", self.vision, {"pixel_values": px.astype(dtype, copy=False)},
                                             "image_features", self._run_options(i == starts[-1])))
                self._progress("vision", len(parts), len(starts))
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _run_owned(self, part: str, session, feeds: dict, output: str, run_options) -> np.ndarray:
        """The session's output named `output`, written into an array we own.  ONNX Runtime's own outputs
        live in its arena, and one that is kept pins its arena region through the shrink after a
        stage (measured: +32 MB resident after the vision stage).  The output's shape is learned
        from the first call of `part` at each input shape, whose output is copied."""
        key = (part, *(v.shape for v in feeds.values()))
        known = self._out_shapes.get(key)
        if known is None:
            out = session.run([output], feeds, run_options)[0]
            self._out_shapes[key] = (out.shape, out.dtype)
            return np.array(out)
        out = np.empty(*known)
        _run_into(session, feeds, output, out, run_options)
        return out

    def _release_memory(self) -> None:
        """After a stage: return glibc's free heap pages to the OS (numpy temporaries of the stage;
        measured -40 MB before the decode of a base dense-1080p frame).  No-op off glibc."""
        if self.opts.arena_shrink:
            trim_heap()

    def _run_options(self, last: bool):
        """RunOptions that shrink the arena after the call (opts.arena_shrink), for a stage's last call."""
        return self._shrink if last else None

    def prompt_ids(self, task: str) -> list[int]:
        from edge_agent.models.prompts import prompt_for

        return list(self.tokenizer(prompt_for(task))["input_ids"])

    def prompt_embeds(self, task: str) -> np.ndarray:
        if task not in self._prompt_cache:
            ids = np.asarray([self.prompt_ids(task)], np.int64)
            emb = self.embed.run(["inputs_embeds"], {"input_ids": ids})[0][0]
            self._prompt_cache[task] = np.array(emb, np.float32)  # a copy: ORT's output would pin its arena
        return self._prompt_cache[task]

    def encode(self, feats: np.ndarray, tasks: Sequence[str], rows: range | None = None):
        """One row per (tile, task), tile-major: image features then prompt, right-padded to the
        image tokens plus the longest prompt of `tasks`.  rows: which of those rows (default all)."""
        prompts = [self.prompt_embeds(t) for t in tasks]
        rows = range(len(feats) * len(tasks)) if rows is None else rows
        n_img = feats.shape[1]
        x = np.zeros((len(rows), n_img + max(len(p) for p in prompts), feats.shape[2]), np.float32)
        mask = np.zeros(x.shape[:2], np.int64)
        for k, r in enumerate(rows):
            prompt = prompts[r % len(tasks)]
            x[k, :n_img], x[k, n_img:n_img + len(prompt)] = feats[r // len(tasks)], prompt
            mask[k, :n_img + len(prompt)] = 1
        step = self._chunk(self.opts.encoder_batch)
        starts = range(0, len(x), step)
        # Each call is cut to its own rows' longest length (one row per call on CPU: no padding at
        # all), so that an int8 encoder's activation scale, taken over the call's whole tensor,
        # sees only the row itself: a row's states do not depend on the other tasks of its batch
        # (tests/test_batch_invariance.py).  Padded positions of the result are zeros (masked).
        hidden = np.zeros(x.shape, np.float32)
        with self._stage("text"):
            dtype = _input_dtype(self.encoder, "inputs_embeds")
            for i in starts:
                n = int(mask[i:i + step].sum(1).max())
                hidden[i:i + step, :n] = self._run_owned(
                    "encoder", self.encoder, {"inputs_embeds": x[i:i + step, :n].astype(dtype, copy=False),
                                              "attention_mask": mask[i:i + step, :n]}, "last_hidden_state",
                    self._run_options(i == starts[-1]))
        del x
        self._release_memory()
        return hidden, mask

    def decode(self, feats: np.ndarray, tasks: Sequence[str], rows: Sequence[GenerationSettings]) -> list[Generated]:
        """Text encoder and generation of every (tile, task) row, one decode chunk (_decode_chunks)
        at a time, so that only that chunk's encoder states exist (16 rows of base: 29 MB); the
        heap is trimmed at the end."""
        enc_len = feats.shape[1] + max(len(self.prompt_embeds(t)) for t in tasks)
        out: list[Generated] = []
        with self._stage("text"):
            chunks = self._decode_chunks(rows, enc_len)
            for k, (i, j) in enumerate(chunks, 1):
                hidden, mask = self.encode(feats, tasks, range(i, j))  # ends with a heap trim
                self._progress("encoder", k, len(chunks))
                out += generate(self.runner, hidden, mask, self.settings, rows[i:j])
                del hidden, mask
                self._progress("decode", k, len(chunks))
        # the decode's temporaries leave glibc's heap ~70 MB larger (3 beams, 1024 tokens)
        self._release_memory()
        return out

    def _decode_chunks(self, rows: Sequence[GenerationSettings], enc_len: int) -> list[tuple[int, int]]:
        """decode_chunks over rows, each costing its worst-case cache (at its own max_length, beams counted)."""
        costs = [self.runner.kv_bytes_per_row(r.max_length, enc_len) * r.num_beams for r in rows]
        return decode_chunks(costs, self.opts.kv_cache_mb * 2**20, self.opts.decode_batch)

    # -- the API --------------------------------------------------------------------
    def run(self, tiles: Sequence[np.ndarray], tasks: Sequence[str] = TASKS,
            settings: Mapping[str, GenerationSettings] | None = None) -> list[dict[str, TaskOutput]]:
        """settings: optional GenerationSettings per task (default: the engine's for every task)."""
        tasks = tuple(tasks)
        for t in tasks:
            if t not in TASKS:
                raise ModelSettingError(f"unknown task {t!r}: expected one of {', '.join(TASKS)}")
        if not tiles or not tasks:
            return [{} for _ in tiles]
        try:
            feats = self.image_features(list(tiles))
            seqs = self.decode(feats, tasks, [(settings or {}).get(t, self.settings) for t in tasks] * len(tiles))
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime failures at run time
            # The traceback's frames hold the failed call's caches and, with load_per_stage, the
            # graphs its stage had loaded: clear them so that they go now, then trim.  Base int8,
            # load_per_stage, a decode failing mid-way: 269 MB resident after the failure without
            # this (until the next frame), 131 MB as after a frame that succeeds.
            traceback.clear_frames(exc.__traceback__)
            self._release_memory()
            raise InferenceError(f"inference failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        return [{task: self._output(task, seqs[i * len(tasks) + j], tile)
                 for j, task in enumerate(tasks)} for i, tile in enumerate(tiles)]

    def _output(self, task: str, seq: Generated, tile: np.ndarray) -> TaskOutput:
        from edge_agent.models.parse import parse_task

        h, w = tile.shape[:2]
        regions = parse_task(task, seq.ids, seq.probs, self.tokenizer, image_size=(w, h))
        raw = self.tokenizer.decode(seq.ids, skip_special_tokens=False)
        return TaskOutput(task=task, regions=regions, saturated=seq.saturated, raw=raw, token_ids=tuple(seq.ids))
