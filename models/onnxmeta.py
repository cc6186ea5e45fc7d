"""Read an ONNX file's graph inputs, outputs, nodes, operator types and initializer shapes
without loading its weights, and without the `onnx` package (the runtime install lacks it);
`read_initializers` reads the values of the few initializers asked for.

An ONNX file is one protobuf `ModelProto`.  We walk the wire format over an mmap and
skip every length-delimited field we do not need (initializer bytes are never copied).
The few messages we read (ValueInfoProto, NodeProto, the external-data entries of a
TensorProto) are decoded here by field number, from onnx/onnx.proto.  A full-size
Florence-2 vision encoder (~360 MB) is scanned in milliseconds.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# field numbers from onnx/onnx.proto
_MODEL_OPSET_IMPORT, _MODEL_GRAPH = 8, 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 5, 11, 12
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_RAW_DATA, _TENSOR_EXTERNAL = 1, 2, 8, 9, 13
# the typed value fields: float_data, int32_data, int64_data, double_data -> how each value is stored
_TENSOR_VALUES = {4: "<f4", 5: "varint", 7: "varint", 10: "<f8"}
_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN = 1, 2, 3, 4, 5, 7
_ATTR_G, _ATTR_GRAPHS = 6, 11
_VI_NAME, _VI_TYPE = 1, 2
_TYPE_TENSOR = 1
_TT_ELEM_TYPE, _TT_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2

# onnx.TensorProto.DataType
DTYPE_NAMES = {0: "undefined", 1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
               7: "int64", 8: "string", 9: "bool", 10: "float16", 11: "double", 12: "uint32", 13: "uint64",
               14: "complex64", 15: "complex128", 16: "bfloat16", 21: "uint4", 22: "int4"}
# data types read_initializers returns, and the typed field each keeps its values in without raw_data
NUMPY_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
                9: np.bool_, 10: np.float16, 11: np.float64}
_VALUE_FIELD = {1: 4, 2: 5, 3: 5, 4: 5, 5: 5, 6: 5, 9: 5, 10: 5, 7: 7, 11: 10}


class OnnxFormatError(ValueError):
    pass


@dataclass(frozen=True)
class TensorInfo:
    name: str
    elem_type: int  # onnx.TensorProto data type
    shape: tuple  # ints for static dims, str for symbolic, None for unknown

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.elem_type, f"dtype{self.elem_type}")

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}] {self.dtype_name}"


@dataclass(frozen=True)
class NodeInfo:
    op_type: str
    domain: str
    input: tuple[str, ...]
    output: tuple[str, ...]
    name: str = ""


@dataclass
class GraphMeta:
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    nodes: list[NodeInfo] = field(default_factory=list)  # top level only
    initializers: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)  # name -> (dtype, dims)
    external_files: set[str] = field(default_factory=set)  # external-data locations, relative to the model
    # location -> bytes the file must hold (largest offset + length of the tensors stored there)
    external_sizes: dict[str, int] = field(default_factory=dict)
    op_types: set[str] = field(default_factory=set)  # every node's op_type, subgraphs (If branches) included
    # name -> where its values lie: ("raw", start, end) in the .onnx file, ("values", field, items)
    # for a typed field (its (wire, value or span) items), ("external", location, offset, length or
    # None), or ("none",)
    data: dict[str, tuple] = field(default_factory=dict)


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxFormatError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise OnnxFormatError("bad varint")


def _fields(buf, start: int, end: int):
    """Yield (field_number, wire_type, value_or_(start, end)) for one message's bytes: a varint's
    value; the span of a length-delimited field's bytes or of a fixed 32- or 64-bit value."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
            yield num, wire, val
        elif wire == 1:
            yield num, wire, (pos, pos + 8)
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise OnnxFormatError("truncated field")
            yield num, wire, (pos, pos + n)
            pos += n
        elif wire == 5:
            yield num, wire, (pos, pos + 4)
            pos += 4
        else:
            raise OnnxFormatError(f"unsupported wire type {wire}")
    if pos != end:
        raise OnnxFormatError("message overruns its length")


def _text(buf, span) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _dim(buf, span):
    for num, wire, val in _fields(buf, *span):
        if num == _DIM_VALUE and wire == 0:
            return _signed(val)
        if num == _DIM_PARAM and wire == 2:
            return _text(buf, val) or None
    return None


