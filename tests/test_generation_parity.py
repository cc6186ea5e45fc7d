"""Token-exact parity of the ONNX Runtime engine with transformers' `generate`.

The tiny fixture (tests/fixtures/tiny-florence2) is rebuilt in torch from the same
deterministic recipe; both sides get the same pixel values, prompts and generation
settings (from the fixture's generation_config.json).  Before trusting parity we check
that the random model's output really depends on the image and the task, and that the
sequences end at different lengths (EOS) as well as at the token budget.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.make_tiny_model import DEFAULT_OUT as TINY, build_torch_model  # noqa: E402

from edge_agent.models.engine import EngineOptions, Florence2Engine  # noqa: E402
from edge_agent.models.generate import generate  # noqa: E402
from edge_agent.models.preprocess import preprocess  # noqa: E402

MAX_NEW = 30
IMAGE_TOKEN = 51289


def synthetic_tiles() -> list[np.ndarray]:
    """Three different images of different sizes (structured: noise barely moves a random model)."""
    yy, xx = np.mgrid[0:480, 0:640]
    a = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    b = np.zeros((500, 500, 3), np.uint8)
    b[::32] = 255
    b[:, ::48, 1] = 200
    c = np.full((300, 700, 3), (200, 30, 90), np.uint8)
    c[100:200, 200:500] = (10, 240, 20)
    return [a, b, c]


@pytest.fixture(scope="module")
def model():
    return build_torch_model()


@pytest.fixture(scope="module")
def tiles():
    return synthetic_tiles()


_ENGINES: dict = {}


def engine(num_beams: int, max_new: int = MAX_NEW, fast: bool = True) -> Florence2Engine:
    """fast: edge-agent's fast decoder (decoder_step); False: onnx-community's decoder_model_merged."""
    key = (num_beams, max_new, fast)
    if key not in _ENGINES:
        _ENGINES[key] = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=num_beams,
                                                      max_new_tokens=max_new, fast_decoder=fast))
        assert type(_ENGINES[key].runner).__name__ == ("BufferedRunner" if fast else "DecoderRunner")
    return _ENGINES[key]


_RUNS: dict = {}


def engine_run(tiles, num_beams: int, max_new: int = MAX_NEW, fast: bool = True):
    key = (num_beams, max_new, fast)
    if key not in _RUNS:
        _RUNS[key] = engine(num_beams, max_new, fast).run(tiles, ("od", "ocr"))
    return _RUNS[key]


def _trim(ids: list[int], eos: int, pad: int) -> list[int]:
    """transformers pads finished rows; cut after the first EOS that follows the start token."""
    for j in range(1, len(ids)):
        if ids[j] == eos:
            return ids[:j + 1]
    while ids and ids[-1] == pad:
        ids = ids[:-1]
    return ids


_REFS: dict = {}


def reference(model, eng: Florence2Engine, tiles, task: str):
    """transformers' generate on the same weights and settings (cached per mode and task)."""
    key = (eng.settings.num_beams, eng.settings.max_new_tokens, task)
    if key not in _REFS:
        _REFS[key] = _generate_reference(model, eng, tiles, task)
    return _REFS[key]


def _generate_reference(model, eng: Florence2Engine, tiles, task: str):
    px = torch.from_numpy(preprocess(tiles, eng.pre_cfg))
    ids = torch.tensor([eng.prompt_ids(task)] * len(tiles))
    inputs = torch.cat([torch.full((len(tiles), 577), IMAGE_TOKEN), ids], 1)
    kw = eng.settings.to_transformers()
    with torch.no_grad():
        return model.generate(input_ids=inputs, pixel_values=px, output_scores=True, return_dict_in_generate=True,
                              **kw)



def assert_token_exact(model, eng: Florence2Engine, tiles, outs) -> None:
    """Every (tile, task) sequence of `outs` equals transformers' generate on the same weights."""
    for task in ("od", "ocr"):
        ref = _generate_reference(model, eng, tiles, task)
        for i in range(len(tiles)):
            assert list(outs[i][task].token_ids) == _trim(ref.sequences[i].tolist(), 2, eng.settings.pad_token_id)

