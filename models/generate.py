"""KV-cached generation through `decoder_model_merged.onnx` with ONNX Runtime and numpy.

Greedy search and beam search over a batch of sequences (one per tile and task) in one
decoder call per step.  Finished sequences leave the batch: their rows are dropped from
the key/value caches.  Beam search is a numpy port of transformers' (5.x) vectorised
`_beam_search` (same candidate count, length penalty, early stopping heuristic and
finished-beam bookkeeping), so that token ids match `generate` exactly.

The first decoder step runs with `use_cache_branch=False` and one row per sequence; the
cross-attention keys/values it returns are kept and reused (later `present.*.encoder.*`
outputs are ignored, so graphs that return empty tensors there work too).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from models.generation import GenerationSettings, chosen_probs, log_softmax, process_scores

NEG = np.float32(-1.0e9)


@dataclass
class Generated:
    ids: list[int]  # decoder start token first, EOS last unless the budget ran out
    probs: list[float]  # probability of each chosen token under the processed scores; 1.0 for the start
    saturated: bool  # used all max_new_tokens (an EOS there, if any, was the forced one)


class DecoderRunner:
    """Runs embed_tokens + decoder_model_merged sessions with explicit numpy caches."""

    def __init__(self, embed_session, decoder_session, heads: int | None = None, head_dim: int | None = None):
        """heads/head_dim: from config.json, used when the graph's past inputs leave them symbolic."""
        self.embed = embed_session
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
        out = self.embed.run(None, {"input_ids": ids.astype(np.int64)})[0]
        return out.astype(self.embed_dtype, copy=False)

    def first(self, tokens: np.ndarray, enc_hidden: np.ndarray, enc_mask: np.ndarray, max_length: int = 0):
        """tokens [R] -> logits [R, V] (float32), the cache after this step."""
        rows = len(tokens)
        feeds = {"inputs_embeds": self.embed_ids(tokens[:, None]), "encoder_attention_mask": enc_mask,
                 "encoder_hidden_states": enc_hidden.astype(self.hidden_dtype, copy=False),
                 "use_cache_branch": np.array([False])}
        empty = np.zeros((rows, self.heads, 0, self.head_dim), self.kv_dtype)
        feeds.update({name: empty for name in self.past_names})
        out = dict(zip(self.outputs, self.dec.run(None, feeds)))
        return _last(out["logits"]), MergedCache(enc_mask, self._kv(out, "decoder"), self._kv(out, "encoder"))

    def step(self, tokens: np.ndarray, cache: "MergedCache") -> np.ndarray:
        """Later steps; cache is updated.  The with-past branch does not read encoder_hidden_states,
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


def _dtype_of(session, name: str):
    t = next((i.type for i in session.get_inputs() if i.name == name), "float")
    return np.float16 if "float16" in t else np.float32


def _last(logits: np.ndarray) -> np.ndarray:
    return logits[:, -1, :].astype(np.float32, copy=False)


def _take(kv, idx):
    return [(k[idx], v[idx]) for k, v in kv]


@dataclass
class MergedCache:
    """decoder_model_merged's caches: self-attention kv (replaced every step) and cross-attention kv."""
    mask: np.ndarray
    dec_kv: list
    enc_kv: list

    def take(self, idx: np.ndarray, cross_idx: np.ndarray | None = None) -> "MergedCache":
        """Rows idx of the self-attention cache; the cross-attention state is re-sliced only when
        cross_idx is given (beam search reorders beams every step, but a beam's item stays)."""
        if cross_idx is None:
            return MergedCache(self.mask, _take(self.dec_kv, idx), self.enc_kv)
        return MergedCache(self.mask[cross_idx], _take(self.dec_kv, idx), _take(self.enc_kv, cross_idx))


