"""`edge-agent models verify`: files, tensor names, dtypes, shapes, vocabulary fit.

The expected interface is onnx-community's Florence-2 layout (see models/modeldir.py).
Graphs are read with models/onnxmeta.py (no weights loaded).  The first problem raises
ModelError with one line naming the file; otherwise the report lines are returned.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import ModelError
from models.modeldir import FAST_PARTS, PARTS, ModelDir, open_model_dir, present_variants, variant_files, normalize_variant
from models.onnxmeta import GraphMeta, OnnxFormatError, TensorInfo, read_graph_meta

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
    int8 with per-channel scales [1,H,1,Dh]."""
    kv = Spec((INT8,) if int8 else (FLOAT,), 4, ((1, e.heads), (3, head_dim)))
    cross = {}
    for i in range(layers):
        for name in ("key", "value"):
            cross[f"cross.{i}.{name}"] = kv
            if int8:
                cross[f"cross.{i}.{name}_scale"] = Spec((FLOAT,), 4, ((1, e.heads), (3, head_dim)))
    if part == "decoder_cross_kv":
        return {"encoder_hidden_states": hidden}, cross
    buf = Spec((FLOAT,), 4, ((1, e.heads), (3, head_dim)))
    inputs = {"inputs_embeds": hidden, "encoder_attention_mask": Spec((INT64,), 2),
              "seqlens_k": Spec((INT32,), 1), "total_sequence_length": Spec((INT32,), 0), **cross}
    outputs = {"logits": Spec((FLOAT,), 3)}
    for i in range(layers):
        for name in ("key", "value"):
            inputs[f"past_key_values.{i}.decoder.{name}"] = buf
            outputs[f"present.{i}.decoder.{name}"] = buf
            outputs[f"present.{i}.cross.{name}"] = kv
    return inputs, outputs


def _check_tensor(file: Path, io: str, t: TensorInfo, spec: Spec) -> None:
    import onnx

    if t.elem_type not in spec.dtypes:
        want = "/".join(onnx.helper.tensor_dtype_to_string(d).replace("TensorProto.", "").lower() for d in spec.dtypes)
        raise ModelError(f"{file}: {io} {t.describe()} has the wrong dtype, expected {want}")
    if len(t.shape) != spec.rank:
        raise ModelError(f"{file}: {io} {t.describe()} has rank {len(t.shape)}, expected {spec.rank}")
    for axis, size in spec.dims:
        got = t.shape[axis]
        if size is not None and isinstance(got, int) and got != size:
            raise ModelError(f"{file}: {io} {t.describe()} has size {got} on axis {axis}, expected {size}")


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
        raise ModelError(f"{file}: missing input {missing[0]!r} (inputs: {', '.join(got_in) or 'none'})")
    extra = [n for n in got_in if n not in want_in]
    if extra:
        raise ModelError(f"{file}: unexpected input {extra[0]!r}")
    got_out = {t.name: t for t in meta.outputs}
    missing = [n for n in want_out if n not in got_out]
    if missing:
        raise ModelError(f"{file}: missing output {missing[0]!r} (outputs: {', '.join(got_out) or 'none'})")
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
    raise ModelError(f"{file}: cannot find the token embedding table (no Gather over an initializer)")


def _expect(md: ModelDir) -> Expect:
    tc = md.text_config()
    pp = md.preprocess_config()
    d = tc.get("d_model", tc.get("hidden_size"))
    layers = tc.get("decoder_layers")
    heads = tc.get("decoder_attention_heads")
    as_int = lambda v: v if isinstance(v, int) and v > 0 else None  # noqa: E731
    return Expect(as_int(d), as_int(layers), pp.size[0], pp.size[1], as_int(heads))


def _read(file: Path) -> GraphMeta:
    try:
        meta = read_graph_meta(file)
    except (OSError, OnnxFormatError) as exc:
        raise ModelError(f"{file}: cannot read ONNX graph: {exc}") from None
    for location in sorted(meta.external_files):
        if not (file.parent / location).is_file():
            raise ModelError(f"{file}: its weights file {location} is missing (expected in {file.parent})")
    return meta


def _check_vocab(md: ModelDir, files: dict[str, Path], metas: dict[str, GraphMeta], n_tok: int) -> str:
    emb_file = files["embed_tokens"]
    rows = embedding_rows(emb_file, metas["embed_tokens"])
    if n_tok > rows:
        raise ModelError(f"{emb_file}: tokenizer has {n_tok} tokens but the embedding table has only {rows} rows")
    cfg_vocab = md.text_config().get("vocab_size")
    if isinstance(cfg_vocab, int) and cfg_vocab != rows:
        raise ModelError(f"{emb_file}: embedding table has {rows} rows but config.json says vocab_size={cfg_vocab}")
    logits = {t.name: t for t in metas["decoder_model_merged"].outputs}["logits"]
    v = logits.shape[2]
    if isinstance(v, int) and v < n_tok:
        raise ModelError(f"{files['decoder_model_merged']}: logits have {v} classes, fewer than the tokenizer's {n_tok}")
    return f"ok vocabulary: tokenizer {n_tok} <= embedding rows {rows}"


def verify_variant(md: ModelDir, variant: str, e: Expect, n_tok: int) -> list[str]:
    files = dict(zip(PARTS, variant_files(md.path, variant)))
    for f in files.values():
        if not f.is_file():
            raise ModelError(f"{f}: file missing (variant {variant.lstrip('_') or 'fp32'})")
    metas = {part: _read(f) for part, f in files.items()}
    lines = [check_graph(files[p], p, metas[p], e) for p in PARTS]
    lines.append(_check_vocab(md, files, metas, n_tok))
    fast = {p: md.path / "onnx" / f"{p}{variant}.onnx" for p in FAST_PARTS}
    if any(f.is_file() for f in fast.values()):
        for part, f in fast.items():
            if not f.is_file():
                raise ModelError(f"{f}: file missing (the fast decoder needs {' and '.join(FAST_PARTS)})")
            lines.append(check_graph(f, part, _read(f), e))
    else:
        lines.append("fast decoder: absent (decoder_model_merged is used)")
    return lines


def verify_dir(path, variant: str | None = None) -> list[str]:
    md = open_model_dir(path, variant)
    pp_file = md.path / "preprocessor_config.json"
    if not pp_file.is_file():
        raise ModelError(f"{pp_file}: file missing")
    e = _expect(md)
    tok = md.load_tokenizer()
    tok_src = md.path if md.has_tokenizer() else "bundled tokenizer (none in the directory)"
    lines = [f"model dir {md.path}", f"ok tokenizer: {len(tok)} tokens from {tok_src}",
             f"ok preprocessor: {e.height}x{e.width}"]
    variants = [normalize_variant(variant)] if variant is not None else present_variants(md.path)
    for v in variants:
        lines.append(f"variant {v.lstrip('_') or 'fp32'}:")
        lines += ["  " + line for line in verify_variant(md, v, e, len(tok))]
    lines.append(f"ok: {len(variants)} variant(s) verified; default for CPU: {md.variant.lstrip('_') or 'fp32'}")
    return lines
