"""Dense-scene benchmark: one pass vs edge-agent tiling vs SAHI's merge, with a perfect simulated Florence-2.

    python benchmarks/dense_scenes.py [--frames 3] [--seed 0]

Scenes: shelves of products of varying widths, 100/200/400 per 1920x1080 and 3840x2160 frame,
with a price tag under every other product.  The simulated model answers for one tile what a
Florence-2 that is always right would write: the visible objects (and tag characters) clipped to
the tile, coordinates quantised to 1000 bins of the tile, in reading order, cut off at the token
budget (1024 new tokens) counted with the real tokenizer (models/tokenizer); its confidences
are random.  The same tile outputs go to edge-agent's merge (tiling.detect_tiled, so saturated
tiles are re-split) and to SAHI 0.12.8's default sliced-prediction merge (GreedyNMMPostprocess,
IOS 0.5, class-aware).  Then a 10,000-box merge speed comparison.

Prints recall at IoU 0.5, precision, duplicates per frame, F1 and merge time; the last line is
`tiled_recall_400: R single_pass_recall_400: S` (mean over both frame sizes).

With a model that sees (`--model DIR`, e.g. the bundled demo model edge_agent/demo/shelf-demo),
it also runs that model's ONNX engine on dense synthetic frames from models/synth.py (the
generator it was trained on; `--model-objects` per frame, 1920x1080): once over the whole frame
(down-scaled to the model's input) and tiled at the model's input side, merged as the agent
merges.  Recall at IoU 0.5 (class-agnostic, one-to-one) and pycocotools mAP@0.5; the last line
is then `model_tiled_recall_N: R model_single_pass_recall_N: S`.

    python benchmarks/dense_scenes.py --model edge_agent/demo/shelf-florence2 --model-only
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from edge_agent.tiling.merge import merge_boxes  # noqa: E402
from edge_agent.tiling.plan import Tile  # noqa: E402
from edge_agent.tiling.regions import Regions  # noqa: E402
from edge_agent.tiling.runner import TilingOptions, detect_tiled  # noqa: E402

LABELS = ("bottle", "can", "box", "jar", "carton")
MAX_NEW_TOKENS = 1024
MODEL_SIDE = 768  # the engine resizes every tile to this
MIN_VISIBLE = 8  # model pixels of an object that must show for the model to report it
SIZES = ((1920, 1080), (3840, 2160))
COUNTS = (100, 200, 400, 800)  # 800: beyond the counts, makes 1080p tiles saturate and re-split
ROWS = {100: 4, 200: 5, 400: 8, 800: 10}


# ---------------------------------------------------------------- scenes

@dataclass
class Scene:
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) products
    labels: list[str]
    tag_boxes: np.ndarray  # (M, 4) price tags (one text line each)
    tag_texts: list[str]


def make_scene(width: int, height: int, n: int, rng: np.random.Generator) -> Scene:
    """Rows of products standing on shelves, a price tag on the shelf edge under every other one."""
    rows = ROWS.get(n, max(2, round(np.sqrt(n / 6))))
    per_row = np.full(rows, n // rows)
    per_row[: n % rows] += 1
    shelf_h = height / rows
    s = height / 1080
    boxes, labels, tags, texts = [], [], [], []
    for r, count in enumerate(per_row):
        floor = (r + 1) * shelf_h - 22 * s  # shelf edge band below the products
        gap = 3 * s
        widths = rng.uniform(0.6, 1.6, count)
        widths *= (width - 8 * s - gap * (count + 1)) / widths.sum()
        x = 4 * s + gap
        last_tag = -np.inf  # tags on one shelf edge never overlap
        for k, w in enumerate(widths):
            h = shelf_h * rng.uniform(0.55, 0.85)
            boxes.append([x, floor - h, x + w, floor])
            labels.append(LABELS[rng.integers(len(LABELS))])
            if k % 2 == 0:
                price = f"${rng.integers(0, 20)}.{rng.integers(0, 100):02d}"
                long = f"{rng.integers(2, 5)} for {price}" if rng.uniform() < 0.3 else price
                for text in (long, price):
                    tw, cx = 7 * s * len(text), x + w / 2
                    if cx - tw / 2 >= last_tag + 4 * s:
                        tags.append([cx - tw / 2, floor + 5 * s, cx + tw / 2, floor + 17 * s])
                        texts.append(text)
                        last_tag = cx + tw / 2
                        break
            x += w + gap
    tag_boxes = np.array(tags).reshape(-1, 4)
    tag_boxes[:, [0, 2]] = tag_boxes[:, [0, 2]].clip(0, width)
    return Scene(width, height, np.array(boxes), labels, tag_boxes, texts)


# ---------------------------------------------------------------- simulated Florence-2

@dataclass(frozen=True)
class Out:  # the fields of models.outputs.TaskOutput that the runner reads
    regions: Regions
    saturated: bool


class TokenCounter:
    """Token counts of what Florence-2 writes, with the real tokenizer (cached per string)."""

    def __init__(self, path: Path = ROOT / "models" / "tokenizer"):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.cache: dict[str, int] = {}
        self._check()

    def text(self, s: str) -> int:
        n = self.cache.get(s)
        if n is None:
            n = self.cache[s] = len(self.tok(s, add_special_tokens=False)["input_ids"])
        return n

    def _check(self) -> None:
        """A whole answer tokenises to the sum of its parts (label + 4 <loc_> each)."""
        answer = "bottle<loc_12><loc_40><loc_90><loc_300>carton<loc_95><loc_41><loc_180><loc_310>$3.99<loc_1>"
        whole = len(self.tok(answer, add_special_tokens=False)["input_ids"])
        assert whole == self.text("bottle") + self.text("carton") + self.text("$3.99") + 9, whole


class PerfectFlorence:
    """What Florence-2 would write for each tile if it were always right."""

    def __init__(self, scene: Scene, tokens: TokenCounter, rng: np.random.Generator):
        self.scene, self.tokens, self.rng = scene, tokens, rng
        self.tiles_seen = 0

    def __call__(self, tiles):
        self.tiles_seen += len(tiles)
        return [{"od": self.od(t), "ocr": self.ocr(t)} for t in tiles]

    def _visible(self, boxes: np.ndarray, t: Tile) -> tuple[np.ndarray, np.ndarray]:
        b = boxes.copy()
        b[:, [0, 2]] = b[:, [0, 2]].clip(t.x0, t.x1) - t.x0
        b[:, [1, 3]] = b[:, [1, 3]].clip(t.y0, t.y1) - t.y0
        sx, sy = MODEL_SIDE / t.width, MODEL_SIDE / t.height
        vis = np.flatnonzero(((b[:, 2] - b[:, 0]) * sx >= MIN_VISIBLE) & ((b[:, 3] - b[:, 1]) * sy >= MIN_VISIBLE))
        return vis, b[vis]

    def _quantise(self, b: np.ndarray, t: Tile) -> np.ndarray:
        """Tile pixels -> <loc_> bins -> tile pixels, as the model writes and the parser reads them."""
        size = np.array([t.width, t.height, t.width, t.height], float)
        bins = np.clip(np.floor(b / size * 1000), 0, 999)
        return bins, (bins + 0.5) * size / 1000

    def _budget(self, costs: list[int]) -> tuple[int, bool]:
        """How many items fit in the answer: <s> + items + </s> within MAX_NEW_TOKENS."""
        used = 1 + np.cumsum(costs)
        fit = int(np.searchsorted(used, MAX_NEW_TOKENS - 1, side="right"))
        return fit, fit < len(costs)

    def od(self, t: Tile) -> Out:
        vis, b = self._visible(self.scene.boxes, t)
        bins, b = self._quantise(b, t)
        order = np.lexsort((bins[:, 0], bins[:, 1]))  # reading order
        vis, b = vis[order], b[order]
        labels = [self.scene.labels[i] for i in vis]
        fit, saturated = self._budget([self.tokens.text(lab) + 4 for lab in labels])
        scores = self.rng.uniform(0.5, 1.0, fit)
        return Out(Regions(b[:fit], scores, labels[:fit]), saturated)

    def ocr(self, t: Tile) -> Out:
        sc = self.scene
        quads, texts = [], []
        for box, text in zip(sc.tag_boxes, sc.tag_texts):
            if box[3] <= t.y0 or box[1] >= t.y1 or box[2] <= t.x0 or box[0] >= t.x1:
                continue
            cw = (box[2] - box[0]) / len(text)
            centres = box[0] + cw * (np.arange(len(text)) + 0.5)
            inside = np.flatnonzero((centres >= t.x0) & (centres < t.x1))
            y0, y1 = max(box[1], t.y0), min(box[3], t.y1)
            if not len(inside) or (y1 - y0) * MODEL_SIDE / t.height < MIN_VISIBLE / 2:
                continue
            x0, x1 = box[0] + cw * inside[0], box[0] + cw * (inside[-1] + 1)
            texts.append(text[inside[0]: inside[-1] + 1])
            quads.append([x0, y0, x1, y0, x1, y1, x0, y1])
        if not quads:
            return Out(Regions.empty(ocr=True), False)
        q = np.array(quads) - np.tile([t.x0, t.y0], 4)
        size = np.tile([t.width, t.height], 4).astype(float)
        bins = np.clip(np.floor(q / size * 1000), 0, 999)
        q = (bins + 0.5) * size / 1000
        order = np.lexsort((bins[:, 0], bins[:, 1]))
        q, texts = q[order], [texts[i] for i in order]
        fit, saturated = self._budget([self.tokens.text(s) + 8 for s in texts])
        return Out(Regions.from_quads(q[:fit], self.rng.uniform(0.5, 1.0, fit), texts[:fit]), saturated)


# ---------------------------------------------------------------- scoring

def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = ix.clip(0) * iy.clip(0)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def ios_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return ix.clip(0) * iy.clip(0) / np.maximum(np.minimum(area(a)[:, None], area(b)[None, :]), 1e-9)


def score(gt: np.ndarray, gt_labels, pred: Regions) -> dict:
    """Greedy one-to-one matching (best score first) at IoU >= 0.5 with the same label (or text).

    A duplicate is an unmatched prediction lying mostly (IoS >= 0.5) on an object already matched."""
    n, m = len(gt), len(pred)
    if m == 0:
        return {"tp": 0, "fp": 0, "dup": 0, "gt": n}
    same = np.array([[p == g for g in gt_labels] for p in pred.labels]).reshape(m, n)
    iou = np.where(same, iou_matrix(pred.boxes, gt), 0)
    taken = np.zeros(n, bool)
    matched = np.zeros(m, bool)
    for i in np.argsort(-pred.scores, kind="stable"):
        cand = np.flatnonzero((iou[i] >= 0.5) & ~taken)
        if len(cand):
            taken[cand[np.argmax(iou[i, cand])]] = True
            matched[i] = True
    ios = np.where(same, ios_matrix(pred.boxes, gt), 0)
    dup = int(((ios[:, taken] >= 0.5).any(1) & ~matched).sum())
    tp = int(matched.sum())
    return {"tp": tp, "fp": m - tp, "dup": dup, "gt": n}


# ---------------------------------------------------------------- the three ways

def sahi_merge(regions: Regions):
    """SAHI 0.12.8's default merge for sliced prediction on the same tile outputs."""
    from sahi.postprocess.combine import GreedyNMMPostprocess
    from sahi.prediction import ObjectPrediction

    ids = {lab: k for k, lab in enumerate(LABELS)}
    preds = [ObjectPrediction(bbox=b.tolist(), category_id=ids[lab], category_name=lab, score=float(s))
             for b, s, lab in zip(regions.boxes, regions.scores, regions.labels)]
    t0 = time.perf_counter()
    merged = GreedyNMMPostprocess(match_threshold=0.5, match_metric="IOS", class_agnostic=False)(preds)
    dt = time.perf_counter() - t0
    boxes = np.array([p.bbox.to_xyxy() for p in merged]).reshape(-1, 4)
    return Regions(boxes, [p.score.value for p in merged], [p.category.name for p in merged]), dt