def test_outputs_depend_on_image_and_task(tiles):
    outs = engine_run(tiles, 1)
    od = [o["od"].token_ids for o in outs]
    assert len(set(od)) == 3, "the random model ignores the image: parity would prove little"
    assert any(o["od"].token_ids != o["ocr"].token_ids for o in outs), "the random model ignores the task"
    lengths = {len(o[t].token_ids) for o in outs for t in o}
    assert len(lengths) >= 3 and max(lengths) == MAX_NEW + 1, lengths


@pytest.mark.parametrize("fast", [True, False], ids=["decoder_step", "decoder_model_merged"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_token_ids_equal_transformers(model, tiles, num_beams, fast):
    eng = engine(num_beams, fast=fast)
    outs = engine_run(tiles, num_beams, fast=fast)
    for task in ("od", "ocr"):
        ref = reference(model, eng, tiles, task)
        for i in range(len(tiles)):
            want = _trim(ref.sequences[i].tolist(), 2, eng.settings.pad_token_id)
            got = list(outs[i][task].token_ids)
            assert got == want, (task, i, num_beams)
            assert outs[i][task].saturated == (len(got) - 1 == MAX_NEW)
            assert len(outs[i][task].token_ids) == len(got)


@pytest.mark.parametrize("fast", [True, False], ids=["decoder_step", "decoder_model_merged"])
@pytest.mark.parametrize("early_stopping,length_penalty", [(False, 2.0), ("never", 0.5)])
def test_beam_search_variants_equal_transformers(model, tiles, early_stopping, length_penalty, fast):
    """The other early-stopping heuristics and length penalties of transformers' beam search."""
    eng = engine(3, fast=fast)
    s = eng.settings.with_overrides(early_stopping=early_stopping, length_penalty=length_penalty,
                                    max_new_tokens=20)
    feats = eng.image_features(preprocess(tiles, eng.pre_cfg))
    hidden, mask = eng.encode(feats, ("od",))
    got = [g.ids for g in generate(eng.runner, hidden, mask, s)]
    px = torch.from_numpy(preprocess(tiles, eng.pre_cfg))
    ids = torch.tensor([eng.prompt_ids("od")] * len(tiles))
    inputs = torch.cat([torch.full((len(tiles), 577), IMAGE_TOKEN), ids], 1)
    with torch.no_grad():
        ref = model.generate(input_ids=inputs, pixel_values=px, **s.to_transformers())
    assert got == [_trim(r.tolist(), 2, s.pad_token_id) for r in ref]


def test_greedy_probabilities_are_the_processed_scores(model, tiles):
    eng = engine(1)
    outs = engine_run(tiles, 1)
    ref = reference(model, eng, tiles, "od")
    for i in range(len(tiles)):
        ids = outs[i]["od"].token_ids
        want = [1.0] + [torch.softmax(ref.scores[t][i], -1)[ids[t + 1]].item() for t in range(len(ids) - 1)]
        got = _probs(eng, tiles, i, "od")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        assert got[1] == 1.0  # forced BOS


def _probs(eng, tiles, i, task):
    """Probabilities as the engine records them (re-generated for one tile)."""
    feats = eng.image_features(preprocess([tiles[i]], eng.pre_cfg))
    hidden, mask = eng.encode(feats, (task,))
    return generate(eng.runner, hidden, mask, eng.settings)[0].probs


@pytest.mark.parametrize("fast", [True, False], ids=["decoder_step", "decoder_model_merged"])
def test_first_step_logits_allclose(model, tiles, fast):
    eng = engine(1, fast=fast)
    feats = eng.image_features(preprocess(tiles, eng.pre_cfg))
    hidden, mask = eng.encode(feats, ("od",))
    logits, _ = eng.runner.first(np.full(len(tiles), 2, np.int64), hidden, mask, max_length=1)
    px = torch.from_numpy(preprocess(tiles, eng.pre_cfg))
    ids = torch.tensor([eng.prompt_ids("od")] * len(tiles))
    inputs = torch.cat([torch.full((len(tiles), 577), IMAGE_TOKEN), ids], 1)
    with torch.no_grad():
        ref = model(input_ids=inputs, pixel_values=px, decoder_input_ids=torch.full((len(tiles), 1), 2))
    np.testing.assert_allclose(logits, ref.logits[:, -1].numpy(), atol=1e-4, rtol=1e-4)


def test_saturation_reported_with_small_budget(tiles):
    outs = engine(1, 5).run(tiles, ("od", "ocr"))
    for o in outs:
        for task, out in o.items():
            assert out.saturated, task
            assert len(out.token_ids) == 6 and out.token_ids[-1] == 2  # forced EOS at the budget
    beams = engine(3, 5).run(tiles, ("od",))
    assert [o["od"].saturated for o in beams] == [len(o["od"].token_ids) == 6 for o in beams]
    full = engine_run(tiles, 1)
    assert any(not o[t].saturated for o in full for t in o)  # those ended with a real EOS


def test_decode_batch_chunks_give_the_same_ids(tiles):
    eng = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=3, max_new_tokens=MAX_NEW,
                                        decode_batch=2, vision_batch=2, encoder_batch=3))
    chunked = eng.run(tiles, ("od", "ocr"))
    whole = engine_run(tiles, 3)
    assert [{t: o[t].token_ids for t in o} for o in chunked] == [{t: o[t].token_ids for t in o} for o in whole]


