"""Model directory handling and `verify`: files, tensor names/dtypes/shapes, vocabulary."""
from __future__ import annotations

import json
import logging
import shutil

import onnx
import pytest

from edge_agent.models.errors import ModelDirError, ModelSettingError
from fake_florence import write_fake_model_dir
from edge_agent.models.modeldir import PARTS, VARIANTS, normalize_variant, open_model_dir, verify
from edge_agent.models.onnxmeta import read_graph_meta


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
    return write_fake_model_dir(tmp_path_factory.mktemp("fake") / "m")


@pytest.fixture
def model(tmp_path, fake_dir):
    return shutil.copytree(fake_dir, tmp_path / "m")


def one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_open_and_paths(model):
    md = open_model_dir(model)
    assert md.variant == "" and md.available_variants() == [""]
    assert md.onnx_path("vision_encoder") == model / "onnx" / "vision_encoder.onnx"
    assert md.config["text_config"]["d_model"] == 8
    assert md.generation_config["decoder_start_token_id"] == 2
    assert len(md.load_tokenizer()) == 51289


def test_best_variant_prefers_int8(model):
    for part in PARTS:
        shutil.copy(model / "onnx" / f"{part}.onnx", model / "onnx" / f"{part}_int8.onnx")
    shutil.copy(model / "onnx" / "vision_encoder.onnx", model / "onnx" / "vision_encoder_q4.onnx")  # incomplete
    md = open_model_dir(model)
    assert md.variant == "_int8" and md.available_variants() == ["", "_int8"]
    assert open_model_dir(model, "fp32").variant == ""
    assert open_model_dir(model, "int8").onnx_path("embed_tokens").name == "embed_tokens_int8.onnx"
    with pytest.raises(ModelDirError, match="embed_tokens_q4.onnx: file missing") as e:
        open_model_dir(model, "_q4")
    # the message says which variants the folder does hold, e.g. after `models export` (fp32 only)
    assert one_line(e).endswith(f"(variant q4; complete: fp32, int8; every part's files: edge-agent models list {model})")


def test_variant_names():
    assert [normalize_variant(v) for v in ("", "fp32", "int8", "_q4f16")] == ["", "", "_int8", "_q4f16"]
    assert set(VARIANTS) == {normalize_variant(v) for v in VARIANTS}
    with pytest.raises(ModelSettingError, match="'int4'"):
        normalize_variant("int4")


def test_missing_dir_and_json(tmp_path, model):
    with pytest.raises(ModelDirError, match="model directory not found"):
        open_model_dir(tmp_path / "nope")
    (model / "generation_config.json").unlink()
    with pytest.raises(ModelDirError) as e:
        open_model_dir(model)
    assert "generation_config.json: file missing" in one_line(e)
    (model / "generation_config.json").write_text("{oops")
    with pytest.raises(ModelDirError, match="generation_config.json: cannot read JSON"):
        open_model_dir(model)


def test_no_variant_names_first_missing_file(model):
    (model / "onnx" / "encoder_model.onnx").unlink()
    with pytest.raises(ModelDirError) as e:
        open_model_dir(model)
    assert "encoder_model.onnx: file missing" in one_line(e)


def test_bundled_tokenizer_fallback(tmp_path, caplog):
    d = write_fake_model_dir(tmp_path / "m", tokenizer=False)
    with caplog.at_level(logging.WARNING):
        tok = open_model_dir(d).load_tokenizer()
    assert len(tok) == 51289 and "bundled Florence-2 tokenizer" in caplog.text


def test_verify_ok(model):
    lines = verify(model)
    text = "\n".join(lines)
    assert "pixel_values[batch,3,768,768] float -> image_features[batch,577,8] float" in text
    assert "2 decoder layers" in text and "tokenizer 51289 <= embedding rows 51290" in text


def test_graph_meta_skips_weights(model):
    meta = read_graph_meta(model / "onnx" / "embed_tokens.onnx")
    assert [t.name for t in meta.inputs] == ["input_ids"]
    assert meta.initializers["embed.weight"] == (1, (51290, 8))


def test_verify_missing_file(model):
    (model / "onnx" / "decoder_model_merged.onnx").unlink()
    with pytest.raises(ModelDirError) as e:
        verify(model, "fp32")
    assert "decoder_model_merged.onnx: file missing" in one_line(e)


