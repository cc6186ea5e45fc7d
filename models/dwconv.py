"""Depthwise ConvInteger back to fp32 Conv in a dynamically quantized vision encoder (`models optimize`).

    n = float_depthwise(model)     # in place; how many ConvInteger nodes became Conv

onnxruntime's `quantize_dynamic`, which builds onnx-community's `vision_encoder_int8`, `_uint8` and
`_quantized`, quantizes every Conv, DaViT's depthwise 3x3 convolutions (one group per channel)
included, as

    x -> DynamicQuantizeLinear -> ConvInteger(xq, wq, x_zero, w_zero) -> Cast -> Mul(x_scale * w_scale) -> Add(bias)

ONNX Runtime's ConvInteger runs such a node one channel at a time, each a GEMM of one row of nine
weights: on a base 768 tile (a Zen 5 EPYC with AVX-512 VNNI, weights loaded as uint8 by
models/convint.py) its 48 depthwise nodes took 73 of the 107 ms spent in ConvInteger.  As one fp32
Conv with the weights dequantized, (wq - w_zero) * w_scale, and the bias as it was, they run on ONNX
Runtime's NCHWc depthwise kernel, and the activations are no longer rounded to 8 bits there: the
tile took 0.55-0.64 s against 0.65-0.74 s, and its features' error against the fp32 tower fell
from 4.82% to 4.79% (benchmarks/frame-results.md, session 16).  The weights are nine floats per
channel (18 KB at 512 channels), so the file barely grows.

Only that exact chain is rewritten, and only where each link has no other reader (the
DynamicQuantizeLinear stays where something else reads its outputs); the weight, its zero point,
the weight scale and the bias must be constants (initializers, or Constant, Identity or Reshape
nodes over them).  Nodes and initializers left without a reader afterwards are removed.  Needs
onnx and numpy (the [pull] extra), as models/optimize.py does.
"""
from __future__ import annotations

import numpy as np

CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


class _Graph:
    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.to_array = numpy_helper.to_array
        self.inits = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.index()

    def index(self) -> None:
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.readers: dict[str, list] = {}
        for n in self.graph.node:
            for name in n.input:
                self.readers.setdefault(name, []).append(n)

    def const(self, name: str):
        """The constant value of tensor `name`, or None."""
        if name in self.inits:
            return self.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            attr = next((a for a in node.attribute if a.name == "value"), None)
            return None if attr is None else self.to_array(attr.t)
        if node.op_type == "Identity":
            return self.const(node.input[0])
        if node.op_type == "Reshape":
            value, shape = self.const(node.input[0]), self.const(node.input[1])
            if value is None or shape is None or 0 in shape:  # ONNX's 0 (copy a dimension) is not numpy's
                return None
            try:
                return value.reshape(shape)
            except ValueError:
                return None
        return None

    def only_reader(self, name: str, op_type: str):
        readers = self.readers.get(name, [])
        if len(readers) == 1 and readers[0].op_type == op_type and name not in self.outputs:
            return readers[0]
        return None


def _attr(node, name: str, default=None):
    from onnx import helper

    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


def _per_channel(value, channels: int) -> np.ndarray | None:
    """A scale or zero point as [C, 1, 1, 1], from a scalar or C values; None otherwise."""
    v = np.asarray(value, np.float32).reshape(-1)
    if v.size == 1:
        return np.full((channels, 1, 1, 1), v[0], np.float32)
    return v.reshape(channels, 1, 1, 1) if v.size == channels else None


def _rewrite(g: _Graph, conv):
    """(the fp32 Conv node, its weight, its bias or None) for a depthwise ConvInteger chain, else None."""
    from onnx import TensorProto, helper

    if conv.domain not in ("", "ai.onnx") or len(conv.input) < 3:
        return None
    wq = g.const(conv.input[1])
    if wq is None or wq.ndim != 4 or wq.shape[1] != 1 or _attr(conv, "group", 1) != wq.shape[0]:
        return None  # not depthwise
    channels = wq.shape[0]
    dql = g.producer.get(conv.input[0])
    if dql is None or dql.op_type != "DynamicQuantizeLinear" or conv.input[2] != dql.output[2]:
        return None
    w_zero = g.const(conv.input[3]) if len(conv.input) > 3 and conv.input[3] else np.zeros((), wq.dtype)
    cast = g.only_reader(conv.output[0], "Cast")
    if w_zero is None or cast is None or _attr(cast, "to") != TensorProto.FLOAT:
        return None
    mul = g.only_reader(cast.output[0], "Mul")
    if mul is None:
        return None
    scales = g.producer.get(mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0])
    if scales is None or scales.op_type != "Mul" or dql.output[1] not in scales.input:
        return None
    w_scale = g.const(scales.input[1] if scales.input[0] == dql.output[1] else scales.input[0])
    zero, scale = _per_channel(w_zero, channels), _per_channel(w_scale if w_scale is not None else [], channels)
    if zero is None or scale is None:
        return None
    weight = (wq.astype(np.float32) - zero) * scale
    out, bias = mul.output[0], None
    add = g.only_reader(out, "Add")
    if add is not None:
        value = g.const(add.input[1] if add.input[0] == out else add.input[0])
        if value is not None and value.size == channels:
            out, bias = add.output[0], value.astype(np.float32).reshape(channels)
    inputs = [dql.input[0], conv.name + "_fp32_w"] + ([conv.name + "_fp32_b"] if bias is not None else [])
    node = helper.make_node("Conv", inputs, [out], name=conv.name + "_fp32")
    node.attribute.extend(a for a in conv.attribute if a.name in CONV_ATTRS)
    return node, weight, bias


def _sweep(g: _Graph) -> None:
    """Remove nodes whose outputs nothing reads (repeatedly), then initializers nothing reads."""
    while True:
        g.index()
        dead = [n for n in g.graph.node
                if not any(o in g.readers or o in g.outputs for o in n.output if o)]
        if not dead:
            break
        gone = {id(n) for n in dead}
        keep = [n for n in g.graph.node if id(n) not in gone]
        del g.graph.node[:]
        g.graph.node.extend(keep)
    used = {name for n in g.graph.node for name in n.input} | g.outputs
    keep = [t for t in g.graph.initializer if t.name in used]
    del g.graph.initializer[:]
    g.graph.initializer.extend(keep)


def float_depthwise(model) -> int:
    """Rewrite model's depthwise ConvInteger chains (module docstring) in place; how many."""
    from onnx import numpy_helper

    if any(a.type in (a.GRAPH, a.GRAPHS) for n in model.graph.node for a in n.attribute):
        return 0  # a subgraph can read any outer tensor by name: the sweep below could not see it
    g = _Graph(model.graph)
    found = []
    for conv in model.graph.node:
        if conv.op_type == "ConvInteger":
            r = _rewrite(g, conv)
            if r is not None:
                found.append((conv, r))
    if not found:
        return 0
    replaced = {}  # id of the chain's last node -> the Conv that takes its place
    for conv, (node, weight, bias) in found:
        replaced[id(g.producer[node.output[0]])] = node
        model.graph.initializer.append(numpy_helper.from_array(weight, node.input[1]))
        if bias is not None:
            model.graph.initializer.append(numpy_helper.from_array(bias, node.input[2]))
    nodes = [replaced.get(id(n), n) for n in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)  # the old chain's other links now feed nothing: swept below
    _sweep(g)
    return len(found)
