"""`edge-agent models verify`: files, tensor names, dtypes, shapes, vocabulary fit, and that
the installed ONNX Runtime can load every graph.

The expected interface is onnx-community's Florence-2 layout (see models/modeldir.py).
Graphs are read with models/onnxmeta.py (no weights loaded, no `onnx` package: verify runs
on the runtime install); external-data files must hold every byte their graph's tensors
claim; then an ONNX Runtime session is created for each graph, so that an operator the
installed onnxruntime lacks (e.g. ConvInteger before 1.24) fails here, not in the service.
The first problem raises ModelDirError with one line naming the file; otherwise the report
lines are returned.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_agent.models.errors import ModelDirError
from edge_agent.models.modeldir import (FAST_PARTS, PARTS, ModelDir, auto_order, open_model_dir, part_file, part_suffixes,
                             read_mix)
from edge_agent.models.onnxmeta import DTYPE_NAMES, GraphMeta, OnnxFormatError, TensorInfo, missing_external_data, read_graph_meta
from edge_agent.models.variants import label

FLOAT, INT8, INT32, INT64, BOOL, FLOAT16 = 1, 3, 6, 7, 9, 10
FLOATS = (FLOAT, FLOAT16)
KV_KINDS = ("decoder.key", "decoder.value", "encoder.key", "encoder.value")


@dataclass(frozen=True)
class Spec:
    """One expected tensor: allowed dtypes and rank; `dims` maps axis -> required static size."""
    dtypes: tuple[int, ...]
    rank: int
    dims: tuple[tuple[int, int | None], ...] = ()


@dataclass(frozen=True)
class Expect:
    d_model: int | None
    layers: int | None
    height: int
    width: int
    heads: int | None = None


def part_specs(part: str, e: Expect, layers: int, int8_kv: bool = False) -> tuple[dict[str, Spec], dict[str, Spec]]:
    """(inputs, outputs) expected for one part.  Inputs must match exactly; outputs must include these."""
    hidden = Spec(FLOATS, 3, ((2, e.d_model),))
    if part == "vision_encoder":
        return ({"pixel_values": Spec(FLOATS, 4, ((1, 3), (2, e.height), (3, e.width)))},
                {"image_features": hidden})
    if part == "embed_tokens":
        return {"input_ids": Spec((INT64,), 2)}, {"inputs_embeds": hidden}
    if part == "encoder_model":
        return ({"inputs_embeds": hidden, "attention_mask": Spec((INT64,), 2)},
                {"last_hidden_state": hidden})
    head_dim = e.d_model // e.heads if e.d_model and e.heads else None
    kv = Spec(FLOATS, 4, ((1, e.heads), (3, head_dim)))
    if part in FAST_PARTS:
        return _fast_specs(part, e, layers, hidden, head_dim, int8_kv)
    inputs = {"inputs_embeds": hidden, "encoder_attention_mask": Spec((INT64,), 2),
              "encoder_hidden_states": hidden, "use_cache_branch": Spec((BOOL,), 1)}
    outputs = {"logits": Spec(FLOATS, 3)}
    for i in range(layers):
        for kind in KV_KINDS:
            inputs[f"past_key_values.{i}.{kind}"] = kv
            outputs[f"present.{i}.{kind}"] = kv
    return inputs, outputs


def _fast_specs(part: str, e: Expect, layers: int, hidden: Spec, head_dim: int | None, int8: bool):
    """edge-agent's fast decoder (models/export_step.py): cross keys/values [B,H,S+1,Dh], float32, or
    int8 with per-row scales [B,H,1,Dh] computed over the attended positions (encoder_attention_mask);
    self-attention buffers [B,H,L,Dh]."""
    kv = Spec((INT8,) if int8 else (FLOAT,), 4, ((1, e.heads), (3, head_dim)))
    cross = {}
    for i in range(layers):
        for name in ("key", "value"):
            cross[f"cross.{i}.{name}"] = kv
            if int8:
                cross[f"cross.{i}.{name}_scale"] = Spec((FLOAT,), 4, ((1, e.heads), (3, head_dim)))
    if part == "decoder_cross_kv":
        mask = {"encoder_attention_mask": Spec((INT64,), 2)} if int8 else {}
        return {"encoder_hidden_states": hidden, **mask}, cross
    # the self-attention buffers: float32, or in the int8 variant int8 with fixed scales inside the
    # graph (export_step.int8_self_kv_step; float32 where quantize had no fp32 graphs to calibrate on)
    buf = Spec((FLOAT, INT8) if int8 else (FLOAT,), 4, ((1, e.heads), (3, head_dim)))
    inputs = {"inputs_embeds": hidden, "encoder_attention_mask": Spec((INT64,), 2),
              "seqlens_k": Spec((INT32,), 1), "total_sequence_length": Spec((INT32,), 0), **cross}
    outputs = {"logits": Spec((FLOAT,), 3)}
    for i in range(layers):
        for name in ("key", "value"):
            inputs[f"past_key_values.{i}.decoder.{name}"] = buf
            outputs[f"present.{i}.decoder.{name}"] = buf
            outputs[f"present.{i}.cross.{name}"] = kv
    return inputs, outputs


def _dtype_names(dtypes) -> str:
    return "/".join(DTYPE_NAMES.get(d, str(d)) for d in dtypes)


def _check_tensor(file: Path, io: str, t: TensorInfo, spec: Spec) -> None:
    if t.elem_type not in spec.dtypes:
        raise ModelDirError(f"{file}: {io} {t.describe()} has the wrong dtype, expected {_dtype_names(spec.dtypes)}")
    if len(t.shape) != spec.rank:
        raise ModelDirError(f"{file}: {io} {t.describe()} has rank {len(t.shape)}, expected {spec.rank}")
    for axis, size in spec.dims:
        got = t.shape[axis]
        if size is not None and isinstance(got, int) and got != size:
            raise ModelDirError(f"{file}: {io} {t.describe()} has size {got} on axis {axis}, expected {size}")


def _decoder_layers(meta: GraphMeta, e: Expect) -> int:
    if e.layers is not None:
        return e.layers
    idx = [int(t.name.split(".")[1]) for t in list(meta.inputs) + list(meta.outputs)
           if t.name.startswith(("past_key_values.", "cross.")) and t.name.split(".")[1].isdigit()]
    return max(idx) + 1 if idx else 0


def check_graph(file: Path, part: str, meta: GraphMeta, e: Expect) -> str:
    layers = _decoder_layers(meta, e) if part in ("decoder_model_merged",) + FAST_PARTS else 0
    int8_kv = any(t.name.startswith("cross.") and t.elem_type == INT8 for t in list(meta.inputs) + list(meta.outputs))
    want_in, want_out = part_specs(part, e, layers, int8_kv)
    got_in = {t.name: t for t in meta.inputs if t.name not in meta.initializers}
    missing = [n for n in want_in if n not in got_in]
    if missing:
        raise ModelDirError(f"{file}: missing input {missing[0]!r} (inputs: {', '.join(got_in) or 'none'})")
    extra = [n for n in got_in if n not in want_in]
    if extra:
        raise ModelDirError(f"{file}: unexpected input {extra[0]!r}")
    got_out = {t.name: t for t in meta.outputs}
    missing = [n for n in want_out if n not in got_out]
    if missing:
        raise ModelDirError(f"{file}: missing output {missing[0]!r} (outputs: {', '.join(got_out) or 'none'})")
    for name, spec in want_in.items():
        _check_tensor(file, "input", got_in[name], spec)
    for name, spec in want_out.items():
        _check_tensor(file, "output", got_out[name], spec)
    if part == "decoder_model_merged" or part == "decoder_step":
        return f"ok {file.name}: {layers} decoder layers, {got_out['logits'].describe()}"
    if part == "decoder_cross_kv":
        return f"ok {file.name}: {layers} layers of cross-attention keys/values ({'int8' if int8_kv else 'float'})"
    ins = " ".join(got_in[n].describe() for n in want_in)
    outs = " ".join(got_out[n].describe() for n in want_out)
    return f"ok {file.name}: {ins} -> {outs}"


def _resolve_table(meta: GraphMeta, name: str, depth: int = 0):
    if name in meta.initializers or depth > 4:
        return meta.initializers.get(name)
    for node in meta.nodes:
        if name in node.output and node.op_type in ("DequantizeLinear", "Cast", "Identity", "Reshape") and node.input:
            return _resolve_table(meta, node.input[0], depth + 1)
    return None


def embedding_rows(file: Path, meta: GraphMeta) -> int:
    """Rows of the token embedding table: data input of the Gather that reads input_ids."""
    for node in meta.nodes:
        if node.op_type in ("Gather", "GatherBlockQuantized") and len(node.input) >= 2:
            table = _resolve_table(meta, node.input[0])
            if table is not None and len(table[1]) >= 2:
                return int(table[1][0])
    raise ModelDirError(f"{file}: cannot find the token embedding table (no Gather over an initializer)")


def _expect(md: ModelDir) -> Expect:
    tc = md.text_config()
    pp = md.preprocess_config()
    d = tc.get("d_model", tc.get("hidden_size"))
    layers = tc.get("decoder_layers")
    heads = tc.get("decoder_attention_heads")
    as_int = lambda v: v if isinstance(v, int) and v > 0 else None  # noqa: E731
    return Expect(as_int(d), as_int(layers), pp.size[0], pp.size[1], as_int(heads))


def _read(file: Path) -> GraphMeta:
    if not file.is_file():
        raise ModelDirError(f"{file}: file missing")
    try:
        meta = read_graph_meta(file)
    except (OSError, OnnxFormatError) as exc:
        raise ModelDirError(f"{file}: cannot read ONNX graph: {exc}") from None
    problem = missing_external_data(file, meta)
    if problem:
        raise ModelDirError(f"{file}: {problem}")
    return meta


def check_session(file: Path) -> None:
    """Create the graph's ONNX Runtime session (CPU, full graph optimisation, as the engine does):
    an operator this onnxruntime lacks, or weights it cannot read, fail here."""
    import onnxruntime as ort

    from edge_agent.models.convint import add_conv_overrides

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        add_conv_overrides(so, file)  # as the engine loads it (models/convint.py)
        session = ort.InferenceSession(str(file), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelDirError(f"{file}: onnxruntime {ort.__version__} cannot load it: {first}") from None
    del session


def _check_vocab_file(md: ModelDir, part: str, file: Path, meta: GraphMeta, n_tok: int) -> str | None:
    """The embedding table's rows (embed_tokens) and the logits' classes (decoders) against the
    tokenizer and config.json."""
    if part == "embed_tokens":
        rows = embedding_rows(file, meta)
        if n_tok > rows:
            raise ModelDirError(f"{file}: tokenizer has {n_tok} tokens but the embedding table has only {rows} rows")
        cfg_vocab = md.text_config().get("vocab_size")
        if isinstance(cfg_vocab, int) and cfg_vocab != rows:
            raise ModelDirError(f"{file}: embedding table has {rows} rows but config.json says vocab_size={cfg_vocab}")
        return f"ok vocabulary of {file.name}: tokenizer {n_tok} <= embedding rows {rows}"
    if part in ("decoder_model_merged", "decoder_step"):
        logits = {t.name: t for t in meta.outputs}["logits"]
        v = logits.shape[2]
        if isinstance(v, int) and v < n_tok:
            raise ModelDirError(f"{file}: logits have {v} classes, fewer than the tokenizer's {n_tok}")
    return None


def verify_graph(md: ModelDir, part: str, file: Path, e: Expect, n_tok: int, session: bool = True) -> list[str]:
    meta = _read(file)
    lines = [check_graph(file, part, meta, e)]
    vocab = _check_vocab_file(md, part, file, meta, n_tok)
    if vocab:
        lines.append(vocab)
    if session:
        check_session(file)
    return lines


def _fast_files(md: ModelDir, suffix: str) -> list[str]:
    """The fast decoder's two graphs with `suffix`, both or neither."""
    fast = {p: part_file(md.path, p, suffix) for p in FAST_PARTS}
    present = [p for p, f in fast.items() if f.is_file()]
    if present and len(present) < len(FAST_PARTS):
        missing = next(f for f in fast.values() if not f.is_file())
        raise ModelDirError(f"{missing}: file missing (the fast decoder needs {' and '.join(FAST_PARTS)})")
    return present


