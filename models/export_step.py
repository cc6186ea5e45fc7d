"""edge-agent's fast decoder: two graphs built with `onnx.helper` from the decoder's weights.

    onnx/decoder_cross_kv.onnx  encoder_hidden_states [B,S,D] -> cross.{i}.{key,value} [B,H,S+1,Dh],
                                once per sequence (the int8 variant: int8 + cross.{i}.{key,value}_scale)
    onnx/decoder_step.onnx      inputs_embeds [B,1,D], encoder_attention_mask [B,S], seqlens_k [B],
                                total_sequence_length [], past_key_values.{i}.decoder.{key,value}
                                [B,H,L_max,Dh] (a pre-allocated buffer), cross.{i}.{key,value}
                                -> logits [B,1,V], present.{i}.decoder.* and present.{i}.cross.*
                                (the same buffers: bind each present.* to its input's OrtValue)

Why: in the onnx-community `decoder_model_merged` each step appends to the self-attention
cache with `Concat` (copying the whole cache every step) and transposes the cross-attention
keys.  Here both attentions are com.microsoft `GroupQueryAttention` nodes.  Self-attention
writes the new key/value in place into the buffer (models/runners.py, BufferedRunner).
Cross-attention treats the stored keys/values as GQA's "past" of length S, with a dummy zero
key/value written into a spare slot S that the bias masks; in the int8 variant
(int8_cross_kv_graph/_step) they are stored as int8 with a scale per row and channel (so that a
row's values do not depend on its batch), which GQA's CPU kernel reads directly: a quarter of
the memory and of the bytes per step.

The arithmetic is the with-past step of `models/export_wrappers.DecoderWithPast` (BART:
post-LayerNorm layers, learned positions at offset 2, lm_head without bias).  Needs numpy
and onnx only; `decoder_weights(model)` reads a native transformers model's weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper, numpy_helper

F32, I64, I32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
OPSET = 17
POS_OFFSET = 2  # BART's learned positions start at index 2 (models/export_wrappers.py)
STEP_PART, CROSS_PART = "decoder_step", "decoder_cross_kv"


@dataclass
class Linear:
    weight: np.ndarray  # [out, in], as torch stores it
    bias: np.ndarray | None


@dataclass
class Norm:
    weight: np.ndarray
    bias: np.ndarray
    eps: float


@dataclass
class Layer:
    q: Linear
    k: Linear
    v: Linear
    out: Linear
    self_norm: Norm
    cq: Linear
    ck: Linear
    cv: Linear
    cout: Linear
    cross_norm: Norm
    fc1: Linear
    fc2: Linear
    final_norm: Norm


@dataclass
class DecoderWeights:
    heads: int
    positions: np.ndarray  # [max_pos + 2, D]
    embed_norm: Norm
    layers: list
    lm_head: np.ndarray  # [V, D]  (the activation is gelu: decoder_weights refuses others)

    @property
    def d_model(self) -> int:
        return self.lm_head.shape[1]


def decoder_weights(model) -> DecoderWeights:
    """The decoder weights of a native `Florence2ForConditionalGeneration` (torch) as numpy."""
    dec = model.model.language_model.decoder
    act = model.config.text_config.activation_function
    if act != "gelu":
        raise ValueError(f"fast decoder: activation {act!r} is not supported (only 'gelu')")

    def arr(t):
        return t.detach().float().cpu().numpy().copy()

    def lin(m):
        return Linear(arr(m.weight), None if m.bias is None else arr(m.bias))

    def norm(m):
        return Norm(arr(m.weight), arr(m.bias), float(m.eps))

    layers = [Layer(lin(l.self_attn.q_proj), lin(l.self_attn.k_proj), lin(l.self_attn.v_proj), lin(l.self_attn.out_proj),
                    norm(l.self_attn_layer_norm), lin(l.encoder_attn.q_proj), lin(l.encoder_attn.k_proj),
                    lin(l.encoder_attn.v_proj), lin(l.encoder_attn.out_proj), norm(l.encoder_attn_layer_norm),
                    lin(l.fc1), lin(l.fc2), norm(l.final_layer_norm)) for l in dec.layers]
    return DecoderWeights(heads=model.config.text_config.decoder_attention_heads,
                          positions=arr(dec.embed_positions.weight), embed_norm=norm(dec.layernorm_embedding),
                          layers=layers, lm_head=arr(model.lm_head.weight))


class _Graph:
    """Nodes and initializers under unique names."""

    def __init__(self):
        self.nodes, self.inits, self.value_info = [], [], []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs, hint: str | None = None, outputs: int = 1, domain: str = "", **attrs):
        outs = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name("n_" + op_type),
                                           domain=domain, **attrs))
        return outs[0] if outputs == 1 else outs

    def linear(self, x: str, lin: Linear, hint: str) -> str:
        y = self.op("MatMul", [x, self.const(hint + ".weight_t", lin.weight.T)], hint)
        return self.op("Add", [y, self.const(hint + ".bias", lin.bias)], hint) if lin.bias is not None else y

    def norm(self, x: str, n: Norm, hint: str) -> str:
        return self.op("LayerNormalization", [x, self.const(hint + ".w", n.weight), self.const(hint + ".b", n.bias)],
                       hint, axis=-1, epsilon=n.eps)

    def shape_const(self, dims) -> str:
        return self.const("shape", np.asarray(dims, np.int64))


def _heads(g: _Graph, x: str, heads: int, dh: int, perm) -> str:
    """[B, S, H*Dh] -> Transpose(perm) of [B, S, H, Dh]."""
    return g.op("Transpose", [g.op("Reshape", [x, g.shape_const([0, -1, heads, dh])])], perm=perm)


def build_cross_kv(w: DecoderWeights):
    """encoder_hidden_states -> per layer cross keys and values [B,H,S+1,Dh]: S encoder positions and
    one spare slot, where decoder_step's GroupQueryAttention writes (and masks) its dummy token."""
    g = _Graph()
    heads, dh = w.heads, w.d_model // w.heads
    pads = g.const("pads", np.asarray([0, 0, 0, 0, 0, 0, 1, 0], np.int64))
    outputs = []
    for i, layer in enumerate(w.layers):
        for kv, lin in (("key", layer.ck), ("value", layer.cv)):
            t = _heads(g, g.linear("encoder_hidden_states", lin, f"l{i}.c{kv[0]}"), heads, dh, [0, 2, 1, 3])
            name = f"cross.{i}.{kv}"
            g.nodes.append(helper.make_node("Pad", [t, pads], [name], name=g.name("n_Pad")))
            outputs.append(helper.make_tensor_value_info(name, F32, ["batch_size", heads, "cross_length", dh]))
    inputs = [helper.make_tensor_value_info("encoder_hidden_states", F32, ["batch_size", "encoder_sequence_length", w.d_model])]
    return _model(g, inputs, outputs, "decoder_cross_kv")


