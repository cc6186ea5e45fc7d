"""Training targets written exactly as Florence-2 writes its answers.

`<OD>`:              label<loc_x0><loc_y0><loc_x1><loc_y1>label<loc_…>…
`<OCR_WITH_REGION>`: text<loc_x1><loc_y1><loc_x2><loc_y2><loc_x3><loc_y3><loc_x4><loc_y4>…

Coordinates are quantized as transformers' `Florence2PostProcessor.quantize` does: 1000 bins
per axis of the image, `floor(v / (size / 1000))` clamped to 0..999, x before y, boxes as
(xmin, ymin, xmax, ymax) and quads as four (x, y) points clockwise from the top-left.  The
post-processor reads a bin back as its centre, `(bin + 0.5) * size / 1000`.  Instances come
in reading order (`reading_order`): row by row from the top, left to right within a row, one
label or text before each instance's location tokens.  The tokenizer adds `<s>` … `</s>`, which is
what the decoder produces after its start token `</s>`.

tests/test_targets.py checks these strings against transformers' processor and post-processor
(quantize, then parse the decoded tokens back) and against this project's parser.
"""
from __future__ import annotations

import math
from typing import Sequence

from edge_agent.models.errors import ModelSettingError

BINS = 1000


def quantize(values: Sequence[float], size: tuple[float, float]) -> list[int]:
    """Alternating x, y coordinates (a box's 4 or a quad's 8) -> bins, as the processor does."""
    w, h = size
    per = (w / BINS, h / BINS)
    return [min(BINS - 1, max(0, math.floor(v / per[i % 2]))) for i, v in enumerate(values)]


def dequantize(bins: Sequence[int], size: tuple[float, float]) -> list[float]:
    """The post-processor's reading of bins: each bin's centre (it then truncates to int)."""
    w, h = size
    return [(b + 0.5) * (w if i % 2 == 0 else h) / BINS for i, b in enumerate(bins)]


def _locs(bins: Sequence[int]) -> str:
    return "".join(f"<loc_{b}>" for b in bins)


def _check_label(label: str, what: str, ascii_only: bool) -> str:
    text = " ".join(str(label).split())
    if not text or "<" in text or ">" in text:
        raise ModelSettingError(f"{what} {label!r}: empty or contains '<' or '>' (Florence-2 cannot write it)")
    if ascii_only and not text.isascii():
        raise ModelSettingError(f"{what} {label!r}: not ASCII (the reference post-processor drops non-ASCII "
                                "characters from <OD> labels)")
    return text


def reading_order(boxes: Sequence[Sequence[int]]) -> list[int]:
    """Indices of (x0, y0, x1, y1) boxes row by row, top to bottom, then left to right.

    Boxes are taken by their vertical centre, top first.  The first box of a row opens it, and
    a box whose centre lies within the opener's vertical extent joins it; any other opens the
    next row.  Each row is then read by x0.  On a shelf, products of different heights standing
    on one board share a row, and so do the price tags on its edge, so the sequence walks each
    shelf left to right (sorting by the top edge alone would jump back and forth along it as
    product heights change).  Ties break by index: the order is deterministic."""
    by_centre = sorted(range(len(boxes)), key=lambda i: (boxes[i][1] + boxes[i][3], boxes[i][0], i))
    rows: list[list[int]] = []
    span = (0.0, -1.0)
    for i in by_centre:
        centre = (boxes[i][1] + boxes[i][3]) / 2
        if rows and span[0] <= centre <= span[1]:
            rows[-1].append(i)
        else:
            rows.append([i])
            span = (boxes[i][1], boxes[i][3])
    return [i for row in rows for i in sorted(row, key=lambda i: (boxes[i][0], boxes[i][1], i))]


def _in_reading_order(items: list[tuple[list[int], str]]) -> list[str]:
    """items: (bins, piece); bins alternate x, y (a box's 4 or a quad's 8)."""
    extents = [(min(b[0::2]), min(b[1::2]), max(b[0::2]), max(b[1::2])) for b, _ in items]
    return [items[i][1] for i in reading_order(extents)]


def od_pieces(objects: Sequence[tuple[str, Sequence[float]]], size: tuple[float, float]) -> list[str]:
    """One `label<loc_…>×4` piece per (label, (x0, y0, x1, y1)) box, in reading order."""
    items = []
    for label, box in objects:
        bins = quantize(box, size)
        items.append((bins, _check_label(label, "label", True) + _locs(bins)))
    return _in_reading_order(items)


def ocr_pieces(lines: Sequence[tuple[str, Sequence[float]]], size: tuple[float, float]) -> list[str]:
    """One `text<loc_…>×8` piece per (text, quad x1,y1,…,x4,y4) line, in reading order."""
    items = []
    for text, quad in lines:
        if len(quad) != 8:
            raise ModelSettingError(f"text {text!r}: expected a quad of 8 numbers, got {len(quad)}")
        bins = quantize(quad, size)
        items.append((bins, _check_label(text, "text", False) + _locs(bins)))
    return _in_reading_order(items)


def quad_from_box(box: Sequence[float]) -> list[float]:
    """An axis-aligned box as a quad clockwise from the top-left (OCR lines given by bbox only)."""
    x0, y0, x1, y1 = box
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def fit_pieces(pieces: Sequence[str], tokenizer, max_tokens: int) -> tuple[str, int]:
    """Join as many whole pieces as fit in max_tokens target tokens (with <s> and </s>);
    returns (target text, pieces used).  Location tokens are added tokens, so each piece
    tokenizes on its own as it does inside the whole string."""
    budget, used, out = max_tokens - 2, 0, []
    for piece in pieces:
        n = len(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if n > budget:
            break
        budget -= n
        out.append(piece)
        used += 1
    return "".join(out), used
