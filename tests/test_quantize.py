"""`quantize_dir`: int8 / q4 / fp16 variants of the tiny fixture load, run, stay close to
fp32 and pass `verify`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_agent.models.errors import ModelDirError, ModelSettingError
from edge_agent.models.modeldir import FAST_PARTS, PARTS, VARIANTS, open_model_dir, verify
from edge_agent.models.onnxmeta import read_graph_meta
from edge_agent.models.quantize import quantize_dir
from edge_agent.models.rowscale import activation_bits, add_overrides

TINY = Path(__file__).resolve().parent / "fixtures" / "tiny-florence2"


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory):
    if not (TINY / "onnx" / "vision_encoder.onnx").is_file():
        pytest.skip("tiny fixture model not present")
    d = tmp_path_factory.mktemp("q") / "m"
    variants = [f"*{v}.onnx{data}" for v in VARIANTS if v for data in ("", "_data")]
    fast = [f"{p}.onnx" for p in FAST_PARTS]  # quantized with the rest in tests/test_fast_decoder.py
    shutil.copytree(TINY, d, ignore=shutil.ignore_patterns(*variants, *fast))  # the four fp32 graphs only
    assert sorted(p.name for p in (d / "onnx").iterdir()) == sorted([f"{part}.onnx" for part in PARTS] + ["embed_tokens.onnx_data"])
    return d


def op_types(graph) -> set[str]:
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                ops |= op_types(attr.g)
    return ops


def feeds(sess, part, cfg, rng):
    d, h = cfg["d_model"], cfg["decoder_attention_heads"]
    f = {}
    for i in sess.get_inputs():
        n = i.name
        if n == "pixel_values":
            f[n] = rng.standard_normal((2, 3, 768, 768)).astype(np.float32)
        elif n == "input_ids":
            f[n] = np.array([[0, 574, 22486, 5, 2]] * 2, np.int64)
        elif n == "inputs_embeds":
            f[n] = rng.standard_normal((2, 5 if part == "encoder_model" else 1, d)).astype(np.float32)
        elif n in ("attention_mask", "encoder_attention_mask"):
            f[n] = np.ones((2, 5), np.int64)
        elif n == "encoder_hidden_states":
            f[n] = rng.standard_normal((2, 5, d)).astype(np.float32)
        elif n == "use_cache_branch":
            f[n] = np.array([False])
        else:  # past_key_values.*: empty past on the first step
            f[n] = np.zeros((2, h, 0, d // h), np.float32)
    return f


def run(file, part, cfg):
    so = ort.SessionOptions()
    add_overrides(so, activation_bits())  # as the engine loads graphs on this CPU (models/rowscale.py)
    sess = ort.InferenceSession(str(file), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds(sess, part, cfg, np.random.default_rng(0)))[0]


@pytest.mark.parametrize("dtype, suffix, expect_op, min_corr", [
    ("int8", "_int8", "MatMulIntegerToFloat", 0.99),  # per-row int8 (models/rowquant.py)
    ("q4", "_q4", "MatMulNBits", 0.9),
    ("fp16", "_fp16", None, 0.999),
])
def test_quantize_variant(fp32_dir, dtype, suffix, expect_op, min_corr):
    written = quantize_dir(fp32_dir, dtype)
    assert [p.name for p in written] == [f"{part}{suffix}.onnx" for part in PARTS]
    assert not list((fp32_dir / "onnx").glob(".quantize-*"))
    md = open_model_dir(fp32_dir, dtype)
    assert md.variant == suffix
    assert any(line.strip().startswith(f"ok decoder_model_merged{suffix}.onnx") for line in verify(fp32_dir, dtype))
    decoder = onnx.load(str(md.onnx_path("decoder_model_merged")), load_external_data=False)
    if expect_op:
        assert expect_op in op_types(decoder.graph)  # also inside the If branches
    else:
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in decoder.graph.initializer) or \
            "Cast" in op_types(decoder.graph)
    cfg = json.loads((fp32_dir / "config.json").read_text())["text_config"]
    for part in PARTS:
        ref = run(fp32_dir / "onnx" / f"{part}.onnx", part, cfg)
        got = run(md.onnx_path(part), part, cfg)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > min_corr, part


def test_q4_embedding_is_block_quantized(fp32_dir):
    quantize_dir(fp32_dir, "q4", parts=("embed_tokens",))
    m = onnx.load(str(fp32_dir / "onnx" / "embed_tokens_q4.onnx"))
    assert "GatherBlockQuantized" in op_types(m.graph)


def test_int8_matches_committed_fixture_variant(fp32_dir):
    """The fixture's _int8 files were made by this same function (tests/fixtures/make_tiny_model.py)."""
    quantize_dir(fp32_dir, "int8", parts=("encoder_model",))
    ours = onnx.load(str(fp32_dir / "onnx" / "encoder_model_int8.onnx"))
    committed = onnx.load(str(TINY / "onnx" / "encoder_model_int8.onnx"))
    assert op_types(ours.graph) == op_types(committed.graph)