def _gqa(g: _Graph, inputs: list, outputs: list, heads: int, dh: int, d: int) -> None:
    g.nodes.append(helper.make_node("GroupQueryAttention", inputs, outputs, name=g.name("n_GQA"), domain="com.microsoft",
                                    num_heads=heads, kv_num_heads=heads, scale=float(dh ** -0.5)))
    g.value_info.append(helper.make_tensor_value_info(outputs[0], F32, ["batch_size", 1, d]))  # for quantizers' shape inference


def _cross_inputs(g: _Graph):
    """Per-row past length S (all rows are padded to S), total S + 1, and the additive bias
    [B,1,1,S+1]: 0 where attended, float32 min on padding and on the spare slot."""
    s = g.op("Cast", [g.op("Gather", [g.op("Shape", ["encoder_attention_mask"]), g.const("one_i", np.asarray(1, np.int64))])],
             to=I32)
    seqlens = g.op("Add", [g.op("Mul", ["seqlens_k", g.const("zero_i", np.asarray(0, np.int32))]), s], "cross_seqlens")
    total = g.op("Add", [s, g.const("one_i32", np.asarray(1, np.int32))], "cross_total")
    m = g.op("Pad", ["encoder_attention_mask", g.const("pads_m", np.asarray([0, 0, 0, 1], np.int64))])
    inv = g.op("Sub", [g.const("one", np.asarray(1.0, np.float32)), g.op("Cast", [m], to=F32)])
    bias = g.op("Mul", [inv, g.const("fmin", np.asarray(np.finfo(np.float32).min, np.float32))])
    bias = g.op("Unsqueeze", [bias, g.const("axes12", np.asarray([1, 2], np.int64))], "cross_bias")
    zeros = g.op("ConstantOfShape", [g.op("Shape", ["inputs_embeds"])], "cross_dummy",
                 value=helper.make_tensor("zero", F32, [1], [0.0]))
    return seqlens, total, bias, zeros