def run_frame(scene: Scene, tokens: TokenCounter, rng) -> dict:
    res = {}
    single = detect_tiled(scene.width, scene.height, PerfectFlorence(scene, tokens, rng), TilingOptions(enabled=False))
    res["single"] = (score(scene.boxes, scene.labels, single.od), 0.0,
                     score(scene.tag_boxes, scene.tag_texts, single.ocr))
    model = PerfectFlorence(scene, tokens, rng)
    tiled = detect_tiled(scene.width, scene.height, model, TilingOptions())
    raw = tiled.unmerged["od"]
    t0 = time.perf_counter()
    again = merge_boxes(raw)
    dt = time.perf_counter() - t0
    assert np.array_equal(again.boxes, tiled.od.boxes)
    res["tiled"] = (score(scene.boxes, scene.labels, tiled.od), dt, score(scene.tag_boxes, scene.tag_texts, tiled.ocr))
    merged, sdt = sahi_merge(raw)
    res["sahi"] = (score(scene.boxes, scene.labels, merged), sdt, None)
    res["tiles"] = (len(tiled.tiles), len(tiled.resplit), len(raw))
    return res


def summarise(stats: list[dict]) -> dict:
    tp = sum(s["tp"] for s in stats)
    fp = sum(s["fp"] for s in stats)
    gt = sum(s["gt"] for s in stats)
    recall, precision = tp / gt, tp / max(tp + fp, 1)
    return {"recall": recall, "precision": precision, "dup": sum(s["dup"] for s in stats) / len(stats),
            "dup_rate": sum(s["dup"] for s in stats) / gt,
            "f1": 2 * recall * precision / max(recall + precision, 1e-9)}


