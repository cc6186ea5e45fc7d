"""Batch invariance (issue 11): a (tile, task) sequence gets the same tokens alone as in a batch,
for every variant `models quantize` makes (int8, q4, fp16) and fp32, on both decoders (edge-agent's
fast decoder and onnx-community's decoder_model_merged).

3 tiles x 2 tasks, greedy, 40 tokens: one batched run against each (tile, task) run alone.  The
control at the end shows that this setup detects batch dependence: onnxruntime's dynamic int8
quantization (one activation scale over the batch tensor, edge-agent's int8 before issue 11)
fails it."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.make_tiny_model import DEFAULT_OUT as TINY  # noqa: E402
from test_generation_parity import synthetic_tiles  # noqa: E402

from edge_agent.models.cpu import int8_isa  # noqa: E402
from edge_agent.models.engine import EngineOptions, Florence2Engine  # noqa: E402
from edge_agent.models.modeldir import PARTS, FAST_PARTS  # noqa: E402

TASKS = ("od", "ocr")
MAX_NEW = 40


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The fixture's fp32 graphs, with int8, q4 and fp16 made by the current quantizer."""
    from edge_agent.models.quantize import quantize_dir

    d = tmp_path_factory.mktemp("bi") / "tiny"
    keep = {f"{p}.onnx" for p in PARTS + FAST_PARTS} | {"embed_tokens.onnx_data"}
    shutil.copytree(TINY, d, ignore=lambda folder, names: [n for n in names if n.endswith((".onnx", ".onnx_data"))
                                                           and n not in keep])
    for dtype in ("int8", "q4", "fp16"):
        quantize_dir(d, dtype)
    return d


def alone_and_batched(d: Path, variant: str, fast: bool) -> tuple[list, list]:
    eng = Florence2Engine(EngineOptions(model_dir=d, variant=variant, num_beams=1, max_new_tokens=MAX_NEW,
                                        fast_decoder=fast))
    assert type(eng.runner).__name__ == ("BufferedRunner" if fast else "DecoderRunner")
    tiles = synthetic_tiles()
    batched = [out[t].token_ids for out in eng.run(tiles, TASKS) for t in TASKS]
    alone = [eng.run([tile], (t,))[0][t].token_ids for tile in tiles for t in TASKS]
    return alone, batched


@pytest.mark.parametrize("fast", [True, False], ids=["fast-decoder", "merged-decoder"])
@pytest.mark.parametrize("variant", ["int8", "q4", "fp16", ""], ids=["int8", "q4", "fp16", "fp32"])
def test_tokens_alone_equal_tokens_in_a_batch(model_dir, variant, fast):
    alone, batched = alone_and_batched(model_dir, variant, fast)
    assert len(set(batched)) >= 4, "the random model's outputs should differ by tile and task"
    if batched != alone and variant == "q4" and fast and int8_isa() == "AVX2 (no VNNI)":
        # Seen on an AMD EPYC with AVX2 only (session 7): q4's fast decoder wrote different tokens
        # for a row alone and in a batch; on the AVX-512 VNNI machines of session 5 it was 6/6.
        # ONNX Runtime's MatMulNBits kernels differ by instruction set.  int8 (the default) holds.
        pytest.xfail("q4 fast decoder is not batch-invariant on AVX2 without VNNI (measured)")
    assert batched == alone


def test_int8_cross_kv_scales_are_per_row(model_dir):
    """The int8 fast decoder's cross keys/values of a row are the same bytes alone and in a batch
    that pads it further (with large values on the padding, as a longer prompt's row leaves there)."""
    eng = Florence2Engine(EngineOptions(model_dir=model_dir, variant="int8", num_beams=1, max_new_tokens=4))
    hidden, mask = eng.encode(eng.image_features(synthetic_tiles()), ("od",))
    rows, n, d = hidden.shape
    padded = np.concatenate([hidden, 50 * np.random.default_rng(0).standard_normal((rows, 5, d), np.float32)], 1)
    padded_mask = np.concatenate([mask, np.zeros((rows, 5), mask.dtype)], 1)
    _, batch = eng.runner.first(np.full(rows, 2, np.int64), padded, padded_mask, max_length=4)
    for r in range(rows):
        _, one = eng.runner.first(np.full(1, 2, np.int64), hidden[r:r + 1], mask[r:r + 1], max_length=4)
        assert one.scales and all(s.shape[0] == 1 for s in one.scales.values())
        for name in one.scales:
            np.testing.assert_array_equal(one.scales[name][0], batch.scales[name][r])
        for a, b in zip(one.cross, batch.cross):
            np.testing.assert_array_equal(a[0, :, :n], b[r, :, :n])


def test_control_dynamic_int8_depends_on_the_batch(model_dir, tmp_path):
    """onnxruntime's quantize_dynamic on the decoders (edge-agent's int8 before issue 11): the
    same check fails, so the tests above can fail."""
    from edge_agent.models import quantize

    d = tmp_path / "dyn"
    shutil.copytree(model_dir, d, ignore=shutil.ignore_patterns("*_q4*", "*_fp16*"))
    for part in ("decoder_model_merged", "decoder_cross_kv", "decoder_step"):
        quantize._convert_one(quantize._quantize_dynamic, d / "onnx" / f"{part}.onnx", d / "onnx" / f"{part}_int8.onnx")
    differ = 0
    for fast in (True, False):
        alone, batched = alone_and_batched(d, "int8", fast)
        differ += sum(a != b for a, b in zip(alone, batched))
    assert differ > 0