def _packed(q: Linear, k: Linear, v: Linear) -> Linear:
    """q, k and v as one Linear whose output is GroupQueryAttention's packed query [B, 1, 3D] (q,
    then k, then v): one MatMul and one bias Add instead of three each.  With the per-row int8
    matmuls (models/rowquant.py) that is also one MatMulIntegerToFloat and one Mul: a 6-row base
    int8 step 15.1-16.0 -> 14.1-14.7 ms (benchmarks/frame-results.md, session 12); each column keeps
    its own weight scale, so the int8 weights are the same."""
    biases = [lin.bias if lin.bias is not None else np.zeros(lin.weight.shape[0], np.float32) for lin in (q, k, v)]
    bias = None if all(lin.bias is None for lin in (q, k, v)) else np.concatenate(biases)
    return Linear(np.concatenate([q.weight, k.weight, v.weight]), bias)


def build_step(w: DecoderWeights):
    """One decoding step for every row.  Self-attention: GroupQueryAttention appending in place to
    the buffer.  Cross-attention: GroupQueryAttention too, over the stored keys/values as its
    "past", with a dummy zero key/value written into the spare slot and masked by the bias; so
    that the int8 variant can keep them as int8 (make_int8_kv)."""
    g = _Graph()
    heads, dh, d = w.heads, w.d_model // w.heads, w.d_model
    # position of the new token: total_sequence_length - 1, learned embedding at offset 2
    pos_index = g.op("Cast", [g.op("Add", ["total_sequence_length", g.const("pos_shift", np.asarray(POS_OFFSET - 1, np.int32))])],
                     to=I64)
    pos = g.op("Gather", [g.const("embed_positions", w.positions), pos_index], "pos")
    h = g.norm(g.op("Add", ["inputs_embeds", pos]), w.embed_norm, "layernorm_embedding")
    cross_seqlens, cross_total, cross_bias, dummy = _cross_inputs(g)
    outputs, cross_inputs = [], []
    buf = ["batch_size", heads, "max_sequence_length", dh]
    cross_buf = ["batch_size", heads, "cross_length", dh]
    for i, layer in enumerate(w.layers):
        qkv = g.linear(h, _packed(layer.q, layer.k, layer.v), f"l{i}.qkv")
        attn = g.name(f"l{i}.self_attn")
        _gqa(g, [qkv, "", "", f"past_key_values.{i}.decoder.key", f"past_key_values.{i}.decoder.value", "seqlens_k",
                 "total_sequence_length"], [attn, f"present.{i}.decoder.key", f"present.{i}.decoder.value"], heads, dh, d)
        h = g.norm(g.op("Add", [h, g.linear(attn, layer.out, f"l{i}.out")]), layer.self_norm, f"l{i}.self_norm")
        cattn = g.name(f"l{i}.cross_attn")
        _gqa(g, [g.linear(h, layer.cq, f"l{i}.cq"), dummy, dummy, f"cross.{i}.key", f"cross.{i}.value", cross_seqlens,
                 cross_total, "", "", "", cross_bias], [cattn, f"present.{i}.cross.key", f"present.{i}.cross.value"],
             heads, dh, d)
        h = g.norm(g.op("Add", [h, g.linear(cattn, layer.cout, f"l{i}.cout")]), layer.cross_norm, f"l{i}.cross_norm")
        ff = g.linear(g.op("Gelu", [g.linear(h, layer.fc1, f"l{i}.fc1")], domain="com.microsoft"), layer.fc2, f"l{i}.fc2")
        h = g.norm(g.op("Add", [h, ff]), layer.final_norm, f"l{i}.final_norm")
        for kv in ("key", "value"):
            outputs.append(helper.make_tensor_value_info(f"present.{i}.decoder.{kv}", F32, buf))
        for kv in ("key", "value"):
            outputs.append(helper.make_tensor_value_info(f"present.{i}.cross.{kv}", F32, cross_buf))
        cross_inputs += [helper.make_tensor_value_info(f"past_key_values.{i}.decoder.key", F32, buf),
                         helper.make_tensor_value_info(f"past_key_values.{i}.decoder.value", F32, buf),
                         helper.make_tensor_value_info(f"cross.{i}.key", F32, cross_buf),
                         helper.make_tensor_value_info(f"cross.{i}.value", F32, cross_buf)]
    g.nodes.append(helper.make_node("MatMul", [h, g.const("lm_head_t", w.lm_head.T)], ["logits"], name="lm_head"))
    outputs.insert(0, helper.make_tensor_value_info("logits", F32, ["batch_size", 1, w.lm_head.shape[0]]))
    inputs = [helper.make_tensor_value_info("inputs_embeds", F32, ["batch_size", 1, d]),
              helper.make_tensor_value_info("encoder_attention_mask", I64, ["batch_size", "encoder_sequence_length"]),
              helper.make_tensor_value_info("seqlens_k", I32, ["batch_size"]),
              helper.make_tensor_value_info("total_sequence_length", I32, [])] + cross_inputs
    return _model(g, inputs, outputs, "decoder_step")


