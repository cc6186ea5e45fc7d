"""Merge a first-step decoder and a with-past decoder into one `decoder_model_merged` graph.

The result has the onnx-community layout: one `If` node on `use_cache_branch` (bool [1]);
the then-branch is the with-past graph, the else-branch the first-step graph.  Weights
that both graphs hold (compared by content) are stored once, in the outer graph.  In the
with-past branch the `present.{i}.encoder.*` outputs are empty constants, as in optimum's
merged decoders: callers keep the cross-attention keys/values of the first step.  Needs only `onnx` (optimum's merge_decoders pins transformers < 4.58).
"""
from __future__ import annotations

import hashlib

import onnx
from onnx import TensorProto, helper, numpy_helper


def _weight_key(init: TensorProto) -> tuple:
    arr = numpy_helper.to_array(init)
    return (init.data_type, tuple(init.dims), hashlib.sha1(arr.tobytes()).hexdigest())


class _SharedWeights:
    """Initializers of both branches, deduplicated by content, kept for the outer graph."""

    def __init__(self):
        self.by_key: dict[tuple, str] = {}
        self.tensors: list[TensorProto] = []

    def add(self, init: TensorProto) -> str:
        key = _weight_key(init)
        if key not in self.by_key:
            name = f"w{len(self.tensors)}_{init.name}"[:200]
            t = TensorProto()
            t.CopyFrom(init)
            t.name = name
            self.by_key[key] = name
            self.tensors.append(t)
        return self.by_key[key]


def _rename_node(node, names: dict[str, str], prefix: str, outer: set[str]) -> None:
    for i, name in enumerate(node.input):
        if name and name not in outer:
            node.input[i] = names.get(name, prefix + name)
    for i, name in enumerate(node.output):
        if name:
            node.output[i] = prefix + name
    if node.name:
        node.name = prefix + node.name
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            raise ValueError(f"export_merge: nested subgraph in node {node.name} is not supported")


def _as_branch(graph, prefix: str, shared: _SharedWeights, outer_inputs: set[str]):
    """Turn a top-level graph into an If branch: no inputs, weights moved out, names prefixed."""
    names = {init.name: shared.add(init) for init in graph.initializer}
    outer = set(outer_inputs) | set(names.values())
    for node in graph.node:
        _rename_node(node, names, prefix, outer)
    outputs = []
    for out in graph.output:
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(out)
        vi.name = prefix + out.name if out.name not in outer_inputs else out.name
        outputs.append(vi)
    return list(graph.node), outputs


def _empty_output(out_name: str, like: onnx.ValueInfoProto):
    """An empty constant [0, heads, 1, head_dim] (as optimum's merge does): the with-past branch
    has no new cross-attention keys/values, and copying the past ones every step would cost."""
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in like.type.tensor_type.shape.dim]
    dims[0] = 0
    elem = like.type.tensor_type.elem_type
    value = helper.make_tensor(out_name + "_value", elem, dims, [])
    node = helper.make_node("Constant", [], [out_name], name=f"{out_name}_empty", value=value)
    return node, helper.make_tensor_value_info(out_name, elem, dims)


def merge_decoders(first: onnx.ModelProto, with_past: onnx.ModelProto, num_layers: int) -> onnx.ModelProto:
    """first: inputs (inputs_embeds, encoder_attention_mask, encoder_hidden_states) -> logits, present.* (4/layer).
    with_past: inputs (inputs_embeds, encoder_attention_mask, past_key_values.*) -> logits, present.*.decoder.*"""
    past_inputs = {vi.name: vi for vi in with_past.graph.input if vi.name.startswith("past_key_values.")}
    first_inputs = {vi.name: vi for vi in first.graph.input}
    outer_inputs = [first_inputs["inputs_embeds"], first_inputs["encoder_attention_mask"],
                    first_inputs["encoder_hidden_states"]]
    cond = helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
    outer_names = {vi.name for vi in outer_inputs} | set(past_inputs) | {"use_cache_branch"}

    shared = _SharedWeights()
    else_nodes, else_outs = _as_branch(first.graph, "first/", shared, outer_names)
    then_nodes, then_outs = _as_branch(with_past.graph, "past/", shared, outer_names)
    then_by_name = {o.name[len("past/"):]: o for o in then_outs}

    ordered = ["logits"] + [f"present.{i}.{part}.{kv}" for i in range(num_layers)
                            for part in ("decoder", "encoder") for kv in ("key", "value")]
    then_ordered = []
    for name in ordered:
        if name in then_by_name:
            then_ordered.append(then_by_name[name])
        else:  # present.{i}.encoder.* in the with-past branch: empty (callers keep the first step's)
            past_name = name.replace("present.", "past_key_values.", 1)
            node, vi = _empty_output("past/" + name, past_inputs[past_name])
            then_nodes.append(node)
            then_ordered.append(vi)
    else_by_name = {o.name[len("first/"):]: o for o in else_outs}
    else_ordered = [else_by_name[name] for name in ordered]

    then_graph = helper.make_graph(then_nodes, "decoder_with_past", [], then_ordered)
    else_graph = helper.make_graph(else_nodes, "decoder_first", [], else_ordered)
    if_node = helper.make_node("If", ["use_cache_branch"], ordered, name="optimum::if",
                               then_branch=then_graph, else_branch=else_graph)
    outputs = [_output_info(name, first, num_layers) for name in ordered]
    inputs = outer_inputs + [past_inputs[n] for n in _past_names(num_layers)] + [cond]
    graph = helper.make_graph([if_node], "decoder_model_merged", inputs, outputs, initializer=shared.tensors)
    model = helper.make_model(graph, opset_imports=list(first.opset_import), producer_name="edge-agent")
    model.ir_version = first.ir_version
    return model


def _past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{part}.{kv}" for i in range(num_layers)
            for part in ("decoder", "encoder") for kv in ("key", "value")]


def _output_info(name: str, first: onnx.ModelProto, num_layers: int) -> onnx.ValueInfoProto:
    """Outer output: the element type of the first-step graph's output, shapes left symbolic."""
    for out in first.graph.output:
        if out.name == name:
            dims = [d.dim_param or None if not d.HasField("dim_value") else d.dim_value
                    for d in out.type.tensor_type.shape.dim]
            if name != "logits":  # the sequence axis differs between branches
                dims[2] = "past_sequence_length + 1" if ".decoder." in name else "encoder_sequence_length_out"
            else:
                dims[1] = "decoder_sequence_length"
            return helper.make_tensor_value_info(name, out.type.tensor_type.elem_type, dims)
    raise KeyError(name)
