"""Export a native transformers Florence-2 model to onnx-community's Florence-2 layout.

    out/onnx/vision_encoder.onnx        pixel_values [B,3,768,768] -> image_features [B,577,D]
    out/onnx/embed_tokens.onnx          input_ids -> inputs_embeds
    out/onnx/encoder_model.onnx         inputs_embeds, attention_mask -> last_hidden_state
    out/onnx/decoder_cross_kv.onnx,     edge-agent's fast decoder (optional; models/export_step.py):
             decoder_step.onnx          used instead of decoder_model_merged when present
    out/onnx/decoder_model_merged.onnx  inputs_embeds, encoder_attention_mask, encoder_hidden_states,
                                        past_key_values.{i}.{decoder,encoder}.{key,value}, use_cache_branch
                                        -> logits, present.{i}.{decoder,encoder}.{key,value}
    out/config.json, generation_config.json, preprocessor_config.json, tokenizer files

Needs torch, transformers and onnx (the `[export]` extra); nothing at run time imports it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from edge_agent.models.errors import ModelDirError, ModelError, ModelSettingError

log = logging.getLogger(__name__)

OPSET = 17
EXTERNAL_DATA_BYTES = 1_900_000_000  # protobuf cannot hold 2 GB: larger graphs keep weights beside them
DEFAULT_TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json",
                   "special_tokens_map.json", "added_tokens.json", "SOURCES.md")
IMAGE_TOKEN_ID = 51289
TEXT_VOCAB = 51290  # the tokenizer's 51289 ids + the native model's image placeholder

# Florence-2's published generation settings (BART's): start 2, forced BOS 0, forced EOS 2.
GENERATION_CONFIG = {
    "bos_token_id": 0,
    "decoder_start_token_id": 2,
    "early_stopping": True,
    "eos_token_id": 2,
    "forced_bos_token_id": 0,
    "forced_eos_token_id": 2,
    "no_repeat_ngram_size": 3,
    "num_beams": 3,
    "pad_token_id": 1,
}

PREPROCESSOR_CONFIG = {
    "crop_size": {"height": 768, "width": 768},
    "do_center_crop": False,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "CLIPImageProcessor",
    "image_seq_length": 577,
    "image_std": [0.229, 0.224, 0.225],
    "processor_class": "Florence2Processor",
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"height": 768, "width": 768},
}

# Architecture sizes.  base/large follow the published Florence-2 configs; tiny keeps the
# real vocabulary and layout with small widths (a test fixture, its output is noise).
ARCHS = {
    "tiny": dict(vision=dict(embed_dim=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                             num_groups=(1, 2, 2, 4)),
                 text=dict(d_model=24, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                           decoder_attention_heads=3, encoder_ffn_dim=48, decoder_ffn_dim=48)),
    # small: the demo-training size of issue 16 (8.3M parameters with the real vocabulary)
    "small": dict(vision=dict(embed_dim=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                              num_groups=(1, 2, 4, 8)),
                  text=dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                            decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512)),
    "base": dict(vision=dict(embed_dim=(128, 256, 512, 1024), depths=(1, 1, 9, 1), num_heads=(4, 8, 16, 32),
                             num_groups=(4, 8, 16, 32)),
                 text=dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                           decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072)),
    "large": dict(vision=dict(embed_dim=(256, 512, 1024, 2048), depths=(1, 1, 9, 1), num_heads=(8, 16, 32, 64),
                              num_groups=(8, 16, 32, 64)),
                  text=dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                            decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096)),
}
TINY_TEXT_STD = 0.25  # wider text weights so that a random model's output depends on its input


def random_config(kind: str):
    """A `Florence2Config` of the real architecture at size tiny|base|large."""
    from transformers import BartConfig, Florence2Config

    if kind not in ARCHS:
        raise ModelSettingError(f"unknown random config {kind!r}: expected one of {', '.join(ARCHS)}")
    arch = ARCHS[kind]
    text = BartConfig(
        vocab_size=TEXT_VOCAB, max_position_embeddings=1024, activation_function="gelu",
        scale_embedding=False, bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
        forced_bos_token_id=0, forced_eos_token_id=2, is_encoder_decoder=True, **arch["text"])
    vision = dict(arch["vision"], projection_dim=arch["text"]["d_model"], window_size=12,
                  patch_size=(7, 3, 3, 3), patch_stride=(4, 2, 2, 2), patch_padding=(3, 1, 1, 1),
                  patch_prenorm=(False, True, True, True), drop_path_rate=0.0)
    return Florence2Config(text_config=text.to_dict(), vision_config=vision, image_token_id=IMAGE_TOKEN_ID)


def random_model(kind: str, seed: int = 0, text_std: float | None = None):
    """Native `Florence2ForConditionalGeneration` with seeded random weights (eval mode)."""
    import torch
    from transformers import Florence2ForConditionalGeneration

    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(random_config(kind)).eval()
    std = TINY_TEXT_STD if text_std is None and kind == "tiny" else text_std
    if std:
        widen_text_weights(model, std, seed)
    return model


def widen_text_weights(model, std: float, seed: int) -> None:
    """Re-initialise the language model's 2-D weights with N(0, std) (tied lm_head follows)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in sorted(model.model.language_model.named_parameters()):
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        model.lm_head.weight = model.model.language_model.shared.weight
        for emb in (model.model.language_model.encoder.embed_tokens, model.model.language_model.decoder.embed_tokens):
            emb.weight = model.model.language_model.shared.weight


