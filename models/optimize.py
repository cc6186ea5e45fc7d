"""`edge-agent models optimize DIR`: edge-agent's fast decoder (decoder_cross_kv, decoder_step,
models/export_step.py) built from a downloaded folder's fp32 `decoder_model_merged`, with numpy
and onnx only (no torch, no checkpoint).

The weights are found by the merged graph's structure, not by tensor names (exporters name them
differently): in its first-step branch (the one that computes the cross-attention keys/values),

- every MatMul whose second input is a constant 2-D tensor is a linear layer; its bias is the
  constant 1-D operand of the Add that consumes its output;
- the layers whose output reaches `present.{i}.decoder.key/value` (through Add, Reshape,
  Transpose) are layer i's self-attention k and v; `present.{i}.encoder.key/value`: its
  cross-attention k and v;
- the others are, in the graph's node order (a topological order, and each depends on the one
  before): per layer q, out, cross q, cross out, fc1, fc2; then lm_head (the widest);
- LayerNormalization nodes (or the ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add chain an
  older opset exports), in node order: layernorm_embedding, then per layer self, cross, final;
- the learned positions: the constant 2-D table a Gather reads, D wide;
- the head count: config.json's text_config.decoder_attention_heads.

Before anything is written, the fast graphs' first-step logits are checked against the merged
graph's on the same random inputs (ONNX Runtime, both fp32).  Then the fp32 graphs are written,
and the project's int8 ones (models/quantize.py) when the folder has an int8 variant or when
asked.

Then each dynamically quantized vision encoder of the folder (onnx-community's `_int8`, `_uint8`,
`_quantized`) gets its depthwise convolutions back in fp32 (models/dwconv.py), in place: the
rewritten graph's features are checked against the download's on one random image first
(VISION_RTOL), and a graph with none is left as it is, so running optimize twice changes nothing.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edge_agent.models.errors import ModelDirError

log = logging.getLogger(__name__)

PRESENT = re.compile(r"present\.(\d+)\.(decoder|encoder)\.(key|value)$")
PASS_THROUGH = ("Add", "Reshape", "Transpose", "Identity", "Cast")
PARITY_RTOL = 1e-3  # max |logit difference| / max |logit|: both sides are fp32 ORT
# relative L2 distance allowed between a vision encoder's features before and after models/dwconv.py:
# the download's own 8-bit rounding puts it 3-5% from fp32 (base, random weights), a wrong weight,
# scale or bias 100% or more
VISION_RTOL = 0.25


class _Graph:
    """One graph (the first-step branch) with constants resolvable from it and its parent."""

    def __init__(self, graph, parent_consts: dict):
        from onnx import numpy_helper

        self.nodes = list(graph.node)
        self.consts = dict(parent_consts)
        self.consts.update({t.name: t for t in graph.initializer})
        for n in self.nodes:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = a.t
        self._to_array = numpy_helper.to_array
        self.alias = {n.output[0]: n.input[0] for n in self.nodes if n.op_type == "Identity"}
        self.consumers: dict[str, list] = {}
        for idx, n in enumerate(self.nodes):
            for i in n.input:
                self.consumers.setdefault(i, []).append((idx, n))
        self.outputs = [o.name for o in graph.output]

    def const(self, name: str):
        for _ in range(8):  # through Identity nodes (a branch's view of an outer initializer)
            if name in self.consts or name not in self.alias:
                break
            name = self.alias[name]
        t = self.consts.get(name)
        return None if t is None else self._to_array(t)

    def users(self, name: str) -> list:
        return self.consumers.get(name, [])


def _first_step_graph(model) -> _Graph:
    """decoder_model_merged's branch for use_cache_branch=False (it holds every weight), or the
    graph itself for a decoder without the If."""
    outer = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    outer[n.output[0]] = a.t
    for n in model.graph.node:
        if n.op_type == "If":
            branch = next(a.g for a in n.attribute if a.name == "else_branch")
            return _Graph(branch, outer)
    return _Graph(model.graph, {})


def _linears(g: _Graph):
    """[(node index, weight [in, out] as MatMul holds it, bias or None, output name)]."""
    found = []
    for idx, n in enumerate(g.nodes):
        if n.op_type != "MatMul":
            continue
        w = g.const(n.input[1])
        if w is None or w.ndim != 2:
            continue
        out, bias = n.output[0], None
        for _, user in g.users(out):
            if user.op_type == "Add":
                other = [i for i in user.input if i != out]
                b = g.const(other[0]) if other else None
                if b is not None and b.ndim == 1 and b.shape[0] == w.shape[1]:
                    bias, out = b, user.output[0]
                    break
        found.append((idx, w, bias, out))
    return found


def _reaches_present(g: _Graph, name: str, depth: int = 6):
    """(layer, decoder|encoder, key|value) when `name` flows into a present.* output through
    PASS_THROUGH nodes only."""
    outputs = {o: PRESENT.search(o) for o in g.outputs}
    frontier = [name]
    for _ in range(depth):
        for n in frontier:
            m = outputs.get(n)
            if m:
                return int(m.group(1)), m.group(2), m.group(3)
        frontier = [u.output[0] for n in frontier for _, u in g.users(n) if u.op_type in PASS_THROUGH]
    return None


def _norms(g: _Graph):
    """[(node index, weight, bias, eps)] of LayerNormalization nodes and decomposed layer norms."""
    from onnx import helper

    found = []
    for idx, n in enumerate(g.nodes):
        if n.op_type == "LayerNormalization":
            eps = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "epsilon"), 1e-5)
            found.append((idx, g.const(n.input[1]), g.const(n.input[2]) if len(n.input) > 2 else None, float(eps)))
        elif n.op_type == "ReduceMean":
            rec = _decomposed_norm(g, n)
            if rec is not None:
                found.append((idx,) + rec)
    if any(w is None for _, w, _, _ in found):
        raise ValueError("a layer norm's scale is not a constant")
    return found


def _decomposed_norm(g: _Graph, mean_node):
    """ReduceMean(x) -> Sub(x, mean) -> ... Div(d, Sqrt(Add(var, eps))) -> Mul(w) -> Add(b)."""
    x = mean_node.input[0]
    sub = next((u for _, u in g.users(mean_node.output[0]) if u.op_type == "Sub" and u.input[0] == x), None)
    if sub is None:
        return None
    div = next((u for _, u in g.users(sub.output[0]) if u.op_type == "Div"), None)
    if div is None:
        return None
    eps = 1e-5
    sqrt = next((n for n in g.nodes if div.input[1] in n.output), None)
    if sqrt is not None and sqrt.op_type == "Sqrt":
        add = next((n for n in g.nodes if sqrt.input[0] in n.output), None)
        if add is not None and add.op_type == "Add":
            c = [g.const(i) for i in add.input if g.const(i) is not None]
            eps = float(np.asarray(c[0]).reshape(-1)[0]) if c else eps
    mul = next((u for _, u in g.users(div.output[0]) if u.op_type == "Mul"), None)
    if mul is None:
        return None
    w = next((g.const(i) for i in mul.input if g.const(i) is not None), None)
    add = next((u for _, u in g.users(mul.output[0]) if u.op_type == "Add"), None)
    b = next((g.const(i) for i in add.input if g.const(i) is not None), None) if add is not None else None
    return (w, b, eps) if w is not None else None


def weights_from_merged(model, heads: int):
    """DecoderWeights (models/export_step.py) from a decoder_model_merged ModelProto (weights loaded).
    ValueError naming what does not fit."""
    from edge_agent.models.export_step import DecoderWeights, Layer, Linear, Norm

    g = _first_step_graph(model)
    lins = _linears(g)
    roles, rest = {}, []
    for idx, w, b, out in lins:
        hit = _reaches_present(g, out)
        if hit is not None:
            roles[hit] = Linear(np.ascontiguousarray(w.T), b)
        else:
            rest.append((idx, Linear(np.ascontiguousarray(w.T), b)))
    layers = 1 + max((k[0] for k in roles), default=-1)
    if layers == 0 or len(roles) != 4 * layers:
        raise ValueError(f"found {len(roles)} key/value projections reaching present.* outputs, expected 4 per layer")
    rest.sort(key=lambda r: r[0])
    if len(rest) != 6 * layers + 1:
        raise ValueError(f"found {len(rest)} other linear layers, expected {6 * layers + 1} (6 per layer + lm_head)")
    lm_head = rest[-1][1]
    if lm_head.bias is not None:
        raise ValueError("lm_head has a bias (BART's has none)")
    norms = sorted(_norms(g), key=lambda r: r[0])
    if len(norms) != 1 + 3 * layers:
        raise ValueError(f"found {len(norms)} layer norms, expected {1 + 3 * layers}")
    d = lm_head.weight.shape[1]
    positions = [g.const(n.input[0]) for n in g.nodes if n.op_type == "Gather" and g.const(n.input[0]) is not None]
    positions = [p for p in positions if p.ndim == 2 and p.shape[1] == d and p.shape[0] != lm_head.weight.shape[0]]
    if len(positions) != 1:
        raise ValueError(f"found {len(positions)} position tables ([P, {d}] read by a Gather), expected 1")
    if d % heads:
        raise ValueError(f"d_model {d} is not a multiple of {heads} heads")
    norm = [Norm(w.astype(np.float32), (np.zeros_like(w) if b is None else b).astype(np.float32), eps)
            for _, w, b, eps in norms]
    out = []
    for i in range(layers):
        q, o, cq, co, fc1, fc2 = (r[1] for r in rest[6 * i:6 * i + 6])
        out.append(Layer(q=q, k=roles[(i, "decoder", "key")], v=roles[(i, "decoder", "value")], out=o,
                         self_norm=norm[1 + 3 * i], cq=cq, ck=roles[(i, "encoder", "key")],
                         cv=roles[(i, "encoder", "value")], cout=co, cross_norm=norm[2 + 3 * i],
                         fc1=fc1, fc2=fc2, final_norm=norm[3 + 3 * i]))
    return DecoderWeights(heads=heads, positions=positions[0].astype(np.float32), embed_norm=norm[0], layers=out,
                          lm_head=np.ascontiguousarray(lm_head.weight))


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def check_parity(merged_path: Path, cross, step, heads: int, seed: int = 0) -> float:
    """First-step logits of the fast graphs against decoder_model_merged's, on random encoder states
    (2 rows, one padded) and token embeddings; returns max |difference| / max |logit|."""
    import onnxruntime as ort

    from edge_agent.models.runners import BufferedRunner

    so = ort.SessionOptions()
    so.log_severity_level = 3
    merged = ort.InferenceSession(str(merged_path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    d = step.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    rows, seq = 2, 9
    hidden = rng.standard_normal((rows, seq, d)).astype(np.float32)
    mask = np.ones((rows, seq), np.int64)
    mask[1, 6:] = 0
    emb = rng.standard_normal((rows, 1, d)).astype(np.float32)
    feeds = {"inputs_embeds": emb, "encoder_attention_mask": mask, "encoder_hidden_states": hidden,
             "use_cache_branch": np.array([False])}
    for i in merged.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((rows, heads, 0, d // heads), np.float32)
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in merged.get_inputs()}}
    want = merged.run(["logits"], feeds)[0][:, -1]

    class Embed:  # the runner embeds token ids; here token r's embedding is emb[r]
        def run(self, _names, feeds):
            return [emb[feeds["input_ids"][:, 0]]]

    runner = BufferedRunner(Embed(), _session(cross), _session(step))
    got, _ = runner.first(np.arange(rows), hidden, mask, max_length=2)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-9))


def _replace(graph, dst: Path) -> None:
    """Write graph (an onnx ModelProto) aside under dst's name, then move it into place (external
    data first, graph last)."""
    from edge_agent.models.export import save_onnx

    tmp_dir = Path(tempfile.mkdtemp(prefix=".optimize-", dir=dst.parent))
    try:
        save_onnx(graph, tmp_dir / dst.name)
        for f in sorted(tmp_dir.iterdir(), key=lambda f: f.name == dst.name):
            os.replace(f, dst.parent / f.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _features(model_or_path, side: tuple[int, int], seed: int = 0) -> np.ndarray:
    import onnxruntime as ort

    from edge_agent.models.convint import add_conv_overrides

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if isinstance(model_or_path, Path):
        add_conv_overrides(so, model_or_path)
        src = str(model_or_path)
    else:
        src = model_or_path.SerializeToString()
    session = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    dtype = np.float16 if "float16" in feed.type else np.float32
    x = np.random.default_rng(seed).standard_normal((1, 3, *side)).astype(dtype)
    return session.run(None, {feed.name: x})[0].astype(np.float64)


def optimize_vision(path, rtol: float = VISION_RTOL) -> list[Path]:
    """Rewrite DIR/onnx/vision_encoder*.onnx's depthwise ConvInteger as fp32 Conv (models/dwconv.py),
    in place, after checking the features against the graph as it was: relative L2 distance under
    rtol.  Returns the
    files written; ModelDirError naming the file, with nothing written, when the check fails."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from edge_agent.models.dwconv import float_depthwise
    from edge_agent.models.preprocess import PreprocessConfig

    root = Path(path).expanduser()
    side = PreprocessConfig.from_dir(root).size
    written = []
    for src in sorted((root / "onnx").glob("vision_encoder*.onnx")):
        try:
            model = onnx.load(str(src), load_external_data=False)
            before = _external_files(model, src.parent)
            if before:
                load_external_data_for_model(model, str(src.parent))
        except Exception as exc:
            raise ModelDirError(f"{src}: cannot read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        n = float_depthwise(model)
        if not n:
            continue
        want, got = _features(src, side), _features(model, side)
        err = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12))
        if not err < rtol:
            raise ModelDirError(f"{src}: its {n} depthwise convolutions in fp32 change the image features by "
                                f"{err:.1%} (relative L2, limit {rtol:.0%}); nothing written")
        log.info("%s: %d depthwise ConvInteger -> fp32 Conv; features %.2f%% from the graph as it was", src.name, n,
                 100 * err)
        _replace(model, src)
        if before:  # the graph had external data; if it is inline now, its own file (NAME.onnx_data) goes
            now = _external_files(onnx.load(str(src), load_external_data=False), src.parent)
            for stale in before - now:
                if stale.name.startswith(src.name):  # shared by no other graph
                    stale.unlink(missing_ok=True)
        written.append(src)
    return written


