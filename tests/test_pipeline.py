"""pipeline.process_frame with a scripted engine: batching per round, change gating,
--no-tiling reaching the tiling options, frame coordinates, timings, schema-valid payload."""
from __future__ import annotations

import time

import numpy as np

from edge_agent.capture import Frame
from edge_agent.gating import GatingOptions, TileGate
from edge_agent.pipeline import PipelineOptions, model_info, process_frame
from edge_agent.settings import load_settings
from edge_agent.models.outputs import TaskOutput
from edge_agent.tiling.regions import Regions
from edge_agent.tiling.runner import TilingOptions


class ScriptedEngine:
    """One 'bottle' box in the middle of every tile and one text line near its top-left."""

    info = {"name": "scripted", "variant": "fp32", "providers": ["CPUExecutionProvider"], "num_beams": 1}

    def __init__(self):
        self.calls: list[list[tuple[int, int]]] = []  # per call: crop shapes

    def run(self, crops, tasks=("od", "ocr")):
        self.calls.append([c.shape[:2] for c in crops])
        outs = []
        for c in crops:
            h, w = c.shape[:2]
            od = Regions(np.array([[w * 0.4, h * 0.4, w * 0.6, h * 0.6]]), np.array([0.9]), ("bottle",))
            ocr = Regions.from_quads(np.array([[5, 5, 60, 5, 60, 20, 5, 20]]), np.array([0.8]), ("SALE",))
            d = {"od": TaskOutput("od", od, False, "<s>bottle</s>", (2,)),
                 "ocr": TaskOutput("ocr", ocr, False, "<s>SALE</s>", (2,))}
            outs.append({t: d[t] for t in tasks})
        return outs


def frame(width, height, seq=0, camera="cam0", value=120):
    img = np.full((height, width, 3), value, np.uint8)
    return Frame(camera, seq, time.time(), img)


def test_tiles_of_a_round_go_to_the_engine_in_one_call(schema):
    eng = ScriptedEngine()
    opts = PipelineOptions(tiling=TilingOptions(tile_size=768, overlap=0.2), model=model_info(eng))
    result, tiled = process_frame(frame(1920, 1080), eng, opts, capture_s=0.01)
    assert len(eng.calls) == 1 and len(eng.calls[0]) == len(tiled.tiles) > 1
    assert result.tiles == len(tiled.tiles) and result.resplit == []
    # boxes are in frame pixels: every one lies inside the frame, some beyond the first tile
    boxes = result.detections.boxes
    assert len(boxes) >= 2 and boxes[:, 2].max() > 768 and boxes[:, 3].max() <= 1080
    assert set(result.text.labels) == {"SALE"}
    assert set(result.timings) == {"capture", "plan", "gate", "engine", "merge", "total"}
    assert result.timings["capture"] == 0.01 and result.timings["total"] >= result.timings["engine"] > 0
    payload = schema.check(result.to_payload("dev1"))
    assert payload["model"]["providers"] == "CPUExecutionProvider"  # lists flattened for the schema
    assert payload["counts"] == {"bottle": len(boxes)}


def test_no_tiling_setting_reaches_the_tiling_options():
    s = load_settings(None, env={}, overrides={"tiling": {"enabled": False}})
    opts = s.tiling
    assert opts.enabled is False
    eng = ScriptedEngine()
    result, tiled = process_frame(frame(1920, 1080), eng, PipelineOptions(tiling=opts))
    assert eng.calls == [[(1080, 1920)]] and result.tiles == 1


def test_unchanged_tiles_reuse_results_per_camera():
    eng = ScriptedEngine()
    gate = TileGate(GatingOptions(threshold=6.0))
    opts = PipelineOptions(tiling=TilingOptions(), tasks=("od",))
    first, _ = process_frame(frame(1280, 720, 0), eng, opts, gate=gate)
    n = len(eng.calls[0])
    again, _ = process_frame(frame(1280, 720, 1), eng, opts, gate=gate)
    assert len(eng.calls) == 1  # nothing changed: no engine call at all
    assert np.array_equal(again.detections.boxes, first.detections.boxes) and again.text.quads is not None
    other_cam, _ = process_frame(frame(1280, 720, 0, camera="cam1"), eng, opts, gate=gate)
    assert len(eng.calls) == 2  # another camera sharing the engine and gate has its own cache
    changed = frame(1280, 720, 2, value=120)
    changed.image[:, :300] = 250  # only the left tile changes
    process_frame(changed, eng, opts, gate=gate)
    assert 0 < len(eng.calls[2]) < n
    st = gate.stats()
    assert st["hits"] >= n and 0 < st["hit_rate"] < 1


def test_observer_sees_every_engine_pass():
    eng = ScriptedEngine()
    seen = []
    process_frame(frame(640, 480), eng, PipelineOptions(tasks=("od", "ocr")),
                  observe=lambda tiles, outs: seen.extend(o[t].raw for o in outs for t in ("od", "ocr")))
    assert seen == ["<s>bottle</s>", "<s>SALE</s>"]


def test_frames_of_several_cameras_share_one_engine_call_per_round():
    from edge_agent.pipeline import process_frames

    eng = ScriptedEngine()
    opts = PipelineOptions(tiling=TilingOptions())
    a, b = frame(1280, 720, camera="left"), frame(640, 480, camera="right")
    out = process_frames([a, b], eng, opts, gate=TileGate(GatingOptions(threshold=6.0)), capture_s=[0.1, 0.2])
    (ra, ta), (rb, tb) = out
    assert len(eng.calls) == 1 and len(eng.calls[0]) == len(ta.tiles) + len(tb.tiles)  # one batch
    assert (ra.camera_id, ra.width, ra.timings["capture"]) == ("left", 1280, 0.1)
    assert (rb.camera_id, rb.width, rb.timings["capture"]) == ("right", 640, 0.2)
    assert rb.detections.boxes[:, 2].max() <= 640  # each frame got its own tiles' outputs back


def test_an_engine_failure_is_returned_per_frame():
    from edge_agent.pipeline import process_frames

    class Broken(ScriptedEngine):
        def run(self, crops, tasks=("od", "ocr")):
            raise RuntimeError("onnx went away")

    out = process_frames([frame(640, 480, camera="a"), frame(640, 480, camera="b")], Broken(), PipelineOptions())
    assert [type(o) for o in out] == [RuntimeError, RuntimeError]


def test_small_frame_resplit_tiles_with_repeated_boxes_pass_the_gate():
    """A saturated small tile splits into sub-tiles that can share a box; storing each must work."""

    class Saturating(ScriptedEngine):
        def run(self, crops, tasks=("od", "ocr")):
            outs = super().run(crops, tasks)
            return [{t: TaskOutput(t, o[t].regions, True, "", ()) for t in o} for o in outs]

    eng = Saturating()
    result, tiled = process_frame(frame(160, 120), eng, PipelineOptions(tiling=TilingOptions()), gate=TileGate())
    assert len(tiled.tiles) == 5 and len(result.resplit) == 1


def test_snapshot_is_annotated_and_size_limited():
    import cv2

    from edge_agent.draw import picture

    eng = ScriptedEngine()
    rng = np.random.default_rng(0)
    f = frame(1280, 720)
    f.image[:] = rng.integers(0, 255, f.image.shape, dtype=np.uint8)  # noise: JPEG-hostile
    result, _ = process_frame(f, eng, PipelineOptions(tiling=TilingOptions()))
    jpeg = picture(f.image, result, ".jpg", max_bytes=60_000)
    assert jpeg is not None and len(jpeg) <= 60_000
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[1] <= 1280
    assert picture(f.image, result, ".jpg", max_bytes=10) is None
