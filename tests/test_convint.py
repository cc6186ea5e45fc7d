"""ConvInteger's int8 weights passed as uint8 at load (models/convint.py): the same integers, so the
same outputs bit for bit; only what is safe is converted; the engine and `models verify` load
graphs this way.  Built on the tiny fixture's onnx-community-style `_int8` (tests/onnx_community.py),
whose vision encoder has ConvInteger with int8 weights, and on crafted one-node graphs."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx_community  # noqa: E402

from edge_agent.models.convint import add_conv_overrides, uint8_conv_weights  # noqa: E402
from edge_agent.models.engine import EngineOptions, Florence2Engine  # noqa: E402
from edge_agent.models.onnxmeta import OnnxFormatError, read_graph_meta, read_initializers  # noqa: E402

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory):
    return onnx_community.build(tmp_path_factory.mktemp("oc-int8") / "Florence-2-tiny", suffixes=("_int8",))


@pytest.fixture(scope="module")
def vision(int8_dir):
    return int8_dir / "onnx" / "vision_encoder_int8.onnx"


def session(path, overrides: bool, profile_dir: Path | None = None):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_dir / "convint")
    n = add_conv_overrides(so, path) if overrides else 0
    src = str(path) if isinstance(path, Path) else path
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]), n


def test_read_initializers_match_onnx(int8_dir):
    """raw_data, typed fields (the scalar scales and zero points) and external data, against onnx's own reader."""
    for part in ("vision_encoder_int8", "embed_tokens"):
        path = int8_dir / "onnx" / f"{part}.onnx"
        model = onnx.load(str(path))
        meta = read_graph_meta(path)
        kinds = {meta.data[i.name][0] for i in model.graph.initializer}
        got = read_initializers(path, [i.name for i in model.graph.initializer], meta)
        for init in model.graph.initializer:
            want = numpy_helper.to_array(init)
            assert got[init.name].dtype == want.dtype and got[init.name].shape == want.shape, init.name
            assert np.array_equal(got[init.name], want), init.name
        assert kinds >= ({"raw", "values"} if part.startswith("vision") else {"external"}), (part, kinds)
    with pytest.raises(OnnxFormatError, match="no initializer 'nope'"):
        read_initializers(int8_dir / "onnx" / "vision_encoder_int8.onnx", ["nope"])


def test_unreadable_values_are_one_error_naming_the_tensor(tmp_path):
    """raw bytes that are not a whole number of values, and a type not read here."""
    bad = TensorProto(name="odd", data_type=TensorProto.INT32, dims=[2], raw_data=b"\x01\x00\x00\x00\x02")
    text = helper.make_tensor("words", TensorProto.STRING, [1], vals=[b"a"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [bad, text])
    path = tmp_path / "bad.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(OnnxFormatError, match="initializer 'odd'"):
        read_initializers(path, ["odd"])
    with pytest.raises(OnnxFormatError, match="initializer 'words': cannot read string values"):
        read_initializers(path, ["words"])


def test_every_int8_conv_weight_becomes_the_uint8_128_above(vision):
    model = onnx.load(str(vision))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "ConvInteger"]
    assert convs and all(inits[n.input[1]].dtype == np.int8 for n in convs)
    values = uint8_conv_weights(vision)
    assert set(values) == {n.input[i] for n in convs for i in (1, 3)}
    for name, v in values.items():
        assert v.dtype == np.uint8 and v.shape == inits[name].shape
        assert np.array_equal(v.astype(np.int16), inits[name].astype(np.int16) + 128), name


def test_vision_outputs_are_bit_for_bit_those_of_the_file(vision, tmp_path):
    """Same image features with and without the overrides, and ORT's profile shows the ConvInteger
    nodes read uint8 weights with them (int8 without)."""
    rng = np.random.default_rng(0)
    side = read_graph_meta(vision).inputs[0].shape[2]
    pixels = rng.standard_normal((2, 3, side, side)).astype(np.float32)
    types = {}
    outs = {}
    for overrides in (False, True):
        sess, n = session(vision, overrides, tmp_path)
        outs[overrides] = sess.run(None, {"pixel_values": pixels})[0]
        trace = json.loads(Path(sess.end_profiling()).read_text())
        types[overrides] = {list(e["args"]["input_type_shape"][1])[0] for e in trace
                            if e.get("cat") == "Node" and e["args"].get("op_name") == "ConvInteger"}
        assert (n > 0) == overrides
    assert types == {False: {"int8"}, True: {"uint8"}}
    assert np.array_equal(outs[False], outs[True])


