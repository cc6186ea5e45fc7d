"""Depthwise ConvInteger back to fp32 Conv (models/dwconv.py) and `models optimize`'s vision step
(models/optimize.py optimize_vision): the rewrite computes what the quantized chain computes, only
that chain is rewritten, and onnx-community-style int8 vision encoders of the tiny fixture
(tests/onnx_community.py) come out with no depthwise ConvInteger, features as close to fp32 as
before, and a folder the engine runs."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx_community  # noqa: E402

from edge_agent.models.dwconv import float_depthwise  # noqa: E402
from edge_agent.models.errors import ModelDirError  # noqa: E402
from edge_agent.models.preprocess import PreprocessConfig  # noqa: E402

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
C, H = 8, 6


def chain(wq: np.ndarray, w_zero, w_scale, bias, group: int = C, dql_also_read: bool = False):
    """x -> DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul(x_scale * w_scale) [-> Add(bias)],
    as onnxruntime's quantize_dynamic writes a Conv."""
    inits = [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(np.asarray(w_zero, wq.dtype), "wz"),
             numpy_helper.from_array(np.asarray(w_scale, np.float32), "ws")]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("Mul", ["xs", "ws"], ["sm"]),
             helper.make_node("ConvInteger", ["xq", "wq", "xz", "wz"], ["ci"], group=group, kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], strides=[1, 1]),
             helper.make_node("Cast", ["ci"], ["cf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["cf", "sm"], ["y0" if bias is not None else "y"])]
    if bias is not None:
        inits += [numpy_helper.from_array(bias.astype(np.float32), "b"),
                  numpy_helper.from_array(np.array([1, C, 1, 1], np.int64), "bshape")]
        nodes += [helper.make_node("Reshape", ["b", "bshape"], ["br"]), helper.make_node("Add", ["y0", "br"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if dql_also_read:
        outputs.append(helper.make_tensor_value_info("xq", TensorProto.UINT8, None))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, H])], outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def run(model, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def grid_input(rng) -> np.ndarray:
    """Values that DynamicQuantizeLinear represents exactly: (q - 100) / 16 with q in [0, 255],
    both ends present (scale 1/16, zero point 100), so the integer chain and the fp32 Conv see the
    same numbers."""
    q = rng.integers(0, 256, (1, C, H, H))
    q.flat[0], q.flat[1] = 0, 255
    return ((q - 100) / 16).astype(np.float32)


@pytest.mark.parametrize("dtype, w_zero, per_channel, bias", [
    (np.int8, 3, False, True), (np.int8, 0, True, True), (np.uint8, 131, False, True), (np.uint8, 128, True, False)])
def test_rewrite_computes_what_the_chain_computes(dtype, w_zero, per_channel, bias):
    rng = np.random.default_rng(0)
    lo, hi = (-127, 128) if dtype == np.int8 else (0, 256)
    wq = rng.integers(lo, hi, (C, 1, 3, 3)).astype(dtype)
    w_scale = (rng.uniform(0.5, 2, C) if per_channel else np.array(0.25)).astype(np.float32) / 64
    b = rng.standard_normal(C).astype(np.float32) if bias else None
    model = chain(wq, w_zero, w_scale.reshape(1, C, 1, 1) if per_channel else w_scale, b)
    x = grid_input(rng)
    want = run(model, x)
    assert float_depthwise(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"]  # the whole chain, Reshape of the bias included
    got = run(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # and by hand: the dequantized weights, per channel, the bias added once
    w = (wq.astype(np.float32) - w_zero) * w_scale.reshape(-1, 1, 1, 1)
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = sum(pad[:, :, i:i + H, j:j + H] * w[None, :, 0, i, j, None, None] for i in range(3) for j in range(3))
    np.testing.assert_allclose(got, ref + (b.reshape(1, C, 1, 1) if bias else 0), rtol=1e-5, atol=1e-5)


def test_initializers_left_are_the_new_weights():
    rng = np.random.default_rng(1)
    model = chain(rng.integers(-127, 128, (C, 1, 3, 3)).astype(np.int8), 0, np.array(0.01), rng.standard_normal(C))
    float_depthwise(model)
    conv = model.graph.node[0]
    assert sorted(t.name for t in model.graph.initializer) == sorted(conv.input[1:])
    assert {a.name: helper.get_attribute_value(a) for a in conv.attribute} == {
        "group": C, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}


def test_only_depthwise_chains_are_rewritten():
    rng = np.random.default_rng(2)
    dense = chain(rng.integers(-127, 128, (C, C, 3, 3)).astype(np.int8), 0, np.array(0.01), None, group=1)
    assert float_depthwise(dense) == 0
    assert "ConvInteger" in [n.op_type for n in dense.graph.node]
    # something else reads the quantized input: the DynamicQuantizeLinear stays, the conv is still rewritten
    shared = chain(rng.integers(-127, 128, (C, 1, 3, 3)).astype(np.int8), 0, np.array(0.01), None, dql_also_read=True)
    x = grid_input(rng)
    want = run(shared, x)
    assert float_depthwise(shared) == 1
    assert sorted(n.op_type for n in shared.graph.node) == ["Conv", "DynamicQuantizeLinear"]
    np.testing.assert_allclose(run(shared, x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # a Cast that something else reads too: left as written
    other = chain(rng.integers(-127, 128, (C, 1, 3, 3)).astype(np.int8), 0, np.array(0.01), None)
    other.graph.output.append(helper.make_tensor_value_info("cf", TensorProto.FLOAT, None))
    assert float_depthwise(other) == 0


@pytest.fixture(scope="module")
def community(tmp_path_factory):
    """The tiny fixture as onnx-community builds it: fp32, _int8 (int8 weights) and _uint8."""
    return onnx_community.build(tmp_path_factory.mktemp("oc-dw") / "Florence-2-tiny", suffixes=("_int8", "_uint8"))


def features(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0].astype(np.float64)


def depthwise_convinteger(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(1 for n in model.graph.node if n.op_type == "ConvInteger"
               and next((a.i for a in n.attribute if a.name == "group"), 1) > 1)


def test_optimize_vision_on_the_tiny_download(tmp_path, community):
    from edge_agent.models.optimize import optimize_vision

    d = tmp_path / "m"
    shutil.copytree(community, d)
    side = PreprocessConfig.from_dir(d).size
    x = np.random.default_rng(3).standard_normal((1, 3, *side)).astype(np.float32)
    fp32 = features(d / "onnx" / "vision_encoder.onnx", x)
    before = {s: features(d / "onnx" / f"vision_encoder{s}.onnx", x) for s in ("_int8", "_uint8")}
    counts = {s: depthwise_convinteger(d / "onnx" / f"vision_encoder{s}.onnx") for s in before}
    assert all(counts.values()), counts
    written = optimize_vision(d)
    assert [p.name for p in written] == ["vision_encoder_int8.onnx", "vision_encoder_uint8.onnx"]
    for s, was in before.items():
        path = d / "onnx" / f"vision_encoder{s}.onnx"
        assert depthwise_convinteger(path) == 0
        after = features(path, x)
        err_before = np.linalg.norm(was - fp32) / np.linalg.norm(fp32)
        err_after = np.linalg.norm(after - fp32) / np.linalg.norm(fp32)
        assert err_after <= err_before * 1.1 + 1e-4, (s, err_before, err_after)
        assert not np.array_equal(after, was)  # the depthwise activations are no longer rounded
    assert optimize_vision(d) == []  # nothing left to rewrite: files untouched
    assert not list((d / "onnx").glob(".optimize-*"))


def test_a_graph_with_external_data_loses_its_stale_data_file(tmp_path, community):
    """A vision encoder stored with external data comes back inline (small enough), and its old
    data file goes; another graph's external data stays."""
    from edge_agent.models.optimize import optimize_vision

    d = tmp_path / "m"
    shutil.copytree(community, d, ignore=shutil.ignore_patterns("*_uint8*"))
    src = d / "onnx" / "vision_encoder_int8.onnx"
    onnx.save(onnx.load(str(src)), str(src), save_as_external_data=True, location=src.name + "_data", size_threshold=0)
    assert (d / "onnx" / "vision_encoder_int8.onnx_data").is_file()
    others = sorted(p.name for p in (d / "onnx").glob("*_data"))
    assert optimize_vision(d) == [src]
    assert not (d / "onnx" / "vision_encoder_int8.onnx_data").exists()
    assert sorted(p.name for p in (d / "onnx").glob("*_data")) == [n for n in others if n != src.name + "_data"]
    assert depthwise_convinteger(src) == 0
    side = PreprocessConfig.from_dir(d).size
    assert np.isfinite(features(src, np.random.default_rng(6).standard_normal((1, 3, *side)).astype(np.float32))).all()


def test_the_engine_runs_the_rewritten_download(tmp_path, community):
    from edge_agent.models.engine import EngineOptions, Florence2Engine
    from edge_agent.models.optimize import optimize_dir

    d = tmp_path / "m"
    shutil.copytree(community, d, ignore=shutil.ignore_patterns("*_uint8*"))
    written = {p.name for p in optimize_dir(d)}
    assert "vision_encoder_int8.onnx" in written and "decoder_step_int8.onnx" in written
    eng = Florence2Engine(EngineOptions(model_dir=d, variant="_int8", num_beams=1, max_new_tokens=8))
    side = int(eng.pre_cfg.size[0])
    pixels = np.random.default_rng(4).standard_normal((1, 3, side, side)).astype(np.float32)
    assert np.array_equal(eng.image_features(pixels).astype(np.float64), features(d / "onnx" / "vision_encoder_int8.onnx", pixels))
    tile = (np.random.default_rng(5).random((96, 128, 3)) * 255).astype(np.uint8)
    (out,) = eng.run([tile], ("od",))
    assert len(out["od"].token_ids) > 1


def test_a_rewrite_that_moves_the_features_too_far_is_refused(tmp_path, community):
    """The features check (VISION_RTOL): asked for agreement no rewrite can give, nothing is written."""
    from edge_agent.models.optimize import optimize_vision

    d = tmp_path / "m"
    shutil.copytree(community, d, ignore=shutil.ignore_patterns("*_uint8*"))
    before = (d / "onnx" / "vision_encoder_int8.onnx").read_bytes()
    with pytest.raises(ModelDirError, match=r"vision_encoder_int8\.onnx: its \d+ depthwise convolutions in fp32 "
                                            r"change the image features by .*limit 0%\); nothing written"):
        optimize_vision(d, rtol=1e-9)
    assert (d / "onnx" / "vision_encoder_int8.onnx").read_bytes() == before
    assert not list((d / "onnx").glob(".optimize-*"))


def test_cli_optimize_reports_the_vision_file(tmp_path, community):
    d = tmp_path / "m"
    shutil.copytree(community, d, ignore=shutil.ignore_patterns("*_uint8*"))
    run_ = subprocess.run([sys.executable, "-m", "edge_agent", "models", "optimize", str(d)], capture_output=True,
                          text=True, cwd=ROOT)
    assert run_.returncode == 0, run_.stderr
    assert f"wrote {d / 'onnx' / 'vision_encoder_int8.onnx'}" in run_.stdout
    assert "ok vision_encoder_int8.onnx" in run_.stdout
