"""An fp32 copy of a q4-only model folder (the bundled demo model), for agreement measurements.

    python benchmarks/demo_fp32.py OUT [--model edge_agent/demo/shelf-florence2]
    python benchmarks/agreement.py OUT --variants int8 --image edge_agent/demo/synthetic/shelf.jpg

The bundled demo model (issue 16) ships only its q4 graphs; its fp32 training output was not kept.
This writes OUT with the q4 weights dequantized into plain fp32 graphs (MatMulNBits -> MatMul,
GatherBlockQuantized -> Gather): a model that sees, whose fp32 variant is exactly q4's weights,
so `models quantize OUT --dtype int8` and benchmarks/agreement.py can measure how closely int8
follows fp32 on it.  It is not the model as trained: the 4-bit rounding is baked into the weights.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def nbits_weight(packed: np.ndarray, scales: np.ndarray, k: int, block: int) -> np.ndarray:
    """MatMulNBits' 4-bit [N, blocks, block/2] uint8 (low nibble first, zero point 8) -> [K, N]."""
    n, blocks, _ = packed.shape
    q = np.empty((n, blocks, block), np.int16)
    q[:, :, 0::2] = packed & 0x0F
    q[:, :, 1::2] = packed >> 4
    w = (q - 8).astype(np.float32) * scales.reshape(n, blocks, 1)
    return np.ascontiguousarray(w.reshape(n, blocks * block)[:, :k].T)


def dequantize(src: Path, dst: Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    added, nodes = [], []

    def rewrite(graph):
        out = []
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == attr.GRAPH:
                    rewrite(attr.g)
            a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            if node.op_type == "MatMulNBits":
                assert a["bits"] == 4 and len(node.input) == 3, node.name
                w = nbits_weight(numpy_helper.to_array(inits[node.input[1]]),
                                 numpy_helper.to_array(inits[node.input[2]]), a["K"], a["block_size"])
                name = node.input[1] + "_fp32"
                added.append(numpy_helper.from_array(w, name))
                out.append(helper.make_node("MatMul", [node.input[0], name], list(node.output), name=node.name))
            elif node.op_type == "GatherBlockQuantized":
                q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)  # int4, unpacked
                s = numpy_helper.to_array(inits[node.input[2]])
                w = q * np.repeat(s, a["block_size"], axis=1)[:, :q.shape[1]]
                name = node.input[0] + "_fp32"
                added.append(numpy_helper.from_array(w.astype(np.float32), name))
                out.append(helper.make_node("Gather", [name, node.input[1]], list(node.output), name=node.name))
            else:
                out.append(node)
        del graph.node[:]
        graph.node.extend(out)

    rewrite(model.graph)
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + added)
    onnx.save(model, str(dst))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--model", default=str(ROOT / "edge_agent" / "demo" / "shelf-florence2"))
    args = p.parse_args(argv)
    src, out = Path(args.model), Path(args.out)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    for g in sorted((src / "onnx").glob("*_q4.onnx")):
        dst = out / "onnx" / g.name.replace("_q4.onnx", ".onnx")
        dequantize(g, dst)
        print(f"{g.name} -> {dst}")
    from edge_agent.models.export import map_weights

    map_weights(out / "onnx" / "embed_tokens.onnx")  # the embedding table to external data, as export writes it
    return 0


if __name__ == "__main__":
    sys.exit(main())
