"""The dense-frame measurement of the edge-agent engine, shared by `edge-agent bench` and
benchmarks/frame.py.

One frame is cut into tiles (tiling.plan.plan_tiles); every tile runs `<OD>` and
`<OCR_WITH_REGION>`, each with a forced number of new tokens (min_new_tokens =
max_new_tokens, greedy), exactly as Florence2Engine.run does it: one vision call per tile,
one text-encoder pass per (tile, task), then one batched KV-cached decode of all
(tile, task) sequences (rows leave the batch when their budget is spent).  Each stage is
timed; the process's peak RSS is reported.
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FrameWorkload:
    width: int = 1920
    height: int = 1080
    tile_size: int = 768
    tiles: int = 6  # the first N tiles of the plan (a 1080p frame at 768 plans 6)
    od_tokens: int = 512
    ocr_tokens: int = 256

    def describe(self) -> str:
        return (f"{self.width}x{self.height} frame, {self.tiles} tiles at {self.tile_size}, <OD> {self.od_tokens} "
                f"+ <OCR_WITH_REGION> {self.ocr_tokens} new tokens forced per tile, greedy")


DENSE_1080P = FrameWorkload()
QUICK = FrameWorkload(tiles=2, od_tokens=32, ocr_tokens=16)


@dataclass
class StageTimes:
    values: dict = field(default_factory=dict)

    def timed(self, name: str, fn, *a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        self.values[name] = self.values.get(name, 0.0) + time.perf_counter() - t
        return out


def synthetic_shelf(width: int = 1920, height: int = 1080, seed: int = 0) -> np.ndarray:
    """RGB uint8: shelves of products of varying widths and colours, a price tag under every other one."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 205, np.uint8)
    rows = 4
    shelf_h = height // rows
    for r in range(rows):
        floor = (r + 1) * shelf_h - 24
        img[floor:floor + 24] = (90, 70, 50)
        x = 6
        while x < width - 20:
            w = int(rng.integers(28, 90))
            h = int(shelf_h * rng.uniform(0.55, 0.85))
            x1 = min(x + w, width - 4)
            img[floor - h:floor, x:x1] = rng.integers(20, 250, 3)
            img[floor - h // 2:floor - h // 2 + 8, x + 3:x1 - 3] = 250  # a label band
            if rng.uniform() < 0.5:
                img[floor + 5:floor + 18, x + 4:x1 - 4] = 245  # price tag with dark "glyphs"
                img[floor + 8:floor + 15, x + 6:x1 - 6:4] = 20
            x = x1 + 3
    return img


def frame_tiles(frame: np.ndarray, work: FrameWorkload) -> list[np.ndarray]:
    from tiling.plan import plan_tiles

    h, w = frame.shape[:2]
    plan = plan_tiles(w, h, work.tile_size)
    if work.tiles > len(plan):
        plan = (plan * (work.tiles // len(plan) + 1))
    return [frame[t.y0:t.y1, t.x0:t.x1] for t in plan[:work.tiles]]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def task_settings(engine, work: FrameWorkload) -> dict:
    base = engine.settings.with_overrides(num_beams=1)
    return {"od": base.with_overrides(max_new_tokens=work.od_tokens, min_new_tokens=work.od_tokens),
            "ocr": base.with_overrides(max_new_tokens=work.ocr_tokens, min_new_tokens=work.ocr_tokens)}


def warm_up(engine, tile: np.ndarray) -> None:
    """Session initialisation and first allocations, outside the measurement."""
    short = engine.settings.with_overrides(num_beams=1, max_new_tokens=2, min_new_tokens=2)
    engine.run([tile[:64, :64]], ("od",), settings={"od": short})


def measure_engine(engine, frame: np.ndarray, work: FrameWorkload, progress: Progress = _stderr,
                   keep_od_rows: bool = False) -> dict:
    """Stage timings of one frame through `engine` (a models.engine.Florence2Engine), plus outputs.
    keep_od_rows: also return the <OD> rows' encoder states as res["od_rows"] (for measure_decode)."""
    from models.preprocess import preprocess

    tasks = ("od", "ocr")
    tiles = frame_tiles(frame, work)
    settings = task_settings(engine, work)
    rows = engine.task_settings(settings, tasks) * len(tiles)
    st = StageTimes()
    # The engine preprocesses one vision chunk at a time (as Florence2Engine.run does), so the vision
    # column includes preprocessing; the preproc column is that part, timed on its own beforehand.
    st.timed("preprocess_s", preprocess, tiles, engine.pre_cfg)
    t0 = time.perf_counter()
    progress(f"vision: {len(tiles)} tiles ...")
    feats = st.timed("vision_s", engine.image_features, list(tiles))
    progress(f"text encoder: {len(tiles) * len(tasks)} sequences ...")
    hidden, mask = st.timed("encoder_s", engine.encode, feats, tasks)
    steps = max(work.od_tokens, work.ocr_tokens)
    progress(f"decode: {len(rows)} sequences, {steps} batched steps ...")
    seqs = st.timed("decode_s", engine.generate_rows, hidden, mask, rows)
    outs = st.timed("parse_s", lambda: [engine._output(tasks[i % 2], s, tiles[i // 2]) for i, s in enumerate(seqs)])
    res = dict(st.values)
    res["frame_s"] = time.perf_counter() - t0
    res["decode_ms_step"] = 1000 * res["decode_s"] / steps
    res["peak_rss_mb"] = peak_rss_mb()
    res["token_ids"] = [list(o.token_ids) for o in outs]
    res["od_boxes"] = [np.asarray(o.regions.boxes, float).tolist() for o in outs[0::2]]
    if keep_od_rows:
        res["od_rows"] = (hidden[0::2], mask[0::2])
    return res


def measure_decode(engine, od_rows: tuple, work: FrameWorkload, progress: Progress = _stderr) -> float:
    """ms per decode step of the <OD> rows alone (encoder states from measure_engine), od_tokens forced:
    the issue's decode goal (batch = tiles)."""
    hidden, mask = od_rows
    od = task_settings(engine, work)["od"]
    progress(f"decode only: batch {len(hidden)}, {work.od_tokens} steps ...")
    t = time.perf_counter()
    engine.generate_rows(hidden, mask, [od] * len(hidden))
    return 1000 * (time.perf_counter() - t) / work.od_tokens


COLUMNS = [("preprocess_s", "preproc s", "{:.2f}"), ("vision_s", "vision s", "{:.2f}"),
           ("encoder_s", "encoder s", "{:.2f}"), ("decode_s", "decode s", "{:.2f}"),
           ("decode_ms_step", "decode ms/step", "{:.1f}"), ("parse_s", "parse s", "{:.2f}"),
           ("frame_s", "frame s", "{:.2f}"), ("peak_rss_mb", "peak RSS MB", "{:.0f}")]


def format_table(rows: dict[str, dict], extra: tuple = ()) -> str:
    cols = COLUMNS + list(extra)
    lines = [f"{'':<26}" + "".join(f"{label:>15}" for _, label, _ in cols)]
    for who, r in rows.items():
        cells = "".join(f"{(fmt.format(r[k]) if r.get(k) is not None else '-'):>15}" for k, _, fmt in cols)
        lines.append(f"{who:<26}" + cells)
    return "\n".join(lines)
