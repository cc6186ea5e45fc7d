"""`models export --from` on a checkpoint shaped like florence-community's: 51328 embedding rows
(the vocabulary, the `<image>` token, padding to a multiple of 64) and an `<image>` token in the
tokenizer.  Random weights of the tiny architecture; the export must verify and be token-exact
with transformers on both decoders.  `--from owner/name` offline: one line, exit 1."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_generation_parity import _trim, synthetic_tiles  # noqa: E402

from edge_agent.models.engine import EngineOptions, Florence2Engine  # noqa: E402
from edge_agent.models.preprocess import preprocess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS = 51328
IMAGE_TOKEN = 51289
MAX_NEW = 20


def native_model(seed: int = 0):
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    from edge_agent.models.export import TINY_TEXT_STD, random_config, widen_text_weights

    cfg = random_config("tiny").to_dict()
    cfg["text_config"]["vocab_size"] = ROWS
    config = Florence2Config(text_config=cfg["text_config"], vision_config=cfg["vision_config"],
                             image_token_id=IMAGE_TOKEN)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    widen_text_weights(model, TINY_TEXT_STD, seed)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from transformers import AutoTokenizer

    from edge_agent.models.export import DEFAULT_TOKENIZER_DIR, PREPROCESSOR_CONFIG

    d = tmp_path_factory.mktemp("florence-community") / "Florence-2-tiny-ft"
    model = native_model()
    model.save_pretrained(str(d))
    tok = AutoTokenizer.from_pretrained(str(DEFAULT_TOKENIZER_DIR), extra_special_tokens={"image_token": "<image>"})
    assert tok.convert_tokens_to_ids("<image>") == IMAGE_TOKEN
    tok.save_pretrained(str(d))
    (d / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG))
    return d, model


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    from click.testing import CliRunner

    from edge_agent.cli import cli

    src, _ = checkpoint
    out = tmp_path_factory.mktemp("export") / "m"
    r = CliRunner().invoke(cli, ["models", "export", str(out), "--from", str(src)])
    assert r.exit_code == 0, r.output
    assert f"ok vocabulary of embed_tokens.onnx: tokenizer 51290 <= embedding rows {ROWS}" in r.output
    return out


def test_checkpoint_has_the_native_shape(checkpoint):
    src, model = checkpoint
    assert model.get_input_embeddings().weight.shape[0] == ROWS
    assert json.loads((src / "config.json").read_text())["text_config"]["vocab_size"] == ROWS
    assert "<image>" in (src / "tokenizer.json").read_text()


def test_export_verifies(exported):
    from edge_agent.models.modeldir import verify

    lines = verify(exported, "fp32")
    assert any(f"embedding rows {ROWS}" in ln for ln in lines), lines
    assert lines[-1].startswith("ok: 6 graph(s) verified and loaded"), lines


@pytest.mark.parametrize("fast", [True, False], ids=["decoder_step", "decoder_model_merged"])
def test_token_exact_with_transformers(checkpoint, exported, fast):
    _, model = checkpoint
    tiles = synthetic_tiles()
    eng = Florence2Engine(EngineOptions(model_dir=exported, variant="fp32", num_beams=1, max_new_tokens=MAX_NEW,
                                        fast_decoder=fast))
    assert type(eng.runner).__name__ == ("BufferedRunner" if fast else "DecoderRunner")
    outs = eng.run(tiles, ("od", "ocr"))
    px = torch.from_numpy(preprocess(tiles, eng.pre_cfg))
    seen = set()
    for task in ("od", "ocr"):
        ids = torch.tensor([eng.prompt_ids(task)] * len(tiles))
        assert IMAGE_TOKEN not in ids.tolist()[0]
        inputs = torch.cat([torch.full((len(tiles), 577), IMAGE_TOKEN), ids], 1)
        with torch.no_grad():
            ref = model.generate(input_ids=inputs, pixel_values=px, **eng.settings.to_transformers())
        for i in range(len(tiles)):
            got = list(outs[i][task].token_ids)
            assert got == _trim(ref[i].tolist(), 2, eng.settings.pad_token_id), (task, i)
            seen.add(tuple(got))
    assert len(seen) >= 3, "the random model ignores its input: parity would prove little"


def test_from_hub_id_offline_is_one_line(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    r = subprocess.run([sys.executable, "-m", "edge_agent", "models", "export", str(tmp_path / "out"),
                        "--from", "florence-community/Florence-2-base-ft"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("edge-agent: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "florence-community/Florence-2-base-ft: cannot download: offline mode is on" in lines[0]
    assert not (tmp_path / "out").exists()
