"""Per-row int8 matmuls for the decoders (`models quantize --dtype int8`).

Every `MatMul(x, W)` whose W is a 2-D initializer becomes

    m  = max(ReduceMax(|x|, last axis), tiny)          one scale per row of x (per token)
    xq = QuantizeLinear(x / m, 1/127, 128)             uint8, symmetric around 128
    y  = MatMulIntegerToFloat(xq, Wq, 1, s_W, 128) * m

with Wq int8, symmetric, one scale per output column (s_W, with the 1/127 folded in).  A row's
result depends on that row alone: the int8 products are exact integers, and the scales are the
row's own and the weight's.  So a sequence decodes to the same tokens alone as in any batch
(tests/test_batch_invariance.py), which onnxruntime's `quantize_dynamic` (one activation scale
over the whole batch tensor) does not give.

Why not `MatMulNBits` (weight-only 8-bit, blocks of 32), which edge-agent used before: its CPU
kernels run each row of x as its own matrix-vector product, so a decode step's cost grows with the
rows.  Base, one MatMul 768 x 51290 (lm_head) on an Intel Xeon with AMX/AVX-512 VNNI, onnxruntime
1.32.0: MatMulNBits 1.61 / 2.93 ms at 6 / 12 rows, this form 0.80 / 0.85 ms.  In the
dense-1080p frame the decode went 7.5-8.2 -> 5.0-5.8 s (benchmarks/frame-results.md, session 11).

x86 CPUs without VNNI (AVX2 only) multiply uint8 by int8 with VPMADDUBSW, which adds each pair
of products into a saturating int16: a pair of large same-sign weights times activations near 255
can clip there, as in onnxruntime's own `quantize_dynamic` (its `reduce_range` option: 7-bit
weights).  VNNI, AMX and ARM's kernels (UDOT; UMLAL without dotprod) accumulate in int32 and do not.
7-bit weights were measured: the base decode step's logits against fp32, relative L2 error 2.9%
against 2.0% with 8 bits (MatMulNBits' blocks of 32: 1.2%).  Pulling the offending pairs in
instead changed 0.9% of the weights by up to half and gave 9.3%.  So the weights keep 8 bits.

On such a CPU the engine makes the *activations* 7-bit instead, when it loads the graphs, with no
new file: `rowscale.activation_overrides(7)` replaces the three shared constants (ONNX Runtime's
`SessionOptions.add_initializer`), so that xq = QuantizeLinear(x / m, 1/63, 64) lies in [1, 127]
and a pair of products is at most 2 x 127 x 127 = 32258, under int16's 32767; the matmul's
activation scale 127/63 undoes the change.  The weights and the file stay the same on every CPU
(models/cpu.py `u8s8_saturates`; measured in benchmarks/frame-results.md, session 14).

uint8 with the zero point 128 rather than int8: MLAS's prepacked u8s8 kernels (VNNI, AMX) serve
uint8 activations; int8 activations took a slow path (the same step 7x slower).  Rows of x that
share an input (q, k and v of a layer) are quantized once.  Subgraphs (`If` branches of
decoder_model_merged) are rewritten too; their quantized weights live in the main graph.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edge_agent.models.rowscale import A_SCALE, X_SCALE, X_ZERO_POINT, activation_overrides

MS_DOMAIN = "com.microsoft"
TINY = 1e-30      # an all-zero row gets scale TINY instead of a division by zero


class _Rewriter:
    def __init__(self, main, opset: int):
        self.main = main
        self.opset = opset
        self.inits = {t.name: t for t in main.initializer}
        self.quantized = {}  # weight name -> (int8 weight name, column scale name)
        self.added = []
        self.count = 0
        self.tiny = self._const(np.array(TINY, np.float32), "rowq_tiny")
        consts = activation_overrides(8)
        self.inv127 = self._const(consts[X_SCALE], X_SCALE)
        self.zp = self._const(consts[X_ZERO_POINT], X_ZERO_POINT)
        self.one = self._const(consts[A_SCALE], A_SCALE)
        self.last_axis = self._const(np.array([-1], np.int64), "rowq_last_axis")  # ReduceMax's axes (opset 18+)

    def _name(self, base: str) -> str:
        self.count += 1
        return f"{base}_rowq{self.count}"

    def _const(self, value: np.ndarray, name: str) -> str:
        self.added.append(numpy_helper.from_array(value, name))
        return name

    def _weight(self, name: str):
        if name not in self.quantized:
            w = numpy_helper.to_array(self.inits[name]).astype(np.float32)
            peak = np.maximum(np.abs(w).max(axis=0), TINY)
            wq = np.clip(np.rint(w * (127 / peak)), -127, 127).astype(np.int8)
            self.quantized[name] = (self._const(wq, self._name(name + "_q")),
                                    self._const((peak / 127 / 127).astype(np.float32), self._name(name + "_s")))
        return self.quantized[name]

    def _reduce_max(self, x: str, out: str):
        if self.opset >= 18:  # axes became an input
            return helper.make_node("ReduceMax", [x, self.last_axis], [out], keepdims=1)
        return helper.make_node("ReduceMax", [x], [out], axes=[-1], keepdims=1)

    def _eligible(self, node) -> bool:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            return False
        w = self.inits.get(node.input[1])
        return w is not None and len(w.dims) == 2 and w.data_type == TensorProto.FLOAT

    def graph(self, graph) -> int:
        """Rewrite graph's eligible MatMuls (and its subgraphs'); returns how many."""
        nodes, rows, done = [], {}, 0
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == attr.GRAPH:
                    done += self.graph(attr.g)
                for g in attr.graphs:
                    done += self.graph(g)
            if not self._eligible(node):
                nodes.append(node)
                continue
            x = node.input[0]
            if x not in rows:
                a, m, m2, xs, xq = (self._name(x) for _ in range(5))
                nodes += [helper.make_node("Abs", [x], [a]), self._reduce_max(a, m),
                          helper.make_node("Max", [m, self.tiny], [m2]),
                          helper.make_node("Div", [x, m2], [xs]),
                          helper.make_node("QuantizeLinear", [xs, self.inv127, self.zp], [xq])]
                rows[x] = (xq, m2)
            xq, m2 = rows[x]
            wq, ws = self._weight(node.input[1])
            y = self._name(node.output[0])
            nodes += [helper.make_node("MatMulIntegerToFloat", [xq, wq, self.one, ws, self.zp], [y],
                                       domain=MS_DOMAIN),
                      helper.make_node("Mul", [y, m2], [node.output[0]])]
            done += 1
        del graph.node[:]
        graph.node.extend(nodes)
        return done


def _used(graph, names: set) -> None:
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                _used(attr.g, names)
            for g in attr.graphs:
                _used(g, names)


def quantize_rows(model):
    """Rewrite model (in place, and return it): every MatMul with a 2-D float initializer as its
    second input becomes the per-row int8 form above.  Raises ValueError if there is none."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    rw = _Rewriter(model.graph, opset)
    if rw.graph(model.graph) == 0:
        raise ValueError("no MatMul with a constant 2-D weight to quantize")
    used = set(o.name for o in model.graph.output)
    _used(model.graph, used)
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + [t for t in rw.added if t.name in used])
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model