class BufferedRunner:
    """Runs embed_tokens + edge-agent's fast decoder (models/export_step.py): cross-attention keys
    and values computed once by decoder_cross_kv, then decoder_step per token, whose
    GroupQueryAttention nodes write each new key/value in place into a pre-allocated buffer
    (present.* bound to the past_key_values.* OrtValues), so no step copies the cache."""

    def __init__(self, embed_session, cross_session, step_session, cross_run_options=None):
        """cross_run_options: onnxruntime RunOptions for the decoder_cross_kv call (the engine passes
        arena shrinkage: the cross keys/values land in our arrays, so after that call the arena
        holds nothing the decode needs)."""
        self.embed, self.cross, self.dec = embed_session, cross_session, step_session
        self.cross_run_options = cross_run_options
        self.cross_names = [o.name for o in cross_session.get_outputs()]
        past = [i for i in step_session.get_inputs() if i.name.startswith("past_key_values.")]
        self.num_layers = len(past) // 2
        shape = past[0].shape
        if not (isinstance(shape[1], int) and isinstance(shape[3], int)):
            raise ValueError("decoder_step: past_key_values must have fixed head count and head size")
        self.heads, self.head_dim = shape[1], shape[3]
        self.hidden_dtype = _dtype_of(cross_session, "encoder_hidden_states")
        cross_type = next(i.type for i in step_session.get_inputs() if i.name == "cross.0.key")
        self.cross_dtype = np.int8 if "int8" in cross_type else np.float32
        self.embed_dtype = np.float32

    embed_ids = DecoderRunner.embed_ids

    def kv_bytes_per_row(self, max_length: int, enc_len: int) -> int:
        """Worst-case cache bytes of one row: the float32 self-attention buffer at max_length plus the
        cross-attention keys/values (int8 or float32)."""
        per_position = 2 * self.num_layers * self.heads * self.head_dim
        return per_position * (4 * max_length + np.dtype(self.cross_dtype).itemsize * (enc_len + 1))

    def first(self, tokens: np.ndarray, enc_hidden: np.ndarray, enc_mask: np.ndarray, max_length: int = 0):
        """tokens [R] -> logits [R, V], the cache; max_length: tokens the buffer must hold (>= 1)."""
        import onnxruntime as ort

        rows, seq = enc_hidden.shape[:2]
        h, dh = self.heads, self.head_dim
        # cross keys/values [R, H, S + 1, Dh] (float32, or int8 with per-channel scales in the int8
        # variant) are written by ORT straight into numpy arrays we own, so that rows leaving the
        # batch can be compacted in place (BufferCache.take) instead of copied
        cross = {name: np.empty((1, h, 1, dh), np.float32) if name.endswith("_scale")
                 else np.empty((rows, h, seq + 1, dh), self.cross_dtype) for name in self.cross_names}
        io = self.cross.io_binding()
        io.bind_cpu_input("encoder_hidden_states", enc_hidden.astype(self.hidden_dtype, copy=False))
        for name, arr in cross.items():
            io.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(arr))
        self.cross.run_with_iobinding(io, self.cross_run_options)
        shape = (rows, h, max(int(max_length), 1), dh)
        bufs = [lazy_zeros(shape) for _ in range(2 * self.num_layers)]
        kv = [cross[f"cross.{i}.{p}"] for i in range(self.num_layers) for p in ("key", "value")]
        scales = {n: a for n, a in cross.items() if n.endswith("_scale")}
        cache = BufferCache(enc_mask, bufs, kv, 0, scales)
        return self.step(tokens, cache), cache

    def step(self, tokens: np.ndarray, cache: "BufferCache") -> np.ndarray:
        rows = len(tokens)
        io = self.dec.io_binding()
        io.bind_output("logits", "cpu")  # first: get_outputs() lists outputs in binding order
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
        return _last(io.get_outputs()[0].numpy())


class BufferCache:
    """Self-attention buffers [R, H, max_length, Dh] filled up to `length`, cross-attention keys and
    values [R, H, S + 1, Dh] (+ their scales when int8); all numpy, bound to ORT without copies."""

    def __init__(self, mask: np.ndarray, bufs: list, cross: list, length: int, scales: dict | None = None,
                 ort_cross: list | None = None):
        """ort_cross: the OrtValues of `cross` when they already exist (the cross state is unchanged)."""
        import onnxruntime as ort

        self.mask, self.bufs, self.cross, self.length = mask, bufs, cross, length
        self.scales = scales or {}
        self.ort_bufs = [ort.OrtValue.ortvalue_from_numpy(b) for b in bufs]
        self.ort_cross = ort_cross or [ort.OrtValue.ortvalue_from_numpy(c) for c in cross]

    def take(self, idx: np.ndarray, cross_idx: np.ndarray | None = None) -> "BufferCache":
        """Rows idx (self-attention) and cross_idx (cross-attention; None: unchanged).  Increasing
        indices (rows leaving the batch) are compacted in place, without new memory; other orders
        (beam reordering) copy.  Either way this cache must not be used afterwards."""
        n = self.length
        bufs = [_rows(b, idx, n) for b in self.bufs]
        if cross_idx is None:
            return BufferCache(self.mask, bufs, self.cross, n, self.scales, self.ort_cross)
        return BufferCache(self.mask[cross_idx], bufs, [_rows(c, cross_idx) for c in self.cross], n, self.scales)


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


