"""Price tags: a table of real-world tag strings (currencies, decimal commas, multi-buy, unit
prices, savings, OCR noise), each with its expected parse; options; the linking rule."""
from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from edge_agent.prices import PriceOptions, link_facings, parse_prices, read_prices
from edge_agent.zones import ZoneOptions, assign, frame_zones

# text -> [(amount, currency, symbol, quantity, unit, kind), ...]
TAGS = [
    ("$3.99", [("3.99", None, "$", 1, None, "price")]),
    ("3.99", [("3.99", None, None, 1, None, "price")]),
    ("$3", [("3", None, "$", 1, None, "price")]),
    ("€2,49", [("2.49", "EUR", "€", 1, None, "price")]),
    ("2,49 €", [("2.49", "EUR", "€", 1, None, "price")]),
    ("2,49€", [("2.49", "EUR", "€", 1, None, "price")]),
    ("£1.50", [("1.50", "GBP", "£", 1, None, "price")]),
    ("¥198", [("198", "JPY", "¥", 1, None, "price")]),
    ("198円", [("198", "JPY", "円", 1, None, "price")]),
    ("USD 4.99", [("4.99", "USD", "USD", 1, None, "price")]),
    ("4.99 USD", [("4.99", "USD", "USD", 1, None, "price")]),
    ("EUR 1,99", [("1.99", "EUR", "EUR", 1, None, "price")]),
    ("CHF 3.50", [("3.50", "CHF", "CHF", 1, None, "price")]),
    ("R$ 12,90", [("12.90", "BRL", "R$", 1, None, "price")]),
    ("kr 25,00", [("25.00", None, "kr", 1, None, "price")]),
    ("25,00 kr", [("25.00", None, "kr", 1, None, "price")]),
    ("4,99 zł", [("4.99", "PLN", "zł", 1, None, "price")]),
    ("Kč 39,90", [("39.90", "CZK", "Kč", 1, None, "price")]),
    ("₹ 45", [("45", "INR", "₹", 1, None, "price")]),
    ("99¢", [("0.99", None, "¢", 1, None, "price")]),
    ("99c", [("0.99", None, "¢", 1, None, "price")]),
    ("$.99", [("0.99", None, "$", 1, None, "price")]),
    ("1.299,00 €", [("1299.00", "EUR", "€", 1, None, "price")]),
    ("$1,299.00", [("1299.00", None, "$", 1, None, "price")]),
    ("$1,299", [("1299", None, "$", 1, None, "price")]),
    ("2 FOR $5", [("5", None, "$", 2, None, "multi_buy")]),
    ("2/$5", [("5", None, "$", 2, None, "multi_buy")]),
    ("3 for 10.00", [("10.00", None, None, 3, None, "multi_buy")]),
    ("3/$10", [("10", None, "$", 3, None, "multi_buy")]),
    ("BUY 2 FOR 5.00", [("5.00", None, None, 2, None, "multi_buy")]),
    ("3/$10 12 oz", [("10", None, "$", 3, None, "multi_buy")]),
    ("$0.25/oz", [("0.25", None, "$", 1, "oz", "unit_price")]),
    ("$1.99/lb", [("1.99", None, "$", 1, "lb", "unit_price")]),
    ("$1.99 per lb", [("1.99", None, "$", 1, "lb", "unit_price")]),
    ("$1.99 lb", [("1.99", None, "$", 1, "lb", "unit_price")]),
    ("$1.299/lb", [("1.299", None, "$", 1, "lb", "unit_price")]),
    ("€2,99/kg", [("2.99", "EUR", "€", 1, "kg", "unit_price")]),
    ("1,49 €/kg", [("1.49", "EUR", "€", 1, "kg", "unit_price")]),
    ("€0,89/100g", [("0.89", "EUR", "€", 1, "100 g", "unit_price")]),
    ("1 kg = 3,98 €", [("3.98", "EUR", "€", 1, "kg", "unit_price")]),
    ("$4.99 ea", [("4.99", None, "$", 1, "each", "unit_price")]),
    ("$4.99 each", [("4.99", None, "$", 1, "each", "unit_price")]),
    ("12,5¢/oz", [("0.125", None, "¢", 1, "oz", "unit_price")]),
    ("UNIT PRICE 12.5¢ PER OZ", [("0.125", None, "¢", 1, "oz", "unit_price")]),
    ("$3.99 12 oz", [("3.99", None, "$", 1, None, "price")]),
    ("SAVE $1.00", [("1.00", None, "$", 1, None, "saving")]),
    ("$1 OFF", [("1", None, "$", 1, None, "saving")]),
    ("REG $4.99", [("4.99", None, "$", 1, None, "regular")]),
    ("WAS $4.99 NOW $3.99", [("4.99", None, "$", 1, None, "regular"), ("3.99", None, "$", 1, None, "price")]),
    ("2 for $5 SAVE $1", [("5", None, "$", 2, None, "multi_buy"), ("1", None, "$", 1, None, "saving")]),
    # OCR noise
    ("$2.5O", [("2.50", None, "$", 1, None, "price")]),
    ("O.99", [("0.99", None, None, 1, None, "price")]),
    ("l.49", [("1.49", None, None, 1, None, "price")]),
    ("S3.99", [("3.99", None, "$", 1, None, "price")]),
    ("3 .99", [("3.99", None, None, 1, None, "price")]),
    ("$3 99", [("3.99", None, "$", 1, None, "price")]),
    ("3⁹⁹", [("3.99", None, None, 1, None, "price")]),
    # no price
    ("SALE", []),
    ("BUY 2 GET 1 FREE", []),
    ("ORGANIC MILK 1/2 GAL", []),
    ("12/25/24", []),
    ("", []),
]


