"""benchmarks/clip_check.py's exact twin computes the integers a u8 x s8 kernel may clip, and its
count of clip-prone weight pairs is what it says."""
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import clip_check as cc  # noqa: E402

from edge_agent.models.cpu import u8s8_saturates  # noqa: E402

def matmul_integer(w: np.ndarray, with_zero_point: bool):
    ins = ["a", "w", "a_zp", "w_zp"] if with_zero_point else ["a", "w", "a_zp"]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(128, np.uint8), "a_zp")]
    if with_zero_point:
        inits.append(numpy_helper.from_array(np.array(0, np.int8), "w_zp"))
    graph = helper.make_graph([helper.make_node("MatMulInteger", ins, ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, w.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [2, w.shape[1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_twin_is_exact_where_the_graph_as_written_clips():
    w = np.full((64, 8), 127, np.int8)
    a = np.full((2, 64), 255, np.uint8)
    exact = (a.astype(np.int64) - 128) @ w.astype(np.int64)
    for with_zp in (True, False):
        written = cc.session(matmul_integer(w, with_zp).SerializeToString()).run(None, {"a": a})[0]
        twin = cc.session(cc.exact_twin(matmul_integer(w, with_zp)).SerializeToString()).run(None, {"a": a})[0]
        assert np.array_equal(twin, exact)
        assert np.array_equal(written, exact) != u8s8_saturates()  # clipped exactly where the CPU saturates


def test_clip_prone_pairs_counts_same_sign_pairs_over_128():
    w = np.zeros((4, 3), np.int8)
    w[0:2, 0] = (100, 29)  # 129, same sign: prone
    w[2:4, 0] = (100, -100)  # opposite signs: not
    w[0:2, 1] = (-64, -64)  # 128: not (needs more than 128)
    w[2:4, 2] = (-127, -2)  # 129: prone
    assert cc.clip_prone_pairs(matmul_integer(w, True)) == (2, 6)