def generate(runner: DecoderRunner, enc_hidden: np.ndarray, enc_mask: np.ndarray,
             settings: GenerationSettings, row_settings: Sequence[GenerationSettings] | None = None
             ) -> list[Generated]:
    """One sequence per row of enc_hidden [N, S, D] / enc_mask [N, S].

    row_settings: optional settings per row (e.g. a token budget per task).  Greedy rows with
    different settings still share every decoder call; beam search runs one group per setting."""
    if len(enc_hidden) == 0:
        return []
    rows = list(row_settings) if row_settings is not None else [settings] * len(enc_hidden)
    if len(rows) != len(enc_hidden):
        raise ValueError(f"row_settings: {len(rows)} settings for {len(enc_hidden)} rows")
    if any(r.decoder_start_token_id != rows[0].decoder_start_token_id for r in rows):
        raise ValueError("row_settings: all rows must share decoder_start_token_id")
    if all(r.num_beams == 1 for r in rows):
        return _greedy(runner, enc_hidden, enc_mask, rows)
    out: list[Generated | None] = [None] * len(rows)
    for group in _groups(rows):
        s = rows[group[0]]
        fn = _beam_search if s.num_beams > 1 else (lambda r, h, m, st: _greedy(r, h, m, [st] * len(h)))
        for i, g in zip(group, fn(runner, enc_hidden[group], enc_mask[group], s)):
            out[i] = g
    return out


def _groups(rows: Sequence[GenerationSettings]) -> list[np.ndarray]:
    """Row indices grouped by equal settings, in order of first appearance."""
    keys: dict = {}
    for i, r in enumerate(rows):
        keys.setdefault(r, []).append(i)
    return [np.asarray(v) for v in keys.values()]


def _process_rows(logits: np.ndarray, seqs: np.ndarray, rows: list[GenerationSettings]) -> np.ndarray:
    groups = _groups(rows)
    if len(groups) == 1:
        return process_scores(logits, seqs, rows[0])
    out = np.empty_like(logits)
    for g in groups:
        out[g] = process_scores(logits[g], seqs[g], rows[g[0]])
    return out


