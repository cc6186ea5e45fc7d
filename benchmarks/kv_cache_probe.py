#!/usr/bin/env python
"""One decoder self-attention step at B=6, 12 heads x 64, past length L: Concat-based (as the exported
graph) vs com.microsoft GroupQueryAttention writing into a pre-allocated shared KV buffer.

    python benchmarks/kv_cache_probe.py      # ~20 s; see benchmarks/frame-results.md
"""
import time

import numpy as np
import onnxruntime as ort
from onnx import helper as h, TensorProto as T
B, H, D, LMAX = 6, 12, 64, 1024
def concat_graph():
    nodes = [
        h.make_node("Reshape", ["q", "shp"], ["q4"]), h.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
        h.make_node("Reshape", ["k", "shp"], ["k4"]), h.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 1, 3]),
        h.make_node("Reshape", ["v", "shp"], ["v4"]), h.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
        h.make_node("Concat", ["pk", "kt"], ["present_k"], axis=2), h.make_node("Concat", ["pv", "vt"], ["present_v"], axis=2),
        h.make_node("Transpose", ["present_k"], ["kT"], perm=[0, 1, 3, 2]),
        h.make_node("MatMul", ["qt", "kT"], ["s"]), h.make_node("Softmax", ["s"], ["p"], axis=-1),
        h.make_node("MatMul", ["p", "present_v"], ["o4"]), h.make_node("Transpose", ["o4"], ["ot"], perm=[0, 2, 1, 3]),
        h.make_node("Reshape", ["ot", "shp3"], ["out"])]
    g = h.make_graph(nodes, "c", [h.make_tensor_value_info(n, T.FLOAT, ["B", 1, H * D]) for n in "qkv"] +
                     [h.make_tensor_value_info(n, T.FLOAT, ["B", H, "L", D]) for n in ("pk", "pv")],
                     [h.make_tensor_value_info("out", T.FLOAT, None), h.make_tensor_value_info("present_k", T.FLOAT, None),
                      h.make_tensor_value_info("present_v", T.FLOAT, None)],
                     [h.make_tensor("shp", T.INT64, [4], [0, 1, H, D]), h.make_tensor("shp3", T.INT64, [3], [0, 1, H * D])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)]); m.ir_version = 9; return m
def gqa_graph():
    n = h.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "seqlens_k", "total_len"], ["out", "present_k", "present_v"],
                    domain="com.microsoft", num_heads=H, kv_num_heads=H, scale=1.0)
    g = h.make_graph([n], "g", [h.make_tensor_value_info(x, T.FLOAT, ["B", 1, H * D]) for x in "qkv"] +
                     [h.make_tensor_value_info(x, T.FLOAT, ["B", H, "L", D]) for x in ("pk", "pv")] +
                     [h.make_tensor_value_info("seqlens_k", T.INT32, ["B"]), h.make_tensor_value_info("total_len", T.INT32, [])],
                     [h.make_tensor_value_info(x, T.FLOAT, None) for x in ("out", "present_k", "present_v")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)]); m.ir_version = 9; return m
so = ort.SessionOptions(); so.log_severity_level = 3
sc = ort.InferenceSession(concat_graph().SerializeToString(), so, providers=["CPUExecutionProvider"])
sg = ort.InferenceSession(gqa_graph().SerializeToString(), so, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((B, 1, H * D)).astype(np.float32) * 0.1 for _ in range(3))
for L in (1, 256, 511):
    pk, pv = (rng.standard_normal((B, H, L, D)).astype(np.float32) for _ in range(2))
    feeds = dict(q=q, k=k, v=v, pk=pk, pv=pv)
    out_c = sc.run(None, feeds)
    t = time.perf_counter()
    for _ in range(30): sc.run(None, feeds)
    tc = (time.perf_counter() - t) / 30
    bk, bv = np.zeros((B, H, LMAX, D), np.float32), np.zeros((B, H, LMAX, D), np.float32)
    bk[:, :, :L], bv[:, :, :L] = pk, pv
    ok, ov = ort.OrtValue.ortvalue_from_numpy(bk), ort.OrtValue.ortvalue_from_numpy(bv)
    io = sg.io_binding()
    for name, val in dict(q=q, k=k, v=v).items(): io.bind_cpu_input(name, val)
    io.bind_ortvalue_input("pk", ok); io.bind_ortvalue_input("pv", ov)
    io.bind_cpu_input("seqlens_k", np.full(B, L, np.int32)); io.bind_cpu_input("total_len", np.array(L + 1, np.int32))
    io.bind_output("out", "cpu"); io.bind_ortvalue_output("present_k", ok); io.bind_ortvalue_output("present_v", ov)
    sg.run_with_iobinding(io)
    out_g = io.get_outputs()[0].numpy()
    err = float(np.abs(out_g - out_c[0]).max())
    same_buf = np.allclose(bk[:, :, L], out_c[1][:, :, L])
    t = time.perf_counter()
    for _ in range(30): sg.run_with_iobinding(io)
    tg = (time.perf_counter() - t) / 30
    print(f"L={L}: concat {1000*tc:.2f} ms, GQA shared buffer {1000*tg:.2f} ms (x6 layers: {6000*tc:.1f} vs {6000*tg:.1f} ms/step); max |diff| {err:.2e}; wrote in place {same_buf}")
