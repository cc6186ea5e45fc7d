"""The committed tiny fixture: onnx-community layout and tensor names, and each ONNX part
equal (fp32, allclose) to the native transformers model rebuilt from make_tiny_model.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from fixtures.make_tiny_model import DEFAULT_OUT as TINY, build_torch_model  # noqa: E402

PARTS = ("vision_encoder", "embed_tokens", "encoder_model", "decoder_model_merged")
FAST_PARTS = ("decoder_cross_kv", "decoder_step")
OD_IDS = [0, 574, 22486, 5, 8720, 19, 4120, 766, 11, 5, 2274, 4, 2]


@pytest.fixture(scope="module")
def model():
    return build_torch_model()


def _session(name: str):
    return ort.InferenceSession(str(TINY / "onnx" / f"{name}.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def sessions():
    return {p: _session(p) for p in PARTS}


def test_layout_files_present():
    for suffix in ("", "_int8"):
        for part in PARTS + FAST_PARTS:
            assert (TINY / "onnx" / f"{part}{suffix}.onnx").is_file(), part + suffix
        assert (TINY / "onnx" / f"embed_tokens{suffix}.onnx_data").is_file()  # models/export.py map_weights
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (TINY / name).is_file(), name
    gen = json.loads((TINY / "generation_config.json").read_text())
    assert (gen["decoder_start_token_id"], gen["forced_bos_token_id"], gen["forced_eos_token_id"]) == (2, 0, 2)
    assert (gen["no_repeat_ngram_size"], gen["num_beams"]) == (3, 3)
    size = sum(f.stat().st_size for f in TINY.rglob("*") if f.is_file())
    assert size < 25e6, size  # 23.2 MB with the fast decoder graphs (their lm_head is 4.9 MB in fp32)


def test_tensor_names(sessions):
    names = lambda items: [i.name for i in items]  # noqa: E731
    assert names(sessions["vision_encoder"].get_inputs()) == ["pixel_values"]
    assert names(sessions["vision_encoder"].get_outputs()) == ["image_features"]
    assert names(sessions["embed_tokens"].get_inputs()) == ["input_ids"]
    assert names(sessions["embed_tokens"].get_outputs()) == ["inputs_embeds"]
    assert names(sessions["encoder_model"].get_inputs()) == ["inputs_embeds", "attention_mask"]
    assert names(sessions["encoder_model"].get_outputs()) == ["last_hidden_state"]
    kv = [f"{i}.{p}.{k}" for i in range(2) for p in ("decoder", "encoder") for k in ("key", "value")]
    dec_in = names(sessions["decoder_model_merged"].get_inputs())
    assert dec_in == ["inputs_embeds", "encoder_attention_mask", "encoder_hidden_states"] + \
        [f"past_key_values.{n}" for n in kv] + ["use_cache_branch"]
    assert names(sessions["decoder_model_merged"].get_outputs()) == ["logits"] + [f"present.{n}" for n in kv]


def _decoder_feeds(sessions, enc_out, mask, token):
    emb = sessions["embed_tokens"].run(None, {"input_ids": np.full((len(mask), 1), token, np.int64)})[0]
    feeds = {"inputs_embeds": emb, "encoder_attention_mask": mask, "encoder_hidden_states": enc_out,
             "use_cache_branch": np.array([False])}
    for i in sessions["decoder_model_merged"].get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((len(mask), i.shape[1], 0, i.shape[3]), np.float32)
    return feeds


def test_parts_match_transformers(model, sessions):
    gen = torch.Generator().manual_seed(3)
    px = torch.randn(2, 3, 768, 768, generator=gen)
    ids = np.array([OD_IDS, OD_IDS], np.int64)
    feats = sessions["vision_encoder"].run(None, {"pixel_values": px.numpy()})[0]
    emb = sessions["embed_tokens"].run(None, {"input_ids": ids})[0]
    x = np.concatenate([feats, emb], 1)
    mask = np.ones(x.shape[:2], np.int64)
    enc = sessions["encoder_model"].run(None, {"inputs_embeds": x, "attention_mask": mask})[0]
    dec = sessions["decoder_model_merged"]
    out_names = [o.name for o in dec.get_outputs()]
    steps = [2, 0, 50300, 50400]
    feeds = _decoder_feeds(sessions, enc, mask, steps[0])
    logits = []
    for t, tok in enumerate(steps):
        if t:
            feeds["inputs_embeds"] = sessions["embed_tokens"].run(None, {"input_ids": np.full((2, 1), tok)})[0]
            feeds["use_cache_branch"] = np.array([True])
            # decoder keys/values grow; the encoder ones are kept from the first step (later ones are empty)
            feeds.update({k.replace("present.", "past_key_values."): v for k, v in res.items()
                          if ".decoder." in k or (t == 1 and ".encoder." in k)})
            feeds["encoder_hidden_states"] = enc[:, :0]
        res = dict(zip(out_names, dec.run(None, feeds)))
        logits.append(res["logits"][:, -1])
        if t:
            assert res["present.0.encoder.key"].shape[0] == 0
    full_ids = torch.cat([torch.full((2, 577), 51289), torch.from_numpy(ids)], 1)
    with torch.no_grad():
        ref_feats = model.get_image_features(px).pooler_output.numpy()
        out = model(input_ids=full_ids, pixel_values=px, decoder_input_ids=torch.tensor([steps] * 2), use_cache=False)
    np.testing.assert_allclose(feats, ref_feats, atol=1e-4)
    np.testing.assert_allclose(enc, out.encoder_last_hidden_state.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.stack(logits, 1), out.logits.numpy(), atol=1e-4)


def test_int8_variant_runs(sessions):
    vis = _session("vision_encoder_int8")
    px = np.random.default_rng(0).standard_normal((1, 3, 768, 768)).astype(np.float32)
    q = vis.run(None, {"pixel_values": px})[0]
    assert q.shape == sessions["vision_encoder"].run(None, {"pixel_values": px})[0].shape
    assert np.isfinite(q).all()


def test_export_from_checkpoint_roundtrip(tmp_path: Path, model):
    from edge_agent.models.export import export_from_checkpoint

    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    (ckpt / "generation_config.json").write_text(json.dumps({"num_beams": 5, "decoder_start_token_id": 2}))
    out = export_from_checkpoint(ckpt, tmp_path / "out")
    assert json.loads((out / "generation_config.json").read_text())["num_beams"] == 5
    assert (out / "tokenizer.json").is_file()  # default tokenizer
    a = ort.InferenceSession(str(out / "onnx" / "embed_tokens.onnx")).run(None, {"input_ids": np.array([[5, 7]])})
    b = _session("embed_tokens").run(None, {"input_ids": np.array([[5, 7]])})
    np.testing.assert_allclose(a[0], b[0])


def test_missing_checkpoint_is_model_error(tmp_path: Path):
    from edge_agent.models.errors import ModelDirError
    from edge_agent.models.export import export_from_checkpoint

    with pytest.raises(ModelDirError, match="config.json"):
        export_from_checkpoint(tmp_path, tmp_path / "out")


def test_big_merged_decoder_goes_to_external_data(tmp_path: Path, model, monkeypatch):
    import edge_agent.models.export as exp

    monkeypatch.setattr(exp, "EXTERNAL_DATA_BYTES", 0)
    (tmp_path / "tmp").mkdir()
    exp.export_decoder(model, tmp_path, tmp_path / "tmp")
    assert (tmp_path / "decoder_model_merged.onnx_data").is_file()
    assert (tmp_path / "decoder_model_merged.onnx").stat().st_size < 1_000_000
    big = ort.InferenceSession(str(tmp_path / "decoder_model_merged.onnx"))
    enc = np.random.default_rng(0).standard_normal((1, 5, 24)).astype(np.float32)
    feeds = _decoder_feeds({"embed_tokens": _session("embed_tokens"), "decoder_model_merged": big},
                           enc, np.ones((1, 5), np.int64), 2)
    ref = _session("decoder_model_merged").run(["logits"], feeds)[0]
    np.testing.assert_allclose(big.run(["logits"], feeds)[0], ref, atol=1e-5)


def test_with_vision_side_384_runs_with_the_same_text_graphs(model, tmp_path):
    """The low-resolution option: vision re-exported at 384 (145 image tokens), text graphs shared."""
    from edge_agent.models.engine import EngineOptions, Florence2Engine
    from edge_agent.models.export import with_vision_side

    out = with_vision_side(TINY, tmp_path / "tiny-384", model, 384)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 384, "width": 384} and pre["image_seq_length"] == 145
    assert (out / "onnx" / "decoder_model_merged.onnx").samefile(TINY / "onnx" / "decoder_model_merged.onnx")
    eng = Florence2Engine(EngineOptions(model_dir=out, variant="", num_beams=1, max_new_tokens=6))
    from edge_agent.models.preprocess import preprocess

    px = preprocess([np.zeros((500, 700, 3), np.uint8)], eng.pre_cfg)
    assert px.shape == (1, 3, 384, 384)
    assert eng.image_features(px).shape[1] == 145
    with torch.inference_mode():
        ref = model.get_image_features(torch.from_numpy(px)).pooler_output.numpy()
    np.testing.assert_allclose(eng.image_features(px), ref, atol=1e-4)
    out_ = eng.run([np.zeros((500, 700, 3), np.uint8)], ("od",))
    assert out_[0]["od"].token_ids[:2] == (2, 0)


def test_vision_mlp_runs_in_token_chunks_with_the_same_features(tmp_path: Path, model):
    """models/export_wrappers.mlp_forward: the first stage's MLP (36864 tokens at 768) is exported
    as calls of MLP_CHUNK tokens, and q, k and v as three MatMuls (_qkv); the features still
    equal transformers'."""
    import onnx

    from edge_agent.models.export import export_vision
    from edge_agent.models.export_wrappers import MLP_CHUNK

    export_vision(model, tmp_path)
    graph = onnx.load(str(tmp_path / "vision_encoder.onnx")).graph
    fc1 = lambda stage: [n for n in graph.node if n.op_type == "MatMul"  # noqa: E731
                         and f"blocks.{stage}.0/spatial_block/ffn/fc1" in n.name]
    assert len(fc1(0)) == 192 * 192 // MLP_CHUNK == 16 and len(fc1(1)) == 9216 // MLP_CHUNK == 4
    assert len(fc1(2)) == 1  # stage 3: 2304 tokens, one call
    for attn in ("channel_block/channel_attn", "spatial_block/window_attn"):  # q, k, v: three MatMuls, no fused qkv
        qkv = [n for n in graph.node if n.op_type == "MatMul" and f"blocks.0.0/{attn}/" in n.name
               and n.input[1] in {i.name for i in graph.initializer}]
        assert len(qkv) == 4, (attn, [n.name for n in qkv])  # with proj
    px = torch.randn(2, 3, 768, 768, generator=torch.Generator().manual_seed(5))  # the batch axis stays dynamic
    got = ort.InferenceSession(str(tmp_path / "vision_encoder.onnx")).run(None, {"pixel_values": px.numpy()})[0]
    with torch.no_grad():
        want = model.get_image_features(px).pooler_output.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
