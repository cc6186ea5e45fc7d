"""edge-agent's fast decoder (models/export_step.py): in-place KV buffer, fallback, verify.

Token parity with transformers for both decoders is in tests/test_generation_parity.py."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.make_tiny_model import DEFAULT_OUT as TINY  # noqa: E402

from edge_agent.models.errors import ModelDirError  # noqa: E402
from edge_agent.models.engine import EngineOptions, Florence2Engine, decode_chunks  # noqa: E402
from edge_agent.models.preprocess import preprocess  # noqa: E402
from edge_agent.models.runners import BufferedRunner, DecoderRunner, MergedCache  # noqa: E402
from edge_agent.models.verify import verify_dir  # noqa: E402


def _encoded(eng, n=2):
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 255, (300 + 40 * i, 400, 3), dtype=np.uint8) for i in range(n)]
    return eng.encode(eng.image_features(preprocess(tiles, eng.pre_cfg)), ("od",))


def test_step_writes_into_the_bound_buffer_and_matches_the_merged_cache():
    fast = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1))
    merged = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1, fast_decoder=False))
    assert isinstance(fast.runner, BufferedRunner) and isinstance(merged.runner, DecoderRunner)
    hidden, mask = _encoded(fast)
    start = np.full(len(hidden), 2, np.int64)
    lf, cf = fast.runner.first(start, hidden, mask, max_length=8)
    lm, cm = merged.runner.first(start, hidden, mask, max_length=8)
    buf_before = [b.__array_interface__["data"][0] for b in cf.bufs]
    tokens = np.array([0, 0])
    for step in range(1, 5):
        np.testing.assert_allclose(lf, lm, atol=1e-4, rtol=1e-4)
        lf, lm = fast.runner.step(tokens, cf), merged.runner.step(tokens, cm)
        tokens = np.argmax(lm, axis=1)
        assert cf.length == step + 1
        for layer, (k, v) in enumerate(cm.dec_kv):  # merged: [R, H, step+1, Dh], copied each step
            np.testing.assert_allclose(cf.bufs[2 * layer][:, :, :step + 1], k, atol=1e-5)
            np.testing.assert_allclose(cf.bufs[2 * layer + 1][:, :, :step + 1], v, atol=1e-5)
        assert not cf.bufs[0][:, :, step + 1:].any()  # nothing written past the filled length
    assert [b.__array_interface__["data"][0] for b in cf.bufs] == buf_before  # same buffers, no reallocation


def test_select_rows_keeps_the_filled_rows_in_place():
    eng = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1))
    hidden, mask = _encoded(eng, 3)
    start = np.full(3, 2, np.int64)

    def fresh():
        _, cache = eng.runner.first(start, hidden, mask, max_length=6)
        eng.runner.step(np.zeros(3, np.int64), cache)
        return cache

    cache = fresh()
    want_self, base, cross = cache.bufs[0][[2, 0, 0], :, :2].copy(), cache.bufs[0].__array_interface__["data"][0], cache.cross
    cache.select_rows(np.array([2, 0, 0]))  # beam reorder: gathered into the same buffer
    assert cache.cross is cross and cache.length == 2
    assert cache.bufs[0].__array_interface__["data"][0] == base
    np.testing.assert_array_equal(cache.bufs[0][:, :, :2], want_self)
    grown = fresh()
    grown.select_rows(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 2, 2]))  # beams start: more rows
    assert grown.bufs[0].shape[0] == 6 and grown.cross[0].shape[0] == 6 and len(grown.mask) == 6
    np.testing.assert_array_equal(grown.bufs[1][4, :, :2], grown.bufs[1][5, :, :2])

    kept = fresh()
    want_cross, base = kept.cross[0][[0, 2]].copy(), kept.cross[0].__array_interface__["data"][0]
    kept.select_rows(np.array([0, 2]), np.array([0, 2]))  # rows leaving: compacted in place
    assert kept.bufs[0].shape[0] == 2 and kept.cross[0].__array_interface__["data"][0] == base
    np.testing.assert_array_equal(kept.cross[0], want_cross)
    np.testing.assert_array_equal(kept.mask, mask[[0, 2]])
    # decoding on from the compacted cache gives what a fresh two-row decode gives
    l1 = eng.runner.step(np.array([5, 6]), kept)
    _, two = eng.runner.first(start[:2], hidden[[0, 2]], mask[[0, 2]], max_length=6)
    eng.runner.step(np.zeros(2, np.int64), two)
    np.testing.assert_allclose(l1, eng.runner.step(np.array([5, 6]), two), atol=1e-5)


def test_both_caches_select_rows_alike():
    """Same name, same contract: after the same select_rows calls, the merged decoder's cache and
    the fast decoder's buffers hold the same rows, and decode on to the same logits."""
    fast = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1))
    merged = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1, fast_decoder=False))
    hidden, mask = _encoded(fast, 3)
    start = np.full(3, 2, np.int64)
    _, cf = fast.runner.first(start, hidden, mask, max_length=8)
    _, cm = merged.runner.first(start, hidden, mask, max_length=8)
    assert isinstance(cm, MergedCache)
    tokens = np.array([4, 5, 6])
    fast.runner.step(tokens, cf), merged.runner.step(tokens, cm)
    for idx, cross_idx in ((np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 2, 2])),  # beams start
                           (np.array([1, 0, 0, 3, 5, 4]), None),  # beams reorder
                           (np.array([0, 1, 4, 5]), np.array([0, 1, 4, 5]))):  # a sequence leaves
        cf.select_rows(idx, cross_idx)
        assert cm.select_rows(idx, cross_idx) is None
        np.testing.assert_array_equal(cf.mask, cm.mask)
        for layer, (k, _) in enumerate(cm.dec_kv):
            np.testing.assert_allclose(cf.bufs[2 * layer][:, :, :cf.length], k, atol=1e-5)
        tokens = np.arange(len(idx)) + 7
        np.testing.assert_allclose(fast.runner.step(tokens, cf), merged.runner.step(tokens, cm), atol=1e-4, rtol=1e-4)


