"""`edge-agent models quantize DIR --dtype int8|q4|fp16`: write a suffixed variant of the
fp32 graphs next to them, all four parts, in onnx-community's naming.

- int8: onnxruntime `quantize_dynamic`, int8 weights, activations quantized at run time
  (`EnableSubgraph` so the two branches of decoder_model_merged's `If` are quantized too).
  -> `*_int8.onnx`.  Parts with nothing to quantize are still written (a copy).
- q4:   4-bit block-wise weights (block 32, symmetric) with onnxruntime's
  `MatMulNBitsQuantizer`: MatMul -> MatMulNBits, and in embed_tokens the Gather ->
  GatherBlockQuantized; `accuracy_level=4` lets CPUs with int8 dot products use them.
  -> `*_q4.onnx`.
- fp16: `onnxruntime.transformers.float16.convert_float_to_float16` with float32 inputs
  and outputs kept (so callers feed the same arrays as for fp32).  -> `*_fp16.onnx`.
  Meant for GPUs; ONNX Runtime's CPU kernels are mostly fp32.

Every output is written in a temporary folder and moved into place, so an interrupted run
never leaves a half-written graph that `open_model_dir` would pick.  Graphs over ~1.8 GB
(the protobuf limit is 2 GB) keep their weights in an external-data file beside them.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edge_agent.errors import ConfigError, ModelError
from models.modeldir import FAST_PARTS, PARTS, external_data, graph_bytes

log = logging.getLogger(f"edge_agent.{__name__}")

DTYPES = {"int8": "_int8", "q4": "_q4", "fp16": "_fp16"}
Q4_BLOCK = 32
EXTERNAL_DATA_ABOVE = 1_800_000_000  # bytes; protobuf files cannot exceed 2 GB


def _quantize_int8(src: Path, dst: Path) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    # Conv (and the Transposes next to it) stays fp32: ORT's ConvInteger is ~10x slower than its
    # fp32 Conv on x86 (Florence-2-base vision tower: 2.2 s vs 0.22 s per tile), while int8
    # MatMul is 3.4x faster there (benchmarks/frame-results.md).
    ops = [op for op in IntegerOpsRegistry if op not in ("Conv", "Transpose")]
    start = _int8_kv(src, dst)
    try:
        quantize_dynamic(start, dst, weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                         extra_options={"EnableSubgraph": True, "DefaultTensorType": TensorProto.FLOAT},
                         use_external_data_format=_big(src))  # DefaultTensorType: com.microsoft ops' outputs
    finally:
        if start != src:
            start.unlink(missing_ok=True)


def _quantize_q4(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # Quantizing Gather makes the quantizer lift the opset to 21, which breaks older ops
    # such as ReduceMean(axes=...) in the other graphs; the embedding graph is a bare Gather.
    ops = ("MatMul", "Gather") if src.stem == "embed_tokens" else ("MatMul",)
    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=Q4_BLOCK, is_symmetric=True,
                             accuracy_level=4, op_types_to_quantize=ops)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=_big(src))


def _convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    big = _big(src)
    onnx.save(model, str(dst), save_as_external_data=big, location=external_data(dst).name if big else None)


def _int8_kv(src: Path, dst: Path) -> Path:
    """The fast decoder's graphs with int8 cross-attention keys/values (models/export_step.py),
    written beside dst for quantize_dynamic to start from; other parts: src unchanged."""
    from models.export_step import int8_cross_kv_graph, int8_cross_kv_step

    edit = {"decoder_cross_kv": int8_cross_kv_graph, "decoder_step": int8_cross_kv_step}.get(src.stem)
    if edit is None:
        return src
    import onnx

    tmp = dst.with_name(dst.stem + "_kv8.onnx")
    onnx.save(edit(onnx.load(str(src))), str(tmp))
    return tmp


CONVERTERS = {"int8": _quantize_int8, "q4": _quantize_q4, "fp16": _convert_fp16}


def _big(src: Path) -> bool:
    return graph_bytes(src) > EXTERNAL_DATA_ABOVE


@contextmanager
def _quiet():
    """onnxruntime's quantizers log every node (INFO, own handler) and generic advice
    (WARNING on the root logger); keep the CLI output to our own lines."""
    nbits = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = nbits.level
    nbits.setLevel(logging.ERROR)
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        nbits.setLevel(level)


def _convert_one(convert, src: Path, dst: Path) -> None:
    """Convert into a private temporary folder under the final name, then move the graph's
    external-data file(s) and finally the graph into place (locations stay valid).  The token
    embedding table always goes to an external-data file, which ORT maps (export.map_weights)."""
    from models.export import map_weights, same_mode

    tmp_dir = Path(tempfile.mkdtemp(prefix=".quantize-", dir=dst.parent))
    try:
        with _quiet():
            convert(src, tmp_dir / dst.name)
        if src.stem == "embed_tokens":
            map_weights(tmp_dir / dst.name)
        produced = sorted(tmp_dir.iterdir(), key=lambda p: p.name == dst.name)  # the graph last
        for f in produced:
            same_mode(f, src)
            os.replace(f, dst.parent / f.name)
    except Exception as exc:
        if isinstance(exc, (ModelError, ConfigError)):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(f"{src}: {type(exc).__name__} while converting: {first}") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def quantize_dir(path, dtype: str, parts=None) -> list[Path]:
    """Write the `dtype` variant of the fp32 graphs in DIR/onnx; returns the files written.
    parts=None: the four onnx-community parts, plus the fast decoder's when present."""
    if dtype not in CONVERTERS:
        raise ConfigError(f"unknown --dtype {dtype!r}: expected one of {', '.join(CONVERTERS)}")
    onnx_dir = Path(path).expanduser() / "onnx"
    if parts is None:
        parts = PARTS + tuple(p for p in FAST_PARTS if (onnx_dir / f"{p}.onnx").is_file())
    sources = [onnx_dir / f"{part}.onnx" for part in parts]
    for src in sources:
        if not src.is_file():
            raise ModelError(f"{src}: file missing (quantize starts from the fp32 graphs)")
    written = []
    for part, src in zip(parts, sources):
        dst = onnx_dir / f"{part}{DTYPES[dtype]}.onnx"
        log.info("%s -> %s", src.name, dst.name)
        _convert_one(CONVERTERS[dtype], src, dst)
        written.append(dst)
    return written
