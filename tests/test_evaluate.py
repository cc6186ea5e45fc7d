"""Scoring (models/evaluate.py): ground truth against itself scores 1.0; known perturbations
score known lower values (pycocotools' 101-point AP over IoU 0.5:0.05:0.95)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pycocotools")

from edge_agent.models.cocodata import Dataset, Sample  # noqa: E402
from edge_agent.models.evaluate import Detection, EvalOptions, Line, box_iou, coco_map, ocr_line_accuracy, score  # noqa: E402


def dataset() -> Dataset:
    samples = []
    for i in range(3):
        objects = tuple((("can", "box")[k % 2], (20.0 + 100 * k, 30.0 + 10 * i, 80.0 + 100 * k, 130.0 + 10 * i))
                        for k in range(5))
        lines = tuple((f"${k}.{i}9", (20.0 + 100 * k, 150.0, 70.0 + 100 * k, 150.0, 70.0 + 100 * k, 165.0,
                                      20.0 + 100 * k, 165.0)) for k in range(4))
        samples.append(Sample(i + 1, Path(f"/nonexistent/{i}.jpg"), 600, 200, objects, lines))
    return Dataset(Path("/nonexistent/annotations.json"), samples)


def truth(ds: Dataset):
    dets = [Detection(s.image_id, label, box) for s in ds.samples for label, box in s.objects]
    lines = [Line(s.image_id, text, (q[0], q[1], q[4], q[5])) for s in ds.samples for text, q in s.lines]
    return dets, lines


def test_ground_truth_against_itself_is_perfect():
    ds = dataset()
    dets, lines = truth(ds)
    row = score(ds, dets, lines, "", "untiled", EvalOptions())
    assert row.map50 == pytest.approx(1.0) and row.map == pytest.approx(1.0)
    assert (row.ocr_correct, row.ocr_total) == (12, 12) and row.ocr_accuracy == 1.0
    assert "mAP@0.5 1.000" in row.line()


def test_shifted_boxes_score_the_iou_thresholds_they_pass():
    """Every box shifted right so that IoU with its truth is 0.72: it counts at IoU thresholds
    0.50..0.70 (5 of 10) and fails 0.75..0.95, so mAP@0.5 = 1 and mAP@0.5:0.95 = 0.5."""
    ds = dataset()
    dets = []
    for s in ds.samples:
        for label, (x0, y0, x1, y1) in s.objects:
            d = (x1 - x0) * (1 - 0.72) / (1 + 0.72)
            dets.append(Detection(s.image_id, label, (x0 + d, y0, x1 + d, y1)))
    assert box_iou([dets[0].box], [ds.samples[0].objects[0][1]])[0, 0] == pytest.approx(0.72)
    m50, m, unknown = coco_map(ds, dets)
    assert m50 == pytest.approx(1.0) and m == pytest.approx(0.5) and unknown == 0


def test_missing_and_mislabelled_detections():
    """Only 2 of the 3 images' detections (all right, score 1): recall stops at 2/3 in each
    category, precision 1 up to there: AP = 67/101 of the recall points (0.00 .. 0.66)."""
    ds = dataset()
    dets, _ = truth(ds)
    kept = [d for d in dets if d.image_id != 3]
    m50, m, _ = coco_map(ds, kept)
    assert m50 == pytest.approx(67 / 101) and m == pytest.approx(67 / 101)
    renamed = [Detection(d.image_id, "bottle", d.box) for d in dets]  # no such category: cannot match
    assert coco_map(ds, renamed) == (0.0, 0.0, len(dets))
    # class-agnostic: the right boxes count whatever their labels say
    m50, m, unknown = coco_map(ds, renamed, any_label=True)
    assert m50 == pytest.approx(1.0) and m == pytest.approx(1.0) and unknown == len(dets)
    assert coco_map(ds, kept, any_label=True)[0] == pytest.approx(67 / 101)


def test_ocr_lines_need_the_exact_text_and_the_place():
    ds = dataset()
    _, lines = truth(ds)
    wrong_text = [Line(ln.image_id, ln.text + "0", ln.box) if i % 4 == 0 else ln for i, ln in enumerate(lines)]
    assert ocr_line_accuracy(ds, wrong_text) == (9, 12)
    # moved so that IoU is 1/3 (< 0.5): not read there
    moved = [Line(ln.image_id, ln.text, (ln.box[0] + 25, ln.box[1], ln.box[2] + 25, ln.box[3])) if i < 2 else ln
             for i, ln in enumerate(lines)]
    assert ocr_line_accuracy(ds, moved) == (10, 12)
    assert ocr_line_accuracy(ds, [Line(1, "  $0.09 ", lines[0].box)]) == (1, 12)  # whitespace is not text


def test_options_validate():
    with pytest.raises(ValueError, match="modes"):
        EvalOptions(modes=("sideways",))
    with pytest.raises(ValueError, match="tasks"):
        EvalOptions(tasks=("caption",))
