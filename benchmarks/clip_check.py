"""Do a variant's u8 x s8 matmuls clip on this CPU, and what does it cost against fp32?

    python benchmarks/clip_check.py MODEL_DIR [--variant _int8] [--image IMG] [--tile 768]

On x86 without VNNI or AMX, ONNX Runtime multiplies uint8 activations by int8 weights with
VPMADDUBSW, which adds each pair of products into a saturating int16 (models/cpu.py).  This
checks the graphs that onnxruntime's `quantize_dynamic` writes (`vision_encoder` and
`encoder_model` of onnx-community's `_int8` and of edge-agent's own): each is run as written
and as its *exact twin*, the same graph with every int8 MatMulInteger/ConvInteger weight and its
zero point moved to uint8 (+128, the sign bit flipped), whose u8 x u8 kernels cannot clip.
On one tile of the image (default: the sample shelf) it prints each graph's relative L2 error
against fp32 as written and as the twin, and how far apart the two are; and, from the weights
alone, the share of adjacent weight pairs (the pairs VPMADDUBSW adds) that can clip at all:
same sign and |w1| + |w2| > 128, so that two activations near 255 push the pair past 32767.

Read the twin column against the last one: the graph as written on its input scaled by
(1 + 1e-6).  Any change, however small, moves some activations across a rounding boundary of the
next dynamic quantization, and those re-drawn roundings spread; so two int8 runs that differ at
all differ by about that much.  Clipping costs something only where the twin is nearer fp32.

The per-row int8 decoders (models/rowquant.py) are not checked here: the engine loads them with
7-bit activations on such a CPU (models/rowscale.py; benchmarks/agreement.py measures them).
Needs the `onnx` package.  Not a test; no timings.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from agreement import DEFAULT_IMAGE, load_tiles, rel_error  # noqa: E402

from edge_agent.models.cpu import int8_isa, u8s8_saturates  # noqa: E402
from edge_agent.models.preprocess import PreprocessConfig, preprocess  # noqa: E402

INTEGER_OPS = ("MatMulInteger", "ConvInteger")


def exact_twin(model):
    """The model with each int8 weight of MatMulInteger/ConvInteger (input 1) as uint8 + 128 and
    its zero point (input 3, added where missing) moved with it: the same integers, no u8 x s8."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    moved: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in INTEGER_OPS or node.input[1] not in inits \
                or inits[node.input[1]].data_type != TensorProto.INT8:
            continue
        ins = list(node.input) + [""] * (4 - len(node.input))
        for i in (1, 3):
            name = ins[i]
            zero = np.array(0, np.int8) if not name else numpy_helper.to_array(inits[name])
            key = name or f"{node.name}_zero"
            if key not in moved:
                moved[key] = f"{key}_u8"
                model.graph.initializer.append(numpy_helper.from_array(zero.view(np.uint8) ^ np.uint8(0x80), moved[key]))
            ins[i] = moved[key]
        del node.input[:]
        node.input.extend(ins)
    return model


def clip_prone_pairs(model) -> tuple[int, int]:
    """(adjacent same-sign weight pairs along the reduced axis with |w1| + |w2| > 128, all pairs)
    over the int8 weights of MatMulInteger ([K, N]) and ConvInteger ([M, C, kh, kw])."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    prone = total = 0
    for name in {n.input[1] for n in model.graph.node if n.op_type in INTEGER_OPS and n.input[1] in inits}:
        if inits[name].data_type != TensorProto.INT8:
            continue
        w = numpy_helper.to_array(inits[name]).astype(np.int32)
        w = w if w.ndim == 2 else w.reshape(w.shape[0], -1).T  # reduced axis first
        k = w.shape[0] - w.shape[0] % 2
        a, b = w[0:k:2], w[1:k:2]
        prone += int(((np.sign(a) == np.sign(b)) & (np.abs(a) + np.abs(b) > 128)).sum())
        total += a.size
    return prone, total


def session(path_or_bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes), so,
                                providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    import onnx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--variant", default="_int8", help="the graphs' suffix (default _int8)")
    ap.add_argument("--image", default=str(DEFAULT_IMAGE))
    ap.add_argument("--tile", type=int, default=0, help="tile side (default: the model's input side)")
    a = ap.parse_args(argv)
    onnx_dir = Path(a.model) / "onnx"
    cfg = PreprocessConfig.from_dir(Path(a.model))
    side = a.tile or int(cfg.size[0])
    pixels = preprocess(load_tiles(Path(a.image), side, 1), cfg)
    print(f"model {a.model}, variant {a.variant}, one tile of {side} from {a.image}; int8 instructions: {int8_isa()}; "
          f"u8 x s8 pairs {'saturate' if u8s8_saturates() else 'do not saturate'} on this CPU")
    print("| graph | weight pairs that can clip | error vs fp32, as written | exact twin | as written vs twin "
          "| as written vs itself, input x (1 + 1e-6) |")
    print("|---|---|---|---|---|---|")
    ref_features = session(onnx_dir / "vision_encoder.onnx").run(None, {"pixel_values": pixels})[0]
    prompt = np.array([[0, 2264, 16, 5, 2788, 11, 5, 2274, 116, 2]], np.int64)  # "What is the text in the image?"
    embeds = session(onnx_dir / "embed_tokens.onnx").run(None, {"input_ids": prompt})[0]
    x = np.concatenate([ref_features, embeds], 1).astype(np.float32)
    feeds = {"vision_encoder": {"pixel_values": pixels},
             "encoder_model": {"inputs_embeds": x, "attention_mask": np.ones(x.shape[:2], np.int64)}}
    for part, feed in feeds.items():
        path = onnx_dir / f"{part}{a.variant}.onnx"
        if not path.is_file():
            print(f"| {part} | {path.name} missing | | | | |")
            continue
        model = onnx.load(str(path))
        prone, total = clip_prone_pairs(model)
        with tempfile.TemporaryDirectory() as tmp:  # a big graph's weights may not fit in one protobuf
            twin_path = Path(tmp) / path.name
            onnx.save(exact_twin(model), str(twin_path))
            del model
            twin = session(twin_path).run(None, feed)[0]
        ref = session(onnx_dir / f"{part}.onnx").run(None, feed)[0]
        written = session(path)
        got = written.run(None, feed)[0]
        nudged = written.run(None, {k: v * np.float32(1 + 1e-6) if v.dtype == np.float32 else v
                                    for k, v in feed.items()})[0]
        print(f"| {part}{a.variant} | {prone} of {total} ({100 * prone / max(total, 1):.3f}%) "
              f"| {100 * rel_error(ref, got):.4f}% | {100 * rel_error(ref, twin):.4f}% | {100 * rel_error(twin, got):.4f}% "
              f"| {100 * rel_error(got, nudged):.4f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
