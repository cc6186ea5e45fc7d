"""Generation settings and logits processors, honoured as transformers honours them.

`GenerationSettings.from_dir(model_dir, **overrides)` reads `generation_config.json` (or,
without one, the generation keys of `config.json`'s text config, as transformers'
`GenerationConfig.from_model_config` does), then applies overrides (flags, config).

The processors are numpy ports of transformers' (5.x) `NoRepeatNGramLogitsProcessor`,
`MinLengthLogitsProcessor`, `MinNewTokensLengthLogitsProcessor`,
`ForcedBOSTokenLogitsProcessor` and `ForcedEOSTokenLogitsProcessor`, applied in that
order.  Lengths count the decoder start token, as transformers' `cur_len` does, and
`max_length = 1 + max_new_tokens` for this encoder-decoder model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from edge_agent.models.errors import ModelDirError, ModelSettingError
from edge_agent.models.modeldir import read_json

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 1024
_KEYS = ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id", "forced_bos_token_id",
         "forced_eos_token_id", "no_repeat_ngram_size", "num_beams", "length_penalty", "early_stopping",
         "min_length", "min_new_tokens")
# transformers features we do not implement; a non-default value is logged, never silently honoured
_UNSUPPORTED = {"repetition_penalty": 1.0, "suppress_tokens": None, "begin_suppress_tokens": None,
                "bad_words_ids": None, "encoder_no_repeat_ngram_size": 0, "num_beam_groups": 1,
                "diversity_penalty": 0.0, "exponential_decay_length_penalty": None, "sequence_bias": None}


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


@dataclass(frozen=True)
class GenerationSettings:
    decoder_start_token_id: int = 2
    eos_token_ids: tuple[int, ...] = (2,)
    pad_token_id: int | None = 1
    forced_bos_token_id: int | None = None
    forced_eos_token_ids: tuple[int, ...] = ()
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    min_length: int = 0
    min_new_tokens: int = 0
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    @property
    def max_length(self) -> int:
        """transformers' max_length: the decoder start token plus max_new_tokens."""
        return 1 + self.max_new_tokens

    @classmethod
    def from_dict(cls, data: dict, source: str = "generation_config") -> "GenerationSettings":
        d = {k: data[k] for k in _KEYS if data.get(k) is not None}
        for key, default in _UNSUPPORTED.items():
            if data.get(key) not in (None, default):
                log.warning("%s: %s=%r is not supported by the ONNX engine and is ignored", source, key, data[key])
        if data.get("do_sample"):
            log.warning("%s: do_sample=true ignored; the engine decodes greedily or with beam search", source)
        try:
            s = cls(
                decoder_start_token_id=int(d.get("decoder_start_token_id", d.get("bos_token_id", 2))),
                eos_token_ids=_ids(d.get("eos_token_id", 2)),
                pad_token_id=None if d.get("pad_token_id") is None else int(d["pad_token_id"]),
                forced_bos_token_id=None if d.get("forced_bos_token_id") is None else int(d["forced_bos_token_id"]),
                forced_eos_token_ids=_ids(d.get("forced_eos_token_id")),
                no_repeat_ngram_size=int(d.get("no_repeat_ngram_size", 0)),
                num_beams=int(d.get("num_beams", 1)),
                length_penalty=float(d.get("length_penalty", 1.0)),
                early_stopping=d.get("early_stopping", False),
                min_length=int(d.get("min_length", 0)),
                min_new_tokens=int(d.get("min_new_tokens", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise ModelDirError(f"{source}: bad generation setting: {exc}") from None
        return s.validated(source)

    @classmethod
    def from_dir(cls, path, **overrides) -> "GenerationSettings":
        """generation_config.json, else config.json's (text_config) generation keys; then overrides
        (None values are ignored, so CLI flags can be passed straight through)."""
        path = Path(path)
        gen_file, cfg_file = path / "generation_config.json", path / "config.json"
        if gen_file.is_file():
            s = cls.from_dict(read_json(gen_file), str(gen_file))
        elif cfg_file.is_file():
            cfg = read_json(cfg_file)
            s = cls.from_dict({**cfg, **(cfg.get("text_config") or {})}, str(cfg_file))
        else:
            log.warning("%s: no generation_config.json or config.json; using Florence-2's defaults", path)
            s = cls.from_dict({"decoder_start_token_id": 2, "eos_token_id": 2, "forced_bos_token_id": 0,
                               "forced_eos_token_id": 2, "no_repeat_ngram_size": 3, "num_beams": 3,
                               "early_stopping": True, "pad_token_id": 1})
        return s.with_overrides(**overrides)

    def with_overrides(self, **overrides) -> "GenerationSettings":
        known = {f.name for f in fields(self)}
        for key in overrides:
            if key not in known:
                raise ModelSettingError(f"unknown generation setting {key!r}")
        changed = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **changed).validated("generation override") if changed else self

    def validated(self, source: str) -> "GenerationSettings":
        if self.num_beams < 1:
            raise ModelSettingError(f"{source}: num_beams must be >= 1, got {self.num_beams}")
        if self.max_new_tokens < 1:
            raise ModelSettingError(f"{source}: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.no_repeat_ngram_size < 0:
            raise ModelSettingError(f"{source}: no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.early_stopping not in (True, False, "never"):
            raise ModelSettingError(f"{source}: early_stopping must be true, false or \"never\", got {self.early_stopping!r}")
        return self

    def to_transformers(self) -> dict:
        """The same settings as `model.generate` keyword arguments (tests, benchmark)."""
        return dict(decoder_start_token_id=self.decoder_start_token_id, eos_token_id=list(self.eos_token_ids),
                    pad_token_id=self.pad_token_id, forced_bos_token_id=self.forced_bos_token_id,
                    forced_eos_token_id=list(self.forced_eos_token_ids) or None,
                    no_repeat_ngram_size=self.no_repeat_ngram_size, num_beams=self.num_beams,
                    length_penalty=self.length_penalty, early_stopping=self.early_stopping,
                    min_length=self.min_length, min_new_tokens=self.min_new_tokens or None,
                    max_new_tokens=self.max_new_tokens, do_sample=False)


# The functions below take [R, V] arrays (V: the vocabulary, 51k) once per decode step.  With
# inplace=True they overwrite their input instead of allocating [R, V] temporaries (the decode
# loops own their logits): the same operations in the same order, so the same bits.


def log_softmax(x: np.ndarray, inplace: bool = False, scratch: np.ndarray | None = None) -> np.ndarray:
    """scratch: an array of x's shape and dtype for the exponentials (its values are gone
    afterwards), so that no [R, V] array is allocated."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0).astype(x.dtype)
    shifted = np.subtract(x, m, out=x if inplace else None)
    lse = np.log(np.sum(np.exp(shifted, out=scratch), axis=-1, keepdims=True))
    return np.subtract(shifted, lse, out=shifted)


def chosen_probs(scores: np.ndarray, tokens: np.ndarray, inplace: bool = False) -> np.ndarray:
    """softmax(scores)[r, tokens[r]] per row, without the full [R, V] softmax (one exp pass).
    inplace: `scores` is used as the work array (its values are gone afterwards)."""
    m = np.max(scores, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0).astype(scores.dtype)
    rows = np.arange(len(tokens))
    picked = scores[rows, tokens] - m[:, 0]
    work = np.subtract(scores, m, out=scores if inplace else None)
    lse = np.log(np.sum(np.exp(work, out=work), axis=-1))
    return np.exp(picked - lse)


def banned_ngram_tokens(ids: np.ndarray, n: int) -> np.ndarray:
    """Tokens that would repeat an n-gram already in `ids` (transformers' rule)."""
    cur_len = len(ids)
    if n <= 0 or cur_len < n:
        return np.zeros(0, np.int64)
    prefix = ids[cur_len + 1 - n:]
    windows = np.lib.stride_tricks.sliding_window_view(ids, n)
    matches = np.all(windows[:, :-1] == prefix, axis=1)
    return windows[matches, -1]


class NgramIndex:
    """The n-grams of each row of a batch so far, kept as the rows grow: the tokens that
    `banned_ngram_tokens` would return, looked up per row and step instead of found by a scan of
    the whole sequence (up to 1024 tokens, every row, every step: 0.37 ms of a 6-row base step).
    Same tokens, possibly in another order, so the processed scores are the same bits.

    ngrams[r] maps the first n - 1 tokens of each n-gram of row r to the tokens that followed them."""

    def __init__(self, seqs: np.ndarray, n: int):
        self.n = n
        self.ngrams: list[dict] = [{} for _ in range(len(seqs))]
        for r, ids in enumerate(seqs.tolist()):
            for j in range(len(ids) - n + 1):
                self.ngrams[r].setdefault(tuple(ids[j:j + n - 1]), []).append(ids[j + n - 1])

    def add(self, seqs: np.ndarray) -> None:
        """seqs [R, cur_len]: the same rows, one token longer than at the last call."""
        n = self.n
        if seqs.shape[1] < n:
            return
        for grams, tail in zip(self.ngrams, seqs[:, -n:].tolist()):
            grams.setdefault(tuple(tail[:-1]), []).append(tail[-1])

    def select(self, keep: np.ndarray) -> None:
        """Keep the rows `keep` (increasing: rows leaving the batch)."""
        self.ngrams = [self.ngrams[i] for i in keep.tolist()]

    def banned(self, r: int, ids: np.ndarray) -> list:
        """banned_ngram_tokens(ids, n) for row r, whose sequence so far is ids."""
        if len(ids) < self.n:
            return []
        return self.ngrams[r].get(tuple(ids[len(ids) + 1 - self.n:].tolist()), [])


def process_scores(scores: np.ndarray, seqs: np.ndarray, s: GenerationSettings, inplace: bool = False,
                   ngrams: NgramIndex | None = None, rows: np.ndarray | None = None) -> np.ndarray:
    """scores [R, V] (logits for greedy, log-probs for beam search); seqs [R, cur_len] the
    sequences so far, decoder start token included.  Returns the processed scores (`scores`
    itself when inplace).  ngrams: an index of these rows' n-grams (for no_repeat_ngram_size),
    whose row rows[r] is row r here (rows None: the same rows)."""
    cur_len = seqs.shape[1]
    vocab = scores.shape[1]
    out = scores if inplace else scores.copy()
    if s.no_repeat_ngram_size > 0 and cur_len >= s.no_repeat_ngram_size:
        for r in range(len(seqs)):
            if ngrams is None:
                banned = banned_ngram_tokens(seqs[r], s.no_repeat_ngram_size)
            else:
                banned = np.asarray(ngrams.banned(r if rows is None else int(rows[r]), seqs[r]), np.int64)
            out[r, banned[banned < vocab]] = -np.inf
    eos = [e for e in s.eos_token_ids if e < vocab]
    if eos and (cur_len < s.min_length or cur_len - 1 < s.min_new_tokens):
        out[:, eos] = -np.inf
    if s.forced_bos_token_id is not None and cur_len == 1:
        out[:] = -np.inf
        out[:, s.forced_bos_token_id] = 0
    if s.forced_eos_token_ids and cur_len == s.max_length - 1:
        out[:] = -np.inf
        out[:, list(s.forced_eos_token_ids)] = 0
    return out