def rename_input(file, old, new):
    m = onnx.load(str(file))
    for vi in m.graph.input:
        if vi.name == old:
            vi.name = new
    for node in m.graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
    onnx.save(m, str(file))


def test_verify_wrong_tensor_name(model):
    rename_input(model / "onnx" / "encoder_model.onnx", "attention_mask", "mask")
    with pytest.raises(ModelDirError) as e:
        verify(model)
    msg = one_line(e)
    assert "encoder_model.onnx" in msg and "missing input 'attention_mask'" in msg


def test_verify_wrong_shape(tmp_path):
    d = write_fake_model_dir(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["d_model"] = 16
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="vision_encoder.onnx: output image_features.*axis 2, expected 16"):
        verify(d)


def test_verify_vocabulary_mismatch(tmp_path):
    d = write_fake_model_dir(tmp_path / "m", vocab=50000)
    with pytest.raises(ModelDirError) as e:
        verify(d)
    assert "embed_tokens.onnx: tokenizer has 51289 tokens but the embedding table has only 50000 rows" in one_line(e)


def test_verify_garbage_onnx(model):
    (model / "onnx" / "embed_tokens.onnx").write_bytes(b"\xff\xff\xff\xff not onnx")
    with pytest.raises(ModelDirError, match="embed_tokens.onnx: cannot read ONNX graph"):
        verify(model)


# --- the CLI on copies of the tiny fixture model ----------------------------------------
TINY = __import__("pathlib").Path(__file__).resolve().parent / "fixtures" / "tiny-florence2"


@pytest.fixture
def tiny(tmp_path):
    if not (TINY / "onnx" / "vision_encoder.onnx").is_file():
        pytest.skip("tiny fixture model not present")
    return shutil.copytree(TINY, tmp_path / "tiny")


def cli(*args):
    from click.testing import CliRunner

    from edge_agent.cli import cli as group

    return CliRunner().invoke(group, [str(a) for a in args])


