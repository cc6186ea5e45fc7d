"""EngineOptions.load_per_stage: one stage's graphs in memory at a time, the same tokens.

The memory it saves is measured on base in benchmarks/frame-results.md (session 8); here: the
outputs do not change, the other stage's sessions are really gone while a stage runs (weak
references to the ONNX Runtime sessions die), and a broken graph still fails at start."""
from __future__ import annotations

import gc
import shutil
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.make_tiny_model import DEFAULT_OUT as TINY  # noqa: E402
from test_run_stdout import edge_agent, json_lines, make_video  # noqa: E402

from edge_agent.models.engine import EngineOptions, Florence2Engine  # noqa: E402
from edge_agent.models.errors import ModelDirError  # noqa: E402


def tiles(n=2):
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, (260 + 30 * i, 340, 3), dtype=np.uint8) for i in range(n)]


class Watch:
    """A progress hook that keeps weak references to the sessions each stage ran with."""

    def __init__(self):
        self.engine = None
        self.loads = 0
        self.refs: dict[str, list] = {"vision": [], "decode": []}
        self.alive_in_decode: list[bool] = []

    def __call__(self, stage, done, total):
        eng = self.engine
        if stage == "load":
            self.loads += 1
        elif eng is not None and stage == "vision":
            self.refs["vision"].append(weakref.ref(eng.vision))
        elif eng is not None and stage == "encoder":
            gc.collect()
            self.alive_in_decode += [r() is not None for r in self.refs["vision"]]
            self.refs["decode"] += [weakref.ref(eng.encoder), weakref.ref(eng.runner.dec), weakref.ref(eng.runner.cross)]


@pytest.mark.parametrize("variant", ["", "_int8"])
def test_same_tokens_and_each_stage_holds_only_its_own_graphs(variant):
    kw = dict(model_dir=TINY, variant=variant, num_beams=1, max_new_tokens=24)
    whole = Florence2Engine(EngineOptions(**kw))
    watch = Watch()
    staged = Florence2Engine(EngineOptions(**kw, load_per_stage=True, progress=watch))
    assert watch.loads == 5  # every graph once at start: embed, vision, encoder, cross K/V, step
    assert staged.vision is None and staged.encoder is None and staged.runner is None
    watch.engine, watch.loads = staged, 0

    got = staged.run(tiles(), ("od", "ocr"))
    want = whole.run(tiles(), ("od", "ocr"))
    assert [[o[t].token_ids for t in o] for o in got] == [[o[t].token_ids for t in o] for o in want]

    assert watch.loads == 4  # this run reloaded the vision tower, then the encoder and both decoders
    assert watch.refs["vision"] and watch.alive_in_decode == [False] * len(watch.refs["vision"])
    gc.collect()
    assert watch.refs["decode"] and all(r() is None for r in watch.refs["decode"])
    assert staged.vision is None and staged.encoder is None and staged.runner is None


def test_encode_alone_and_nested_in_decode_load_the_text_graphs_once():
    watch = Watch()
    eng = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1, max_new_tokens=8,
                                        load_per_stage=True, progress=watch))
    feats = eng.image_features(tiles(1))
    watch.loads = 0
    hidden, mask = eng.encode(feats, ("od",))
    assert watch.loads == 3 and hidden.shape[0] == 1 and eng.encoder is None  # encoder, cross K/V, step
    watch.loads = 0
    eng.decode(feats, ("od", "ocr"), [eng.settings, eng.settings])
    assert watch.loads == 3  # decode's own load; its encode calls ran inside it


def test_a_broken_graph_still_fails_at_start(tmp_path):
    model = tmp_path / "m"
    shutil.copytree(TINY, model)
    (model / "onnx" / "decoder_step.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelDirError, match="decoder_step.onnx"):
        Florence2Engine(EngineOptions(model_dir=model, variant="", load_per_stage=True))


def test_run_from_the_config_key(tmp_path):
    cfg = tmp_path / "low.toml"
    cfg.write_text(f'[agent]\ninterval = 0\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[model]\ndir = "{TINY}"\nmax_new_tokens = 16\nload_per_stage = true\n[mqtt]\nbroker = ""\n')
    p = edge_agent("run", "--config", str(cfg), "--source", str(make_video(tmp_path / "v.avi", 1)), "--once")
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(json_lines(p.stdout)) == 1
    shown = edge_agent("config", "show", "--config", str(cfg))
    assert "load_per_stage = true" in shown.stdout, shown.stdout


def test_bench_charges_the_reloads_to_their_own_column():
    from edge_agent.bench import QUICK, StageClock, measure_engine

    ticks = iter(range(10_000))
    clock = StageClock(clock=lambda: float(next(ticks)))  # one second per report: counts, not timings
    eng = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1, max_new_tokens=8,
                                        load_per_stage=True, progress=clock))
    frame = np.random.default_rng(1).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    res = measure_engine(eng, clock, frame, QUICK.__class__(tiles=2, od_tokens=3, ocr_tokens=2), progress=lambda m: None)
    assert res["reload_s"] == 4.0  # four graphs loaded inside the frame, one report each
    assert res["vision_s"] == 2.0 and res["frame_s"] >= sum(res[k] for k in ("reload_s", "vision_s", "encoder_s", "decode_s"))


def test_a_failed_run_lets_go_of_its_caches_and_graphs_at_once(monkeypatch):
    """A run whose decode fails mid-way (here the third decoder step raises) releases the step's
    runner, sessions and caches as it fails, though the exception reporting it is still held: its
    traceback's frames are cleared (models/engine.py run), so they do not stay resident until the
    next frame (base int8, load_per_stage: 269 MB resident after such a failure, 131 MB after a
    frame that succeeds, 130 MB after the failure with the frames cleared)."""
    from edge_agent.models.errors import InferenceError
    from edge_agent.models.runners import BufferedRunner

    refs, step = [], BufferedRunner.step

    def failing_step(self, tokens, cache):
        refs.extend([weakref.ref(self), weakref.ref(self.dec), weakref.ref(cache)])
        if len(refs) >= 9:
            raise RuntimeError("injected")
        return step(self, tokens, cache)

    monkeypatch.setattr(BufferedRunner, "step", failing_step)
    eng = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1, max_new_tokens=8, load_per_stage=True))
    with pytest.raises(InferenceError, match="injected") as failed:
        eng.run(tiles(1), ("od",))
    assert isinstance(failed.value.__cause__, RuntimeError)  # still held, with its traceback
    assert len(refs) == 9 and all(r() is None for r in refs)
    assert eng.encoder is None and eng.runner is None
