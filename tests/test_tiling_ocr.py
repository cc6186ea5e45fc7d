"""merge_text: lines read by overlapping tiles collapse to one reading."""
import numpy as np
import pytest

from tiling.ocr import merge_text
from tiling.plan import Tile, mark_cut
from tiling.regions import Regions


def line(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def T(quads, scores, texts, cut=None):
    r = Regions.from_quads(quads, scores, texts)
    return r if cut is None else r.with_cut(cut)


def test_empty_and_single():
    assert len(merge_text(Regions.empty(ocr=True))) == 0
    assert merge_text(Regions.empty()).is_ocr
    r = T([line(0, 0, 50, 10)], [0.9], ["$3.99"])
    assert merge_text(r).labels == ("$3.99",)


def test_whole_reading_beats_cut_reading_whatever_the_confidence():
    r = T([line(700, 100, 768, 120), line(700, 100, 790, 120)], [0.99, 0.5], ["Milk 1", "Milk 1L"], [True, False])
    out = merge_text(r)
    assert out.labels == ("Milk 1L",) and out.boxes.tolist() == [[700, 100, 790, 120]]


def test_cut_prefix_and_suffix_keep_the_longer():
    r = T([line(700, 100, 768, 120), line(690, 100, 768, 120)], [0.9, 0.6], ["$3.9", "$3.99"], [True, True])
    assert merge_text(r).labels == ("$3.99",)
    r = T([line(614, 100, 700, 120), line(600, 100, 700, 120)], [0.9, 0.6], ["99", "3.99"], [True, True])
    assert merge_text(r).labels == ("3.99",)


def test_two_cut_parts_of_a_long_line_are_stitched():
    left = T([line(500, 100, 768, 120)], [0.8], ["Organic Whole"], [True])
    right = T([line(614, 100, 900, 120)], [0.7], ["Whole Milk 1L"], [True])
    out = merge_text(Regions.concat([right, left], ocr=True))
    assert out.labels == ("Organic Whole Milk 1L",)
    assert out.boxes.tolist() == [[500, 100, 900, 120]] and out.scores.tolist() == [0.8]
    assert out.quads.tolist() == [line(500, 100, 900, 120)]


def test_different_readings_keep_the_higher_confidence():
    r = T([line(0, 0, 60, 10), line(1, 0, 61, 10)], [0.6, 0.8], ["$3.99", "$3.89"])
    assert merge_text(r).labels == ("$3.89",)
    r = T([line(0, 0, 60, 10), line(1, 0, 61, 10)], [0.9, 0.8], ["$3.99", "$3.89"], [True, True])
    assert merge_text(r).labels == ("$3.99",)


def test_separate_lines_stay_separate():
    r = T([line(0, 0, 60, 10), line(0, 14, 60, 24), line(80, 0, 140, 10)], [0.9] * 3, ["a", "b", "c"])
    assert sorted(merge_text(r).labels) == ["a", "b", "c"]


def test_bad_input():
    with pytest.raises(ValueError, match="threshold"):
        merge_text(Regions.empty(ocr=True), threshold=0)
    with pytest.raises(ValueError, match="quads"):
        merge_text(Regions([[0, 0, 1, 1]], [1], ["x"]))


def test_seam_text_line_comes_back_as_one_close_to_original():
    """A tag straddling the seam of two 1080p tiles: read cut in one, whole in the other."""
    W, H = 1920, 1080
    a, b = Tile(0, 0, 768, 768), Tile(576, 0, 1344, 768)
    text, x0, x1, y0, y1 = "Oat Drink 1L 2.49", 700.0, 860.0, 300.0, 318.0
    per_char = (x1 - x0) / len(text)
    seen = int((a.x1 - x0) / per_char)  # characters left of tile a's right edge
    in_a = T([line(x0 - a.x0, y0, a.x1 - a.x0, y1)], [0.95], [text[:seen]])
    in_b = T([line(x0 - b.x0, y0, x1 - b.x0, y1)], [0.7], [text])
    parts = [mark_cut(t.to_frame(r), t, W, H) for t, r in ((a, in_a), (b, in_b))]
    assert parts[0].cut.tolist() == [True] and parts[1].cut.tolist() == [False]
    out = merge_text(Regions.concat(parts, ocr=True))
    assert out.labels == (text,)
    np.testing.assert_allclose(out.boxes[0], [x0, y0, x1, y1])