# ---------------------------------------------------------------- 10k-box speed

def tiled_boxes(n_boxes: int, tokens: TokenCounter, rng) -> Regions:
    """About n_boxes boxes as tiles of a large dense shelf wall report them (frame pixels, cut marked)."""
    scene = make_scene(7680, 4320, 3200, rng)
    res = detect_tiled(scene.width, scene.height, PerfectFlorence(scene, tokens, rng), TilingOptions(max_depth=0))
    raw = res.unmerged["od"]
    if len(raw) < n_boxes:  # a second wall beside the first, its own confidences
        twin = raw.shifted(7680, 0)
        twin = Regions(twin.boxes, rng.uniform(0.5, 1.0, len(twin)), twin.labels, None, twin.cut)
        raw = Regions.concat([raw, twin])
    return raw.take(np.arange(n_boxes))


def random_boxes(n: int, rng) -> Regions:
    xy = rng.uniform(0, 4000, (n, 2))
    wh = rng.uniform(10, 80, (n, 2))
    return Regions(np.concatenate([xy, xy + wh], 1), rng.uniform(0, 1, n), [LABELS[i] for i in rng.integers(0, 5, n)])


def best_of(fn, repeat: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def speed(tokens: TokenCounter, rng) -> list[tuple]:
    """(boxes, mode, ours nmm, SAHI greedy_nmm, ours nms, SAHI nms) in seconds, best of 7.

    SAHI's numpy functions only group indices; ours also build the merged Regions."""
    from sahi.postprocess import combine
    from sahi.postprocess.backends import set_postprocess_backend

    set_postprocess_backend("numpy")
    rows = []
    for name, r in (("tiled shelf wall", tiled_boxes(10_000, tokens, rng)), ("uniform random", random_boxes(10_000, rng))):
        ids = {lab: k for k, lab in enumerate(LABELS)}
        pred = np.column_stack([r.boxes, r.scores, [ids[lab] for lab in r.labels]])
        for agnostic in (False, True):
            gnmm = combine.greedy_nmm if agnostic else combine.batched_greedy_nmm
            nms = combine.nms if agnostic else combine.batched_nms
            rows.append((name, "class-agnostic" if agnostic else "class-aware",
                         best_of(lambda: merge_boxes(r, "nmm", class_agnostic=agnostic)),
                         best_of(lambda: gnmm(pred, "IOS", 0.5)),
                         best_of(lambda: merge_boxes(r, "nms", class_agnostic=agnostic)),
                         best_of(lambda: nms(pred, "IOS", 0.5))))
    return rows


# ---------------------------------------------------------------- a model that sees

def recall_at(dataset, dets, iou: float = 0.5) -> float:
    """Class-agnostic recall: ground-truth objects matched one-to-one by a detection at IoU >= iou,
    detections taken in score order."""
    from edge_agent.models.evaluate import box_iou

    found = total = 0
    for smp in dataset.samples:
        gt = np.array([b for _, b in smp.objects], float).reshape(-1, 4)
        mine = sorted((d for d in dets if d.image_id == smp.image_id), key=lambda d: -d.score)
        total += len(gt)
        if not len(gt) or not mine:
            continue
        ious = box_iou(np.array([d.box for d in mine], float), gt)
        used = np.zeros(len(gt), bool)
        for row in ious:
            row = np.where(used, 0.0, row)
            k = int(row.argmax())
            if row[k] >= iou:
                used[k] = True
        found += int(used.sum())
    return found / max(1, total)


def model_rows(model_dir: str, variant: str, objects: list[int], frames: int, seed: int) -> dict:
    """{objects: {mode: (recall, mAP@0.5, seconds/frame, detections/frame)}} for one model."""
    import tempfile

    from edge_agent.models.cocodata import load_dataset
    from edge_agent.models.engine import EngineOptions, Florence2Engine
    from edge_agent.models.evaluate import coco_map, predict
    from edge_agent.models.modeldir import open_model_dir
    from edge_agent.models.synth import ShelfOptions, write_dataset

    side = int(open_model_dir(model_dir).preprocess_config().size[0])
    engine = Florence2Engine(EngineOptions(model_dir=model_dir, variant=variant))
    out = {}
    with tempfile.TemporaryDirectory(prefix="dense-model-") as tmp:
        for n in objects:
            folder = Path(tmp) / str(n)
            write_dataset(folder, frames, seed=seed, options=ShelfOptions(width=1920, height=1080, objects=n))
            data = load_dataset(folder)
            out[n] = {}
            for mode in ("untiled", "tiled"):
                t0 = time.perf_counter()
                dets, _ = predict(engine, data, mode, ("od",), side, 0.2)
                secs = (time.perf_counter() - t0) / frames
                out[n][mode] = (recall_at(data, dets), coco_map(data, dets)[0], secs, len(dets) / frames,
                                float(np.mean([len(smp.objects) for smp in data.samples])))
    return out


def print_model_rows(model_dir: str, variant: str, objects: list[int], frames: int, seed: int) -> None:
    rows = model_rows(model_dir, variant, objects, frames, seed)
    print(f"\nmodel {model_dir} ({variant}), synthetic 1920x1080 frames from models/synth.py, {frames} per count")
    print(f"{'objs':>5} {'annotated':>9} {'way':>11} {'recall@.5':>9} {'mAP@.5':>7} {'dets/frame':>10} {'s/frame':>8}")
    for n, by_mode in rows.items():
        for mode, (rec, m50, secs, ndet, ngt) in by_mode.items():
            way = "single" if mode == "untiled" else "tiled"
            print(f"{n:5d} {ngt:9.0f} {way:>11} {rec:9.3f} {m50 or 0.0:7.3f} {ndet:10.1f} {secs:8.2f}")
    n = max(rows)
    print(f"model_tiled_recall_{n}: {rows[n]['tiled'][0]:.4f} model_single_pass_recall_{n}: {rows[n]['untiled'][0]:.4f}")


# ---------------------------------------------------------------- main

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=3, help="frames per size and count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="also run this Florence-2 ONNX model dir (one that sees) on dense synthetic frames")
    ap.add_argument("--variant", default="int8", help="the --model variant (default int8)")
    ap.add_argument("--model-objects", default="200,400", help="objects per frame for --model, comma-separated")
    ap.add_argument("--model-frames", type=int, default=3)
    ap.add_argument("--model-only", action="store_true", help="only the --model rows")
    args = ap.parse_args(argv)
    if args.model_only:
        if not args.model:
            ap.error("--model-only needs --model DIR")
        return print_model_rows(args.model, args.variant, [int(n) for n in args.model_objects.split(",")],
                                args.model_frames, args.seed)
    rng = np.random.default_rng(args.seed)
    tokens = TokenCounter()
    t_start = time.perf_counter()
    print(f"{'frame':>9} {'objs':>4} {'way':>11} {'recall':>7} {'prec':>6} {'F1':>6} {'dup/frame':>9} "
          f"{'merge ms':>8} {'text rec':>8} {'tiles':>5} {'resplit':>7} {'boxes in':>8}")
    rec400 = {"tiled": [], "single": []}
    worst = {"dup_rate": 0.0, "f1_margin": 1.0}
    for w, h in SIZES:
        for n in COUNTS:
            per_way = {k: ([], [], []) for k in ("single", "tiled", "sahi")}
            tiles = []
            for _ in range(args.frames):
                res = run_frame(make_scene(w, h, n, rng), tokens, rng)
                tiles.append(res.pop("tiles"))
                for way, (od, dt, ocr) in res.items():
                    per_way[way][0].append(od)
                    per_way[way][1].append(dt)
                    if ocr is not None:
                        per_way[way][2].append(ocr)
            nt, nr, nb = np.mean(tiles, 0)
            f1 = {}
            for way, (ods, dts, ocrs) in per_way.items():
                s = summarise(ods)
                f1[way] = s["f1"]
                text = f"{summarise(ocrs)['recall']:8.3f}" if ocrs else f"{'-':>8}"
                extra = f"{nt:5.1f} {nr:7.1f} {nb:8.0f}" if way != "single" else f"{1:5d} {0:7d} {'':>8}"
                ms = f"{np.mean(dts) * 1e3:8.2f}" if way != "single" else f"{'-':>8}"
                print(f"{w}x{h:<4} {n:4d} {way:>11} {s['recall']:7.3f} {s['precision']:6.3f} {s['f1']:6.3f} "
                      f"{s['dup']:9.2f} {ms} {text} {extra}")
                if way == "tiled":
                    worst["dup_rate"] = max(worst["dup_rate"], s["dup_rate"])
                if n == 400 and way in rec400:
                    rec400[way].append(s["recall"])
            worst["f1_margin"] = min(worst["f1_margin"], f1["tiled"] - f1["sahi"])
    print(f"\nworst tiled duplicates: {worst['dup_rate'] * 100:.3f}% of ground truth; "
          f"worst F1(edge-agent) - F1(SAHI): {worst['f1_margin']:+.4f}")
    print("\n10,000-box merge, IOS 0.5, best of 7 (ms): edge-agent merge_boxes vs SAHI 0.12.8 numpy backend")
    print(f"{'boxes':>18} {'mode':>14} {'ours nmm':>9} {'SAHI greedy_nmm':>16} {'speed-up':>8} "
          f"{'ours nms':>9} {'SAHI nms':>9} {'speed-up':>8}")
    for name, mode, ours, theirs, ours_nms, theirs_nms in speed(tokens, rng):
        print(f"{name:>18} {mode:>14} {ours * 1e3:9.2f} {theirs * 1e3:16.2f} {theirs / ours:7.1f}x "
              f"{ours_nms * 1e3:9.2f} {theirs_nms * 1e3:9.2f} {theirs_nms / ours_nms:7.1f}x")
    print(f"\nfinished in {time.perf_counter() - t_start:.0f} s")
    print(f"tiled_recall_400: {np.mean(rec400['tiled']):.4f} single_pass_recall_400: {np.mean(rec400['single']):.4f}")
    if args.model:
        print_model_rows(args.model, args.variant, [int(n) for n in args.model_objects.split(",")],
                         args.model_frames, args.seed)


if __name__ == "__main__":
    main()
