"""`models finetune` and `models evaluate` end to end on a handful of generated shelves, with the
tiny random architecture at 64x64 input: the loss falls, a resumed run equals an unbroken one,
the exported fp32 and int8 models verify, and the held-out metrics are printed and scored."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pycocotools")

from edge_agent.models.errors import ModelSettingError  # noqa: E402
from edge_agent.models.finetune import FinetuneOptions, _meta, checkpoint_dirs, finetune, save_checkpoint  # noqa: E402
from edge_agent.models.synth import ShelfOptions, write_dataset  # noqa: E402

FAST = dict(random_config="tiny", image_size=64, batch_size=4, lr=1e-2, warmup=0.0, max_target_tokens=48,
            eval_max_new_tokens=8, eval_beams=1, progress=False, threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shelves")
    write_dataset(root, count=3, seed=0, options=ShelfOptions(width=192, height=192, blur=0.0))
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Two training images (4 examples: one batch, the same every step), one held out."""
    out = tmp_path_factory.mktemp("run")
    lines = []
    result = finetune(FinetuneOptions(data=str(data), out=str(out), max_steps=6, checkpoint_every=3,
                                      heldout=0.34, **FAST), echo=lines.append)
    return out, result, lines


def test_loss_falls_and_the_export_verifies(trained):
    out, result, lines = trained
    log = [json.loads(x) for x in (out / "train-log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert result.steps == 6 and result.last_loss < result.first_loss - 0.5, losses
    assert [r["checkpoint"] for r in log if "checkpoint" in r] == ["step-0000003", "step-0000006"]
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000003", "step-0000006"]
    assert (out / "checkpoint" / "config.json").is_file()
    assert result.verify_lines[-1].startswith("ok: ") and "verified" in result.verify_lines[-1]
    assert any("_int8.onnx" in ln for ln in result.verify_lines)
    assert any("64x64" in ln for ln in result.verify_lines)
    assert [r.variant for r in result.rows] == ["", "_int8"]
    assert all(r.images == 1 and r.ocr_total > 0 for r in result.rows)
    assert any(ln.startswith("held-out metrics (1 images)") for ln in lines)
    assert len(json.loads((out / "heldout-metrics.json").read_text())) == 2
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 2 and len(split["heldout"]) == 1


def test_resume_continues_where_the_checkpoint_left(data, tmp_path):
    import shutil

    opts = dict(data=str(data), max_steps=4, checkpoint_every=2, heldout=0.34, export=False, **FAST)
    straight = finetune(FinetuneOptions(out=str(tmp_path / "a"), **opts), echo=lambda s: None)
    # a run that died after its step-2 checkpoint: the same folder without the later one
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    final = tmp_path / "b" / "checkpoints" / "step-0000004"
    shutil.copytree(final, tmp_path / "step4")
    shutil.rmtree(final)
    (tmp_path / "b" / "checkpoints" / ".tmp-crashed").mkdir()  # a half-written checkpoint is ignored
    said = []
    resumed = finetune(FinetuneOptions(out=str(tmp_path / "b"), resume=True, **opts), echo=said.append)
    assert any("resumed from" in s and "step-0000002" in s and "at step 2/4" in s for s in said), said
    assert resumed.steps == 4
    assert resumed.last_loss == pytest.approx(straight.last_loss, rel=1e-4)
    a = torch.load(tmp_path / "step4" / "state.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "step-0000004" / "state.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_refuses_to_overwrite_and_checks_resume_options(data, tmp_path):
    out = tmp_path / "r"
    meta = _meta(FinetuneOptions(data=str(data), out=str(out), **dict(FAST, image_size=128)), 1, 1)
    save_checkpoint(out, 1, {"step": 1}, meta)
    with pytest.raises(ModelSettingError, match="--resume"):
        finetune(FinetuneOptions(data=str(data), out=str(out), max_steps=1, export=False, **FAST))
    with pytest.raises(ModelSettingError, match="image_size = 128, not 64"):
        finetune(FinetuneOptions(data=str(data), out=str(out), max_steps=1, export=False, resume=True, **FAST))


def test_resume_takes_the_new_lr_and_encoder_scale(data, tmp_path):
    """--lr and --encoder-lr-scale may change on resume (to speed up the image side once the
    encoder carries the image): the optimizer's groups follow the new peaks from the resumed step."""
    opts = dict(FAST, encoder_lr_scale=0.1)
    finetune(FinetuneOptions(data=str(data), out=str(tmp_path / "r"), max_steps=2, checkpoint_every=2, heldout=0.34,
                             export=False, **opts), echo=lambda s: None)
    opts.update(lr=2e-2, encoder_lr_scale=0.5)
    finetune(FinetuneOptions(data=str(data), out=str(tmp_path / "r"), max_steps=4, checkpoint_every=2, heldout=0.34,
                             export=False, resume=True, **opts), echo=lambda s: None)
    state = torch.load(tmp_path / "r" / "checkpoints" / "step-0000004" / "state.pt", weights_only=False)
    assert [g["initial_lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx([2e-2, 1e-2])
    assert state["scheduler"]["base_lrs"] == pytest.approx([2e-2, 1e-2])
    with pytest.raises(ModelSettingError, match="encoder_lr_scale = 0.5, not 1.0"):
        finetune(FinetuneOptions(data=str(data), out=str(tmp_path / "r"), max_steps=6, heldout=0.34, export=False,
                                 resume=True, **dict(opts, encoder_lr_scale=1.0)), echo=lambda s: None)


def test_options_validate(data):
    with pytest.raises(ValueError, match="exactly one"):
        FinetuneOptions(data="d", out="o")
    with pytest.raises(ValueError, match="multiple of 32"):
        FinetuneOptions(data="d", out="o", random_config="tiny", image_size=100)
    with pytest.raises(ValueError, match="tasks"):
        FinetuneOptions(data="d", out="o", random_config="tiny", tasks=("caption",))


def test_lora_trains_adapters_only_and_merges(data, tmp_path):
    pytest.importorskip("peft")
    lines = []
    opts = dict(FAST, lr=5e-2)
    r = finetune(FinetuneOptions(data=str(data), out=str(tmp_path / "l"), max_steps=3, heldout=0.34, mode="lora",
                                 export=False, **opts), echo=lines.append)
    assert r.last_loss < r.first_loss
    trained = int(lines[0].split()[1].replace(",", ""))
    assert 0 < trained < 50_000  # adapters only (the tiny model has ~1.3M weights)
    from transformers import Florence2ForConditionalGeneration

    merged = Florence2ForConditionalGeneration.from_pretrained(str(tmp_path / "l" / "checkpoint"))
    assert not any("lora" in k for k in merged.state_dict())


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edge_agent", "models", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_cli_evaluate_every_variant_tiled_and_untiled(trained, data):
    out, _, _ = trained
    r = _cli("evaluate", str(out / "model"), str(data), "--split", str(out / "split.json"), "--max-new-tokens", "8",
             "--num-beams", "1", "--tile-size", "96")
    assert r.returncode == 0, r.stderr
    rows = [ln.split()[:2] for ln in r.stdout.splitlines() if "mAP@0.5" in ln]
    assert rows == [["fp32", "untiled"], ["fp32", "tiled"], ["int8", "untiled"], ["int8", "tiled"]]
    r = _cli("evaluate", str(out / "model"), str(data), "--variant", "int8", "--mode", "untiled", "--json",
             "--max-new-tokens", "8", "--num-beams", "1", "--images", "1")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.splitlines()[-1])
    assert row["variant"] == "int8" and row["images"] == 1 and 0.0 <= row["map50"] <= 1.0


def test_cli_export_from_the_trained_checkpoint_keeps_its_input_size(trained, tmp_path):
    out, _, _ = trained
    r = _cli("export", str(tmp_path / "again"), "--from", str(out / "checkpoint"))
    assert r.returncode == 0, r.stderr
    assert "ok preprocessor: 64x64" in r.stdout and "pixel_values[batch_size,3,64,64]" in r.stdout


def test_cli_errors_are_one_line(data, tmp_path):
    r = _cli("finetune", str(data), "--out", str(tmp_path / "x"), "--from", "nobody-here/no-model",
             env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1 and "cannot download" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli("finetune", str(data), "--out", str(tmp_path / "x"), "--random-config", "tiny", "--image-size", "100")
    assert r.returncode == 2 and "multiple of 32" in r.stderr and "Traceback" not in r.stderr
    r = _cli("evaluate", str(tmp_path / "nomodel"), str(tmp_path / "nodata"))
    assert r.returncode == 2 and "nodata" in r.stderr and "Traceback" not in r.stderr


def test_from_a_saved_checkpoint(trained, data, tmp_path):
    out, _, _ = trained
    opts = {k: v for k, v in FAST.items() if k != "random_config"}
    said = []
    r = finetune(FinetuneOptions(data=str(data), out=str(tmp_path / "f"), source=str(out / "checkpoint"), max_steps=1,
                                 heldout=0.34, export=False, **opts), echo=said.append)
    assert r.steps == 1 and said[0].startswith("training ")
    with pytest.raises(ModelSettingError, match="not a checkpoint folder nor a hub id"):
        finetune(FinetuneOptions(data=str(data), out=str(tmp_path / "g"), source=str(tmp_path / "no" / "such" / "x"),
                                 max_steps=1, export=False, **opts))


def test_loc_embeddings_start_smooth_for_random_configs_only(data, tmp_path):
    """--loc-init sinusoidal: neighbouring <loc_N> rows are alike and far ones are not, at the
    embedding's own scale; the tied lm_head shares them.  The default (random) leaves them alone."""
    from edge_agent.models.finetune import load_model
    from edge_agent.models.tokens import LeanTokenizer

    model, tok_dir = load_model(FinetuneOptions(data=str(data), out=str(tmp_path), random_config="tiny",
                                                loc_init="sinusoidal"))
    tok = LeanTokenizer(Path(tok_dir) / "tokenizer.json")
    ids = [tok.backend_tokenizer.token_to_id(f"<loc_{n}>") for n in range(1000)]
    emb = model.get_input_embeddings().weight.detach()
    rows = torch.nn.functional.normalize(emb[ids], dim=1)
    near = (rows[:-1] * rows[1:]).sum(1).mean().item()
    far = (rows[:-500] * rows[500:]).sum(1).mean().item()
    assert near > 0.9 and far < 0.5 and near > far + 0.4, (near, far)
    others = emb[: min(ids)]
    assert abs(emb[ids].std().item() - others.std().item()) < 0.3 * others.std().item()
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    plain, _ = load_model(FinetuneOptions(data=str(data), out=str(tmp_path), random_config="tiny"))  # the default
    rows = torch.nn.functional.normalize(plain.get_input_embeddings().weight.detach()[ids], dim=1)
    assert (rows[:-1] * rows[1:]).sum(1).mean().item() < 0.5
    with pytest.raises(ValueError, match="loc init"):
        FinetuneOptions(data="d", out="o", random_config="tiny", loc_init="smooth")


def test_encoder_spread_tells_a_seeing_encoder_from_a_collapsed_one(data, tmp_path):
    """A fresh model's encoder output depends on the image (spread well above 0.1); the same
    image twice gives 0, which is what a collapsed encoder gives for every pair."""
    from edge_agent.models.cocodata import load_dataset
    from edge_agent.models.finetune import Batcher, build_examples, encoder_spread, image_token_count, load_model
    from edge_agent.models.tokens import LeanTokenizer

    model, tok_dir = load_model(FinetuneOptions(data=str(data), out=str(tmp_path), random_config="tiny", image_size=64))
    tok = LeanTokenizer(Path(tok_dir) / "tokenizer.json")
    samples = load_dataset(data).samples
    examples, _ = build_examples(samples, ("od",), tok, 64)
    batcher = Batcher(samples, tok, 64, image_token_count(model, 64), int(model.config.image_token_id))
    assert encoder_spread(model, batcher, examples) > 0.1
    assert encoder_spread(model, batcher, [examples[0], examples[0]]) < 1e-6
    assert encoder_spread(model, batcher, examples[:1]) is None


def test_encoder_lr_scale_slows_the_image_side_only(data, tmp_path):
    """--encoder-lr-scale puts the vision tower, image projection and text encoder in their own
    AdamW group at lr * scale; the decoder and the tied token embeddings keep lr."""
    from edge_agent.models.finetune import is_image_side, load_model, param_groups

    model, _ = load_model(FinetuneOptions(data=str(data), out=str(tmp_path), random_config="tiny"))
    fast, slow = param_groups(model, 1e-3, 0.1)
    assert slow["lr"] == pytest.approx(1e-4) and "lr" not in fast
    names = {id(p): n for n, p in model.named_parameters()}
    slow_names = [names[id(p)] for p in slow["params"]]
    assert any("vision_tower" in n for n in slow_names) and any("language_model.encoder.layers" in n for n in slow_names)
    assert not any("decoder" in n or "shared" in n for n in slow_names)
    assert sum(p.numel() for p in fast["params"]) + sum(p.numel() for p in slow["params"]) == \
        sum(p.numel() for p in model.parameters())
    assert len(param_groups(model, 1e-3, 1.0)) == 1 and not is_image_side("model.language_model.decoder.layers.0.encoder_attn.k_proj.weight")
    with pytest.raises(ValueError, match="encoder lr scale"):
        FinetuneOptions(data="d", out="o", random_config="tiny", encoder_lr_scale=0)
