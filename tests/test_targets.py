"""Training targets (models/targets.py) against transformers' own Florence-2 processor: the
quantizer's bins, and the target text, once tokenized and decoded, parsed back by the
reference post-processor and by this project's parser to the same boxes and labels."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from florence_reference import processor  # noqa: E402
from edge_agent.models.parse import parse_task  # noqa: E402
from edge_agent.models.synth import ShelfOptions, render_shelf  # noqa: E402
from edge_agent.models.targets import dequantize, fit_pieces, ocr_pieces, od_pieces, quantize, reading_order  # noqa: E402
from edge_agent.models.tokens import LeanTokenizer  # noqa: E402
from edge_agent.models.export import DEFAULT_TOKENIZER_DIR  # noqa: E402

SIZES = [(768, 768), (640, 480), (1280, 720)]


def frames():
    return [render_shelf(ShelfOptions(width=w, height=h, blur=0, noise=0), seed=i) for i, (w, h) in enumerate(SIZES)]


def lean():
    return LeanTokenizer(DEFAULT_TOKENIZER_DIR / "tokenizer.json")


def test_quantize_matches_the_processor():
    import torch

    pp = processor().post_processor
    rng = np.random.default_rng(0)
    for w, h in SIZES + [(333, 777)]:
        boxes = rng.uniform(0, 1, size=(200, 4)) * [w, h, w, h]
        boxes[:5] = [[0, 0, w, h], [w - 0.01, h - 0.01, w, h], [0.0, 0.0, 0.0, 0.0], [w / 1000, h / 1000, 1, 1],
                     [w * 0.5, h * 0.5, w * 0.999, h * 0.999]]
        ref = pp.quantize(torch.tensor(boxes, dtype=torch.float64), (w, h)).tolist()
        assert [quantize(b, (w, h)) for b in boxes.tolist()] == ref
        pts = boxes.reshape(-1, 2)
        ref_pts = pp.quantize(torch.tensor(pts, dtype=torch.float64), (w, h)).tolist()
        assert [quantize(p, (w, h)) for p in pts.tolist()] == ref_pts
        bins = np.array(ref[:50])
        assert [[int(v) for v in dequantize(b, (w, h))] for b in bins.tolist()] == \
            pp.dequantize(torch.tensor(bins), (w, h)).tolist()


@pytest.mark.parametrize("task", ["od", "ocr"])
def test_targets_round_trip_through_the_reference_post_processor(task):
    proc, tok = processor(), lean()
    for f in frames():
        h, w = f.image.shape[:2]
        if task == "od":
            items = [(o.label, o.box) for o in f.objects]
            pieces = od_pieces(items, (w, h))
        else:
            items = [(ln.text, ln.quad) for ln in f.lines]
            pieces = ocr_pieces(items, (w, h))
        assert len(pieces) == len(items) >= 2
        ids = tok("".join(pieces))["input_ids"]
        assert ids[0] == 0 and ids[-1] == 2  # <s> ... </s>, as the decoder writes after its start token
        text = proc.tokenizer.decode(ids, skip_special_tokens=False)
        # what the trained model writes is what the reference parses: same instances, same order
        bins = [quantize(pts, (w, h)) for _, pts in items]
        order = reading_order([(min(b[0::2]), min(b[1::2]), max(b[0::2]), max(b[1::2])) for b in bins])
        if task == "od":
            got = proc.post_process_generation(text, task="<OD>", image_size=(w, h))["<OD>"]
            assert got["labels"] == [items[i][0] for i in order]
            want = [[int(v) for v in dequantize(quantize(items[i][1], (w, h)), (w, h))] for i in order]
            assert got["bboxes"] == want
        else:
            got = proc.post_process_generation(text, task="<OCR_WITH_REGION>", image_size=(w, h))["<OCR_WITH_REGION>"]
            assert got["labels"] == [items[i][0] for i in order]
            want = [[int(v) for v in dequantize(quantize(items[i][1], (w, h)), (w, h))] for i in order]
            assert [[int(v) for v in q] for q in got["quad_boxes"]] == want
        # and this project's run-time parser reads the same from the token ids
        ours = parse_task(task, [2] + ids, np.ones(len(ids) + 1), tok, image_size=(w, h))
        assert list(ours.labels) == [items[i][0] for i in order]
        if task == "od":
            np.testing.assert_allclose(ours.boxes, [dequantize(quantize(items[i][1], (w, h)), (w, h)) for i in order],
                                       atol=1.0)


def test_reading_order_and_labels():
    size = (1000, 1000)
    pieces = od_pieces([("can", (500, 10, 600, 90)), ("box", (10, 500, 90, 600)), ("bag", (10, 10, 90, 90))], size)
    assert pieces == ["bag<loc_10><loc_10><loc_90><loc_90>", "can<loc_500><loc_10><loc_600><loc_90>",
                      "box<loc_10><loc_500><loc_90><loc_600>"]
    from edge_agent.models.errors import ModelSettingError

    with pytest.raises(ModelSettingError, match="'<'"):
        od_pieces([("a<b", (0, 0, 1, 1))], size)
    with pytest.raises(ModelSettingError, match="ASCII"):
        od_pieces([("café", (0, 0, 1, 1))], size)
    assert ocr_pieces([("2,49 €", (0, 0, 10, 0, 10, 5, 0, 5))], (100, 100)) == \
        ["2,49 €<loc_0><loc_0><loc_100><loc_0><loc_100><loc_50><loc_0><loc_50>"]


def test_reading_order_walks_each_shelf_left_to_right():
    # One board: a tall bottle, a short can left of it and a box between them, all standing on
    # y=400; a tag row under it; a second board below.  Top edges alone would read bottle, box,
    # can (by height), jumping back along the shelf.
    board1 = [("bottle", (300, 100, 380, 400)), ("can", (10, 300, 90, 400)), ("box", (100, 200, 290, 400))]
    board2 = [("bag", (500, 600, 700, 900)), ("can", (20, 700, 120, 900))]
    pieces = od_pieces(board2 + board1, (1000, 1000))
    assert [p.split("<")[0] for p in pieces] == ["can", "box", "bottle", "can", "bag"]
    assert pieces[0].endswith("<loc_10><loc_300><loc_90><loc_400>")
    assert reading_order([(50, 410, 90, 430), (5, 405, 40, 425), (5, 10, 20, 20)]) == [2, 1, 0]
    assert reading_order([]) == []
    lines = [("$2.99", (200, 410, 260, 410, 260, 430, 200, 430)), ("1.99", (10, 412, 60, 412, 60, 428, 10, 428))]
    assert [p.split("<")[0] for p in ocr_pieces(lines, (1000, 1000))] == ["1.99", "$2.99"]


def test_fit_pieces_keeps_whole_instances_within_the_budget():
    tok = lean()
    pieces = od_pieces([("bottle", (i, i, i + 50, i + 50)) for i in range(0, 600, 20)], (768, 768))
    full = len(tok("".join(pieces))["input_ids"])
    text, used = fit_pieces(pieces, tok, full)
    assert used == len(pieces) and text == "".join(pieces)
    text, used = fit_pieces(pieces, tok, 40)
    assert 0 < used < len(pieces) and text == "".join(pieces[:used])
    assert len(tok(text)["input_ids"]) <= 40