def test_the_table_holds_at_least_30_tags():
    assert len(TAGS) >= 30


@pytest.mark.parametrize("text,expected", TAGS, ids=[t for t, _ in TAGS])
def test_tag_parses(text, expected):
    got = [(p.amount, p.currency, p.symbol, p.quantity, p.unit, p.kind) for p in parse_prices(text)]
    assert got == [(Decimal(a), c, s, q, u, k) for a, c, s, q, u, k in expected]


def test_multi_buy_gives_the_price_of_one():
    (p,) = parse_prices("3/$10")
    assert p.each == Decimal("3.3333")
    assert p.to_payload()["each"] == pytest.approx(3.3333)


def test_configured_currency_fills_in_dollars_and_bare_numbers_but_not_printed_codes():
    opts = PriceOptions(currency="USD")
    assert [p.currency for p in parse_prices("$3.99 or 2.50 or €1,00", opts)] == ["USD", "USD", "EUR"]


def test_decimal_comma_option_reads_a_single_dot_as_thousands():
    assert [p.amount for p in parse_prices("1.299 €", PriceOptions(decimal=","))] == [Decimal("1299")]
    assert [p.amount for p in parse_prices("1.299 €")] == [Decimal("1.299")]


@pytest.mark.parametrize("kw,message", [({"currency": "usd"}, "currency"), ({"currency": "DOLLAR"}, "currency"),
                                        ({"decimal": ";"}, "decimal")])
def test_bad_options(kw, message):
    with pytest.raises(ValueError, match=message):
        PriceOptions(**kw)


def test_each_tag_links_to_the_nearest_facing_above_it_in_its_zone():
    # two facings side by side above the board, a taller one further up the same column,
    # and a facing on the shelf below (another zone)
    boxes = np.array([[10, 40, 60, 90], [70, 40, 120, 90], [10, 0, 60, 30], [10, 110, 60, 190]], dtype=float)
    tags = np.array([[12, 92, 50, 100], [80, 92, 118, 100], [130, 92, 160, 100]], dtype=float)
    zones = frame_zones([ZoneOptions("top", ((0, 0), (200, 0), (200, 101), (0, 101))),
                         ZoneOptions("bottom", ((0, 101), (200, 101), (200, 200), (0, 200)))], "cam0", 200, 200)
    facing = link_facings(tags, assign(zones, tags), boxes, assign(zones, boxes))
    assert facing == [0, 1, None]  # the third tag has no facing above it


def test_a_tag_does_not_link_across_zones():
    boxes = np.array([[10, 40, 60, 90]], dtype=float)
    tags = np.array([[12, 120, 50, 130]], dtype=float)  # in the lower zone, the box is in the upper one
    zones = frame_zones([ZoneOptions("top", ((0, 0), (200, 0), (200, 100), (0, 100))),
                         ZoneOptions("bottom", ((0, 100), (200, 100), (200, 200), (0, 200)))], "cam0", 200, 200)
    assert link_facings(tags, assign(zones, tags), boxes, assign(zones, boxes)) == [None]


def test_read_prices_keeps_the_raw_line_and_names_zone_and_facing():
    quads = np.array([[12, 92, 50, 92, 50, 100, 12, 100], [5, 5, 40, 5, 40, 12, 5, 12]], dtype=float)
    boxes = np.array([[10, 40, 60, 90]], dtype=float)
    zones = frame_zones([ZoneOptions("top", ((0, 0), (1, 0), (1, 0.55), (0, 0.55)))], "cam0", 200, 200)
    out = read_prices(["2 FOR $5", "FRESH"], quads, zones, boxes, assign(zones, boxes, ["can"]), ["can"])
    assert out == [{"text": "2 FOR $5", "quad": [12.0, 92.0, 50.0, 92.0, 50.0, 100.0, 12.0, 100.0], "amount": 5.0,
                    "currency": None, "symbol": "$", "quantity": 2, "each": 2.5, "unit": None, "kind": "multi_buy",
                    "zone": "top", "facing": 0, "label": "can"}]
