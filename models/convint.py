"""ConvInteger's int8 weights handed to ONNX Runtime as uint8 when a graph is loaded.

    values = uint8_conv_weights(path)        # {initializer name: uint8 array}; {} where none apply
    n = add_conv_overrides(session_options, path)   # before creating the session; how many

onnx-community's `vision_encoder_int8` (onnxruntime `quantize_dynamic` with QInt8 weights; see
tests/onnx_community.py) has ConvInteger nodes with int8 weights and an int8 zero point.  ONNX
Runtime runs that form since 1.24.1, more slowly than the uint8-weight ConvInteger it has always
had: on an AVX2-only EPYC the 52 ConvInteger nodes of a base vision tower took 2.28 s per 768
tile with int8 weights, 0.64 s with the same weights as uint8 (4.2 against 14.7 GMAC/s;
benchmarks/frame-results.md, session 15).

Both forms hold the same integers.  Flipping an int8's sign bit gives the uint8 128 above it
(v ^ 0x80 == v + 128), so a weight w and its zero point z become w + 128 and z + 128, and each
product (x - x_zero) * (w - z), which is all ConvInteger computes, is unchanged: a session's
outputs are bit for bit those of the graph as written (tests/test_convint.py).  The file stays as
it is; the values are passed with ONNX Runtime's `SessionOptions.add_initializer`, which takes a
tensor of another type in an initializer's place (models/rowscale.py changes constants the same
way).

Only what is safe is converted: an int8 initializer that ConvInteger nodes read as their weight
and nothing else reads, whose zero point is an int8 initializer that each of those nodes passes and
nothing else reads.  Graphs with subgraphs (If, Loop, Scan), whose nodes can read an initializer
by name, are left as written.  No onnx import: the engine runs without it.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from edge_agent.models.onnxmeta import GraphMeta, read_graph_meta, read_initializers

log = logging.getLogger(__name__)

INT8 = 3  # onnx.TensorProto.INT8
SUBGRAPH_OPS = {"If", "Loop", "Scan"}


def _convertible(meta: GraphMeta) -> list[str]:
    """The weight and zero-point initializers that can be passed as uint8 (module docstring)."""
    if meta.op_types & SUBGRAPH_OPS:
        return []
    readers = defaultdict(set)  # tensor name -> {(op_type, input index)}
    for node in meta.nodes:
        for i, name in enumerate(node.input):
            if name:
                readers[name].add((node.op_type, i))
    io = {t.name for t in meta.inputs + meta.outputs}  # an initializer that is also a graph input can be fed
    convs = [n for n in meta.nodes if n.op_type == "ConvInteger"]
    names = {n.input[i] for n in convs for i in (1, 3) if len(n.input) > i and n.input[i]
             and meta.initializers.get(n.input[i], (0,))[0] == INT8 and readers[n.input[i]] == {("ConvInteger", i)}
             and n.input[i] not in io}
    changed = True
    while changed:  # a node converts its weight and its zero point together, or neither
        changed = False
        for node in convs:
            w, zp = node.input[1], node.input[3] if len(node.input) > 3 else ""
            if (w in names) != (zp in names):
                names.difference_update((w, zp))
                changed = True
    return sorted(names)


def uint8_conv_weights(path, meta: GraphMeta | None = None) -> dict[str, np.ndarray]:
    """{name: the initializer's values as uint8 (sign bit flipped)} for the ConvInteger weights and
    zero points of an .onnx file that can be passed as uint8; {} where there are none."""
    meta = meta if meta is not None else read_graph_meta(path)
    names = _convertible(meta)
    if not names:
        return {}
    return {name: value.view(np.uint8) ^ np.uint8(0x80) for name, value in read_initializers(path, names, meta).items()}


_VALUES: dict[tuple, dict] = {}  # (path, mtime, size) -> {name: OrtValue}: ORT reads them in place, so they are kept


def add_conv_overrides(session_options, path) -> int:
    """Make a session created with onnxruntime `session_options` from the .onnx file `path` read
    its int8 ConvInteger weights as uint8 (module docstring).  Returns how many initializers were
    replaced; 0 for a graph without any.  Raises OSError or OnnxFormatError for a file it cannot
    read (ONNX Runtime would fail on it too)."""
    import onnxruntime as ort

    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _VALUES:
        values = uint8_conv_weights(path)
        _VALUES[key] = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in values.items()}
    for name, value in _VALUES[key].items():
        session_options.add_initializer(name, value)
    if _VALUES[key]:
        log.debug("%s: %d ConvInteger initializers passed as uint8", path.name, len(_VALUES[key]))
    return len(_VALUES[key])
