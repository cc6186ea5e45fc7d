"""Held-out quality of an exported model: `<OD>` mAP and OCR line accuracy, per variant, tiled
and untiled.

    rows = evaluate_model("model/", load_dataset("data/"), EvalOptions())
    for row in rows: print(row.line())

- mAP@0.5 and mAP@0.5:0.95 are pycocotools' `COCOeval` (bbox, 101-point interpolation, up to
  `max_dets` detections per image instead of COCO's 100: dense shelves hold more).  Categories
  are the dataset's object categories; a predicted label that names none of them is counted in
  `unknown_labels` and cannot match.
- OCR line accuracy: the share of ground-truth lines read exactly (stripped text equal) by a
  predicted line matched to it one-to-one, greedily by IoU, at IoU >= `ocr_iou` (boxes are the
  quads' bounding rectangles).
- Untiled: each image is one engine input (resized to the model's side).  Tiled: tiling's
  `detect_tiled` over tiles of `tile_size` (default: the model's input side), merged.

Needs pycocotools (the `[train]` extra); no torch.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from edge_agent.models.cocodata import Dataset
from edge_agent.models.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    variants: tuple[str, ...] | None = None  # None: every complete variant in the directory
    modes: tuple[str, ...] = ("untiled", "tiled")
    tasks: tuple[str, ...] = ("od", "ocr")
    tile_size: int | None = None  # None: the model's input side
    overlap: float = 0.2
    max_new_tokens: int = 1024
    num_beams: int | None = None  # None: as generation_config.json says
    ocr_iou: float = 0.5
    max_dets: int = 1000

    def __post_init__(self):
        if not self.modes or any(m not in ("untiled", "tiled") for m in self.modes):
            raise ValueError(f"modes must be untiled and/or tiled, got {self.modes!r}")
        if not self.tasks or any(t not in ("od", "ocr") for t in self.tasks):
            raise ValueError(f"tasks must be od and/or ocr, got {self.tasks!r}")
        if self.tile_size is not None and self.tile_size < 32:
            raise ValueError(f"tile_size must be >= 32, got {self.tile_size}")
        if not 0 < self.ocr_iou <= 1:
            raise ValueError(f"ocr_iou must be within (0, 1], got {self.ocr_iou}")
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max_new_tokens must be 1..4096, got {self.max_new_tokens}")
        if self.max_dets < 1:
            raise ValueError(f"max_dets must be >= 1, got {self.max_dets}")


@dataclass(frozen=True)
class Detection:
    image_id: int
    label: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float = 1.0


@dataclass(frozen=True)
class Line:
    image_id: int
    text: str
    box: tuple[float, float, float, float]
    score: float = 1.0


@dataclass
class EvalRow:
    variant: str
    mode: str
    images: int
    map50: float | None = None
    map: float | None = None
    map50_any_label: float | None = None  # class-agnostic mAP@0.5
    ocr_correct: int = 0
    ocr_total: int = 0
    unknown_labels: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def ocr_accuracy(self) -> float | None:
        return self.ocr_correct / self.ocr_total if self.ocr_total else None

    def line(self) -> str:
        def f(v):
            return "n/a" if v is None else f"{v:.3f}"

        ocr = f"{f(self.ocr_accuracy)} ({self.ocr_correct}/{self.ocr_total})"
        return (f"{self.variant.lstrip('_') or 'fp32':8s} {self.mode:8s} images {self.images:4d}  mAP@0.5 {f(self.map50)}  "
                f"mAP@0.5:0.95 {f(self.map)}  any-label mAP@0.5 {f(self.map50_any_label)}  OCR lines {ocr}  {self.seconds / max(1, self.images):.2f} s/image")

    def as_dict(self) -> dict:
        return {"variant": self.variant.lstrip("_") or "fp32", "mode": self.mode, "images": self.images, "map50": self.map50,
                "map": self.map, "map50_any_label": self.map50_any_label, "ocr_accuracy": self.ocr_accuracy, "ocr_correct": self.ocr_correct,
                "ocr_total": self.ocr_total, "unknown_labels": self.unknown_labels, "seconds": self.seconds}


def _require_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ModelError("pycocotools is not installed: pip install 'edge-agent[train]'") from None
    return COCO, COCOeval


def object_labels(dataset: Dataset) -> list[str]:
    return sorted({label for s in dataset.samples for label, _ in s.objects})


def coco_map(dataset: Dataset, detections: Sequence[Detection], max_dets: int = 1000,
             any_label: bool = False) -> tuple[float | None, float | None, int]:
    """(mAP@0.5, mAP@0.5:0.95, detections whose label names no category), by pycocotools.
    None where the data has no objects.  any_label: class-agnostic (pycocotools' useCats = 0):
    a box matches whatever its label, which shows a model that places boxes but names them wrong."""
    COCO, COCOeval = _require_pycocotools()
    labels = object_labels(dataset)
    if not labels:
        return None, None, 0
    cat = {name: i + 1 for i, name in enumerate(labels)}
    gt = {"images": [{"id": s.image_id, "width": s.width, "height": s.height} for s in dataset.samples],
          "categories": [{"id": i, "name": n} for n, i in cat.items()], "annotations": []}
    for s in dataset.samples:
        for label, (x0, y0, x1, y1) in s.objects:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": s.image_id, "iscrowd": 0,
                                      "category_id": cat[label], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                      "area": (x1 - x0) * (y1 - y0)})
    ids = {s.image_id for s in dataset.samples}
    dets, unknown = [], 0
    for d in detections:
        if d.image_id not in ids:
            continue
        if d.label not in cat:
            unknown += 1
            if not any_label:
                continue
        x0, y0, x1, y1 = d.box
        dets.append({"image_id": d.image_id, "category_id": cat.get(d.label, 1), "bbox": [x0, y0, x1 - x0, y1 - y0],
                     "score": float(d.score)})
    if not dets:
        return 0.0, 0.0, unknown
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.params.useCats = 0 if any_label else 1
        ev.evaluate()
        ev.accumulate()
    # COCOeval.summarize's stats[0] is fixed at 100 detections per image; read its precision
    # table [iou, recall, category, area, max_dets] at area "all" and our max_dets instead.
    prec = ev.eval["precision"][:, :, :, 0, -1]

    def mean(p):
        p = p[p > -1]
        return float(p.mean()) if p.size else None

    return mean(prec[0]), mean(prec), unknown


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes a (N,4) and b (M,4), x0 y0 x1 y1."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    ix0, iy0 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    ix1, iy1 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def ocr_line_accuracy(dataset: Dataset, lines: Sequence[Line], iou: float = 0.5) -> tuple[int, int]:
    """(lines read exactly, ground-truth lines)."""
    by_image: dict[int, list[Line]] = {}
    for ln in lines:
        by_image.setdefault(ln.image_id, []).append(ln)
    correct = total = 0
    for s in dataset.samples:
        gt = [(" ".join(t.split()), (min(q[0::2]), min(q[1::2]), max(q[0::2]), max(q[1::2]))) for t, q in s.lines]
        total += len(gt)
        pred = by_image.get(s.image_id, [])
        if not gt or not pred:
            continue
        m = box_iou(np.array([g[1] for g in gt]), np.array([p.box for p in pred]))
        used_g, used_p = set(), set()
        for flat in np.argsort(-m, axis=None, kind="stable"):
            gi, pi = divmod(int(flat), m.shape[1])
            if m[gi, pi] < iou:
                break
            if gi in used_g or pi in used_p:
                continue
            used_g.add(gi)
            used_p.add(pi)
            correct += gt[gi][0] == " ".join(pred[pi].text.split())
    return correct, total


def predict(engine, dataset: Dataset, mode: str, tasks: Sequence[str], tile_size: int, overlap: float,
            progress: Callable[[int], None] | None = None) -> tuple[list[Detection], list[Line]]:
    """Run `engine` over every image of `dataset`, untiled or tiled; frame-pixel predictions."""
    from edge_agent.tiling.runner import TilingOptions, detect_tiled

    dets, lines = [], []
    for n, s in enumerate(dataset.samples, 1):
        img = s.load()
        h, w = img.shape[:2]
        if mode == "untiled":
            out = engine.run([img], tasks=tasks)[0]
            od = out["od"].regions if "od" in out else None
            ocr = out["ocr"].regions if "ocr" in out else None
        else:
            res = detect_tiled(w, h, lambda tiles: engine.run([img[t.y0:t.y1, t.x0:t.x1] for t in tiles], tasks=tasks),
                               TilingOptions(tile_size=tile_size, overlap=overlap))
            od, ocr = (res.od if "od" in tasks else None), (res.ocr if "ocr" in tasks else None)
        if od is not None:
            dets += [Detection(s.image_id, lab, tuple(map(float, b)), float(sc))
                     for b, sc, lab in zip(od.boxes, od.scores, od.labels)]
        if ocr is not None:
            lines += [Line(s.image_id, text, tuple(map(float, b)), float(sc))
                      for b, sc, text in zip(ocr.boxes, ocr.scores, ocr.labels)]
        if progress:
            progress(n)
    return dets, lines


def score(dataset: Dataset, dets: Sequence[Detection], lines: Sequence[Line], variant: str, mode: str,
          opts: EvalOptions, seconds: float = 0.0) -> EvalRow:
    row = EvalRow(variant, mode, len(dataset.samples), seconds=seconds)
    if "od" in opts.tasks:
        row.map50, row.map, row.unknown_labels = coco_map(dataset, dets, opts.max_dets)
        row.map50_any_label = coco_map(dataset, dets, opts.max_dets, any_label=True)[0]
    if "ocr" in opts.tasks:
        row.ocr_correct, row.ocr_total = ocr_line_accuracy(dataset, lines, opts.ocr_iou)
    return row


def evaluate_model(model_dir, dataset: Dataset, opts: EvalOptions | None = None,
                   on_row: Callable[[EvalRow], None] | None = None) -> list[EvalRow]:
    """One row per (variant, mode)."""
    from edge_agent.models.engine import EngineOptions, Florence2Engine
    from edge_agent.models.modeldir import normalize_variant, open_model_dir

    opts = opts or EvalOptions()
    md = open_model_dir(model_dir)
    variants = [normalize_variant(v) for v in opts.variants] if opts.variants else md.available_variants()
    if not variants:
        raise ModelError(f"{model_dir}: no complete model variant to evaluate")
    side = opts.tile_size or int(md.preprocess_config().size[0])
    _require_pycocotools()
    rows = []
    for variant in variants:
        engine = Florence2Engine(EngineOptions(model_dir=model_dir, variant=variant,
                                               max_new_tokens=opts.max_new_tokens, num_beams=opts.num_beams))
        for mode in opts.modes:
            t0 = time.perf_counter()
            dets, lines = predict(engine, dataset, mode, opts.tasks, side, opts.overlap)
            row = score(dataset, dets, lines, variant, mode, opts, time.perf_counter() - t0)
            rows.append(row)
            if on_row:
                on_row(row)
        del engine
    return rows
