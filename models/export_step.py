"""edge-agent's fast decoder: two graphs built with `onnx.helper` from the decoder's weights.

    onnx/decoder_cross_kv.onnx  encoder_hidden_states [B,S,D] -> cross.{i}.key [B,H,Dh,S] (transposed),
                                cross.{i}.value [B,H,S,Dh], once per sequence
    onnx/decoder_step.onnx      inputs_embeds [B,1,D], encoder_attention_mask [B,S], seqlens_k [B],
                                total_sequence_length [], past_key_values.{i}.decoder.{key,value}
                                [B,H,L_max,Dh] (a pre-allocated buffer), cross.{i}.{key,value}
                                -> logits [B,1,V], present.{i}.decoder.{key,value} (the same buffer)

Why: in the onnx-community `decoder_model_merged` each step appends to the self-attention
cache with `Concat` (copying the whole cache every step) and transposes the cross-attention
keys.  Here self-attention is one com.microsoft `GroupQueryAttention` node per layer, which
writes the new key/value in place into the buffer when the caller binds `present.*` to the
`past_key_values.*` buffer (models/generate.py, BufferedRunner); cross-attention reads keys
stored pre-transposed, optionally as float16 (half the bytes read per step).

The arithmetic is the with-past step of `models/export_wrappers.DecoderWithPast` (BART:
post-LayerNorm layers, learned positions at offset 2, lm_head without bias).  Needs numpy
and onnx only; `decoder_weights(model)` reads a native transformers model's weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper, numpy_helper

F32, F16, I64, I32 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.INT32
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
    lm_head: np.ndarray  # [V, D]
    activation: str = "gelu"

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


def build_cross_kv(w: DecoderWeights, kv_dtype=np.float32):
    """encoder_hidden_states -> per layer cross keys [B,H,Dh,S] (transposed) and values [B,H,S,Dh]."""
    g = _Graph()
    heads, dh = w.heads, w.d_model // w.heads
    elem = F16 if kv_dtype == np.float16 else F32
    outputs = []
    for i, layer in enumerate(w.layers):
        k = _heads(g, g.linear("encoder_hidden_states", layer.ck, f"l{i}.ck"), heads, dh, [0, 2, 3, 1])
        v = _heads(g, g.linear("encoder_hidden_states", layer.cv, f"l{i}.cv"), heads, dh, [0, 2, 1, 3])
        for name, t, dims in ((f"cross.{i}.key", k, ["batch_size", heads, dh, "encoder_sequence_length"]),
                              (f"cross.{i}.value", v, ["batch_size", heads, "encoder_sequence_length", dh])):
            g.nodes.append(helper.make_node("Cast", [t], [name], name=g.name("n_Cast"), to=elem))
            outputs.append(helper.make_tensor_value_info(name, elem, dims))
    inputs = [helper.make_tensor_value_info("encoder_hidden_states", F32, ["batch_size", "encoder_sequence_length", w.d_model])]
    return _model(g, inputs, outputs, "decoder_cross_kv")


def build_step(w: DecoderWeights, kv_dtype=np.float32):
    """One decoding step for every row, self-attention in place (GroupQueryAttention)."""
    g = _Graph()
    heads, dh, d = w.heads, w.d_model // w.heads, w.d_model
    cross_elem = F16 if kv_dtype == np.float16 else F32
    # position of the new token: total_sequence_length - 1, learned embedding at offset 2
    pos_index = g.op("Cast", [g.op("Add", ["total_sequence_length", g.const("pos_shift", np.asarray(POS_OFFSET - 1, np.int32))])],
                     to=I64)
    pos = g.op("Gather", [g.const("embed_positions", w.positions), pos_index], "pos")
    h = g.norm(g.op("Add", ["inputs_embeds", pos]), w.embed_norm, "layernorm_embedding")
    # additive cross-attention bias [B,1,1,S]: 0 where attended, float32 min where padded
    m = g.op("Cast", ["encoder_attention_mask"], to=F32)
    inv = g.op("Sub", [g.const("one", np.asarray(1.0, np.float32)), m])
    bias = g.op("Mul", [inv, g.const("fmin", np.asarray(np.finfo(np.float32).min, np.float32))])
    bias = g.op("Unsqueeze", [bias, g.const("axes12", np.asarray([1, 2], np.int64))], "cross_bias")
    scale = g.const("scale", np.asarray(dh ** -0.5, np.float32))
    outputs = []
    for i, layer in enumerate(w.layers):
        q, k, v = (g.linear(h, lin, f"l{i}.{n}") for lin, n in ((layer.q, "q"), (layer.k, "k"), (layer.v, "v")))
        present_k, present_v = f"present.{i}.decoder.key", f"present.{i}.decoder.value"
        attn = g.name(f"l{i}.self_attn")
        g.nodes.append(helper.make_node(
            "GroupQueryAttention", [q, k, v, f"past_key_values.{i}.decoder.key", f"past_key_values.{i}.decoder.value",
                                    "seqlens_k", "total_sequence_length"],
            [attn, present_k, present_v], name=g.name("n_GQA"), domain="com.microsoft",
            num_heads=heads, kv_num_heads=heads, scale=float(dh ** -0.5)))
        g.value_info.append(helper.make_tensor_value_info(attn, F32, ["batch_size", 1, d]))  # for quantizers' shape inference
        h = g.norm(g.op("Add", [h, g.linear(attn, layer.out, f"l{i}.out")]), layer.self_norm, f"l{i}.self_norm")
        # cross-attention over the stored keys/values
        qc = _heads(g, g.linear(h, layer.cq, f"l{i}.cq"), heads, dh, [0, 2, 1, 3])
        ck, cv = f"cross.{i}.key", f"cross.{i}.value"
        if cross_elem == F16:
            ck, cv = g.op("Cast", [ck], to=F32), g.op("Cast", [cv], to=F32)
        # (q k + bias) * scale, not q k * scale + bias: equal (bias is 0 or float32 min, which stays
        # a weight of 0 after softmax either way) and ORT does not fuse it into FusedMatMul, which ran
        # 3x slower than MatMul here (base int8, 12 rows: 5.5 vs 1.85 ms per step for the same bytes)
        s = g.op("Mul", [g.op("Add", [g.op("MatMul", [qc, ck]), bias]), scale])
        o = g.op("MatMul", [g.op("Softmax", [s], axis=-1), cv])
        o = g.op("Reshape", [g.op("Transpose", [o], perm=[0, 2, 1, 3]), g.shape_const([0, -1, d])])
        h = g.norm(g.op("Add", [h, g.linear(o, layer.cout, f"l{i}.cout")]), layer.cross_norm, f"l{i}.cross_norm")
        ff = g.linear(g.op("Gelu", [g.linear(h, layer.fc1, f"l{i}.fc1")], domain="com.microsoft"), layer.fc2, f"l{i}.fc2")
        h = g.norm(g.op("Add", [h, ff]), layer.final_norm, f"l{i}.final_norm")
        buf = ["batch_size", heads, "max_sequence_length", dh]
        outputs += [helper.make_tensor_value_info(present_k, F32, buf), helper.make_tensor_value_info(present_v, F32, buf)]
    g.nodes.append(helper.make_node("MatMul", [h, g.const("lm_head_t", w.lm_head.T)], ["logits"], name="lm_head"))
    outputs.insert(0, helper.make_tensor_value_info("logits", F32, ["batch_size", 1, w.lm_head.shape[0]]))
    inputs = [helper.make_tensor_value_info("inputs_embeds", F32, ["batch_size", 1, d]),
              helper.make_tensor_value_info("encoder_attention_mask", I64, ["batch_size", "encoder_sequence_length"]),
              helper.make_tensor_value_info("seqlens_k", I32, ["batch_size"]),
              helper.make_tensor_value_info("total_sequence_length", I32, [])]
    for i in range(len(w.layers)):
        buf = ["batch_size", heads, "max_sequence_length", dh]
        inputs += [helper.make_tensor_value_info(f"past_key_values.{i}.decoder.key", F32, buf),
                   helper.make_tensor_value_info(f"past_key_values.{i}.decoder.value", F32, buf),
                   helper.make_tensor_value_info(f"cross.{i}.key", cross_elem, ["batch_size", heads, dh, "encoder_sequence_length"]),
                   helper.make_tensor_value_info(f"cross.{i}.value", cross_elem, ["batch_size", heads, "encoder_sequence_length", dh])]
    return _model(g, inputs, outputs, "decoder_step")


def _model(g: _Graph, inputs, outputs, name: str):
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits, value_info=g.value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="edge-agent")
    model.ir_version = 8
    return model
