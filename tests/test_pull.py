"""`models pull`: name resolution, what is fetched, and clear failures offline, unreachable
or without huggingface_hub.  No real download happens here."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError, ModelError
from models import pull as pull_mod
from models.pull import allow_patterns, pull, repo_id

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny-florence2"


def test_repo_names():
    assert repo_id("base") == "onnx-community/Florence-2-base-ft"
    assert repo_id("Florence-2-large-ft") == "onnx-community/Florence-2-large-ft"
    assert repo_id("onnx-community/Florence-2-base-ft") == "onnx-community/Florence-2-base-ft"
    assert repo_id("me/my-florence") == "me/my-florence"
    with pytest.raises(ConfigError, match="'huge'"):
        repo_id("huge")


def test_allow_patterns_fetch_only_one_variant():
    from huggingface_hub.utils import filter_repo_objects

    files = ["config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
             "tokenizer_config.json", "vocab.json", "merges.txt", "README.md", "onnx/decoder_model.onnx",
             "onnx/decoder_with_past_model_int8.onnx"]
    for part in ("vision_encoder", "embed_tokens", "encoder_model", "decoder_model_merged"):
        files += [f"onnx/{part}{v}.onnx" for v in ("", "_fp16", "_int8", "_q4", "_bnb4")]
    got = set(filter_repo_objects(files, allow_patterns=allow_patterns("_int8")))
    assert got == {"config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
                   "tokenizer_config.json", "vocab.json", "merges.txt", "onnx/vision_encoder_int8.onnx",
                   "onnx/embed_tokens_int8.onnx", "onnx/encoder_model_int8.onnx",
                   "onnx/decoder_model_merged_int8.onnx"}


def fake_hub(monkeypatch, source: Path):
    """snapshot_download served from a local folder, with huggingface_hub's own pattern filter."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    calls = []

    def snapshot_download(repo_id, local_dir, allow_patterns, **_):
        calls.append(repo_id)
        names = [str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()]
        for name in filter_repo_objects(names, allow_patterns=allow_patterns):
            (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / name, Path(local_dir) / name)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_pull_from_fake_hub(tmp_path, monkeypatch):
    if not TINY.is_dir():
        pytest.skip("tiny fixture model not present")
    calls = fake_hub(monkeypatch, TINY)
    out = pull("base", "int8", tmp_path / "m")
    assert calls == ["onnx-community/Florence-2-base-ft"]
    graphs = [f"{p}_int8.onnx" for p in ("vision_encoder", "embed_tokens", "encoder_model", "decoder_model_merged")]
    # the fixture's embedding table is external data (models/export.py map_weights): fetched with its graph
    assert sorted(p.name for p in (out / "onnx").iterdir()) == sorted(graphs + ["embed_tokens_int8.onnx_data"])
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    with pytest.raises(ModelError, match="vision_encoder_q4.onnx: file missing"):
        pull("base", "q4", tmp_path / "m2")  # the repository lacks that variant


def test_pull_without_huggingface_hub(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ConfigError, match=r"huggingface_hub is not installed: pip install 'edge-agent\[pull\]'"):
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


def test_default_variant_is_cpu_preference():
    from models.modeldir import CPU_PREFERENCE

    assert pull_mod.DEFAULT_VARIANT == CPU_PREFERENCE[0]


def test_dest_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        pull("base", "int8", f)


def test_local_disk_error_is_not_reported_as_network(tmp_path, monkeypatch):
    import huggingface_hub

    def snapshot_download(**_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(ConfigError, match="cannot write: Permission denied"):
        pull("base", "int8", tmp_path / "m")
