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

import bisect
import codecs
import math
import re
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from edge_agent.models.errors import ModelSettingError
from edge_agent.models.tokens import Tokenizer
from edge_agent.tiling.regions import Regions

# The reference's patterns (processing_florence2.py).  Run with re.finditer they are
# quadratic in the text length: a 1024-token degenerate output ("bottle bottle ...") takes
# ~1 s.  `od_phrases` / `ocr_lines` find exactly the same matches in linear time
# (tests/test_parse.py checks them against re.finditer on random strings).
OD_PHRASE = re.compile(r"([^<]+(?:<loc_\d+>){4,})")
OD_LABEL = re.compile(r"^\s*(.*?)(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_)")
OD_BOX = re.compile(r"<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>")
OCR_LINE = re.compile(r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>")
_OD_LOCS = re.compile(r"(?:<loc_\d+>){4,}")
_OCR_LOCS = re.compile(r"<loc_(\d+)>" * 8)
REMOVED = ("<s>", "</s>", "<pad>")  # the reference strips these, in this order, before parsing
BINS = 1000
_TASKS = {"od": "od", "<OD>": "od", "ocr": "ocr", "<OCR_WITH_REGION>": "ocr"}


@dataclass(frozen=True)
class TrackedText:
    """Text and, per character, the index of the token that produced it.

    A character whose UTF-8 bytes are split over several tokens belongs to the token that
    completes it; `carried` lists the earlier tokens that contributed bytes to it."""
    text: str
    owners: tuple[int, ...]
    carried: dict = field(default_factory=dict)  # completing token -> earlier tokens

    def tokens(self, start: int, end: int) -> set[int]:
        found = set(self.owners[start:end])
        for i in [i for i in found if i in self.carried]:
            found.update(self.carried[i])
        return found


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


def _is_byte_level(tokenizer: Tokenizer) -> bool:
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


def _tokens(token_ids: Sequence[int], tokenizer: Tokenizer) -> list[tuple[int, str]]:
    """(index in token_ids, token string) for ids the tokenizer knows; others are skipped."""
    n = len(tokenizer)
    idx = [i for i, t in enumerate(token_ids) if 0 <= int(t) < n]
    toks = tokenizer.convert_ids_to_tokens([int(token_ids[i]) for i in idx]) if idx else []
    return [(i, t) for i, t in zip(idx, toks) if t is not None]


def decode_tracked(token_ids: Sequence[int], tokenizer: Tokenizer) -> TrackedText:
    """`tokenizer.decode(ids, skip_special_tokens=False)` with the source token of each character."""
    toks = _tokens(token_ids, tokenizer)
    if not _is_byte_level(tokenizer):
        return _decode_per_token(toks, tokenizer)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    chars: list[str] = []
    owners: list[int] = []
    carried: dict[int, tuple[int, ...]] = {}
    pending: list[int] = []  # tokens whose bytes are not yet part of a character
    for i, tok in toks:
        out = decoder.decode(_token_bytes(tok))
        if pending and out:
            carried[i] = tuple(pending)
            pending = []
        if decoder.getstate()[0]:
            pending.append(i)
        chars.append(out)
        owners.extend([i] * len(out))
    if toks:
        out = decoder.decode(b"", final=True)
        chars.append(out)
        owners.extend([toks[-1][0]] * len(out))
    return TrackedText("".join(chars), tuple(owners), carried)


def _decode_per_token(toks, tokenizer: Tokenizer) -> TrackedText:
    special = set(getattr(tokenizer, "all_special_tokens", ()))
    text, owners = [], []
    for i, tok in toks:
        piece = tok if tok in special else tokenizer.convert_tokens_to_string([tok])
        text.append(piece)
        owners.extend([i] * len(piece))
    return TrackedText("".join(text), tuple(owners))


def od_phrases(text: str):
    """(start, end) of each match of OD_PHRASE, as re.finditer finds them, in O(n).

    `[^<]+` runs to the next "<" at q, so a match starting anywhere in [pos, q) exists
    iff `(?:<loc_\\d+>){4,}` matches at q, and then the earliest start, pos, wins."""
    pos, n = 0, len(text)
    while pos < n:
        if text[pos] == "<":
            pos += 1
            continue
        q = text.find("<", pos)
        if q < 0:
            return
        m = _OD_LOCS.match(text, q)
        if m:
            yield pos, m.end()
            pos = m.end()
        else:
            pos = q


def ocr_lines(text: str):
    """(start, tail_start, tail_match) of each match of OCR_LINE, as re.finditer finds them, in O(n log n).

    `(.+?)` is lazy and `.` stops at newlines: from pos the match ends its text at the
    first place e > pos where eight location tokens follow, unless a newline comes first,
    in which case no match can start before that newline."""
    tails = [i for i in _find_all(text, "<loc_") if _OCR_LOCS.match(text, i)]
    pos, n = 0, len(text)
    while pos < n and tails:
        k = bisect.bisect_left(tails, pos + 1)
        if k == len(tails):
            return
        e = tails[k]
        nl = text.find("\n", pos, e)
        if nl >= 0:
            pos = nl + 1
            continue
        m = _OCR_LOCS.match(text, e)
        yield pos, e, m
        pos = m.end()


def _find_all(text: str, sub: str):
    i = text.find(sub)
    while i >= 0:
        yield i
        i = text.find(sub, i + 1)


def strip_markers(t: TrackedText) -> TrackedText:
    """The reference's `text.replace("<s>", "").replace("</s>", "").replace("<pad>", "")`."""
    text, owners = t.text, t.owners
    for marker in REMOVED:
        if marker not in text:
            continue
        parts, kept, pos = [], [], 0
        idx = text.find(marker)
        while idx >= 0:  # non-overlapping, left to right, as str.replace
            parts.append(text[pos:idx])
            kept.extend(owners[pos:idx])
            pos = idx + len(marker)
            idx = text.find(marker, pos)
        parts.append(text[pos:])
        kept.extend(owners[pos:])
        text, owners = "".join(parts), tuple(kept)
    return TrackedText(text, owners, t.carried)


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
    for base, end in od_phrases(t.text):
        phrase_text = t.text[base:end]
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
    for start, e, tail in ocr_lines(t.text):
        bins = _bins(tail, 1, 8)
        if bins is None:
            continue
        content = t.text[start:e]
        ts, te = _stripped_span(content, start)
        quads.append(_dequantize(bins, image_size))
        scores.append(_confidence(t.tokens(ts, te) | t.tokens(e, tail.end()), probs))
        texts.append(content.strip())
    if not texts:
        return Regions.empty(ocr=True)
    return Regions.from_quads(np.asarray(quads), np.asarray(scores), texts)


def parse_task(task: str, token_ids: Sequence[int], token_probs, tokenizer: Tokenizer,
               image_size=(768, 768)) -> Regions:
    """Parse one generated sequence (decoder start token included) into the tile's pixels.

    `token_probs[i]` is the probability of the token chosen at position i (1.0 for the
    start token); `image_size` is (width, height) of the tile.
    """
    kind = _TASKS.get(task)
    if kind is None:
        raise ModelSettingError(f"unknown task {task!r}: expected 'od' or 'ocr'")
    text = strip_markers(decode_tracked(list(token_ids), tokenizer))
    size = (float(image_size[0]), float(image_size[1]))
    return parse_od(text, token_probs, size) if kind == "od" else parse_ocr(text, token_probs, size)