@pytest.fixture
def tiny_copy(tmp_path):
    dst = tmp_path / "tiny"
    shutil.copytree(TINY, dst)
    return dst


def test_directory_without_fast_graphs_uses_decoder_model_merged(tiny_copy):
    for f in (tiny_copy / "onnx").glob("decoder_[cs]*.onnx"):
        f.unlink()
    eng = Florence2Engine(EngineOptions(model_dir=tiny_copy, variant=""))
    assert isinstance(eng.runner, DecoderRunner)
    assert any("fast decoder: absent" in line for line in verify_dir(tiny_copy, ""))


def test_verify_names_the_missing_half_of_the_fast_decoder(tiny_copy):
    (tiny_copy / "onnx" / "decoder_cross_kv_int8.onnx").unlink()
    with pytest.raises(ModelDirError, match=r"decoder_cross_kv_int8\.onnx: file missing \(the fast decoder needs"):
        verify_dir(tiny_copy, "int8")


def test_quantize_writes_the_fast_decoder_and_int8_decodes(tiny_copy):
    from edge_agent.models.quantize import quantize_dir

    for f in (tiny_copy / "onnx").glob("*_int8.onnx"):
        f.unlink()
    written = {p.name for p in quantize_dir(tiny_copy, "int8")}
    assert {"decoder_cross_kv_int8.onnx", "decoder_step_int8.onnx"} <= written
    eng = Florence2Engine(EngineOptions(model_dir=tiny_copy, variant="int8", num_beams=1, max_new_tokens=6))
    assert isinstance(eng.runner, BufferedRunner)
    assert eng.runner.self_dtype == np.int8 and eng.runner.cross_dtype == np.int8  # calibrated on the fp32 graphs
    out = eng.run([np.full((200, 300, 3), 90, np.uint8)], ("od",))[0]["od"]
    assert out.token_ids[0] == 2 and 2 <= len(out.token_ids) <= 7


