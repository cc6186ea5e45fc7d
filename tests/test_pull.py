"""`models pull`: name resolution, what is fetched, and clear failures offline, unreachable
or without huggingface_hub.  No real download happens here."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_agent.models.errors import ModelDirError, ModelError, ModelSettingError
from edge_agent.models.pull import DEFAULT_VARIANT, plan, pull, pull_mix, repo_id
from edge_agent.models.variants import Mix, parse_mix

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny-florence2"


def test_repo_names():
    assert repo_id("base") == "onnx-community/Florence-2-base-ft"
    assert repo_id("Florence-2-large-ft") == "onnx-community/Florence-2-large-ft"
    assert repo_id("onnx-community/Florence-2-base-ft") == "onnx-community/Florence-2-base-ft"
    assert repo_id("me/my-florence") == "me/my-florence"
    with pytest.raises(ModelSettingError, match="'huge'"):
        repo_id("huge")


def _listing(files):
    return {f: 1000 * (i + 1) for i, f in enumerate(files)}


def test_plan_fetches_one_graph_per_part_with_its_data():
    files = ["config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
             "tokenizer_config.json", "vocab.json", "merges.txt", "README.md", "onnx/decoder_model.onnx",
             "onnx/decoder_with_past_model_int8.onnx", "onnx/vision_encoder.onnx_data"]
    for part in ("vision_encoder", "embed_tokens", "encoder_model", "decoder_model_merged"):
        files += [f"onnx/{part}{v}.onnx" for v in ("", "_fp16", "_int8", "_q4", "_bnb4")]
    listing = _listing(files)
    p = plan("r/m", parse_mix("vision_encoder=fp32,int8"), listing)
    assert set(p.files) == {"config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
                            "tokenizer_config.json", "vocab.json", "merges.txt", "onnx/vision_encoder.onnx",
                            "onnx/vision_encoder.onnx_data", "onnx/embed_tokens_int8.onnx",
                            "onnx/encoder_model_int8.onnx", "onnx/decoder_model_merged_int8.onnx"}
    assert p.part_bytes("vision_encoder") == listing["onnx/vision_encoder.onnx"] + listing["onnx/vision_encoder.onnx_data"]
    assert p.total_bytes == sum(listing[f] for f in p.files if f.startswith("onnx/"))
    with pytest.raises(ModelDirError, match=r"r/m has no onnx/vision_encoder_q4f16.onnx \(variant q4f16\); "
                                          r"its vision_encoder variants: bnb4, fp16, fp32, int8, q4"):
        plan("r/m", parse_mix("q4f16"), listing)


def test_pull_default_and_auto_parts():
    assert pull_mix(None) == parse_mix(DEFAULT_VARIANT)
    assert pull_mix("auto") == parse_mix(DEFAULT_VARIANT)
    m = pull_mix("vision_encoder=fp16")
    assert m["vision_encoder"] == "_fp16" and m["decoder_model_merged"] == parse_mix(DEFAULT_VARIANT)["decoder_model_merged"]
    assert pull_mix("_q4") == pull_mix("q4") == Mix.uniform("_q4")


def fake_hub(monkeypatch, source: Path):
    """The Hub's file list and snapshot_download served from a local folder, with huggingface_hub's
    own pattern filter."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    calls = []

    def names():
        return [str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()]

    def model_info(self, repo_id, files_metadata=False, **_):
        calls.append(("info", repo_id))
        siblings = [SimpleNamespace(rfilename=n, size=(source / n).stat().st_size) for n in names()]
        return SimpleNamespace(siblings=siblings, sha="0" * 40)

    def snapshot_download(repo_id, local_dir, allow_patterns, **_):
        calls.append(("download", repo_id))
        for name in filter_repo_objects(names(), allow_patterns=allow_patterns):
            (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / name, Path(local_dir) / name)
        return local_dir

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_pull_from_fake_hub(tmp_path, monkeypatch):
    if not TINY.is_dir():
        pytest.skip("tiny fixture model not present")
    calls = fake_hub(monkeypatch, TINY)
    said = []
    out = pull("base", "vision_encoder=fp32,int8", tmp_path / "m", echo=said.append)
    assert calls == [("info", "onnx-community/Florence-2-base-ft"), ("download", "onnx-community/Florence-2-base-ft")]
    graphs = ["vision_encoder.onnx"] + [f"{p}_int8.onnx" for p in ("embed_tokens", "encoder_model", "decoder_model_merged")]
    # the fixture's embedding table is external data (models/export.py map_weights): fetched with its graph
    assert sorted(p.name for p in (out / "onnx").iterdir()) == sorted(graphs + ["embed_tokens_int8.onnx_data"])
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    assert said[0] == "onnx-community/Florence-2-base-ft: variant vision_encoder=fp32,int8"
    emb = (TINY / "onnx" / "embed_tokens_int8.onnx").stat().st_size + (TINY / "onnx" / "embed_tokens_int8.onnx_data").stat().st_size
    assert any("onnx/embed_tokens_int8.onnx" in ln and f"{emb / 1e6:.1f} MB" in ln for ln in said), said
    assert said[-1].strip().startswith("total (graphs)")
    calls.clear()
    with pytest.raises(ModelDirError, match=r"has no onnx/vision_encoder_q4.onnx \(variant q4\); its vision_encoder "
                                          r"variants: fp32, int8"):
        pull("base", "q4", tmp_path / "m2")  # the repository lacks that variant: nothing is downloaded
    assert calls == [("info", "onnx-community/Florence-2-base-ft")] and not (tmp_path / "m2").exists()