def _export(module, args, path: Path, inputs, outputs, dynamic_axes) -> None:
    import torch

    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)


def _layer_names(n: int, prefix: str, parts=("decoder", "encoder")) -> list[str]:
    return [f"{prefix}.{i}.{p}.{kv}" for i in range(n) for p in parts for kv in ("key", "value")]


def _kv_axes(names: list[str], past: bool) -> dict:
    axes = {}
    for name in names:
        seq = ("past_decoder_sequence_length" if past else "decoder_sequence_length") if ".decoder." in name \
            else "encoder_sequence_length_out"
        axes[name] = {0: "batch_size", 2: seq}
    return axes


def export_vision(model, out: Path, side: int = 768) -> None:
    """side: the input resolution baked into the graph (768 as published; 384 for the low-resolution
    option, 145 image tokens instead of 577, see with_vision_side)."""
    import torch
    from edge_agent.models.export_wrappers import VisionWrapper, export_layouts

    pixel = torch.randn(1, 3, side, side)
    with export_layouts():
        _export(VisionWrapper(model), (pixel,), out / "vision_encoder.onnx", ["pixel_values"], ["image_features"],
                {"pixel_values": {0: "batch_size"}, "image_features": {0: "batch_size"}})


def export_embed(model, out: Path) -> None:
    import torch
    from edge_agent.models.export_wrappers import EmbedWrapper

    ids = torch.tensor([[0, 574, 22486, 2]])
    _export(EmbedWrapper(model), (ids,), out / "embed_tokens.onnx", ["input_ids"], ["inputs_embeds"],
            {"input_ids": {0: "batch_size", 1: "sequence_length"},
             "inputs_embeds": {0: "batch_size", 1: "sequence_length"}})
    map_weights(out / "embed_tokens.onnx")


def map_weights(path: Path) -> None:
    """Move a graph's weights into an external-data file beside it (`<name>_data`).  ONNX Runtime
    maps such a file instead of copying it onto the heap, and weights that are only gathered from,
    like the token embedding table, then cost memory only for the rows read: base embed_tokens
    int8 37 MB resident inline, under 1 MB mapped (fp32: 157 MB).  Graphs whose weights are
    prepacked or transformed at load gain nothing: ORT copies those either way."""
    import onnx

    _save_external(onnx.load(str(path)), path)


def _save_external(model, path: Path) -> None:
    """Save with every weight in the external-data file beside the graph, readable as the graph is."""
    import onnx

    from edge_agent.models.modeldir import external_data

    data = external_data(path)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    same_mode(data, path)


def same_mode(data: Path, graph: Path) -> None:
    """Give an external-data file its graph's permissions: onnx creates it 0600, which a service
    running as another user (systemd DynamicUser) cannot read."""
    if data.is_file():
        data.chmod(graph.stat().st_mode & 0o777)


def export_encoder(model, out: Path) -> None:
    import torch
    from edge_agent.models.export_wrappers import EncoderWrapper

    d = model.config.text_config.d_model
    emb, mask = torch.randn(2, 20, d), torch.ones(2, 20, dtype=torch.int64)
    _export(EncoderWrapper(model), (emb, mask), out / "encoder_model.onnx", ["inputs_embeds", "attention_mask"],
            ["last_hidden_state"],
            {"inputs_embeds": {0: "batch_size", 1: "encoder_sequence_length"},
             "attention_mask": {0: "batch_size", 1: "encoder_sequence_length"},
             "last_hidden_state": {0: "batch_size", 1: "encoder_sequence_length"}})