def test_int8_without_fp32_graphs_to_calibrate_on_keeps_float_self_caches(tiny_copy, caplog):
    """A folder without the fp32 vision tower (an onnx-community download that `models optimize`
    gave fp32 decoder graphs): int8's self-attention scales cannot be measured, so decoder_step_int8
    keeps float self-attention caches, says why, and still decodes."""
    import logging

    from edge_agent.models.quantize import quantize_dir

    (tiny_copy / "onnx" / "vision_encoder.onnx").unlink()
    with caplog.at_level(logging.WARNING, logger="edge_agent.models.quantize"):
        quantize_dir(tiny_copy, "int8", parts=("decoder_step",))
    assert any("self-attention caches stay float32" in r.getMessage() and "vision_encoder.onnx" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    eng = Florence2Engine(EngineOptions(model_dir=tiny_copy, variant="int8", num_beams=1, max_new_tokens=4))
    assert eng.runner.self_dtype == np.float32 and eng.runner.cross_dtype == np.int8
    out = eng.run([np.full((200, 300, 3), 90, np.uint8)], ("od",))[0]["od"]
    assert out.token_ids[0] == 2


def test_int8_cross_kv_stays_close_to_float(tmp_path):
    """The int8 variant's cross-attention keys/values (per-channel int8, models/export_step.py), applied
    here to the fp32 graphs alone so that only the KV storage differs."""
    import onnx
    import onnxruntime as ort

    from edge_agent.models.export_step import int8_cross_kv_graph, int8_cross_kv_step

    src = TINY / "onnx"
    onnx.save(int8_cross_kv_graph(onnx.load(str(src / "decoder_cross_kv.onnx"))), str(tmp_path / "cross.onnx"))
    onnx.save(int8_cross_kv_step(onnx.load(str(src / "decoder_step.onnx"))), str(tmp_path / "step.onnx"))
    eng = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1))
    sess = [ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]) for f in ("cross.onnx", "step.onnx")]
    q8 = BufferedRunner(eng.embed, *sess)
    assert q8.cross_dtype == np.int8
    cf, cq = _steps_stay_close(eng, q8, 5)
    assert cq.cross[0].dtype == np.int8 and cq.cross[0].shape == cf.cross[0].shape
    assert np.abs(cq.cross[0]).max() == 127  # the scale maps the largest value to 127


def _steps_stay_close(eng, q8, steps: int, rows: int = 3):
    """The engine's float runner and q8 from the same encoder states, fed float's greedy tokens:
    every step's logits within 2% (relative L2).  Returns both caches."""
    hidden, mask = _encoded(eng, rows)
    start = np.full(rows, 2, np.int64)
    lf, cf = eng.runner.first(start, hidden, mask, max_length=8)
    lq, cq = q8.first(start, hidden, mask, max_length=8)
    for _ in range(steps):
        rel = np.linalg.norm(lq - lf) / np.linalg.norm(lf)
        assert rel < 0.02, rel
        tokens = np.argmax(lf, axis=1)
        lf, lq = eng.runner.step(tokens, cf), q8.step(tokens, cq)
    return cf, cq


def test_int8_self_kv_with_calibrated_scales_stays_close_to_float(tmp_path):
    """int8 self-attention caches (export_step.int8_self_kv_step) with the scales models/calibrate.py
    measures on the fp32 graphs, applied here to the fp32 step alone so that only the self-attention
    storage differs: int8 buffers, values inside the calibrated range, logits close to float's."""
    import onnx
    import onnxruntime as ort

    from edge_agent.models.calibrate import MARGIN, self_kv_scales
    from edge_agent.models.export_step import int8_self_kv_step

    keys, values = self_kv_scales(TINY, tokens=16)
    heads, dh = 3, 8
    assert len(keys) == len(values) == 2 and keys[0].shape == (heads, dh) and (keys[0] > 0).all()
    onnx.save(int8_self_kv_step(onnx.load(str(TINY / "onnx" / "decoder_step.onnx")), keys, values),
              str(tmp_path / "step.onnx"))
    eng = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1))
    step = ort.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])
    q8 = BufferedRunner(eng.embed, eng.runner.cross, step)
    assert q8.self_dtype == np.int8 and eng.runner.self_dtype == np.float32
    assert q8.kv_bytes_per_row(100, 10) < eng.runner.kv_bytes_per_row(100, 10)
    _, cq = _steps_stay_close(eng, q8, 6)
    written = cq.bufs[0][:, :, :cq.length]
    assert written.dtype == np.int8 and np.abs(written).max() > 0
    # the images differ from calibration's, yet no value reaches the clipping limit
    assert np.abs(written).max() < 127 and np.abs(written).max() >= 127 / MARGIN / 4


