"""benchmarks/op_profile.py counts each matmul's and convolution's multiply-accumulates from the
shapes ONNX Runtime's profiler records, so that a device's numbers can be held against its
matmul ceilings (`--part gemm`)."""
import importlib.util
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "op_profile.py"


def _op_profile():
    spec = importlib.util.spec_from_file_location("op_profile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_macs_of_matmuls_and_convolutions_from_their_shapes():
    op = _op_profile()
    assert op.node_macs("MatMul", [[2, 3, 4], [4, 5]], [[2, 3, 5]]) == 2 * 3 * 5 * 4
    assert op.node_macs("MatMulIntegerToFloat", [[6, 1, 768], [768, 2304], [], [2304]], [[6, 1, 2304]]) == 6 * 2304 * 768
    # a grouped (depthwise) convolution reduces over C_in / group x kernel: [C_out, 1, 3, 3]
    assert op.node_macs("Conv", [[1, 8, 6, 6], [8, 1, 3, 3], [8]], [[1, 8, 6, 6]]) == 8 * 36 * 9
    assert op.node_macs("QLinearConv", [[1, 4, 6, 6], [], [], [8, 4, 3, 3]], [[1, 8, 2, 2]]) == 32 * 36
    assert op.node_macs("Add", [[4, 4], [4, 4]], [[4, 4]]) == 0
    assert op.node_macs("MatMul", [[2, 3], [3, 4]], []) == 0  # no recorded output shape


def test_a_real_session_reports_what_each_operator_type_computed():
    op = _op_profile()
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w_conv"),
             numpy_helper.from_array(rng.standard_normal((8, 32)).astype(np.float32), "w_mm")]
    nodes = [helper.make_node("Conv", ["x", "w_conv"], ["c"], pads=[1, 1, 1, 1]),  # [1, 16, 8, 8]
             helper.make_node("MatMul", ["c", "w_mm"], ["y"])]  # [1, 16, 8, 32]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 32])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    per_run, total, count, macs = op.profile(model.SerializeToString(), lambda s: ({"x": x}, {}), 2, 1)
    assert per_run > 0 and sum(total.values()) > 0
    # ONNX Runtime may rename or fuse them (NchwcConv, FusedMatMul): count by what was computed
    assert sum(macs.values()) == 16 * 64 * 27 + 16 * 8 * 32 * 8
    assert sum(count.values()) >= 2


def test_the_gemm_ceiling_graphs_run():
    op = _op_profile()
    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    for kind in ("int8", "fp32"):
        _, total, _, macs = op.profile(op.gemm_model(kind, 8, 16, 32), lambda s: ({"x": x}, {}), 1, 1)
        assert sum(macs.values()) == 8 * 16 * 32, kind
        assert set(total) == {"DynamicQuantizeMatMul" if kind == "int8" else "MatMul"}