def assert_exit2_one_line(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-agent: error: "), result.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_cli_verify_ok(tiny):
    r = cli("models", "verify", tiny)
    assert r.exit_code == 0, r.output
    # 4 parts x (fp32, int8) + the fast decoder's 2 graphs x (fp32, int8), each loaded by onnxruntime
    assert "ok: 12 graph(s) verified and loaded by onnxruntime; auto picks int8" in r.stdout


def test_cli_verify_rejects_missing_file(tiny):
    (tiny / "onnx" / "embed_tokens_int8.onnx").unlink()
    assert_exit2_one_line(cli("models", "verify", tiny, "--variant", "int8"), "embed_tokens_int8.onnx: file missing")
    assert cli("models", "verify", tiny, "--variant", "fp32").exit_code == 0
    # without --variant every graph present is checked; a mix fills the gap
    r = cli("models", "verify", tiny)
    assert r.exit_code == 0 and "auto picks embed_tokens=fp32,int8" in r.stdout, r.output


def test_cli_verify_rejects_wrong_tensor_name(tiny):
    rename_input(tiny / "onnx" / "decoder_model_merged.onnx", "encoder_hidden_states", "encoder_states")
    assert_exit2_one_line(cli("models", "verify", tiny, "--variant", "fp32"),
                          "decoder_model_merged.onnx", "missing input 'encoder_hidden_states'")


def test_cli_verify_rejects_vocabulary_mismatch(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    tok.add_tokens([f"<extra_{i}>" for i in range(8)])  # 51297 > 51290 embedding rows
    tok.save_pretrained(str(tiny))
    assert_exit2_one_line(cli("models", "verify", tiny), "embed_tokens.onnx",
                          "tokenizer has 51297 tokens but the embedding table has only 51290 rows")


def test_cli_verify_rejects_unknown_variant(tiny):
    assert_exit2_one_line(cli("models", "verify", tiny, "--variant", "int3"), "unknown model variant 'int3'")


def test_cli_list(tiny):
    r = cli("models", "list", tiny)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "vision_encoder:" and lines[1].split()[0] == "fp32" and lines[2].split()[0] == "int8"
    assert lines[1].split()[3] == "vision_encoder.onnx" and lines[1].split()[2] == "MB"
    assert "complete variants (one suffix for every part): fp32, int8" in lines
    assert "complete combinations (any usable graph per part): 16" in lines
    assert lines[-1].startswith("auto picks: int8 (")


def test_cli_quantize(tiny):
    for f in (tiny / "onnx").glob("*_int8.onnx"):
        f.unlink()
    r = cli("models", "quantize", tiny, "--dtype", "int8")
    assert r.exit_code == 0, r.output
    assert r.stdout.count("wrote ") == 6  # the four onnx-community parts and the fast decoder's two
    assert "decoder_step_int8.onnx" in r.stdout and cli("models", "verify", tiny, "--variant", "int8").exit_code == 0


def test_cli_export_needs_one_source(tmp_path):
    assert_exit2_one_line(cli("models", "export", tmp_path / "out"), "exactly one of --from DIR or --random-config")


def test_cli_export_without_torch(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    assert_exit2_one_line(cli("models", "export", "--random-config", "tiny", tmp_path / "out"),
                          "torch is not installed: pip install 'edge-agent[export]'")


def test_cli_export_random_tiny(tmp_path):
    """The CLI wiring to models.export; the export itself is tested in the export tests."""
    r = cli("models", "export", "--random-config", "tiny", "--seed", "1", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "ok vocabulary" in r.stdout and open_model_dir(tmp_path / "out", "fp32").variant == ""


def test_verify_external_data(tiny):
    """Big graphs keep weights in a side file; verify reads the graph without it but wants it present."""
    f = tiny / "onnx" / "embed_tokens.onnx"
    onnx.save(onnx.load(str(f)), str(f), save_as_external_data=True, location="embed_tokens.onnx_data", size_threshold=0)
    assert read_graph_meta(f).external_files == {"embed_tokens.onnx_data"}
    assert cli("models", "verify", tiny, "--variant", "fp32").exit_code == 0
    (tiny / "onnx" / "embed_tokens.onnx_data").unlink()
    assert_exit2_one_line(cli("models", "verify", tiny, "--variant", "fp32"),
                          "embed_tokens.onnx: its weights file embed_tokens.onnx_data is missing")


def test_verify_truncated_file(tiny):
    f = tiny / "onnx" / "vision_encoder.onnx"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_exit2_one_line(cli("models", "verify", tiny), "vision_encoder.onnx: cannot read ONNX graph")


def test_verify_kv_heads_against_config(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    heads = cfg["text_config"]["decoder_attention_heads"]
    cfg["text_config"]["decoder_attention_heads"] = heads * 2
    (tiny / "config.json").write_text(json.dumps(cfg))
    r = cli("models", "verify", tiny)
    assert_exit2_one_line(r, "decoder_model_merged", "past_key_values.0.decoder.key", f"expected {heads * 2}")


NO_TORCH = '''
import importlib.abc, importlib.util, sys
BLOCKED = ("torch", "torchvision")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda n, p=None: None if n.split(".")[0] in BLOCKED else _find_spec(n, p)
sys.meta_path.insert(0, Block())
import numpy as np
from edge_agent.models.modeldir import open_model_dir, verify
from edge_agent.models.parse import parse_task
from edge_agent.models.preprocess import preprocess
import edge_agent.models.quantize  # noqa: F401
import edge_agent.models.pull  # noqa: F401
from edge_agent import models
md = open_model_dir(sys.argv[1])
tok = md.load_tokenizer()
x = preprocess([np.zeros((10, 20, 3), np.uint8)], md.preprocess_config())
ids = tok("</s><s>car<loc_1><loc_2><loc_3><loc_4></s>", add_special_tokens=False)["input_ids"]
assert parse_task("od", ids, [1.0] * len(ids), tok).labels == ("car",) and x.shape == (1, 3, 768, 768)
assert verify(md.path)[-1].startswith("ok:")
assert "torch" not in sys.modules
print("ok without torch")
'''


def test_runtime_parts_work_without_torch(tiny):
    """Tokenizer, preprocessing, parsing and verify on a machine without torch (the Pi)."""
    import subprocess
    import sys

    root = TINY.parents[2]
    r = subprocess.run([sys.executable, "-c", NO_TORCH, str(tiny)], capture_output=True, text=True, cwd=root,
                       timeout=300)
    assert r.returncode == 0 and "ok without torch" in r.stdout, r.stderr