def _value_info(buf, span) -> TensorInfo:
    name, elem, shape = "", 0, ()
    for num, wire, val in _fields(buf, *span):
        if num == _VI_NAME and wire == 2:
            name = _text(buf, val)
        elif num == _VI_TYPE and wire == 2:
            for tnum, twire, tval in _fields(buf, *val):
                if tnum != _TYPE_TENSOR or twire != 2:
                    continue
                for f, w, v in _fields(buf, *tval):
                    if f == _TT_ELEM_TYPE and w == 0:
                        elem = v
                    elif f == _TT_SHAPE and w == 2:
                        shape = tuple(_dim(buf, d) for n, dw, d in _fields(buf, *v) if n == _SHAPE_DIM and dw == 2)
    return TensorInfo(name, elem, shape)


def _node(buf, span, op_types: set) -> NodeInfo:
    ins, outs, name, op, domain = [], [], "", "", ""
    for num, wire, val in _fields(buf, *span):
        if wire != 2:
            continue
        if num == _NODE_INPUT:
            ins.append(_text(buf, val))
        elif num == _NODE_OUTPUT:
            outs.append(_text(buf, val))
        elif num == _NODE_NAME:
            name = _text(buf, val)
        elif num == _NODE_OP_TYPE:
            op = _text(buf, val)
        elif num == _NODE_DOMAIN:
            domain = _text(buf, val)
        elif num == _NODE_ATTRIBUTE:
            for anum, awire, aval in _fields(buf, *val):
                if anum in (_ATTR_G, _ATTR_GRAPHS) and awire == 2:
                    _graph(buf, aval, op_types=op_types)  # subgraph: only its operator types are kept
    op_types.add(op)
    return NodeInfo(op, domain, tuple(ins), tuple(outs), name)


def _external(buf, span) -> dict[str, str]:
    """One StringStringEntryProto (key 1, value 2) as {key: value}."""
    key = value = ""
    for num, wire, val in _fields(buf, *span):
        if wire == 2 and num == 1:
            key = _text(buf, val)
        elif wire == 2 and num == 2:
            value = _text(buf, val)
    return {key: value}


def _initializer(buf, span, meta: GraphMeta) -> tuple[str, int, tuple[int, ...]]:
    name, dtype, dims, ext, raw, values = "", 0, [], {}, None, {}
    for num, wire, val in _fields(buf, *span):
        if num == _TENSOR_EXTERNAL and wire == 2:
            ext.update(_external(buf, val))
        elif num == _TENSOR_DIMS and wire == 0:
            dims.append(_signed(val))
        elif num == _TENSOR_DIMS and wire == 2:  # packed
            p, e = val
            while p < e:
                d, p = _varint(buf, p)
                dims.append(_signed(d))
        elif num == _TENSOR_DATA_TYPE and wire == 0:
            dtype = val
        elif num == _TENSOR_NAME and wire == 2:
            name = _text(buf, val)
        elif num == _TENSOR_RAW_DATA and wire == 2:
            raw = val
        elif num in _TENSOR_VALUES:
            values.setdefault(num, []).append((wire, val))
    location = ext.get("location")
    if location:
        meta.external_files.add(location)
        try:
            length = int(ext["length"])
            end = int(ext.get("offset", 0) or 0) + length
        except (KeyError, ValueError):
            length, end = None, 0  # no length recorded: the reader takes the rest of the file
        meta.external_sizes[location] = max(meta.external_sizes.get(location, 0), end)
        meta.data[name] = ("external", location, int(ext.get("offset", 0) or 0), length)
    elif raw is not None:
        meta.data[name] = ("raw", *raw)
    elif values:
        num = next(iter(values))
        meta.data[name] = ("values", num, tuple(values[num]))
    else:
        meta.data[name] = ("none",)
    return name, dtype, tuple(dims)


def _graph(buf, span, op_types: set | None = None) -> GraphMeta:
    """A GraphProto.  With op_types given (a subgraph), only operator types are collected."""
    sub = op_types is not None
    meta = GraphMeta()
    types = op_types if sub else meta.op_types
    for num, wire, val in _fields(buf, *span):
        if wire != 2:
            continue
        if num == _GRAPH_NODE:
            node = _node(buf, val, types)
            if not sub:
                meta.nodes.append(node)
        elif sub:
            continue
        elif num == _GRAPH_INPUT:
            meta.inputs.append(_value_info(buf, val))
        elif num == _GRAPH_OUTPUT:
            meta.outputs.append(_value_info(buf, val))
        elif num == _GRAPH_INITIALIZER:
            name, dtype, dims = _initializer(buf, val, meta)
            meta.initializers[name] = (dtype, dims)
    return meta