def test_pull_without_huggingface_hub(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ModelError, match=r"huggingface_hub is not installed: pip install 'edge-agent\[pull\]'"):
        pull("base", "int8", tmp_path)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when we return: connections are refused


def run_cli(tmp_path, **env):
    full = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", **env}
    full.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "edge_agent", "models", "pull", "base", "--dest", str(tmp_path / "m")],
                          env=full, capture_output=True, text=True, timeout=120, cwd=ROOT)


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("edge-agent: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_cli_offline(tmp_path):
    r = run_cli(tmp_path, HF_HUB_OFFLINE="1")
    assert r.returncode == 1, r.stderr
    assert "offline mode is on" in one_error_line(r.stderr)


def test_cli_unreachable_endpoint(tmp_path):
    r = run_cli(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HUB_ETAG_TIMEOUT="5")
    assert r.returncode == 1, r.stderr
    line = one_error_line(r.stderr)
    assert "onnx-community/Florence-2-base-ft: cannot download" in line and "unreachable" in line


def test_cli_bad_variant(tmp_path):
    from click.testing import CliRunner

    from edge_agent.cli import cli

    r = CliRunner().invoke(cli, ["models", "pull", "base", "--variant", "int5", "--dest", str(tmp_path)])
    assert r.exit_code == 2 and "unknown model variant 'int5'" in r.stderr


def test_dest_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ModelSettingError, match="exists and is not a directory"):
        pull("base", "int8", f)


def test_local_disk_error_is_not_reported_as_network(tmp_path, monkeypatch):
    import huggingface_hub

    fake_hub(monkeypatch, TINY)

    def snapshot_download(**_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(ModelError, match="cannot write: Permission denied"):
        pull("base", "int8", tmp_path / "m")


def test_pull_optimize_fetches_the_fp32_decoder_and_builds_the_fast_decoder(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    calls = fake_hub(monkeypatch, TINY)
    said = []
    out = pull("base", "int8", tmp_path / "m", optimize=True, echo=said.append)
    assert calls[-1] == ("download", "onnx-community/Florence-2-base-ft")
    assert any(ln.strip().startswith("onnx/decoder_model_merged.onnx ") for ln in said), said
    names = {p.name for p in (out / "onnx").iterdir()}
    assert {"decoder_model_merged.onnx", "decoder_cross_kv_int8.onnx", "decoder_step_int8.onnx"} <= names
    from edge_agent.models.modeldir import open_model_dir

    assert open_model_dir(out, "int8").fast_decoder_paths() is not None
