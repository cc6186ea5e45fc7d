"""Generated tokens -> Regions, exactly as transformers' Florence-2 post-processor parses
them, plus a confidence per box / text line.

Reference: `Florence2Processor.post_process_generation(text, task, image_size)` on the
text `tokenizer.decode(ids, skip_special_tokens=False)` (transformers 5,
processing_florence2.py).  We rebuild that text ourselves with, for every character, the
index of the token it came from, then run the reference's regular expressions on it.  A
match's character span therefore maps back to the tokens that produced it, and the
confidence of a box or text line is the geometric mean of the probabilities of the tokens
of its label/text and its location tokens.

Differences from the reference, on purpose:
- coordinates stay float, (bin + 0.5) * size / 1000; the reference truncates them to int;
- nothing raises: any token ids (unknown ids are skipped, as the tokenizer does) give a
  possibly empty Regions.
"""
from __future__ import annotations

import codecs
import math
import re
import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edge_agent.errors import ConfigError
from tiling.regions import Regions

OD_PHRASE = re.compile(r"([^<]+(?:<loc_\d+>){4,})")
OD_LABEL = re.compile(r"^\s*(.*?)(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_)")
OD_BOX = re.compile(r"<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>")
OCR_LINE = re.compile(r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>")
REMOVED = ("<s>", "</s>", "<pad>")  # the reference strips these, in this order, before parsing
BINS = 1000
_TASKS = {"od": "od", "<OD>": "od", "ocr": "ocr", "<OCR_WITH_REGION>": "ocr"}


@dataclass(frozen=True)
class TrackedText:
    """Text and, per character, the index of the token that produced it."""
    text: str
    owners: tuple[int, ...]

    def tokens(self, start: int, end: int) -> set[int]:
        return set(self.owners[start:end])


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character table (the ByteLevel pre-tokenizer's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_CHAR_BYTE = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_LEVEL = weakref.WeakKeyDictionary()  # tokenizer -> bool


def _is_byte_level(tokenizer) -> bool:
    try:
        return _BYTE_LEVEL[tokenizer]
    except (KeyError, TypeError):
        pass
    try:
        value = type(tokenizer.backend_tokenizer.decoder).__name__ == "ByteLevel"
    except AttributeError:
        value = False
    try:
        _BYTE_LEVEL[tokenizer] = value
    except TypeError:
        pass
    return value


def _token_bytes(token: str) -> bytes:
    """How the ByteLevel decoder turns one token into bytes (tokenizers' decode_chain)."""
    try:
        return bytes(_CHAR_BYTE[c] for c in token)
    except KeyError:
        return token.encode("utf-8")


def _tokens(token_ids: Sequence[int], tokenizer) -> list[tuple[int, str]]:
    """(index in token_ids, token string) for ids the tokenizer knows; others are skipped."""
    n = len(tokenizer)
    idx = [i for i, t in enumerate(token_ids) if 0 <= int(t) < n]
    toks = tokenizer.convert_ids_to_tokens([int(token_ids[i]) for i in idx]) if idx else []
    return [(i, t) for i, t in zip(idx, toks) if t is not None]


def decode_tracked(token_ids: Sequence[int], tokenizer) -> TrackedText:
    """`tokenizer.decode(ids, skip_special_tokens=False)` with the source token of each character."""
    toks = _tokens(token_ids, tokenizer)
    if not _is_byte_level(tokenizer):
        return _decode_per_token(toks, tokenizer)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    chars: list[str] = []
    owners: list[int] = []
    for i, tok in toks:
        for b in _token_bytes(tok):
            out = decoder.decode(bytes((b,)))
            chars.append(out)
            owners.extend([i] * len(out))
    if toks:
        out = decoder.decode(b"", final=True)
        chars.append(out)
        owners.extend([toks[-1][0]] * len(out))
    return TrackedText("".join(chars), tuple(owners))


def _decode_per_token(toks, tokenizer) -> TrackedText:
    special = set(getattr(tokenizer, "all_special_tokens", ()))
    text, owners = [], []
    for i, tok in toks:
        piece = tok if tok in special else tokenizer.convert_tokens_to_string([tok])
        text.append(piece)
        owners.extend([i] * len(piece))
    return TrackedText("".join(text), tuple(owners))


def strip_markers(t: TrackedText) -> TrackedText:
    """The reference's `text.replace("<s>", "").replace("</s>", "").replace("<pad>", "")`."""
    text, owners = t.text, list(t.owners)
    for marker in REMOVED:
        keep = [True] * len(text)
        pos = text.find(marker)
        while pos >= 0:
            keep[pos:pos + len(marker)] = [False] * len(marker)
            pos = text.find(marker, pos + len(marker))
        text = "".join(c for c, k in zip(text, keep) if k)
        owners = [o for o, k in zip(owners, keep) if k]
    return TrackedText(text, tuple(owners))


def _stripped_span(s: str, start: int) -> tuple[int, int]:
    """Span of `s.strip()` inside the text where `s` starts at `start`."""
    lead = len(s) - len(s.lstrip())
    return start + lead, start + lead + len(s.strip())


def _confidence(token_idx: set[int], probs) -> float:
    if probs is None or not token_idx:
        return 1.0
    logs = []
    for i in token_idx:
        p = float(probs[i]) if i < len(probs) else 1.0
        logs.append(math.log(p) if p > 0 and math.isfinite(p) else -math.inf)
    score = math.exp(sum(logs) / len(logs))
    return min(max(score, 0.0), 1.0)


def _dequantize(bins: Sequence[int], size: tuple[float, float]) -> list[float]:
    """(bin + 0.5) * size / 1000 for alternating x, y bins, in float."""
    w, h = size
    return [(b + 0.5) * (w / BINS if k % 2 == 0 else h / BINS) for k, b in enumerate(bins)]


def _bins(m: re.Match, first: int, count: int) -> list[int] | None:
    try:
        return [int(m.group(first + k)) for k in range(count)]
    except ValueError:  # \d matches digits int() cannot always read
        return None


def parse_od(t: TrackedText, probs, image_size) -> Regions:
    boxes, scores, labels = [], [], []
    for pm in OD_PHRASE.finditer(t.text):
        phrase_text, base = pm.group(1), pm.start(1)
        lm = OD_LABEL.search(phrase_text)
        if not lm:
            continue
        ls, le = _stripped_span(lm.group(), base + lm.start())
        label = lm.group().strip().encode("ascii", "ignore").decode("ascii")
        label_tokens = t.tokens(ls, le)
        for bm in OD_BOX.finditer(phrase_text):
            bins = _bins(bm, 1, 4)
            if bins is None:
                continue
            boxes.append(_dequantize(bins, image_size))
            scores.append(_confidence(label_tokens | t.tokens(base + bm.start(), base + bm.end()), probs))
            labels.append(label)
    if not labels:
        return Regions.empty()
    return Regions(np.asarray(boxes), np.asarray(scores), labels)


def parse_ocr(t: TrackedText, probs, image_size) -> Regions:
    quads, scores, texts = [], [], []
    for m in OCR_LINE.finditer(t.text):
        bins = _bins(m, 2, 8)
        if bins is None:
            continue
        ts, te = _stripped_span(m.group(1), m.start(1))
        quads.append(_dequantize(bins, image_size))
        scores.append(_confidence(t.tokens(ts, te) | t.tokens(m.end(1), m.end()), probs))
        texts.append(m.group(1).strip())
    if not texts:
        return Regions.empty(ocr=True)
    return Regions.from_quads(np.asarray(quads), np.asarray(scores), texts)


def parse_task(task: str, token_ids: Sequence[int], token_probs, tokenizer, image_size=(768, 768)) -> Regions:
    """Parse one generated sequence (decoder start token included) into the tile's pixels.

    `token_probs[i]` is the probability of the token chosen at position i (1.0 for the
    start token); `image_size` is (width, height) of the tile.
    """
    kind = _TASKS.get(task)
    if kind is None:
        raise ConfigError(f"unknown task {task!r}: expected 'od' or 'ocr'")
    text = strip_markers(decode_tracked(list(token_ids), tokenizer))
    size = (float(image_size[0]), float(image_size[1]))
    return parse_od(text, token_probs, size) if kind == "od" else parse_ocr(text, token_probs, size)
