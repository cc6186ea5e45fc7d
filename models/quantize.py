"""`edge-agent models quantize DIR --dtype int8|q4|fp16`: write a suffixed variant of the
fp32 graphs next to them, all four parts, in onnx-community's naming.

- int8: the decoders (decoder_model_merged, also inside its `If` branches, and the fast
  decoder's graphs) with per-row int8 matmuls (models/rowquant.py: int8 weights with a scale per
  output column, activations quantized with a scale per row, never over the batch), and the fast
  decoder's int8 cross-attention keys/values with a scale per row; vision_encoder and encoder_model:
  `quantize_dynamic` (MatMulInteger, Conv kept fp32), embed_tokens' Gather: int8 weights.  No
  activation is quantized with one scale over several rows, as the engine calls the vision
  tower and text encoder one tile / one unpadded row at a time on CPU: a (tile, task) sequence
  gets the same tokens alone as in any batch (tests/test_batch_invariance.py; before issue 11
  `quantize_dynamic` on the decoders made a row's tokens depend on its batch).  With
  `vision_batch`/`encoder_batch` above 1 the vision and encoder stages are not batch-invariant.
  -> `*_int8.onnx`.
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

import functools
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edge_agent.models.errors import ModelDirError, ModelError, ModelSettingError
from edge_agent.models.modeldir import FAST_PARTS, PARTS, external_data, graph_bytes

log = logging.getLogger(__name__)

DTYPES = {"int8": "_int8", "q4": "_q4", "fp16": "_fp16"}
Q4_BLOCK = 32
EXTERNAL_DATA_ABOVE = 1_800_000_000  # bytes; protobuf files cannot exceed 2 GB


def _quantize_int8(src: Path, dst: Path, self_kv=None) -> None:
    """The decoders: per-row int8 matmuls (models/rowquant.py), no activation quantized over the
    batch; until session 11 weight-only 8-bit MatMulNBits, whose CPU kernels cost a matrix-vector
    product per row (base decode step of 6 / 12 rows: 7.8-8.7 -> 5.7-7.1 / 18.7-18.8 -> 11.9-13.0 ms
    with float self-attention caches; benchmarks/frame-results.md, session 11).  The
    vision tower and the text encoder: dynamic int8 (MatMulInteger), 2.2x faster there (they are
    compute-bound; base, one tile / one 590-token row: vision 12-16 vs 23-29 s, encoder 0.9-1.0 vs
    2.1-2.5 s at load 15-17) and batch-invariant as the engine calls them on CPU: one tile, one
    unpadded row per call (models/engine.py).  embed_tokens: int8 weights of its Gather."""
    if src.stem in ("vision_encoder", "encoder_model", "embed_tokens"):
        _quantize_dynamic(src, dst)
    else:
        _quantize_rows(src, dst, self_kv)


def _quantize_rows(src: Path, dst: Path, self_kv=None) -> None:
    """models/rowquant.py on the decoders; the fast decoder's graphs get int8 cross-attention
    keys/values first, and decoder_step int8 self-attention caches when self_kv holds their scales
    (models/export_step.py; _self_kv_scales)."""
    import onnx

    from edge_agent.models.rowquant import quantize_rows

    model = _int8_kv_model(onnx.load(str(src)), src.stem)
    if src.stem == "decoder_step" and self_kv is not None:
        from edge_agent.models.export_step import int8_self_kv_step

        model = int8_self_kv_step(model, *self_kv)
    model = quantize_rows(model)
    big = _big(src)
    onnx.save(model, str(dst), save_as_external_data=big, location=external_data(dst).name if big else None)


def _quantize_dynamic(src: Path, dst: Path) -> None:
    """onnxruntime `quantize_dynamic`: int8 weights, activations quantized at run time with one
    scale per tensor, i.e. over the whole batch (so a row's result depends on the other rows:
    edge-agent's int8 before issue 11, kept for benchmarks/frame.py's comparison)."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    # Conv (and the Transposes next to it) stays fp32: ORT's ConvInteger is ~10x slower than its
    # fp32 Conv on x86 (Florence-2-base vision tower: 2.2 s vs 0.22 s per tile), while int8
    # MatMul is 3.4x faster there (benchmarks/frame-results.md).
    ops = [op for op in IntegerOpsRegistry if op not in ("Conv", "Transpose")]
    start = _prepared(src, dst)
    try:
        quantize_dynamic(start, dst, weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                         extra_options={"EnableSubgraph": True, "DefaultTensorType": TensorProto.FLOAT},
                         use_external_data_format=_big(src))  # DefaultTensorType: com.microsoft ops' outputs
    finally:
        if start != src:
            start.unlink(missing_ok=True)
            external_data(start).unlink(missing_ok=True)  # a big graph's weights beside it


def _quantize_q4(src: Path, dst: Path) -> None:
    _quantize_nbits(src, dst, bits=4)


