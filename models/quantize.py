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

Every output is written to a temporary name and renamed, so an interrupted run never
leaves a half-written variant that `open_model_dir` would pick.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from edge_agent.errors import ConfigError, ModelError
from models.modeldir import PARTS

log = logging.getLogger(f"edge_agent.{__name__}")

DTYPES = {"int8": "_int8", "q4": "_q4", "fp16": "_fp16"}
Q4_BLOCK = 32
EXTERNAL_DATA_ABOVE = 1_800_000_000  # bytes; protobuf files cannot exceed 2 GB


def _quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, extra_options={"EnableSubgraph": True},
                     use_external_data_format=_big(src))


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
    onnx.save(model, str(dst), save_as_external_data=_big(src))


CONVERTERS = {"int8": _quantize_int8, "q4": _quantize_q4, "fp16": _convert_fp16}


def _big(src: Path) -> bool:
    data = src.with_name(src.name + "_data")
    return src.stat().st_size + (data.stat().st_size if data.is_file() else 0) > EXTERNAL_DATA_ABOVE


def _tmp_name(dst: Path) -> Path:
    return dst.with_name(f".{dst.stem}.tmp{os.getpid()}.onnx")


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
    tmp = _tmp_name(dst)
    try:
        with _quiet():
            convert(src, tmp)
        tmp_data = tmp.with_name(tmp.name + "_data")
        if tmp_data.is_file():  # external data keeps the name recorded at save time
            log.warning("%s: weights stored as external data %s", dst, tmp_data.name)
        os.replace(tmp, dst)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (ModelError, ConfigError)):
            raise
        raise ModelError(f"{src}: {type(exc).__name__} while converting: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def quantize_dir(path, dtype: str, parts=PARTS) -> list[Path]:
    """Write the `dtype` variant of the fp32 graphs in DIR/onnx; returns the files written."""
    if dtype not in CONVERTERS:
        raise ConfigError(f"unknown --dtype {dtype!r}: expected one of {', '.join(CONVERTERS)}")
    onnx_dir = Path(path).expanduser() / "onnx"
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
