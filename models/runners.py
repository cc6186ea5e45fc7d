"""The decoder runners and their caches: the two ways this engine runs a Florence-2 decoder with
ONNX Runtime, behind the Runner and Cache contracts written in models/generate.py (which holds
the searches that drive them).

- DecoderRunner + MergedCache: `decoder_model_merged.onnx` (the onnx-community layout).  The first
  step runs with `use_cache_branch=False` and one row per sequence; the cross-attention keys/values
  it returns are kept and reused (later `present.*.encoder.*` outputs are ignored, so graphs that
  return empty tensors there work too).  The self-attention cache is the graph's output, fed back.
- BufferedRunner + BufferCache: edge-agent's fast decoder (`decoder_cross_kv` + `decoder_step`,
  models/export_step.py): cross-attention computed once, self-attention written in place into
  pre-allocated, lazily mapped buffers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DecoderRunner:
    """A Runner (models/generate.py) over embed_tokens + decoder_model_merged (the onnx-community
    layout): the caches are numpy arrays the graph returns, fed back every step."""

    def __init__(self, embed_session, decoder_session, heads: int | None = None, head_dim: int | None = None):
        """heads/head_dim: from config.json, used when the graph's past inputs leave them symbolic."""
        self.embed = embed_session
        self.embeddings = TokenEmbeddings()
        self.dec = decoder_session
        self.outputs = [o.name for o in decoder_session.get_outputs()]
        past = [i for i in decoder_session.get_inputs() if i.name.startswith("past_key_values.")]
        self.num_layers = len(past) // 4
        self.past_names = [f"past_key_values.{i}.{p}.{kv}" for i in range(self.num_layers)
                           for p in ("decoder", "encoder") for kv in ("key", "value")]
        shape = past[0].shape
        self.heads = shape[1] if isinstance(shape[1], int) else heads
        self.head_dim = shape[3] if isinstance(shape[3], int) else head_dim
        if not (isinstance(self.heads, int) and isinstance(self.head_dim, int)):
            raise ValueError("decoder_model_merged: past_key_values shapes are symbolic and no head count was given")
        self.kv_dtype = np.float16 if "float16" in past[0].type else np.float32
        self.hidden_dtype = _dtype_of(decoder_session, "encoder_hidden_states")
        self.embed_dtype = _dtype_of(decoder_session, "inputs_embeds")

    def embed_ids(self, ids: np.ndarray) -> np.ndarray:
        """inputs_embeds [R, 1, D] for the tokens ids [R, 1], from the runner's TokenEmbeddings."""
        return self.embeddings.rows(self.embed, ids, self.embed_dtype)

    def first(self, tokens: np.ndarray, enc_hidden: np.ndarray, enc_mask: np.ndarray,
              max_length: int) -> tuple[np.ndarray, "MergedCache"]:
        """Runner.first; max_length is not needed here (the caches grow by concatenation)."""
        rows = len(tokens)
        feeds = {"inputs_embeds": self.embed_ids(tokens[:, None]), "encoder_attention_mask": enc_mask,
                 "encoder_hidden_states": enc_hidden.astype(self.hidden_dtype, copy=False),
                 "use_cache_branch": np.array([False])}
        empty = np.zeros((rows, self.heads, 0, self.head_dim), self.kv_dtype)
        feeds.update({name: empty for name in self.past_names})
        out = dict(zip(self.outputs, self.dec.run(None, feeds)))
        return _last(out["logits"]), MergedCache(enc_mask, self._kv(out, "decoder"), self._kv(out, "encoder"))

    def step(self, tokens: np.ndarray, cache: "MergedCache") -> np.ndarray:
        """Runner.step.  The with-past branch does not read encoder_hidden_states,
        so an empty one is fed: nothing outside the If (e.g. an int8 graph's activation quantizer)
        works on it per step."""
        emb = self.embed_ids(tokens[:, None])
        feeds = {"inputs_embeds": emb, "encoder_attention_mask": cache.mask,
                 "encoder_hidden_states": np.zeros((len(tokens), 0, emb.shape[2]), self.hidden_dtype),
                 "use_cache_branch": np.array([True])}
        for i in range(self.num_layers):
            feeds[f"past_key_values.{i}.decoder.key"], feeds[f"past_key_values.{i}.decoder.value"] = cache.dec_kv[i]
            feeds[f"past_key_values.{i}.encoder.key"], feeds[f"past_key_values.{i}.encoder.value"] = cache.enc_kv[i]
        out = dict(zip(self.outputs, self.dec.run(None, feeds)))
        cache.dec_kv = self._kv(out, "decoder")
        return _last(out["logits"])

    def kv_bytes_per_row(self, max_length: int, enc_len: int) -> int:
        """Worst-case cache bytes of one row: self-attention at max_length, twice (the step's Concat
        keeps past and present alive), plus cross-attention keys/values."""
        item = np.dtype(self.kv_dtype).itemsize
        return 2 * self.num_layers * self.heads * self.head_dim * item * (2 * max_length + enc_len)

    def _kv(self, out: dict, part: str) -> list:
        return [(out[f"present.{i}.{part}.key"], out[f"present.{i}.{part}.value"]) for i in range(self.num_layers)]