def _external_files(model, folder: Path) -> set[Path]:
    """The external-data files that `model` (loaded without its external data) points to."""
    from onnx import TensorProto

    return {folder / e.value for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL
            for e in t.external_data if e.key == "location"}


def optimize_dir(path, int8: bool | None = None) -> list[Path]:
    """Write DIR/onnx/decoder_cross_kv.onnx and decoder_step.onnx from DIR/onnx/decoder_model_merged.onnx,
    then (int8=True, or None and the folder has an _int8 variant) their _int8 versions, then
    optimize_vision.  Returns the files written.  ModelDirError naming the file when a graph does
    not fit."""
    import onnx

    from edge_agent.models.export_step import CROSS_PART, STEP_PART, build_cross_kv, build_step
    from edge_agent.models.modeldir import read_json

    root = Path(path).expanduser()
    src = root / "onnx" / "decoder_model_merged.onnx"
    if not src.is_file():
        raise ModelDirError(f"{src}: file missing (models optimize starts from the fp32 decoder_model_merged)")
    heads = (read_json(root / "config.json").get("text_config") or {}).get("decoder_attention_heads")
    if not isinstance(heads, int) or heads <= 0:
        raise ModelDirError(f"{root / 'config.json'}: text_config.decoder_attention_heads missing")
    try:
        model = onnx.load(str(src))
    except Exception as exc:  # onnx's own decode errors
        raise ModelDirError(f"{src}: cannot read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if any(t.data_type != onnx.TensorProto.FLOAT for t in model.graph.initializer if len(t.dims) == 2):
        raise ModelDirError(f"{src}: not an fp32 graph (models optimize needs the fp32 decoder_model_merged)")
    try:
        w = weights_from_merged(model, heads)
    except ValueError as exc:
        raise ModelDirError(f"{src}: cannot find the decoder weights: {exc}") from None
    del model
    cross, step = build_cross_kv(w), build_step(w)
    err = check_parity(src, cross, step, heads)
    if not err < PARITY_RTOL:
        raise ModelDirError(f"{src}: the fast decoder built from it differs from it (first-step logits, "
                            f"max relative difference {err:.2e}); nothing written")
    log.info("fast decoder matches %s: first-step logits within %.1e", src.name, err)
    out = root / "onnx"
    written = []
    for part, graph in ((CROSS_PART, cross), (STEP_PART, step)):
        _replace(graph, out / f"{part}.onnx")
        written.append(out / f"{part}.onnx")
    if int8 is None:
        int8 = (out / "decoder_model_merged_int8.onnx").is_file()
    if int8:
        from edge_agent.models.quantize import quantize_dir

        written += quantize_dir(root, "int8", parts=(CROSS_PART, STEP_PART))
    return written + optimize_vision(root)