def _model(g: _Graph, inputs, outputs, name: str):
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits, value_info=g.value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="edge-agent")
    model.ir_version = 8
    return model


INT8 = TensorProto.INT8


def int8_cross_kv_graph(model):
    """decoder_cross_kv with int8 outputs: each cross.{i}.{key,value} [B,H,S+1,Dh] becomes
    round(x / scale) clipped to +-127, with scale = max |x| / 127 per row and head channel, over
    the row's attended positions only ([B,H,1,Dh], output cross.{i}.{key,value}_scale; new input
    encoder_attention_mask [B,S]).  Per row, so that a sequence's keys and values do not depend on
    the other rows of its batch nor on how far the batch pads it.  In place; returns model."""
    g = _Graph()
    g._n = len(model.graph.node) + 1000
    outs = list(model.graph.output)
    del model.graph.output[:]
    model.graph.input.append(helper.make_tensor_value_info("encoder_attention_mask", I64,
                                                           ["batch_size", "encoder_sequence_length"]))
    # [B,S] -> [B,1,S+1,1] float: 1 on attended positions, 0 on padding and on the spare slot
    m = g.op("Pad", ["encoder_attention_mask", g.const("pads_m", np.asarray([0, 0, 0, 1], np.int64))])
    m = g.op("Unsqueeze", [g.op("Cast", [m], to=F32), g.const("axes13", np.asarray([1, 3], np.int64))], "attended")
    for out in outs:
        x = out.name + "_f32"
        for node in model.graph.node:
            node.output[:] = [x if o == out.name else o for o in node.output]
        peak = g.op("ReduceMax", [g.op("Mul", [g.op("Abs", [x]), m])], axes=[2], keepdims=1)
        scale = g.op("Max", [g.op("Div", [peak, g.const("q127", np.asarray(127.0, np.float32))]),
                             g.const("tiny", np.asarray(1e-12, np.float32))])
        g.nodes.append(helper.make_node("Identity", [scale], [out.name + "_scale"], name=g.name("n_Identity")))
        q = g.op("Clip", [g.op("Round", [g.op("Div", [x, scale])]), g.const("lo", np.asarray(-127.0, np.float32)),
                          g.const("hi", np.asarray(127.0, np.float32))])
        g.nodes.append(helper.make_node("Cast", [q], [out.name], name=g.name("n_Cast"), to=INT8))
        dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
        model.graph.output.append(helper.make_tensor_value_info(out.name, INT8, dims))
        model.graph.output.append(helper.make_tensor_value_info(out.name + "_scale", F32, [dims[0], dims[1], 1, dims[3]]))
    model.graph.node.extend(g.nodes)
    model.graph.initializer.extend(g.inits)
    return model