class TokenEmbeddings:
    """The embed_tokens graph's row of each token met so far, kept, so that a decode step looks its
    tokens up instead of calling the graph: that call cost 0.41 ms of a 6-row base int8 step
    (about 13 ms) on the dense-1080p frame; the lookup is a few microseconds.  A token's row does
    not depend on the other ids of the call (the graph is a Gather, then elementwise), so the
    embeddings are the same bits.  At most MAX_ROWS rows are kept (base: 3 KB each); past that
    the store starts again."""

    MAX_ROWS = 2048

    def __init__(self):
        self.known: dict[int, np.ndarray] = {}

    def rows(self, session, ids: np.ndarray, dtype) -> np.ndarray:
        flat = ids.reshape(-1).tolist()
        missing = sorted(set(flat).difference(self.known))
        if missing:
            if len(self.known) + len(missing) > self.MAX_ROWS:
                self.known.clear()
                missing = sorted(set(flat))  # this call's known tokens went too
            out = session.run(["inputs_embeds"], {"input_ids": np.asarray(missing, np.int64)[:, None]})[0]
            out = out.astype(dtype, copy=False)
            self.known.update((t, out[j, 0].copy()) for j, t in enumerate(missing))
        return np.stack([self.known[t] for t in flat]).reshape(ids.shape + (-1,))


def _dtype_of(session, name: str):
    t = next((i.type for i in session.get_inputs() if i.name == name), "float")
    return np.float16 if "float16" in t else np.float32


def _last(logits: np.ndarray) -> np.ndarray:
    return logits[:, -1, :].astype(np.float32, copy=False)


def _take(kv, idx):
    return [(k[idx], v[idx]) for k, v in kv]


@dataclass
class MergedCache:
    """A Cache (models/generate.py): decoder_model_merged's self-attention keys/values per layer
    (replaced by the graph's outputs every step) and cross-attention keys/values, numpy arrays."""
    mask: np.ndarray
    dec_kv: list
    enc_kv: list

    def select_rows(self, idx: np.ndarray, cross_idx: np.ndarray | None = None) -> None:
        """Cache.select_rows, by numpy indexing (new arrays; the graph replaces them every step anyway)."""
        self.dec_kv = _take(self.dec_kv, idx)
        if cross_idx is not None:
            self.mask, self.enc_kv = self.mask[cross_idx], _take(self.enc_kv, cross_idx)


