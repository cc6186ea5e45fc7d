"""Read an ONNX file's graph inputs, outputs, nodes and initializer shapes without
loading its weights.

An ONNX file is one protobuf `ModelProto`.  We walk the wire format over an mmap and
skip every length-delimited field we do not need (initializer bytes are never copied),
then parse the small messages (ValueInfoProto, NodeProto) with onnx's own classes.  A
full-size Florence-2 vision encoder (~360 MB) is scanned in milliseconds.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path

# field numbers from onnx/onnx.proto
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 5, 11, 12
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_EXTERNAL = 1, 2, 8, 13


class OnnxFormatError(ValueError):
    pass


@dataclass(frozen=True)
class TensorInfo:
    name: str
    elem_type: int  # onnx.TensorProto data type
    shape: tuple  # ints for static dims, str for symbolic, None for unknown

    def describe(self) -> str:
        import onnx

        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}] {onnx.helper.tensor_dtype_to_string(self.elem_type).replace('TensorProto.', '').lower()}"


@dataclass
class GraphMeta:
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    nodes: list = field(default_factory=list)  # onnx.NodeProto, top level only
    initializers: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)  # name -> (dtype, dims)
    external_files: set[str] = field(default_factory=set)  # external-data locations, relative to the model


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
    """Yield (field_number, wire_type, value_or_(start, end)) for one message's bytes."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
            yield num, wire, val
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise OnnxFormatError("truncated field")
            yield num, wire, (pos, pos + n)
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise OnnxFormatError(f"unsupported wire type {wire}")
    if pos != end:
        raise OnnxFormatError("message overruns its length")


def _tensor_info(vi) -> TensorInfo:
    t = vi.type.tensor_type
    shape = None
    if t.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
    return TensorInfo(vi.name, t.elem_type, shape if shape is not None else ())


def _external_location(buf, span) -> str | None:
    """`location` value of one StringStringEntryProto (key 1, value 2), else None."""
    key = value = None
    for num, wire, val in _fields(buf, *span):
        if wire == 2 and num in (1, 2):
            text = bytes(buf[val[0]:val[1]]).decode("utf-8", "replace")
            key, value = (text, value) if num == 1 else (key, text)
    return value if key == "location" else None


def _initializer(buf, span, external: set) -> tuple[str, int, tuple[int, ...]]:
    name, dtype, dims = "", 0, []
    for num, wire, val in _fields(buf, *span):
        if num == _TENSOR_EXTERNAL and wire == 2:
            location = _external_location(buf, val)
            if location:
                external.add(location)
        if num == _TENSOR_DIMS and wire == 0:
            dims.append(val)
        elif num == _TENSOR_DIMS and wire == 2:  # packed
            p, e = val
            while p < e:
                d, p = _varint(buf, p)
                dims.append(d)
        elif num == _TENSOR_DATA_TYPE and wire == 0:
            dtype = val
        elif num == _TENSOR_NAME and wire == 2:
            name = bytes(buf[val[0]:val[1]]).decode("utf-8", "replace")
    return name, dtype, tuple(dims)


def _graph(buf, span) -> GraphMeta:
    import onnx

    meta = GraphMeta()
    for num, wire, val in _fields(buf, *span):
        if wire != 2:
            continue
        raw = lambda: bytes(buf[val[0]:val[1]])  # noqa: E731
        if num == _GRAPH_INPUT:
            meta.inputs.append(_tensor_info(onnx.ValueInfoProto.FromString(raw())))
        elif num == _GRAPH_OUTPUT:
            meta.outputs.append(_tensor_info(onnx.ValueInfoProto.FromString(raw())))
        elif num == _GRAPH_NODE:
            meta.nodes.append(onnx.NodeProto.FromString(raw()))
        elif num == _GRAPH_INITIALIZER:
            name, dtype, dims = _initializer(buf, val, meta.external_files)
            meta.initializers[name] = (dtype, dims)
    return meta


def read_graph_meta(path) -> GraphMeta:
    """Inputs, outputs, top-level nodes and initializer shapes of an .onnx file."""
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
            except Exception as exc:  # protobuf DecodeError, index errors on garbage
                if isinstance(exc, OnnxFormatError):
                    raise
                raise OnnxFormatError(f"not a valid ONNX model: {exc}") from None
            finally:
                view.release()