def int8_cross_kv_step(model):
    """decoder_step reading int8 cross keys/values with per-row scales cross.{i}.{key,value}_scale
    [B,H,1,Dh].  The cross GroupQueryAttention nodes read the int8 keys/values directly (T_CACHE
    int8, GQA's quantized-cache mode, scales of 1); the row scales are applied outside, exactly:
    q . (s_k * k) = (q * s_k) . k, so the query is multiplied by the key scales, and
    sum_t p_t (s_v * v_t) = s_v * sum_t p_t v_t, so the attention output by the value scales.
    In place; returns model."""
    g = _Graph()
    g._n = len(model.graph.node) + 1000
    scale_inputs, heads, dh = [], None, None
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name.startswith("cross.") or (vi.name.startswith("present.") and ".cross." in vi.name):
            vi.type.tensor_type.elem_type = INT8
            if vi.name.startswith("cross."):
                dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
                heads, dh = dims[1], dims[3]
                scale_inputs.append(helper.make_tensor_value_info(vi.name + "_scale", F32, [dims[0], dims[1], 1, dims[3]]))
    model.graph.input.extend(scale_inputs)
    ones = g.const("unit_scale", np.ones((1, heads, 1, dh), np.float32))
    flat = g.shape_const([0, 1, heads * dh])

    def per_row(name):  # [B,H,1,Dh] -> [B,1,H*Dh], the layout of a [B,1,D] activation
        return g.op("Reshape", [g.op("Transpose", [name], perm=[0, 2, 1, 3]), flat], name.replace(".", "_") + "_row")

    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention" and node.input[3].startswith("cross."):
            key, value = node.input[3], node.input[4]
            q = g.op("Mul", [node.input[0], per_row(key + "_scale")], "cross_q_scaled")
            node.input[0] = q
            _int8_cache(node, ones, ones)
            out = node.output[0]
            raw = out + "_unscaled"
            node.output[0] = raw
            g.nodes.append(helper.make_node("Mul", [raw, per_row(value + "_scale")], [out], name=g.name("n_Mul")))
    model.graph.initializer.extend(g.inits)
    _insert_sorted(model.graph, g.nodes)
    return model


def int8_self_kv_step(model, key_scales: list, value_scales: list):
    """decoder_step with int8 self-attention caches: past/present.{i}.decoder.{key,value} become
    int8 [B,H,L,Dh], and each layer's self-attention GroupQueryAttention quantizes the new key and
    value itself (GQA's quantized-cache mode) with fixed per-channel scales, key_scales[i] and
    value_scales[i] ([H, Dh] each; models/calibrate.py measures them), and reads the cache as
    int8: a quarter of the bytes per step and of the cache's memory.  The scales are constants, so
    a row's values never depend on its batch.  In place; returns model."""
    layers = 0
    for vi in list(model.graph.input) + list(model.graph.output):
        if ".decoder." in vi.name and vi.name.startswith(("past_key_values.", "present.")):
            vi.type.tensor_type.elem_type = INT8
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention" and node.input[3].startswith("past_key_values."):
            i = int(node.input[3].split(".")[1])
            names = []
            for kind, scales in (("key", key_scales), ("value", value_scales)):
                t = numpy_helper.from_array(np.asarray(scales[i], np.float32)[None, :, None, :],
                                            f"self.{i}.{kind}_scale")
                model.graph.initializer.append(t)
                names.append(t.name)
            _int8_cache(node, *names)
            layers += 1
    if layers != len(key_scales):
        raise ValueError(f"decoder_step: {layers} self-attention layers, {len(key_scales)} scales")
    return model


def _int8_cache(node, key_scale: str, value_scale: str) -> None:
    """Put a GroupQueryAttention node in its quantized-cache mode: int8 past/present keys and
    values with per-channel scales (inputs 12 and 13)."""
    ins = list(node.input) + [""] * (14 - len(node.input))
    ins[12], ins[13] = key_scale, value_scale
    node.input[:] = ins
    node.attribute.extend([helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                           helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                           helper.make_attribute("kv_cache_bit_width", 8)])


def _insert_sorted(graph, new_nodes) -> None:
    """Add new_nodes to graph and put all nodes in a topological order (ONNX requires one)."""
    nodes = list(graph.node) + list(new_nodes)
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered, pending = [], nodes
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input at {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
