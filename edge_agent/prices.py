"""Price tags: OCR lines parsed into structured prices, each linked to the facing it labels.

    parse_prices("2 FOR $5")      -> [Price(amount=Decimal("5"), quantity=2, kind="multi_buy", symbol="$")]
    parse_prices("$0.25/oz")      -> [Price(amount=Decimal("0.25"), unit="oz", kind="unit_price", ...)]
    parse_prices("1,49 €")        -> [Price(amount=Decimal("1.49"), currency="EUR", symbol="€")]

What a line may hold:

- a currency symbol or ISO code before or after the number (`$`, `€`, `£`, `¥`, `₹`,
  `R$`, `zł`, `kr`, `CHF`, `EUR` ...), or cents (`99¢`, `99c`); a bare number counts as a
  price only with two decimals (`3.99`), or after `FOR` / `/` in a multi-buy;
- a decimal point or a decimal comma: with both, the last one is the decimal mark; a
  single `,` followed by exactly three digits is a thousands separator (`$1,299`),
  otherwise the decimal mark; a single `.` is the decimal mark (`$1.299/lb` is a unit
  price) unless `[prices] decimal = ","`;
- multi-buy: `2 FOR $5`, `3/$10`, `BUY 2 FOR 5.00` (`quantity` items for `amount`);
- unit prices: `$0.25/oz`, `$1.99 per lb`, `2,99 €/kg`, `€0,89/100g`, `1 kg = 3,98 €`,
  `$4.99 ea`;
- savings and regular prices: `SAVE $1.00`, `$1 OFF`, `REG $4.99`, `WAS $4.99`;
- OCR noise: `O`/`o` read for 0 and `l`/`I`/`|` for 1 inside a number (`$2.5O`, `l.49`),
  `S` for `$` before a number (`S3.99`), spaces around the decimal mark (`3 .99`), cents
  printed small (`$3 99`, `3⁹⁹`).

`currency` is the ISO 4217 code when the tag prints one or an unambiguous symbol (`€`,
`£`, `R$` ...); for `$`, `kr`, `¢` or no symbol it is `[prices] currency` ("" leaves it
null).

**Linking rule.**  A price tag belongs to a zone by the zones' own membership rule (the
bottom centre of its text box).  It labels the *nearest facing above it in the same zone*:
among the detections in the tag's zone (or, for a tag in no zone, the detections in no
zone) whose box overlaps the tag's box horizontally and whose centre lies above the tag's
top edge, the one with the smallest vertical gap between its bottom edge and the tag's top
edge; ties go to the smaller horizontal distance between centres.  A tag with no such
detection has `facing` null.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Sequence

import numpy as np

DECIMAL_MARKS = ("auto", ".", ",")
KINDS = ("price", "multi_buy", "unit_price", "saving", "regular")

# printed symbol -> ISO 4217 code, when the symbol names one currency
SYMBOLS = {"€": "EUR", "£": "GBP", "¥": "JPY", "円": "JPY", "₹": "INR", "₩": "KRW", "₽": "RUB", "₺": "TRY",
           "zł": "PLN", "R$": "BRL", "US$": "USD", "C$": "CAD", "A$": "AUD", "Kč": "CZK", "Ft": "HUF",
           "$": None, "kr": None, "¢": None}
CODES = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF", "INR",
         "BRL", "MXN", "CNY", "RUB", "TRY", "ZAR", "KRW", "SGD", "HKD", "RON", "ILS")
UNITS = {"oz": "oz", "fl oz": "fl oz", "floz": "fl oz", "lb": "lb", "lbs": "lb", "kg": "kg", "g": "g", "gr": "g",
         "l": "l", "ltr": "l", "lt": "l", "ml": "ml", "cl": "cl", "ct": "ct", "count": "ct", "pk": "pk", "pack": "pk",
         "ea": "each", "each": "each", "pc": "each", "pcs": "each", "stk": "each", "st": "each", "unit": "each",
         "m": "m", "sq ft": "sq ft", "qt": "qt", "gal": "gal", "pt": "pt", "dz": "dz", "doz": "dz"}


@dataclass(frozen=True)
class PriceOptions:
    """The `[prices]` section."""

    enabled: bool = True
    currency: str = ""  # ISO 4217 code for tags showing "$", "kr", "¢" or no symbol; "" leaves currency null
    decimal: str = "auto"  # "auto", "." or ",": the decimal mark of a single-separator number

    def __post_init__(self):
        if self.currency and not re.fullmatch(r"[A-Z]{3}", self.currency):
            raise ValueError(f"currency: {self.currency!r} must be a 3-letter ISO 4217 code such as USD, or \"\"")
        if self.decimal not in DECIMAL_MARKS:
            raise ValueError(f"decimal: {self.decimal!r} must be one of {', '.join(map(repr, DECIMAL_MARKS))}")


@dataclass(frozen=True)
class Price:
    amount: Decimal  # in currency units; for a multi-buy, the price of `quantity` items
    currency: str | None = None  # ISO 4217
    symbol: str | None = None  # as printed: "$", "€", "USD", "¢"
    quantity: int = 1  # multi-buy: `quantity` items for `amount`
    unit: str | None = None  # unit price: per this ("oz", "100 g", "kg", "each")
    kind: str = "price"  # one of KINDS

    @property
    def each(self) -> Decimal:
        """The price of one item (multi-buy divided out)."""
        return (self.amount / self.quantity).quantize(Decimal("0.0001")) if self.quantity != 1 else self.amount

    def to_payload(self) -> dict:
        return {"amount": float(self.amount), "currency": self.currency, "symbol": self.symbol,
                "quantity": self.quantity, "each": float(self.each), "unit": self.unit, "kind": self.kind}


# -- normalising OCR noise ------------------------------------------------------------------
_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_CONFUSABLE = str.maketrans({"O": "0", "o": "0", "D": "0", "Q": "0", "l": "1", "I": "1", "|": "1", "!": "1"})
_SYM_RE = "|".join(sorted((re.escape(s) for s in SYMBOLS), key=len, reverse=True))


def _fix_token(tok: str) -> str:
    """One whitespace/slash-separated piece: OCR letters read for digits inside a number."""
    m = re.fullmatch(rf"(S|{_SYM_RE})?([0-9OoDQlI|!.,]+)({_SYM_RE}|c)?", tok)
    if not m or not re.search(r"\d", m.group(2)):
        return tok
    body = m.group(2)
    if not re.fullmatch(r"[.,]?[0-9OoDQlI|!]+(?:[.,][0-9OoDQlI|!]+)*", body):
        return tok
    lead = m.group(1) or ""
    if lead == "S":
        lead = "$"
    return lead + body.translate(_CONFUSABLE) + (m.group(3) or "")


def normalise(text: str) -> str:
    # cents printed as superscript: 3⁹⁹ -> 3.99 (before NFKC turns them into plain digits)
    text = re.sub(r"(\d)([⁰¹²³⁴⁵⁶⁷⁸⁹]{2})(?![⁰¹²³⁴⁵⁶⁷⁸⁹])", lambda m: m.group(1) + "." + m.group(2).translate(_SUPERSCRIPT), text)
    text = unicodedata.normalize("NFKC", text).replace("\u00a0", " ")
    text = " ".join(text.split())
    parts = re.split(r"(\s+|/)", text)
    text = "".join(_fix_token(p) for p in parts)
    text = re.sub(r"(\d)\s*([.,])\s+(\d{2})\b", r"\1\2\3", text)  # "3. 99"
    text = re.sub(r"(\d)\s+([.,])(\d{2})\b", r"\1\2\3", text)  # "3 .99"
    # "$3 99": cents printed small (not "3/$10 12 oz", a pack size)
    text = re.sub(rf"({_SYM_RE})\s*(\d+)\s+(\d{{2}})\b(?![.,]\d)(?!\s?(?i:{_UNIT})\b)", r"\1\2.\3", text)
    return text


# -- numbers ----------------------------------------------------------------------------------
_NUM = r"(?:\d{1,3}(?:[.,']\d{3})+(?:[.,]\d{1,3})?|\d+(?:[.,]\d{1,3})?|[.,]\d{2})"
_CODE = "|".join(CODES)
_CUR = rf"(?:{_SYM_RE}|\b(?:{_CODE})\b)"
_PRICE = rf"(?:(?P<pre>{_CUR})\s?(?P<n1>{_NUM})(?:\s?(?P<cent1>¢))?|(?P<n2>{_NUM})\s?(?P<post>{_CUR}|c\b|¢)|(?P<n3>\d+[.,]\d{{2}})\b)"
_UNIT = "|".join(sorted((re.escape(u) for u in UNITS), key=len, reverse=True))


def to_decimal(num: str, decimal: str = "auto") -> Decimal | None:
    num = num.replace("'", "")
    if num[:1] in ".,":
        num = "0" + num
    dots, commas = num.count("."), num.count(",")
    if dots and commas:
        mark = "." if num.rfind(".") > num.rfind(",") else ","
    elif dots + commas == 0:
        mark = None
    else:
        sep = "." if dots else ","
        count = dots or commas
        tail = len(num) - num.rfind(sep) - 1
        if count > 1:
            mark = None  # 1.299.000: thousands only
        elif decimal != "auto":
            mark = sep if sep == decimal else None
        elif sep == "," and tail == 3:
            mark = None  # $1,299
        else:
            mark = sep
    if mark is None:
        clean = num.replace(".", "").replace(",", "")
    else:
        whole, _, frac = num.rpartition(mark)
        clean = whole.replace(".", "").replace(",", "") + "." + frac
    try:
        return Decimal(clean)
    except InvalidOperation:
        return None


def _currency(symbol: str | None, options: PriceOptions) -> str | None:
    if symbol is None:
        return options.currency or None
    if symbol in CODES:
        return symbol
    code = SYMBOLS.get(symbol)
    return code or options.currency or None


# -- parsing ----------------------------------------------------------------------------------
_PATTERNS = [
    ("unit_first", re.compile(rf"(?P<uq>\d+(?:[.,]\d+)?)\s?(?P<unit>{_UNIT})\s?=\s?{_PRICE}", re.I)),
    ("multi", re.compile(rf"(?<![\d/.,])(?P<qty>\d{{1,2}})\s?(?:for|/)\s?(?:{_PRICE}|(?P<n4>\d+(?:[.,]\d{{1,2}})?)\b(?!/\d))", re.I)),
    ("price", re.compile(_PRICE)),
]
_UNIT_AFTER = re.compile(rf"^\s?(?:/|per\b|a\b)\s?(?P<uq>\d+(?:[.,]\d+)?)?\s?(?P<unit>{_UNIT})(?![a-z])", re.I)
_BARE_UNIT_AFTER = re.compile(r"^\s?(?P<unit>ea|each|lb|kg)\b", re.I)  # "$1.99 lb"; "$3.99 12 oz" is a pack size
_SAVE_BEFORE = re.compile(r"\b(save|you save|sparen|spare|économisez)\s*$", re.I)
_OFF_AFTER = re.compile(r"^\s?off\b", re.I)
_REG_BEFORE = re.compile(r"\b(reg|regular|was|orig|statt|uvp)\.?:?\s*$", re.I)


def _amount(m: re.Match, options: PriceOptions) -> tuple[Decimal | None, str | None]:
    g = m.groupdict()
    num = g.get("n1") or g.get("n2") or g.get("n3") or g.get("n4")
    if num is None:
        return None, None
    value = to_decimal(num, options.decimal)
    symbol = g.get("pre") or g.get("post")
    if g.get("cent1") or symbol in ("¢", "c"):
        value = value / 100 if value is not None else None
        symbol = "¢"
    return value, symbol


def _unit_text(quantity: str | None, unit: str) -> str:
    unit = UNITS[re.sub(r"\s+", " ", unit.lower())]
    return f"{quantity} {unit}" if quantity and quantity != "1" else unit


def parse_prices(text: str, options: PriceOptions = PriceOptions()) -> list[Price]:
    """Every price in one OCR line, left to right; [] for a line with none."""
    line = normalise(text)
    taken = [False] * len(line)
    found: list[tuple[int, Price]] = []
    for kind, pattern in _PATTERNS:
        for m in pattern.finditer(line):
            if any(taken[m.start():m.end()]):
                continue
            value, symbol = _amount(m, options)
            if value is None:
                continue
            price_kind, quantity, unit, end = "price", 1, None, m.end()
            if kind == "unit_first":
                price_kind, unit = "unit_price", _unit_text(m.group("uq"), m.group("unit"))
            elif kind == "multi":
                quantity = int(m.group("qty"))
                if quantity < 2:
                    continue
                price_kind = "multi_buy"
            if kind != "unit_first":
                after = line[end:]
                u = _UNIT_AFTER.match(after) or _BARE_UNIT_AFTER.match(after)
                if u:
                    unit = _unit_text(u.groupdict().get("uq"), u.group("unit"))
                    price_kind = "unit_price" if price_kind == "price" else price_kind
                    end += u.end()
                before = line[:m.start()]
                if price_kind == "price" and (_SAVE_BEFORE.search(before) or _OFF_AFTER.match(line[end:])):
                    price_kind = "saving"
                elif price_kind == "price" and _REG_BEFORE.search(before):
                    price_kind = "regular"
            for i in range(m.start(), end):
                taken[i] = True
            found.append((m.start(), Price(value, _currency(symbol, options), symbol, quantity, unit, price_kind)))
    return [p for _, p in sorted(found, key=lambda t: t[0])]


# -- linking to facings -----------------------------------------------------------------------
def link_facings(tag_boxes: np.ndarray, tag_zones: np.ndarray, boxes: np.ndarray, box_zones: np.ndarray) -> list[int | None]:
    """For each tag box (x0, y0, x1, y1), the index of the detection it labels by the linking
    rule (module docstring), or None."""
    tag_boxes = np.asarray(tag_boxes, dtype=np.float64).reshape(-1, 4)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out: list[int | None] = []
    for tag, zone in zip(tag_boxes, np.asarray(tag_zones).tolist()):
        if not len(boxes):
            out.append(None)
            continue
        same = np.asarray(box_zones) == zone
        overlap = (boxes[:, 0] < tag[2]) & (boxes[:, 2] > tag[0])
        above = (boxes[:, 1] + boxes[:, 3]) / 2.0 < tag[1]
        ok = np.flatnonzero(same & overlap & above)
        if not len(ok):
            out.append(None)
            continue
        gap = np.maximum(0.0, tag[1] - boxes[ok, 3])
        dx = np.abs((boxes[ok, 0] + boxes[ok, 2]) / 2.0 - (tag[0] + tag[2]) / 2.0)
        best = ok[np.lexsort((dx, gap))[0]]
        out.append(int(best))
    return out


def quad_boxes(quads: np.ndarray) -> np.ndarray:
    """(N, 8) quads -> (N, 4) axis-aligned boxes."""
    q = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)
    return np.concatenate([q.min(axis=1), q.max(axis=1)], axis=1) if len(q) else np.zeros((0, 4))


def read_prices(lines: Sequence[str], quads: np.ndarray, zones: Sequence, det_boxes: np.ndarray,
                det_zone_index: np.ndarray, labels: Sequence[str], options: PriceOptions = PriceOptions()) -> list[dict]:
    """The result payload's `prices`: one entry per price found in the OCR lines, with the
    raw line, its quad, its zone and the facing (detection index and label) it labels."""
    from edge_agent.zones import assign

    parsed = [(i, p) for i, text in enumerate(lines) for p in parse_prices(text, options)]
    if not parsed:
        return []
    boxes = quad_boxes(quads)
    tag_zone = assign(zones, boxes)  # tags: the polygon rule without the label filter
    facing = link_facings(boxes, tag_zone, det_boxes, det_zone_index)
    out = []
    for i, price in parsed:
        k = int(tag_zone[i])
        f = facing[i]
        out.append({"text": lines[i], "quad": [round(float(v), 1) for v in np.asarray(quads[i]).reshape(-1)],
                    **price.to_payload(), "zone": zones[k].name if k >= 0 else None,
                    "facing": f, "label": labels[f] if f is not None else None})
    return out