class BufferedRunner:
    """A Runner (models/generate.py) over embed_tokens + edge-agent's fast decoder (models/export_step.py): cross-attention keys
    and values computed once by decoder_cross_kv, then decoder_step per token, whose
    GroupQueryAttention nodes write each new key/value in place into a pre-allocated buffer
    (present.* bound to the past_key_values.* OrtValues), so no step copies the cache."""

    def __init__(self, embed_session, cross_session, step_session, cross_run_options=None):
        """cross_run_options: onnxruntime RunOptions for the decoder_cross_kv call (the engine passes
        arena shrinkage: the cross keys/values land in our arrays, so after that call the arena
        holds nothing the decode needs)."""
        self.embed, self.cross, self.dec = embed_session, cross_session, step_session
        self.embeddings = TokenEmbeddings()
        self.cross_run_options = cross_run_options
        self.cross_names = [o.name for o in cross_session.get_outputs()]
        past = [i for i in step_session.get_inputs() if i.name.startswith("past_key_values.")]
        self.num_layers = len(past) // 2
        shape = past[0].shape
        if not (isinstance(shape[1], int) and isinstance(shape[3], int)):
            raise ValueError("decoder_step: past_key_values must have fixed head count and head size")
        self.heads, self.head_dim = shape[1], shape[3]
        self.self_dtype = np.int8 if "int8" in past[0].type else np.float32  # int8: export_step.int8_self_kv_step
        self.hidden_dtype = _dtype_of(cross_session, "encoder_hidden_states")
        cross_type = next(i.type for i in step_session.get_inputs() if i.name == "cross.0.key")
        self.cross_dtype = np.int8 if "int8" in cross_type else np.float32
        self.cross_mask = any(i.name == "encoder_attention_mask" for i in cross_session.get_inputs())
        self.embed_dtype = np.float32
        logits = next(o for o in step_session.get_outputs() if o.name == "logits")
        # step logits land in a buffer the cache keeps (BufferCache.logits_rows): no [R, V] array is
        # allocated per step (with a fixed mmap threshold, models/memory.py, each one was a fresh
        # mapping whose pages faulted in again)
        self.vocab = logits.shape[2] if isinstance(logits.shape[2], int) else None
        self.logits_dtype = np.float16 if "float16" in logits.type else np.float32

    embed_ids = DecoderRunner.embed_ids

    def kv_bytes_per_row(self, max_length: int, enc_len: int) -> int:
        """Worst-case cache bytes of one row: the self-attention buffer at max_length plus the
        cross-attention keys/values (each int8 or float32)."""
        per_position = 2 * self.num_layers * self.heads * self.head_dim
        return per_position * (np.dtype(self.self_dtype).itemsize * max_length
                               + np.dtype(self.cross_dtype).itemsize * (enc_len + 1))

    def first(self, tokens: np.ndarray, enc_hidden: np.ndarray, enc_mask: np.ndarray,
              max_length: int) -> tuple[np.ndarray, "BufferCache"]:
        """Runner.first; the self-attention buffers are sized for max_length tokens (>= 1)."""
        import onnxruntime as ort

        rows, seq = enc_hidden.shape[:2]
        h, dh = self.heads, self.head_dim
        # cross keys/values [R, H, S + 1, Dh] (float32, or int8 with scales [R, H, 1, Dh] in the int8
        # variant) are written by ORT straight into numpy arrays we own, so that rows leaving the
        # batch can be compacted in place (BufferCache.select_rows) instead of copied
        cross = {name: np.empty((rows, h, 1, dh), np.float32) if name.endswith("_scale")
                 else np.empty((rows, h, seq + 1, dh), self.cross_dtype) for name in self.cross_names}
        io = self.cross.io_binding()
        io.bind_cpu_input("encoder_hidden_states", enc_hidden.astype(self.hidden_dtype, copy=False))
        if self.cross_mask:  # int8: each row's scales over its own attended positions
            io.bind_cpu_input("encoder_attention_mask", enc_mask)
        for name, arr in cross.items():
            io.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(arr))
        self.cross.run_with_iobinding(io, self.cross_run_options)
        shape = (rows, h, max(int(max_length), 1), dh)
        bufs = [lazy_zeros(shape, self.self_dtype) for _ in range(2 * self.num_layers)]
        kv = [cross[f"cross.{i}.{p}"] for i in range(self.num_layers) for p in ("key", "value")]
        scales = {n: a for n, a in cross.items() if n.endswith("_scale")}
        cache = BufferCache(enc_mask, bufs, kv, 0, scales)
        return self.step(tokens, cache), cache

    def step(self, tokens: np.ndarray, cache: "BufferCache") -> np.ndarray:
        """Runner.step: the new keys/values are written in place into the cache's buffers."""
        rows = len(tokens)
        io = self.dec.io_binding()
        logits = cache.logits_rows(rows, self.vocab, self.logits_dtype) if self.vocab else None
        if logits is None:
            io.bind_output("logits", "cpu")  # first: get_outputs() lists outputs in binding order
        else:
            io.bind_output("logits", "cpu", 0, logits.dtype, logits.shape, logits.ctypes.data)
        io.bind_cpu_input("inputs_embeds", self.embed_ids(tokens[:, None]))
        io.bind_cpu_input("encoder_attention_mask", cache.mask)
        io.bind_cpu_input("seqlens_k", np.full(rows, cache.length, np.int32))
        io.bind_cpu_input("total_sequence_length", np.array(cache.length + 1, np.int32))
        for i in range(self.num_layers):
            for j, kv in enumerate(("key", "value")):
                buf = cache.ort_bufs[2 * i + j]
                io.bind_ortvalue_input(f"past_key_values.{i}.decoder.{kv}", buf)
                io.bind_ortvalue_output(f"present.{i}.decoder.{kv}", buf)
                cross = cache.ort_cross[2 * i + j]  # its spare slot takes the masked dummy token
                io.bind_ortvalue_input(f"cross.{i}.{kv}", cross)
                io.bind_ortvalue_output(f"present.{i}.cross.{kv}", cross)
        for name, value in cache.scales.items():
            io.bind_cpu_input(name, value)
        self.dec.run_with_iobinding(io)
        cache.length += 1
        return _last(io.get_outputs()[0].numpy() if logits is None else logits)


