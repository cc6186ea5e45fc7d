"""models/rowquant.py: per-row int8 matmuls, checked against numpy's arithmetic in a real ONNX
Runtime session."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.models.rowquant import quantize_rows

K, N = 64, 40


def matmul_model(w: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """y = x @ w + bias, and z = x @ w2 sharing x (so x is quantized once)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"]),
         helper.make_node("MatMul", ["x", "w2"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 1, N]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 1, N])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b"),
         numpy_helper.from_array(w[:, ::-1].copy(), "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((K, N)) * 0.1).astype(np.float32), rng.standard_normal(N).astype(np.float32)


def numpy_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The arithmetic rowquant promises: symmetric int8 per row of x and per column of w."""
    xm = np.abs(x).max(-1, keepdims=True)
    xq = np.rint(127 * x / xm)
    wm = np.abs(w).max(0)
    wq = np.rint(127 * w / wm)
    return (xq @ wq) * (xm / 127) * (wm / 127) + bias


def test_rows_are_quantized_each_with_its_own_scale(weights):
    w, bias = weights
    model = quantize_rows(matmul_model(w, bias))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2 and "MatMul" not in ops
    assert ops.count("QuantizeLinear") == 1, "two MatMuls reading x share one quantization of it"
    assert {t.name for t in model.graph.initializer}.isdisjoint({"w", "w2"}), "fp32 weights dropped"
    x = np.random.default_rng(1).standard_normal((5, 1, K)).astype(np.float32)
    x[3] *= 1000  # a row of large values does not coarsen the others' quantization
    y, _ = session(model).run(None, {"x": x})
    ref = numpy_reference(x, w, bias)
    exact = x @ w + bias
    for r in range(5):
        scale = np.abs(exact[r]).max()
        assert np.abs(y[r] - ref[r]).max() < 1e-5 * scale, r  # float rounding of the same integers
        err = np.abs(y[r] - exact[r]).max() / scale
        assert err < 0.03, (r, err)


def test_a_row_gives_the_same_bits_alone_and_in_a_batch(weights):
    w, bias = weights
    sess = session(quantize_rows(matmul_model(w, bias)))
    x = np.random.default_rng(2).standard_normal((7, 1, K)).astype(np.float32)
    x[0] *= 50
    x[4] = 0  # an all-zero row: scale TINY, no division by zero
    y, z = sess.run(None, {"x": x})
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[4], np.broadcast_to(bias, (1, N)), atol=0)
    for r in range(7):
        y1, z1 = sess.run(None, {"x": x[r:r + 1]})
        np.testing.assert_array_equal(y1[0], y[r])
        np.testing.assert_array_equal(z1[0], z[r])


def test_a_graph_without_constant_matmuls_is_refused():
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "v"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("v", TensorProto.FLOAT, [3, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    with pytest.raises(ValueError, match="no MatMul with a constant 2-D weight"):
        quantize_rows(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