def test_padding_does_not_change_the_result(tiles):
    eng = engine(1)
    feats = eng.image_features(preprocess(tiles[:1], eng.pre_cfg))
    hidden, mask = eng.encode(feats, ("od",))
    row = np.concatenate([feats[0], eng.prompt_embeds("od")])
    padded = np.zeros((1, len(row) + 7, row.shape[1]), np.float32)
    padded[0, :len(row)] = row
    pmask = np.zeros((1, len(row) + 7), np.int64)
    pmask[0, :len(row)] = 1
    phidden = eng.encoder.run(None, {"inputs_embeds": padded, "attention_mask": pmask})[0]
    np.testing.assert_allclose(phidden[:, :len(row)], hidden, atol=1e-4)
    a = generate(eng.runner, hidden, mask, eng.settings)[0]
    b = generate(eng.runner, phidden, pmask, eng.settings)[0]
    assert a.ids == b.ids


def test_int8_variant_generates(tiles):
    eng = Florence2Engine(EngineOptions(model_dir=TINY, variant="int8", num_beams=1, max_new_tokens=12))
    outs = eng.run(tiles[:2], ("od",))
    assert eng.info["variant"] == "int8"
    for o in outs:
        ids = o["od"].token_ids
        assert ids[:2] == (2, 0) and 2 < len(ids) <= 13
        assert isinstance(o["od"].raw, str)


NO_TORCH = """
import importlib.abc, importlib.util, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(name + " (blocked)")
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda n, p=None: None if n.split(".")[0] in ("torch", "torchvision") else _find_spec(n, p)
sys.meta_path.insert(0, Block())
import numpy as np
from edge_agent.models.engine import EngineOptions, Florence2Engine
eng = Florence2Engine(EngineOptions(model_dir=sys.argv[1], num_beams=3, max_new_tokens=8))
out = eng.run([np.zeros((100, 200, 3), np.uint8)], ("od", "ocr"))
assert set(out[0]) == {"od", "ocr"} and out[0]["od"].token_ids[:2] == (2, 0)
assert "torch" not in sys.modules
print("ok without torch")
"""


def test_engine_runs_without_torch():
    """The run time (the Pi, the Jetson) has no torch: the engine must not need it."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", NO_TORCH, str(TINY)], capture_output=True, text=True,
                       cwd=str(TINY.parents[2]), timeout=300)
    assert r.returncode == 0 and "ok without torch" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_per_task_settings_equal_separate_runs(tiles, num_beams):
    """A token budget per task (od forced to 12 tokens, ocr up to 6) in one batched run gives the
    ids of separate runs with those settings; greedy rows of both tasks share each decoder call."""
    eng = engine(num_beams)
    od = eng.settings.with_overrides(max_new_tokens=12, min_new_tokens=12)
    ocr = eng.settings.with_overrides(max_new_tokens=6)
    mixed = eng.run(tiles, ("od", "ocr"), settings={"od": od, "ocr": ocr})
    for task, s in (("od", od), ("ocr", ocr)):
        e = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=num_beams,
                                          max_new_tokens=s.max_new_tokens))
        e.settings = s
        alone = e.run(tiles, (task,))
        assert [o[task].token_ids for o in mixed] == [o[task].token_ids for o in alone]
    assert all(len(o["od"].token_ids) == 13 for o in mixed)
    assert all(len(o["ocr"].token_ids) <= 7 for o in mixed)
