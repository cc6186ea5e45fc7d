"""The tiny fixture's variants built the way onnx-community builds Florence-2's, for tests.

onnx-community's files come from transformers.js `scripts/quantize.py`, which calls
onnxruntime's own quantizers on each fp32 graph; this module repeats its settings:

| suffix      | transformers.js mode | onnxruntime call |
|-------------|----------------------|------------------|
| _fp16       | fp16  | float16.convert_float_to_float16(keep_io_types=True, its default op block list) |
| _quantized  | q8    | ONNXQuantizer IntegerOps, dynamic, QUInt8 weights if the graph has a Conv else QInt8 |
| _int8       | int8  | the same with QInt8 weights (ConvInteger with int8 weights in the vision encoder) |
| _uint8      | uint8 | the same with QUInt8 weights |
| _q4         | q4    | MatMul4BitsQuantizer(block_size=32, is_symmetric=True, accuracy_level=None) |
| _q4f16      | q4f16 | q4, then fp16 as above |
| _bnb4       | bnb4  | MatMulBnb4Quantizer(block_size=64, quant_type=NF4) |

8-bit modes use activation_qType=QUInt8, per_channel/reduce_range off, and extra options
EnableSubgraph and MatMulConstBOnly, as the script does.  (It also runs onnxslim after fp16,
which only reorders and folds; it is not repeated here.)  The folder holds only the four
onnx-community parts (no fast decoder files), the JSON files and the tokenizer.  Built under
a temporary directory at test time, never committed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
TINY = HERE / "fixtures" / "tiny-florence2"
PARTS = ("vision_encoder", "embed_tokens", "encoder_model", "decoder_model_merged")
MODES = {"_fp16": "fp16", "_quantized": "q8", "_int8": "int8", "_uint8": "uint8", "_q4": "q4", "_q4f16": "q4f16",
         "_bnb4": "bnb4"}
SUFFIXES = ("", *MODES)
QUINT8_OPS = ("Conv", "GroupQueryAttention", "MultiHeadAttention")


def copy_fp32(dst: Path, src: Path = TINY) -> Path:
    """The fixture's JSON, tokenizer and four fp32 graphs (with external data) into dst."""
    (dst / "onnx").mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt"):
            shutil.copy(f, dst / f.name)
    for part in PARTS:
        for f in (src / "onnx").glob(f"{part}.onnx*"):
            shutil.copy(f, dst / "onnx" / f.name)
    return dst


def _operators(model) -> set[str]:
    import onnx

    ops = set()

    def walk(graph):
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(model.graph)
    return ops


def _q8(model, weight_type):
    from onnxruntime.quantization import QuantizationMode, QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    q = ONNXQuantizer(model, False, False, mode=QuantizationMode.IntegerOps, static=False, weight_qType=weight_type,
                      activation_qType=QuantType.QUInt8, tensors_range=None, nodes_to_quantize=[],
                      nodes_to_exclude=[], op_types_to_quantize=set(IntegerOpsRegistry.keys()),
                      extra_options={"EnableSubgraph": True, "MatMulConstBOnly": True})
    q.quantize_model()
    return q.model.model


def _fp16(model):
    from onnxruntime.transformers import float16

    return float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False,
                                            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST))


def _q4(model):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=True, accuracy_level=None)
    q.process()
    return q.model.model


def _bnb4(model):
    from onnxruntime.quantization.matmul_bnb4_quantizer import MatMulBnb4Quantizer

    q = MatMulBnb4Quantizer(model, quant_type=MatMulBnb4Quantizer.NF4, block_size=64)
    q.process()
    return q.model.model


def quantize(model, mode: str):
    from onnxruntime.quantization import QuantType

    if mode == "fp16":
        return _fp16(model)
    if mode == "q4":
        return _q4(model)
    if mode == "q4f16":
        return _fp16(_q4(model))
    if mode == "bnb4":
        return _bnb4(model)
    if mode == "q8":
        quint = any(op in QUINT8_OPS for op in _operators(model))
        return _q8(model, QuantType.QUInt8 if quint else QuantType.QInt8)
    return _q8(model, QuantType.QInt8 if mode == "int8" else QuantType.QUInt8)


def build(dst: Path, suffixes=tuple(MODES)) -> Path:
    """dst with the fp32 parts and each of `suffixes` built from them (a graph is written inline)."""
    import onnx

    copy_fp32(dst)
    for part in PARTS:
        src = dst / "onnx" / f"{part}.onnx"
        for suffix in suffixes:
            out = dst / "onnx" / f"{part}{suffix}.onnx"
            if not out.is_file():
                model = quantize(onnx.load(str(src)), MODES[suffix])
                onnx.save(model, str(out))
    return dst