class BufferCache:
    """A Cache (models/generate.py): self-attention buffers [R, H, max_length, Dh] filled up to
    `length`, cross-attention keys and values [R, H, S + 1, Dh] (+ their scales [R, H, 1, Dh] when int8); all
    numpy, bound to ORT (the ort_* OrtValues) without copies."""

    def __init__(self, mask: np.ndarray, bufs: list, cross: list, length: int, scales: dict | None = None):
        self.mask, self.length, self.scales = mask, length, scales or {}
        self._logits: np.ndarray | None = None
        self._set_bufs(bufs)
        self._set_cross(cross)

    def select_rows(self, idx: np.ndarray, cross_idx: np.ndarray | None = None) -> None:
        """Cache.select_rows, in the buffers' own memory where it fits: rows leaving the batch
        (increasing idx) are moved down, beam reorders copy aside only the rows they overwrite;
        only more rows than the buffer holds (beams starting) allocate (models/runners.py _rows)."""
        self._set_bufs([_rows(b, idx, self.length) for b in self.bufs])
        if cross_idx is not None:
            self.mask = self.mask[cross_idx]
            self.scales = {name: s[cross_idx] for name, s in self.scales.items()}
            self._set_cross([_rows(c, cross_idx) for c in self.cross])

    def logits_rows(self, rows: int, vocab: int, dtype) -> np.ndarray:
        """[rows, 1, vocab] for decoder_step's logits: the first rows of one buffer kept across
        steps (grown when beams start), so that the Runner.step result is a view of it."""
        if self._logits is None or len(self._logits) < rows:
            self._logits = np.empty((rows, 1, vocab), dtype)
        return self._logits[:rows]

    def _set_bufs(self, bufs: list) -> None:
        import onnxruntime as ort

        self.bufs, self.ort_bufs = bufs, [ort.OrtValue.ortvalue_from_numpy(b) for b in bufs]

    def _set_cross(self, cross: list) -> None:
        import onnxruntime as ort

        self.cross, self.ort_cross = cross, [ort.OrtValue.ortvalue_from_numpy(c) for c in cross]


def lazy_zeros(shape, dtype=np.float32) -> np.ndarray:
    """Zeros in an anonymous mmap: the OS maps a page only when it is first written, so a buffer
    sized for max_length costs memory only as the cache fills.  (np.zeros can come from calloc on
    glibc's heap, which clears, i.e. touches, every page up front: measured +227 MB at the first
    step of a 12-row, 513-token base decode.)"""
    import mmap

    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(n, 1)), dtype, count=int(np.prod(shape))).reshape(shape)


def _rows(a: np.ndarray, idx: np.ndarray, filled: int | None = None) -> np.ndarray:
    """a[idx], reusing a's memory when it has room (only [:, :, :filled] of each row matters when
    filled is given)."""
    idx = np.asarray(idx)
    part = (slice(None), slice(None), slice(0, filled))
    if len(idx) and np.all(np.diff(idx) > 0):  # increasing (rows leaving): move rows down in place
        for j, i in enumerate(idx.tolist()):
            if i != j:
                a[j][part[1:]] = a[i][part[1:]]
        return a[:len(idx)]
    if len(idx) <= len(a):  # beam reordering: in place, copying aside only the rows it overwrites
        _reorder(a, idx, part)
        return a[:len(idx)]
    out = lazy_zeros((len(idx),) + a.shape[1:], a.dtype)  # more rows (beams start from one row each)
    out[part] = a[idx][part] if filled is None else a[idx, :, :filled]
    return out


def _reorder(a: np.ndarray, idx: np.ndarray, part: tuple) -> None:
    """a[j] = a[idx[j]] for every j (within `part`), in place.  Only the source rows that are also
    overwritten are copied aside first: beam search mostly keeps a beam or copies one beam over
    another, so this moves a row or two (3 MB each at 1024 base tokens) where a full gather moved
    and allocated all of them (19 MB per buffer, 12 buffers, every step)."""
    moved = [j for j, i in enumerate(idx.tolist()) if i != j]
    if not moved:
        return
    overwritten = set(moved)
    aside = {i: a[i][part[1:]].copy() for i in {int(idx[j]) for j in moved} if i in overwritten}
    for j in moved:
        i = int(idx[j])
        a[j][part[1:]] = aside[i] if i in aside else a[i][part[1:]]