def _greedy(runner, enc_hidden, enc_mask, rows: list[GenerationSettings]) -> list[Generated]:
    n = len(enc_hidden)
    seqs = np.full((n, 1), rows[0].decoder_start_token_id, np.int64)
    probs = [[1.0] for _ in range(n)]
    results: list[Generated | None] = [None] * n
    active = np.arange(n)  # original index of each batch row
    max_len = np.asarray([r.max_length for r in rows])
    logits, cache = runner.first(seqs[:, 0], enc_hidden, enc_mask, int(max_len.max()))
    while True:
        act_rows = [rows[i] for i in active]
        scores = _process_rows(logits, seqs, act_rows)
        tokens = np.argmax(scores, axis=1)
        p = chosen_probs(scores, tokens)
        seqs = np.concatenate([seqs, tokens[:, None]], axis=1)
        for r, i in enumerate(active):
            probs[i].append(float(p[r]))
        eos = np.asarray([t in r.eos_token_ids for t, r in zip(tokens.tolist(), act_rows)], bool)
        done = eos | (seqs.shape[1] >= max_len[active])
        for r in np.flatnonzero(done):
            i = active[r]
            results[i] = Generated(seqs[r].tolist(), probs[i], seqs.shape[1] - 1 >= rows[i].max_new_tokens)
        if done.all():
            return results
        if done.any():
            keep = np.flatnonzero(~done)
            active, seqs, tokens = active[keep], seqs[keep], tokens[keep]
            cache = cache.take(keep, keep)
        logits = runner.step(tokens, cache)


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (ties: lower index first)."""
    k = min(k, x.shape[-1])
    part = np.argpartition(-x, k - 1)[:k]
    order = np.lexsort((part, -x[part]))
    return part[order]


class _BeamItem:
    """transformers' per-batch-item beam search state, for one sequence to generate."""

    def __init__(self, s: GenerationSettings):
        k = s.num_beams
        self.s = s
        self.run_seqs = np.full((k, 1), s.decoder_start_token_id, np.int64)
        self.run_probs = np.ones((k, 1), np.float64)
        self.run_scores = np.full(k, NEG, np.float32)
        self.run_scores[0] = 0.0
        self.fin_seqs: list = [None] * k
        self.fin_probs: list = [None] * k
        self.fin_scores = np.full(k, NEG, np.float32)
        self.fin_done = np.zeros(k, bool)
        self.improvable = True

    def step(self, logprobs: np.ndarray) -> np.ndarray:
        """logprobs [K, V] processed; advances the beams; returns the parent beam of each new running beam."""
        s, k = self.s, self.s.num_beams
        cur_len = self.run_seqs.shape[1]
        vocab = logprobs.shape[1]
        acc = (logprobs + self.run_scores[:, None]).reshape(-1)
        idx = _topk(acc, 2 * k)
        cand_lp, parent, tok = acc[idx], idx // vocab, idx % vocab
        cand_seqs = np.concatenate([self.run_seqs[parent], tok[:, None]], axis=1)
        cand_probs = np.concatenate([self.run_probs[parent], np.exp(logprobs[parent, tok])[:, None]], axis=1)
        hits = np.isin(tok, s.eos_token_ids) | (cur_len + 1 >= s.max_length)
        # e. running beams for the next step
        running_lp = (cand_lp + hits.astype(np.float32) * NEG).astype(np.float32)
        nxt = _topk(running_lp, k)
        # f. finished beams
        self._update_finished(cand_lp, cand_seqs, cand_probs, hits, cur_len)
        self.run_seqs, self.run_probs, self.run_scores = cand_seqs[nxt], cand_probs[nxt], running_lp[nxt]
        self._update_heuristic(cur_len + 1)
        return parent[nxt]

    def _update_finished(self, cand_lp, cand_seqs, cand_probs, hits, cur_len):
        s, k = self.s, self.s.num_beams
        just = hits & (np.arange(len(hits)) < k)
        lp = (cand_lp / np.float32((cur_len + 1 - 1) ** s.length_penalty)).astype(np.float32)
        full = bool(self.fin_done.all()) and s.early_stopping is True
        lp = lp + np.float32(NEG if full else 0.0)
        lp = lp + np.float32(0.0 if self.improvable else NEG)
        lp = lp + (~just).astype(np.float32) * NEG
        merged = np.concatenate([self.fin_scores, lp.astype(np.float32)])
        top = _topk(merged, k)
        seqs = self.fin_seqs + list(cand_seqs)
        probs = self.fin_probs + list(cand_probs)
        done = np.concatenate([self.fin_done, just])
        self.fin_seqs = [seqs[i] for i in top]
        self.fin_probs = [probs[i] for i in top]
        self.fin_scores, self.fin_done = merged[top], done[top]

    def _update_heuristic(self, cur_len: int):
        s = self.s
        if s.early_stopping == "never" and s.length_penalty > 0.0:
            length = s.max_length - 1
        else:
            length = cur_len - 1
        best = np.float32(self.run_scores[0] / np.float32(length ** s.length_penalty))
        worst = np.where(self.fin_done, self.fin_scores.min(), NEG)
        self.improvable = self.improvable and bool(np.any(best > worst))

    @property
    def finished(self) -> bool:
        return (not self.improvable) or (bool(self.fin_done.all()) and self.s.early_stopping is True) \
            or self.run_seqs.shape[1] >= self.s.max_length

    def result(self) -> Generated:
        best = int(np.argmax(self.fin_scores)) if self.fin_done.any() else 0
        seq = self.fin_seqs[best] if self.fin_seqs[best] is not None else self.run_seqs[0]
        probs = self.fin_probs[best] if self.fin_probs[best] is not None else self.run_probs[0]
        ids = [int(t) for t in seq]
        return Generated(ids, [float(p) for p in probs], len(ids) - 1 >= self.s.max_new_tokens)


def _beam_search(runner, enc_hidden, enc_mask, s: GenerationSettings) -> list[Generated]:
    n, k = len(enc_hidden), s.num_beams
    items = [_BeamItem(s) for _ in range(n)]
    results: list[Generated | None] = [None] * n
    # All K beams of an item start identical, so the first step runs one row per item.
    logits, cache = runner.first(np.full(n, s.decoder_start_token_id, np.int64), enc_hidden, enc_mask, s.max_length)
    rep = np.repeat(np.arange(n), k)
    logits, cache = logits[rep], cache.take(rep, rep)
    active = list(range(n))  # item of each block of K rows
    while True:
        seqs = np.concatenate([items[i].run_seqs for i in active])
        logprobs = process_scores(log_softmax(logits), seqs, s)
        gather, still = [], []
        for b, i in enumerate(active):
            parents = items[i].step(logprobs[b * k:(b + 1) * k])
            if items[i].finished:
                results[i] = items[i].result()
            else:
                still.append(b)
                gather.append(b * k + parents)
        if not still:
            return results
        gather = np.concatenate(gather)
        rows = None
        if len(still) != len(active):
            rows = np.concatenate([np.arange(b * k, (b + 1) * k) for b in still])
            active = [active[b] for b in still]
        cache = cache.take(gather, rows)
        tokens = np.concatenate([items[i].run_seqs[:, -1] for i in active])
        logits = runner.step(tokens, cache)