def read_graph_meta(path) -> GraphMeta:
    """Inputs, outputs, top-level nodes, operator types and initializer shapes of an .onnx file."""
    path = Path(path)
    with open(path, "rb") as f:
        if path.stat().st_size == 0:
            raise OnnxFormatError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            view = memoryview(buf)
            try:
                graph = None
                for num, wire, val in _fields(view, 0, len(view)):
                    if num == _MODEL_GRAPH and wire == 2:
                        graph = _graph(view, val)
                if graph is None:
                    raise OnnxFormatError("no graph in file")
                return graph
            except OnnxFormatError:
                raise
            except (IndexError, ValueError, UnicodeError) as exc:  # garbage that looks like protobuf
                raise OnnxFormatError(f"not a valid ONNX model: {exc}") from None
            finally:
                view.release()


def missing_external_data(path, meta: GraphMeta | None = None) -> str | None:
    """Why the graph's external-data files are incomplete (missing, or shorter than the tensors stored
    in them say), else None."""
    path = Path(path)
    meta = meta if meta is not None else read_graph_meta(path)
    for location in sorted(meta.external_files):
        data = path.parent / location
        if not data.is_file():
            return f"its weights file {location} is missing (expected in {path.parent})"
        need, have = meta.external_sizes.get(location, 0), data.stat().st_size
        if have < need:
            return f"its weights file {location} is truncated: {have} bytes, the graph needs {need}"
    return None


def read_initializers(path, names, meta: GraphMeta | None = None) -> dict[str, np.ndarray]:
    """The values of the named top-level initializers of an .onnx file, as numpy arrays of their
    shapes (from raw_data, a typed field such as float_data or int32_data, or their external-data
    file), reading only their bytes.
    OnnxFormatError names a tensor that is missing, of a type not read here, or short of values."""
    path = Path(path)
    meta = meta if meta is not None else read_graph_meta(path)
    out = {}
    with open(path, "rb") as f:
        for name in names:
            if name not in meta.initializers:
                raise OnnxFormatError(f"no initializer {name!r}")
            dtype, dims = meta.initializers[name]
            kind, *where = meta.data[name]
            np_dtype = NUMPY_DTYPES.get(dtype)
            if np_dtype is None or (kind == "values" and _VALUE_FIELD.get(dtype) != where[0]):
                raise OnnxFormatError(f"initializer {name!r}: cannot read {DTYPE_NAMES.get(dtype, dtype)} values")
            try:
                if kind == "raw":
                    f.seek(where[0])
                    a = np.frombuffer(f.read(where[1] - where[0]), np_dtype)
                elif kind == "external":
                    location, offset, length = where
                    with open(path.parent / location, "rb") as data:
                        data.seek(offset)
                        a = np.frombuffer(data.read(-1 if length is None else length), np_dtype)
                elif kind == "values":
                    a = _typed_values(f, *where, dtype)
                else:
                    a = np.zeros(0, np_dtype)
            except ValueError as exc:  # bytes that are not a whole number of values
                raise OnnxFormatError(f"initializer {name!r}: {exc}") from None
            count = int(np.prod(dims, dtype=np.int64))
            if a.size != count:
                raise OnnxFormatError(f"initializer {name!r}: {a.size} values for shape {list(dims)}")
            out[name] = a.reshape(dims)
    return out


def _typed_values(f, num: int, items: tuple, dtype: int) -> np.ndarray:
    """A tensor's values from its typed field `num` (items: (wire, value or span), packed or not)."""
    ints, chunks = [], []
    for wire, val in items:
        if wire == 0:
            ints.append(val)
            continue
        f.seek(val[0])
        chunk = f.read(val[1] - val[0])
        if _TENSOR_VALUES[num] != "varint":
            chunks.append(chunk)  # packed or single fixed-width values
            continue
        pos = 0
        while pos < len(chunk):
            v, pos = _varint(chunk, pos)
            ints.append(v)
    if _TENSOR_VALUES[num] != "varint":
        return np.frombuffer(b"".join(chunks), _TENSOR_VALUES[num]).astype(NUMPY_DTYPES[dtype])
    if dtype == 10:  # float16 keeps its bits in int32_data
        return np.array(ints, np.uint16).view(np.float16)
    return np.array([_signed(v) for v in ints], np.int64).astype(NUMPY_DTYPES[dtype])