def export_decoder(model, out: Path, tmp: Path) -> None:
    import onnx
    import torch
    from edge_agent.models.export_merge import merge_decoders
    from edge_agent.models.export_wrappers import DecoderFirst, DecoderWithPast

    tc = model.config.text_config
    n, d, heads = tc.decoder_layers, tc.d_model, tc.decoder_attention_heads
    b, s_enc, past_len = 2, 20, 3
    emb, mask = torch.randn(b, 1, d), torch.ones(b, s_enc, dtype=torch.int64)
    enc = torch.randn(b, s_enc, d)
    common = {"inputs_embeds": {0: "batch_size", 1: "decoder_sequence_length"},
              "encoder_attention_mask": {0: "batch_size", 1: "encoder_sequence_length"},
              "logits": {0: "batch_size", 1: "decoder_sequence_length"}}
    present_all = _layer_names(n, "present")
    _export(DecoderFirst(model), (emb, mask, enc), tmp / "decoder_first.onnx",
            ["inputs_embeds", "encoder_attention_mask", "encoder_hidden_states"], ["logits"] + present_all,
            {**common, "encoder_hidden_states": {0: "batch_size", 1: "encoder_sequence_length"},
             **_kv_axes(present_all, past=False)})
    past_names = _layer_names(n, "past_key_values")
    past = []
    for name in past_names:
        past.append(torch.randn(b, heads, past_len if ".decoder." in name else s_enc, d // heads))
    present_dec = _layer_names(n, "present", ("decoder",))
    _export(DecoderWithPast(model), (emb, mask, *past), tmp / "decoder_with_past.onnx",
            ["inputs_embeds", "encoder_attention_mask"] + past_names, ["logits"] + present_dec,
            {**common, **_kv_axes(past_names, past=True), **_kv_axes(present_dec, past=False)})
    merged = merge_decoders(onnx.load(str(tmp / "decoder_first.onnx")),
                            onnx.load(str(tmp / "decoder_with_past.onnx")), n)
    save_onnx(merged, out / "decoder_model_merged.onnx")


def export_fast_decoder(model, out: Path) -> None:
    """edge-agent's fast decoder (decoder_cross_kv + decoder_step, models/export_step.py)."""
    from edge_agent.models.export_step import CROSS_PART, STEP_PART, build_cross_kv, build_step, decoder_weights

    w = decoder_weights(model)
    save_onnx(build_cross_kv(w), out / f"{CROSS_PART}.onnx")
    save_onnx(build_step(w), out / f"{STEP_PART}.onnx")


def save_onnx(model, path: Path) -> None:
    """Check and save; weights go to an external `<name>_data` file past protobuf's 2 GB limit."""
    import onnx

    if model.ByteSize() < EXTERNAL_DATA_BYTES:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        return
    _save_external(model, path)
    onnx.checker.check_model(str(path))


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def copy_tokenizer(src: Path, out: Path) -> None:
    src = Path(src)
    if not (src / "vocab.json").is_file() and not (src / "tokenizer.json").is_file():
        raise ModelDirError(f"{src}: no tokenizer files (vocab.json or tokenizer.json)")
    # tokenizer.json holds the vocabulary and merges too: with it, vocab.json/merges.txt are not copied
    skip = ("vocab.json", "merges.txt") if (src / "tokenizer.json").is_file() else ()
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and name not in skip:
            shutil.copyfile(src / name, out / name)


def export_model(model, out_dir, tokenizer_dir=None, generation_config: dict | None = None,
                 preprocessor_config: dict | None = None, side: int = 768) -> Path:
    """Write the whole onnx-community layout for a native model into out_dir.  side: the vision
    tower's input (preprocessor_config should say the same size)."""
    out = Path(out_dir)
    onnx_dir = out / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    with tempfile.TemporaryDirectory() as tmp:
        export_vision(model, onnx_dir, side)
        export_embed(model, onnx_dir)
        export_encoder(model, onnx_dir)
        export_decoder(model, onnx_dir, Path(tmp))
        export_fast_decoder(model, onnx_dir)
    model.config.to_json_file(str(out / "config.json"))
    write_json(out / "generation_config.json", generation_config or GENERATION_CONFIG)
    write_json(out / "preprocessor_config.json", preprocessor_config or PREPROCESSOR_CONFIG)
    copy_tokenizer(Path(tokenizer_dir) if tokenizer_dir else DEFAULT_TOKENIZER_DIR, out)
    log.info("exported %s", out)
    return out


def export_random(kind: str, seed: int, out_dir, tokenizer_dir=None) -> Path:
    """A random-weight model of the real architecture (tiny|base|large), exported."""
    return export_model(random_model(kind, seed), out_dir, tokenizer_dir)


def sized_preprocessor_config(side: int, base: dict | None = None) -> dict:
    """preprocessor_config.json for side x side input: `base` (default: the reference's) with its
    sizes and image-token count (DaViT's stride 32, plus the pooled token: 145 at 384) changed."""
    pre = dict(base or PREPROCESSOR_CONFIG)
    pre.update(size={"height": side, "width": side}, crop_size={"height": side, "width": side},
               image_seq_length=(side // 32) ** 2 + 1)
    return pre


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelDirError(f"{path}: cannot read JSON: {exc}") from None


CHECKPOINT_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model")


def is_hub_id(src) -> bool:
    """'owner/name' that is not a local folder: a Hugging Face Hub repository id."""
    text = str(src)
    return not Path(text).expanduser().exists() and text.count("/") == 1 and all(text.split("/")) \
        and not text.startswith((".", "/", "~"))


def download_checkpoint(repo: str) -> Path:
    """A Hub checkpoint (config, weights, tokenizer, processor files) in huggingface_hub's cache."""
    try:
        import huggingface_hub
    except ImportError:
        raise ModelError(f"--from {repo}: downloading needs huggingface_hub: pip install 'edge-agent[pull]'") from None
    from edge_agent.models.pull import is_network_error, network_failure

    try:
        return Path(huggingface_hub.snapshot_download(repo_id=repo, allow_patterns=list(CHECKPOINT_PATTERNS)))
    except Exception as exc:
        if is_network_error(huggingface_hub, exc):
            raise network_failure(huggingface_hub, repo, exc) from None
        raise


def load_checkpoint(src) -> tuple[object, Path]:
    """(Florence2ForConditionalGeneration, its folder) from a `save_pretrained` folder or an
    owner/name Hub id (downloaded first)."""
    from transformers import Florence2ForConditionalGeneration

    if is_hub_id(src):
        src = download_checkpoint(str(src))
    src = Path(src).expanduser()
    if not (src / "config.json").is_file():
        raise ModelDirError(f"{src / 'config.json'}: not found (expected a saved transformers Florence-2 checkpoint)")
    try:
        model = Florence2ForConditionalGeneration.from_pretrained(str(src))
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{src}: cannot load a Florence-2 checkpoint: {str(exc).splitlines()[0]}") from None
    return model, src


def export_from_checkpoint(src, out_dir, tokenizer_dir=None) -> Path:
    """A checkpoint saved with `Florence2ForConditionalGeneration.save_pretrained` (a folder, or an
    owner/name Hub id, downloaded first), exported.  Its tokenizer, preprocessor and generation
    configs are copied when present.  florence-community's checkpoints work as they are: their
    embedding table has 51328 rows (the 51289-token vocabulary, the `<image>` token, padding to a
    multiple of 64), which the graphs keep; the tokenizer comes with its `<image>` token."""
    model, src = load_checkpoint(src)
    gen = _read_json(src / "generation_config.json")
    pre = _read_json(src / "preprocessor_config.json")
    if tokenizer_dir is None and ((src / "vocab.json").is_file() or (src / "tokenizer.json").is_file()):
        tokenizer_dir = src
    return export_model(model, out_dir, tokenizer_dir, gen and _generation_only(gen), pre, side=_square_side(pre, src))


def _square_side(pre: dict | None, src: Path) -> int:
    """The input side a checkpoint's preprocessor_config.json asks for (768 without one), so that
    the vision graph matches it (a `models finetune --image-size 384` checkpoint says 384)."""
    size = (pre or {}).get("size") or {"height": 768, "width": 768}
    try:
        h, w = int(size["height"]), int(size["width"])
    except (KeyError, TypeError, ValueError):
        raise ModelDirError(f"{src / 'preprocessor_config.json'}: size must be {{'height': H, 'width': W}}") from None
    if h != w or h % 32:
        raise ModelDirError(f"{src / 'preprocessor_config.json'}: size {h}x{w}: expected a square multiple of 32")
    return h


def _generation_only(gen: dict) -> dict:
    """generation_config.json without transformers' bookkeeping keys (the engine reads the rest)."""
    return {k: v for k, v in gen.items() if not k.startswith("_") and k != "transformers_version"}


def with_vision_side(src_dir, out_dir, model, side: int) -> Path:
    """A copy of model directory src_dir whose vision tower takes side x side tiles: the text
    graphs are hard-linked (they accept any image-token count), the vision graph is re-exported
    from `model` (the same weights) and preprocessor_config.json says the new size."""
    src, out = Path(src_dir), Path(out_dir)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not (out / f.name).exists():
            os.link(f, out / f.name)
    for f in (src / "onnx").iterdir():
        if not f.name.startswith("vision_encoder") and not (out / "onnx" / f.name).exists():
            os.link(f, out / "onnx" / f.name)
    export_vision(model, out / "onnx", side)
    pre = sized_preprocessor_config(side, _read_json(src / "preprocessor_config.json"))
    (out / "preprocessor_config.json").unlink(missing_ok=True)
    write_json(out / "preprocessor_config.json", pre)
    return out
