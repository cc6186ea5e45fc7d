"""One frame through every stage: tiles -> engine (with change gating) -> merge -> FrameResult.

This is the only module that knows capture, tiling, the engine, gating and results
together (docs/ARCHITECTURE.md).  Several cameras share one engine (and one `TileGate`,
keyed by camera): `process_frames` runs their frames together, batching the tiles of
all frames of a round into one engine call.

    opts = PipelineOptions(tiling=TilingOptions(...), tasks=("od", "ocr"), model=model_info(engine))
    result, tiled = process_frame(frame, engine, opts, gate=TileGate(...), capture_s=0.02)
    pairs = process_frames([frame_a, frame_b], engine, opts, gate=gate, capture_s=[0.01, 0.02])

The engine is called once per tiling round with every tile of that round that the gate
did not answer from its cache (one batched `engine.run`).  Timings per stage, seconds:
capture (given), plan (before the first engine call), gate (signature checks), engine,
merge (mapping, re-split bookkeeping and merging), total.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from edge_agent.result import FrameResult
from edge_agent.tiling.runner import TilingOptions, detect_tiled

Observer = Callable[[Sequence[Any], Sequence[dict]], None]  # (tiles run by the engine, their outputs)


@dataclass(frozen=True)
class PipelineOptions:
    tiling: TilingOptions = TilingOptions()
    tasks: tuple[str, ...] = ("od", "ocr")
    model: dict = field(default_factory=dict)  # payload "model" object; model_info(engine) if empty


def model_info(engine, note: str = "") -> dict:
    """engine.info reduced to what the result schema allows (strings, numbers, booleans)."""
    info = {}
    for k, v in dict(engine.info).items():
        if isinstance(v, (list, tuple)):
            v = ",".join(map(str, v))
        if v is None or isinstance(v, (str, int, float, bool)):
            info[k] = v
        else:
            info[k] = str(v)
    if note:
        info["note"] = note
    return info


def crop(image: np.ndarray, tile) -> np.ndarray:
    return np.ascontiguousarray(image[tile.y0:tile.y1, tile.x0:tile.x1])


class _Infer:
    """The infer closure for detect_tiled: gate, batch the misses into one engine call, time it."""

    def __init__(self, image, camera_id, run, tasks, gate, observe):
        self.image, self.camera_id, self.run, self.tasks = image, camera_id, run, tasks
        self.gate, self.observe = gate, observe
        self.engine_s = self.gate_s = 0.0
        self.first_call: float | None = None
        self.last_return = 0.0
        self.engine_tiles = 0

    def __call__(self, tiles):
        now = time.perf_counter()
        if self.first_call is None:
            self.first_call = now
        crops = [crop(self.image, t) for t in tiles]
        outs: list = [None] * len(tiles)
        if self.gate is not None:
            for i, (t, c) in enumerate(zip(tiles, crops)):
                outs[i] = self.gate.check(self.camera_id, t, c)
        misses = [i for i, o in enumerate(outs) if o is None]
        t1 = time.perf_counter()
        self.gate_s += t1 - now
        if misses:
            ran = self.run([crops[i] for i in misses], self.tasks)
            self.engine_s += time.perf_counter() - t1
            self.engine_tiles += len(misses)
            for i, out in zip(misses, ran):
                outs[i] = out
                if self.gate is not None:
                    self.gate.store(self.camera_id, tiles[i], out)  # the signature its check computed
            if self.observe is not None:
                self.observe([tiles[i] for i in misses], ran)
        self.last_return = time.perf_counter()
        return outs


def process_frame(frame, engine, opts: PipelineOptions, gate=None, capture_s: float = 0.0,
                  observe: Observer | None = None, density: float | None = None, run=None):
    """-> (FrameResult, TiledResult).  `frame` is a capture.Frame (RGB image).  `observe` sees
    every engine call's tiles and outputs (e.g. to collect TaskOutput.raw).  `run(crops,
    tasks)` replaces engine.run (process_frames passes its cross-frame batcher)."""
    t0 = time.perf_counter()
    run = run or (lambda crops, tasks: engine.run(crops, tasks=tasks))
    infer = _Infer(frame.image, frame.camera_id, run, tuple(opts.tasks), gate, observe)
    tiled = detect_tiled(frame.width, frame.height, infer, opts.tiling, density=density)
    end = time.perf_counter()
    plan_s = (infer.first_call or end) - t0
    merge_s = max(0.0, (end - t0) - plan_s - infer.engine_s - infer.gate_s)
    timings = {"capture": capture_s, "plan": plan_s, "gate": infer.gate_s, "engine": infer.engine_s,
               "merge": merge_s, "total": capture_s + (end - t0)}
    result = FrameResult(
        camera_id=frame.camera_id, seq=frame.seq, captured_at=frame.captured_at,
        width=frame.width, height=frame.height, detections=tiled.od, text=tiled.ocr,
        model=dict(opts.model) or model_info(engine), tiles=len(tiled.tiles),
        resplit=[list(t.box) for t in tiled.resplit], timings={k: max(0.0, v) for k, v in timings.items()},
    )
    return result, tiled


class _Batcher:
    """Joins the engine calls of several frames' tiling rounds into one engine.run: a call
    waits until every frame still running has asked (or finished), then one batch runs."""

    def __init__(self, engine, frames: int):
        self.engine = engine
        self.active = frames
        self.pending: list[dict] = []
        self.calls = 0
        self.cond = threading.Condition()

    def run(self, crops, tasks):
        slot = {"crops": list(crops), "tasks": tuple(tasks), "out": None}
        with self.cond:
            self.pending.append(slot)
            self._flush_if_all_asked()
            while slot["out"] is None:
                self.cond.wait()
        if isinstance(slot["out"], BaseException):
            raise slot["out"]
        return slot["out"]

    def finished(self) -> None:
        with self.cond:
            self.active -= 1
            self._flush_if_all_asked()

    def _flush_if_all_asked(self) -> None:
        if not self.pending or len(self.pending) < self.active:
            return
        batch, self.pending = self.pending, []
        by_tasks: dict[tuple, list[dict]] = {}
        for slot in batch:
            by_tasks.setdefault(slot["tasks"], []).append(slot)
        for tasks, slots in by_tasks.items():
            crops = [c for slot in slots for c in slot["crops"]]
            try:
                outs = list(self.engine.run(crops, tasks=tasks))
                self.calls += 1
            except Exception as e:  # every frame of the batch fails alike
                for slot in slots:
                    slot["out"] = e
                continue
            i = 0
            for slot in slots:
                slot["out"] = outs[i:i + len(slot["crops"])]
                i += len(slot["crops"])
        self.cond.notify_all()


def process_frames(frames, engine, opts: PipelineOptions, gate=None, capture_s=None) -> list:
    """Several frames (e.g. one per camera) through one shared engine, batched: each
    tiling round's engine call carries the tiles of every frame.  -> [(FrameResult,
    TiledResult) or the exception that frame raised], in the order of `frames`."""
    frames = list(frames)
    capture_s = list(capture_s) if capture_s is not None else [0.0] * len(frames)
    if len(frames) == 1:
        try:
            return [process_frame(frames[0], engine, opts, gate=gate, capture_s=capture_s[0])]
        except Exception as e:
            return [e]
    batcher = _Batcher(engine, len(frames))
    results: list = [None] * len(frames)

    def work(i):
        try:
            results[i] = process_frame(frames[i], engine, opts, gate=gate, capture_s=capture_s[i], run=batcher.run)
        except Exception as e:
            results[i] = e
        finally:
            batcher.finished()

    threads = [threading.Thread(target=work, args=(i,), name=f"frame-{f.camera_id}", daemon=True)
               for i, f in enumerate(frames)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
