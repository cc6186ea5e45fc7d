"""The dense-frame measurement of the edge-agent engine, shared by `edge-agent bench` and
benchmarks/frame.py.

One frame is cut into tiles (tiling.plan.plan_tiles); every tile runs `<OD>` and
`<OCR_WITH_REGION>`, each with a forced number of new tokens (min_new_tokens =
max_new_tokens, greedy), through `Florence2Engine.run`, the call the agent makes: nothing else
of the engine is called.  The stages are timed by the engine's own progress hook
(EngineOptions.progress, a StageClock here), which reports after each vision chunk, each
text-encoder pass and each decode call; the process's peak RSS is reported.
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
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


class StageClock:
    """The engine's progress hook (EngineOptions.progress) as a stopwatch: each report charges the
    time since the previous one (or since start()) to the stage reported.  The engine reports
    after each unit of work, so the stages' times add up to the run's.  report: gets one line per
    report (bench's progress on stderr); clock: seconds, injectable."""

    def __init__(self, report: Progress | None = None, clock: Callable[[], float] = time.perf_counter):
        self.report, self.clock = report, clock
        self.start()

    def start(self) -> None:
        self.times: dict[str, float] = {}
        self.started = self.last = self.clock()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        self.times[stage] = self.times.get(stage, 0.0) + now - self.last
        self.last = now
        if self.report:
            self.report(f"{stage} {done}" + (f"/{total}" if total else ""))


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
    from edge_agent.tiling.plan import plan_tiles

    h, w = frame.shape[:2]
    plan = plan_tiles(w, h, work.tile_size)
    if work.tiles > len(plan):
        plan = (plan * (work.tiles // len(plan) + 1))
    return [frame[t.y0:t.y1, t.x0:t.x1] for t in plan[:work.tiles]]


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB: Linux's VmHWM, which starts again at exec.
    getrusage's ru_maxrss (the fallback elsewhere) keeps the parent's peak across fork and exec,
    so a benchmark's child started by a large parent (one that exported or quantized a model)
    reported the parent's peak as its own."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
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


def measure_engine(engine, clock: StageClock, frame: np.ndarray, work: FrameWorkload,
                   progress: Progress = _stderr) -> dict:
    """Stage timings of one frame through `engine.run` (a models.engine.Florence2Engine built with
    `clock` as its EngineOptions.progress), plus the outputs' token ids and <OD> boxes.
    parse_s: what run does after its last decode call (a heap trim, then parsing every output)."""
    from edge_agent.models.preprocess import preprocess

    tasks = ("od", "ocr")
    tiles = frame_tiles(frame, work)
    settings = task_settings(engine, work)
    # The engine preprocesses one vision chunk at a time inside run, so the vision column includes
    # preprocessing; the preproc column is that part, timed on its own beforehand.
    t = time.perf_counter()
    preprocess(tiles, engine.pre_cfg)
    preprocess_s = time.perf_counter() - t
    steps = max(work.od_tokens, work.ocr_tokens)
    progress(f"frame: {len(tiles)} tiles, {len(tiles) * len(tasks)} sequences, {steps} batched steps ...")
    clock.start()
    outs = engine.run(tiles, tasks, settings=settings)
    end = clock.clock()
    res = {"preprocess_s": preprocess_s, **{f"{stage}_s": clock.times.get(stage, 0.0)
                                           for stage in ("vision", "encoder", "decode")}}
    res["reload_s"] = clock.times.get("load", 0.0)  # graphs loaded inside the frame (load_per_stage)
    res["parse_s"] = end - clock.last
    res["frame_s"] = end - clock.started
    res["decode_ms_step"] = 1000 * res["decode_s"] / steps
    res["peak_rss_mb"] = peak_rss_mb()
    res["token_ids"] = [list(o[task].token_ids) for o in outs for task in tasks]
    res["od_boxes"] = [np.asarray(o["od"].regions.boxes, float).tolist() for o in outs]
    return res


def measure_decode(engine, clock: StageClock, frame: np.ndarray, work: FrameWorkload,
                   progress: Progress = _stderr) -> float:
    """ms per decode step of the <OD> rows alone, one per tile, od_tokens forced (the issue's
    decode goal, batch = tiles): `engine.run` with the <OD> task only, its decode stage timed."""
    tiles = frame_tiles(frame, work)
    od = task_settings(engine, work)["od"]
    progress(f"decode only: <OD> of {len(tiles)} tiles, {work.od_tokens} steps ...")
    clock.start()
    engine.run(tiles, ("od",), settings={"od": od})
    return 1000 * clock.times.get("decode", 0.0) / work.od_tokens


COLUMNS = [("preprocess_s", "preproc s", "{:.2f}"), ("reload_s", "reload s", "{:.2f}"), ("vision_s", "vision s", "{:.2f}"),
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