def verify_dir(path, variant=None, session: bool = True) -> list[str]:
    """Without `variant`: every graph file in DIR/onnx; with one (a suffix or a mix): those four
    graphs (and the fast decoder beside that decoder).  session=False skips the ORT sessions."""
    md = open_model_dir(path, read_mix(variant)) if variant is not None else _open_any(path)
    pp_file = md.path / "preprocessor_config.json"
    if not pp_file.is_file():
        raise ModelDirError(f"{pp_file}: file missing")
    e = _expect(md)
    tok = md.load_tokenizer()
    tok_src = md.path if md.has_tokenizer() else "bundled tokenizer (none in the directory)"
    lines = [f"model dir {md.path}", f"ok tokenizer: {len(tok)} tokens from {tok_src}",
             f"ok preprocessor: {e.height}x{e.width}"]
    if variant is not None:
        chosen = {p: [md.mix[p]] for p in PARTS}
    else:
        chosen = {p: part_suffixes(md.path, p) for p in PARTS}
    count = 0
    for part in PARTS:
        for s in chosen[part]:
            f = part_file(md.path, part, s)
            lines += verify_graph(md, part, f, e, len(tok), session)
            count += 1
    for s in chosen["decoder_model_merged"]:
        fast = _fast_files(md, s)
        for part in fast:
            f = part_file(md.path, part, s)
            lines += verify_graph(md, part, f, e, len(tok), session)
            count += 1
        if not fast:
            lines.append(f"fast decoder: absent for {label(s)} (decoder_model_merged{s}.onnx is used)")
    what = f"variant {md.label}" if variant is not None else f"auto picks {md.label}"
    lines.append(f"ok: {count} graph(s) verified{' and loaded by onnxruntime' if session else ''}; {what}")
    return lines


def _open_any(path) -> ModelDir:
    """The folder opened with auto's choice; when some part has no usable graph, the first problem
    file is reported by verify itself (it checks every file), so open with any present suffix."""
    try:
        return open_model_dir(path, None)
    except ModelDirError:
        md_path = Path(path).expanduser()
        for part in PARTS:
            if not auto_order(md_path, part):
                present = part_suffixes(md_path, part)
                if not present:
                    raise
                _read(part_file(md_path, part, present[0]))  # raises naming the file and its problem
        raise