def conv_graph(w: np.ndarray, w_zp: int, x_zp: int, extra_reader: bool = False, with_zp: bool = True) -> bytes:
    """One ConvInteger (int32 out) over a uint8 input; `extra_reader` also sends the weight to an output."""
    ins = ["x", "w", "x_zp", "w_zp"] if with_zp else ["x", "w", "x_zp"]
    nodes = [helper.make_node("ConvInteger", ins, ["y"], pads=[1, 1, 1, 1])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.INT32, None)]
    if extra_reader:
        nodes.append(helper.make_node("Identity", ["w"], ["w_copy"]))
        outputs.append(helper.make_tensor_value_info("w_copy", TensorProto.INT8, None))
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(x_zp, np.uint8), "x_zp")]
    if with_zp:
        inits.append(numpy_helper.from_array(np.array(w_zp, np.int8), "w_zp"))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 6, 6])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def reference(x: np.ndarray, w: np.ndarray, x_zp: int, w_zp: int) -> np.ndarray:
    """ConvInteger in int64 numpy: stride 1, padding 1 (padded with the input's zero point)."""
    xp = np.pad(x.astype(np.int64) - x_zp, ((0, 0), (0, 0), (1, 1), (1, 1)))
    k = w.astype(np.int64) - w_zp
    out = np.zeros((1, w.shape[0], 6, 6), np.int64)
    for i in range(6):
        for j in range(6):
            out[0, :, i, j] = np.tensordot(k, xp[0, :, i:i + 3, j:j + 3], axes=3)
    return out


def test_exact_at_the_ends_of_the_int8_range(tmp_path):
    """Weights over all of [-128, 127] with a non-zero zero point: both forms give numpy's integers."""
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (5, 4, 3, 3)).astype(np.int8)
    w.flat[:2] = (-128, 127)
    x = rng.integers(0, 256, (1, 4, 6, 6)).astype(np.uint8)
    path = tmp_path / "conv.onnx"
    path.write_bytes(conv_graph(w, w_zp=-3, x_zp=7))
    want = reference(x, w, 7, -3)
    for overrides in (False, True):
        sess, n = session(path, overrides)
        assert n == (2 if overrides else 0)
        assert np.array_equal(sess.run(None, {"x": x})[0], want)


def test_weights_read_by_anything_else_stay_int8(tmp_path):
    w = np.ones((2, 4, 3, 3), np.int8)
    shared = tmp_path / "shared.onnx"
    shared.write_bytes(conv_graph(w, 0, 0, extra_reader=True))
    no_zp = tmp_path / "no_zp.onnx"
    no_zp.write_bytes(conv_graph(w, 0, 0, with_zp=False))
    assert uint8_conv_weights(shared) == {} and uint8_conv_weights(no_zp) == {}


def test_engine_loads_int8_conv_weights_as_uint8(int8_dir, caplog):
    """The engine's vision session gets the overrides (its debug line), and its features equal a
    plain session's on the file as written."""
    with caplog.at_level(logging.DEBUG, logger="edge_agent.models.convint"):
        eng = Florence2Engine(EngineOptions(model_dir=int8_dir, variant="int8", num_beams=1, max_new_tokens=4))
    assert any("ConvInteger initializers passed as uint8" in r.getMessage() and "vision_encoder_int8" in r.getMessage()
               for r in caplog.records)
    side = int(eng.pre_cfg.size[0])
    pixels = np.random.default_rng(2).standard_normal((1, 3, side, side)).astype(np.float32)
    plain, _ = session(int8_dir / "onnx" / "vision_encoder_int8.onnx", False)
    assert np.array_equal(eng.image_features(pixels), plain.run(None, {"pixel_values": pixels})[0])