def test_kv_cache_budget_chunks_the_decode_without_changing_ids():
    tiles = [np.full((200 + 30 * i, 300, 3), 40 * i, np.uint8) for i in range(3)]
    whole = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=3, max_new_tokens=12, kv_cache_mb=0))
    per_row = whole.runner.kv_bytes_per_row(13, 600)
    assert per_row == 2 * 2 * 3 * 8 * 4 * (13 + 601)  # layers, k+v, heads, head size, fp32; self + cross
    small = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=3, max_new_tokens=12, kv_cache_mb=1))
    per_seq = 3 * per_row  # 3 beams
    fit = max(1, min(6, int(2**20 // per_seq)))  # sequences per 1 MB
    chunks = decode_chunks([per_seq] * 6, 2**20)
    assert chunks[0] == (0, fit) and chunks[-1][1] == 6 and decode_chunks([per_seq] * 6, 0) == [(0, 6)]
    want = fit
    calls = []
    real = small.runner.first
    small.runner.first = lambda tokens, *a, **k: calls.append(len(tokens)) or real(tokens, *a, **k)
    got = small.run(tiles, ("od", "ocr"))
    assert sum(calls) == 6 and len(calls) == len(chunks) == -(-6 // want)
    assert [{t: o[t].token_ids for t in o} for o in got] == \
        [{t: o[t].token_ids for t in o} for o in whole.run(tiles, ("od", "ocr"))]


def test_decode_chunks_pack_sequences_by_their_own_budgets():
    eng = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1, kv_cache_mb=1))
    long = eng.settings.with_overrides(num_beams=1, max_new_tokens=1000)
    short = eng.settings.with_overrides(num_beams=1, max_new_tokens=10)
    rows = [long, short] * 4
    cost = [eng.runner.kv_bytes_per_row(r.max_length, 600) for r in rows]
    chunks = decode_chunks(cost, 2**20)
    assert [c for chunk in chunks for c in range(*chunk)] == list(range(8))  # contiguous, in order
    for (i, j), nxt in zip(chunks, chunks[1:] + [None]):
        assert sum(cost[i:j]) <= 2**20 or j - i == 1
        if nxt is not None:
            assert sum(cost[i:j + 1]) > 2**20  # the next sequence did not fit
    assert len(chunks) == 4
    assert decode_chunks(cost, 2**20, batch=3) == [(0, 3), (3, 6), (6, 8)]  # [model] decode_batch wins
    assert decode_chunks([], 2**20) == [] and decode_chunks(cost, 0) == [(0, 8)]


def test_row_gather_in_place_matches_numpy_for_every_index_list():
    """_rows (beam reorders, rows leaving, beams starting) equals numpy's fancy indexing, for
    every index list over up to 4 rows, with and without a filled length."""
    import itertools

    from edge_agent.models.runners import _rows

    rng = np.random.default_rng(0)
    for n in range(1, 5):
        for m in (n - 1, n, n + 1):
            for idx in itertools.product(range(n), repeat=max(m, 1)):
                for filled in (None, 3):
                    a = rng.random((n, 2, 5, 3)).astype(np.float32)
                    part = (slice(None), slice(None), slice(0, filled))
                    want = a[list(idx)][part].copy()
                    np.testing.assert_array_equal(_rows(a, np.array(idx), filled)[part], want)


class _PeakAfterFirst:
    """A Runner (models/generate.py) that delegates, and restarts tracemalloc's peak once `first`
    has returned, so that the peak covers the later steps and the searches' work between them."""

    def __init__(self, runner):
        self.runner, self.after_first = runner, None

    def first(self, *args):
        import tracemalloc

        out = self.runner.first(*args)
        tracemalloc.reset_peak()
        self.after_first = tracemalloc.get_traced_memory()[0]
        return out

    def step(self, tokens, cache):
        return self.runner.step(tokens, cache)

    def kv_bytes_per_row(self, max_length, enc_len):
        return self.runner.kv_bytes_per_row(max_length, enc_len)


def test_greedy_decode_steps_allocate_no_vocabulary_sized_temporaries():
    """A step's [R, V] logits land in one buffer that the cache keeps (BufferCache.logits_rows),
    and the scores are processed in place (models/generation.py inplace=): with the mmap
    threshold fixed (models/memory.py), every fresh [R, V] array was a new mapping whose pages
    faulted in again, ~10% of a base decode step.  tracemalloc sees numpy's allocations."""
    import tracemalloc

    from edge_agent.models.generate import generate
    from edge_agent.models.generation import GenerationSettings

    eng = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1))
    hidden, mask = _encoded(eng, 4)
    settings = GenerationSettings(num_beams=1, min_new_tokens=40, max_new_tokens=40)
    probe = _PeakAfterFirst(eng.runner)
    generate(probe, hidden, mask, settings)  # warm-up: ORT's first-run allocations
    tracemalloc.start()
    try:
        out = generate(probe, hidden, mask, settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [len(g.ids) for g in out] == [41] * 4  # 40 steps per row
    grew = peak - probe.after_first
    vocab = json.loads((Path(TINY) / "config.json").read_text())["text_config"]["vocab_size"]
    one = len(hidden) * vocab * 4  # one float32 [R, V] array
    # measured: 3.0 arrays before (a copy of ORT's logits, process_scores' copy, chosen_probs'
    # two temporaries), 0.02 after.  Beam search keeps a per-item [K, V] sum and top-k work
    # (transformers' algorithm, models/generate.py _BeamItem.step) and is not held to this.
    assert grew < 0.25 * one, f"the steps allocated {grew / one:.2f} x one [R, V] array"


def test_token_embeddings_are_the_graphs_rows_looked_up():
    """The runners' embedding store: the same bits as calling embed_tokens on the batch, the graph
    called only for tokens not met before, and the store bounded."""
    import onnxruntime as ort

    from edge_agent.models.runners import TokenEmbeddings

    for variant in ("", "_int8"):
        session = ort.InferenceSession(str(TINY / "onnx" / f"embed_tokens{variant}.onnx"), providers=["CPUExecutionProvider"])
        calls = []

        class Counting:
            def run(self, names, feeds):
                calls.append(feeds["input_ids"][:, 0].tolist())
                return session.run(names, feeds)

        store = TokenEmbeddings()
        ids = np.array([[5], [9], [5], [40]])
        want = session.run(["inputs_embeds"], {"input_ids": ids})[0]
        np.testing.assert_array_equal(store.rows(Counting(), ids, np.float32), want)
        np.testing.assert_array_equal(store.rows(Counting(), ids[::-1], np.float32), want[::-1])
        assert calls == [[5, 9, 40]]  # the second call found every token
        store.MAX_ROWS = 4
        more = np.array([[7], [9], [8]])  # 9 is known; 3 + 2 new > 4: the store starts again, 9 included
        np.testing.assert_array_equal(store.rows(Counting(), more, np.float32),
                                      session.run(["inputs_embeds"], {"input_ids": more})[0])
        assert calls[-1] == [7, 8, 9] and sorted(store.known) == [7, 8, 9]


def test_row_activation_bits_reach_the_int8_decoders():
    """row_activation_bits 7 and 8 load the same int8 files with different activation constants
    (models/rowscale.py): the first step's logits differ, both stay close to fp32's from the same
    encoder states, and 0 lets this CPU choose (models/cpu.py)."""
    from edge_agent.models.cpu import u8s8_saturates
    from edge_agent.models.errors import ModelSettingError

    f32 = Florence2Engine(EngineOptions(model_dir=TINY, variant="", num_beams=1))
    hidden, mask = _encoded(f32, 2)
    start = np.full(2, 2, np.int64)
    ref, _ = f32.runner.first(start, hidden, mask, max_length=8)
    got, rel = {}, {}
    for bits in (7, 8):
        eng = Florence2Engine(EngineOptions(model_dir=TINY, variant="_int8", num_beams=1, row_activation_bits=bits))
        assert eng.row_bits == bits
        got[bits], _ = eng.runner.first(start, hidden, mask, max_length=8)
        rel[bits] = float(np.linalg.norm(got[bits] - ref) / np.linalg.norm(ref))
    print(f"first-step logits against fp32 (relative L2): 7-bit {rel[7]:.4f}, 8-bit {rel[8]:.4f}; "
          f"u8s8 saturates on this CPU: {u8s8_saturates()}")
    assert not np.array_equal(got[7], got[8])
    assert rel[7] < 0.05, rel
    if u8s8_saturates():
        assert rel[8] > rel[7], rel  # AVX2 without VNNI: clipped pairs (0.16 against 0.023 on an AMD EPYC)
    else:
        assert rel[8] < 0.05, rel
    auto = Florence2Engine(EngineOptions(model_dir=TINY, variant="_int8", num_beams=1))
    assert auto.row_bits == (7 if u8s8_saturates() else 8)
    with pytest.raises(ModelSettingError, match="row_activation_bits"):
        Florence2Engine(EngineOptions(model_dir=TINY, variant="_int8", row_activation_bits=6))