def _quantize_nbits(src: Path, dst: Path, bits: int) -> None:
    """Block-wise (block 32, symmetric) weights with onnxruntime's `MatMulNBitsQuantizer`:
    MatMul -> MatMulNBits; accuracy_level=4 lets CPUs with int8 dot products use them, with
    activations quantized per row and block (never across rows).  bits=8: the int8 decoders until
    session 11 (benchmarks/frame.py's contender int8-nbits), with the fast decoder's int8
    cross-attention keys/values first (models/export_step.py)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # Quantizing Gather makes the quantizer lift the opset to 21, which breaks older ops
    # such as ReduceMean(axes=...) in the other graphs; the embedding graph is a bare Gather.
    ops = ("MatMul", "Gather") if src.stem == "embed_tokens" and bits == 4 else ("MatMul",)
    model = onnx.load(str(src))
    if bits == 8:
        model = _int8_kv_model(model, src.stem)
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=Q4_BLOCK,
                             is_symmetric=True, accuracy_level=4, op_types_to_quantize=ops)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=_big(src))


def _convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    big = _big(src)
    onnx.save(model, str(dst), save_as_external_data=big, location=external_data(dst).name if big else None)


def _self_kv_scales(model_dir: Path, calibration):
    """(key scales, value scales) for int8's self-attention caches, measured on the folder's fp32
    graphs (models/calibrate.py; `calibration`: images, or None for calibrate's stand-in); None,
    with a warning, where they cannot be measured: the caches then stay float32."""
    from edge_agent.models.calibrate import self_kv_scales

    try:
        return self_kv_scales(model_dir, calibration)
    except ModelError as exc:
        log.warning("decoder_step_int8: self-attention caches stay float32: %s", exc)
        return None


def _int8_kv_model(model, part: str):
    """The fast decoder's graphs with int8 cross-attention keys/values (per-row scales,
    models/export_step.py); other parts unchanged."""
    from edge_agent.models.export_step import int8_cross_kv_graph, int8_cross_kv_step

    edit = {"decoder_cross_kv": int8_cross_kv_graph, "decoder_step": int8_cross_kv_step}.get(part)
    return model if edit is None else edit(model)


def _prepared(src: Path, dst: Path) -> Path:
    """The graph quantize_dynamic starts from, written beside dst: the fast decoder's int8 keys/values
    (_int8_kv_model) and weights read through Identity nodes read directly (_direct_weights); src
    itself where neither changes anything."""
    import onnx

    model = onnx.load(str(src))
    edited = _direct_weights(model) + (src.stem in FAST_PARTS)
    if not edited:
        return src
    tmp = dst.with_name(dst.stem + "_prep.onnx")
    onnx.save(_int8_kv_model(model, src.stem), str(tmp), save_as_external_data=_big(src),
              location=external_data(tmp).name if _big(src) else None)
    return tmp


def _direct_weights(model) -> int:
    """torch's exporter hands a weight used by several nodes (the vision tower's chunked MLPs and
    window attention, models/export_wrappers.py) to all but one through an Identity node, and
    quantize_dynamic leaves a MatMul whose weight is not an initializer in fp32: 24 MatMuls of the
    base vision tower, the first stage's MLP chunks among them.  Point such consumers at the
    initializer itself; returns how many Identity nodes went."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    if not alias:
        return 0
    keep = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in keep:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(keep)
    return len(alias)


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
    from edge_agent.models.export import map_weights, same_mode

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
        if isinstance(exc, ModelError):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelDirError(f"{src}: {type(exc).__name__} while converting: {first}") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def quantize_dir(path, dtype: str, parts=None, calibration=None) -> list[Path]:
    """Write the `dtype` variant of the fp32 graphs in DIR/onnx; returns the files written.
    parts=None: the four onnx-community parts, plus the fast decoder's when present.
    calibration: images (HxWx3 uint8) for int8's self-attention cache scales (models/calibrate.py);
    None: calibrate's drawn stand-in."""
    if dtype not in CONVERTERS:
        raise ModelSettingError(f"unknown --dtype {dtype!r}: expected one of {', '.join(CONVERTERS)}")
    onnx_dir = Path(path).expanduser() / "onnx"
    if parts is None:
        parts = PARTS + tuple(p for p in FAST_PARTS if (onnx_dir / f"{p}.onnx").is_file())
    sources = [onnx_dir / f"{part}.onnx" for part in parts]
    for src in sources:
        if not src.is_file():
            raise ModelDirError(f"{src}: file missing (quantize starts from the fp32 graphs)")
    written = []
    for part, src in zip(parts, sources):
        dst = onnx_dir / f"{part}{DTYPES[dtype]}.onnx"
        log.info("%s -> %s", src.name, dst.name)
        convert = CONVERTERS[dtype]
        if dtype == "int8" and part == "decoder_step":  # measured outside _quiet, which mutes warnings
            convert = functools.partial(convert, self_kv=_self_kv_scales(onnx_dir.parent, calibration))
        _convert_one(convert, src, dst)
        written.append(dst)
    return written