def test_missing_fp32_source(tmp_path):
    (tmp_path / "onnx").mkdir()
    with pytest.raises(ModelDirError, match="vision_encoder.onnx: file missing"):
        quantize_dir(tmp_path, "int8")


def test_unknown_dtype(tmp_path):
    with pytest.raises(ModelSettingError, match="'int4'"):
        quantize_dir(tmp_path, "int4")


def test_broken_source_names_file(tmp_path):
    (tmp_path / "onnx").mkdir()
    for part in PARTS:
        (tmp_path / "onnx" / f"{part}.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelDirError, match="vision_encoder.onnx: .* while converting") as e:
        quantize_dir(tmp_path, "fp16")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "onnx" / "vision_encoder_fp16.onnx").exists()


@pytest.mark.parametrize("dtype", ["int8", "q4", "fp16"])
def test_external_data_output(tmp_path, monkeypatch, dtype):
    """What happens for graphs over the protobuf limit, forced here with a zero threshold."""
    from edge_agent.models import quantize as q

    if not (TINY / "onnx" / "encoder_model.onnx").is_file():
        pytest.skip("tiny fixture model not present")
    d = tmp_path / "m"
    shutil.copytree(TINY, d, ignore=shutil.ignore_patterns(*[f"*{v}.onnx" for v in VARIANTS if v]))
    monkeypatch.setattr(q, "EXTERNAL_DATA_ABOVE", 0)
    (dst,) = quantize_dir(d, dtype, parts=("encoder_model",))
    meta_files = read_graph_meta(dst).external_files
    assert meta_files and all((dst.parent / f).is_file() for f in meta_files)
    assert not list((d / "onnx").glob(".quantize-*"))
    cfg = json.loads((d / "config.json").read_text())["text_config"]
    ref = run(d / "onnx" / "encoder_model.onnx", "encoder_model", cfg)
    got = run(dst, "encoder_model", cfg)
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("dtype", ["int8", "q4", "fp16"])
def test_embedding_table_goes_to_a_mapped_file(fp32_dir, dtype):
    """Every variant's embed_tokens keeps its table in `<graph>_data`, readable as the graph is."""
    (dst,) = quantize_dir(fp32_dir, dtype, parts=("embed_tokens",))
    data = dst.with_name(dst.name + "_data")
    assert read_graph_meta(dst).external_files == {data.name}
    assert data.stat().st_mode & 0o777 == (fp32_dir / "onnx" / "embed_tokens.onnx").stat().st_mode & 0o777
    ids = np.array([[0, 2, 51288]], np.int64)
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    ref = ort.InferenceSession(str(fp32_dir / "onnx" / "embed_tokens.onnx"),
                               providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99


RSS_PROBE = """
import sys, numpy as np, onnxruntime as ort
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
before = rss()
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
s.run(None, {"input_ids": np.array([[0, 7, 19999]], np.int64)})
print(rss() - before)
"""


def test_mapped_embedding_table_is_resident_only_where_read(tmp_path):
    """The reason for map_weights: ORT maps external data, and a Gather reads only some rows.
    A 64 MB table: inline it costs its size in RSS; mapped, a few pages."""
    import subprocess
    import sys

    from edge_agent.models.export import map_weights

    table = onnx.numpy_helper.from_array(np.random.default_rng(0).random((20000, 800), np.float32), "table")
    node = onnx.helper.make_node("Gather", ["table", "input_ids"], ["inputs_embeds"])
    graph = onnx.helper.make_graph(
        [node], "embed", [onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, [1, None])],
        [onnx.helper.make_tensor_value_info("inputs_embeds", onnx.TensorProto.FLOAT, [1, None, 800])], [table])
    inline, mapped = tmp_path / "inline.onnx", tmp_path / "mapped.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8), str(inline))
    shutil.copyfile(inline, mapped)
    map_weights(mapped)
    assert (tmp_path / "mapped.onnx_data").stat().st_size >= 64_000_000
    grow = {f.name: int(subprocess.run([sys.executable, "-c", RSS_PROBE, str(f)], capture_output=True, text=True,
                                       check=True).stdout) for f in (inline, mapped)}
    assert grow["inline.onnx"] > 55 and grow["mapped.onnx"] < 16, grow
