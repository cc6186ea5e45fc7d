"""`models optimize` (models/optimize.py): the fast decoder built from an onnx-community-layout
folder's fp32 decoder_model_merged with numpy and onnx only; parity with the merged graph, the
same weights as `models export` writes, token parity with transformers."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.make_tiny_model import DEFAULT_OUT as TINY  # noqa: E402

from edge_agent.models.errors import ModelDirError  # noqa: E402
from edge_agent.models.modeldir import FAST_PARTS  # noqa: E402
from edge_agent.models.optimize import check_parity, optimize_dir, weights_from_merged  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def community(tmp_path_factory):
    """The tiny fixture as onnx-community ships it: the four parts (fp32 and int8), no fast decoder."""
    d = tmp_path_factory.mktemp("oc") / "Florence-2-tiny"
    shutil.copytree(TINY, d, ignore=shutil.ignore_patterns("decoder_cross_kv*", "decoder_step*"))
    return d


@pytest.fixture(scope="module")
def optimized(community):
    written = optimize_dir(community)
    assert [p.name for p in written] == ["decoder_cross_kv.onnx", "decoder_step.onnx",
                                        "decoder_cross_kv_int8.onnx", "decoder_step_int8.onnx"]
    return community


@pytest.mark.parametrize("part", [p + s for p in FAST_PARTS for s in ("", "_int8")])
def test_graphs_equal_the_exports(optimized, part):
    """Same weights as `models export` takes from the torch model, hence the same graphs: byte for
    byte but for the int8 self-attention caches' calibrated scales (models/calibrate.py), which come
    from an fp32 run whose float sums follow this CPU's kernels (the fixture's were measured on
    another CPU: 1e-8 apart on an AVX2-only one)."""
    ours = onnx.load(str(optimized / "onnx" / f"{part}.onnx"))
    export = onnx.load(str(TINY / "onnx" / f"{part}.onnx"))
    assert len(ours.graph.initializer) == len(export.graph.initializer) > 10
    calibrated = 0
    for a, b in zip(ours.graph.initializer, export.graph.initializer):
        assert a.name == b.name
        if a.name.startswith("self.") and a.name.endswith(("key_scale", "value_scale")):
            np.testing.assert_allclose(numpy_helper.to_array(a), numpy_helper.to_array(b), rtol=1e-5, atol=0)
            b.CopyFrom(a)
            calibrated += 1
        else:
            np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    assert calibrated == (4 if part == "decoder_step_int8" else 0)  # 2 layers, keys and values
    assert ours.SerializeToString() == export.SerializeToString()


def test_weights_found_by_structure_equal_the_torch_models():
    torch = pytest.importorskip("torch")  # noqa: F841
    from fixtures.make_tiny_model import build_torch_model
    from edge_agent.models.export_step import decoder_weights

    want = decoder_weights(build_torch_model())
    got = weights_from_merged(onnx.load(str(TINY / "onnx" / "decoder_model_merged.onnx")), want.heads)
    np.testing.assert_array_equal(got.lm_head, want.lm_head)
    np.testing.assert_array_equal(got.positions, want.positions)
    for lg, lw in zip(got.layers, want.layers):
        for name in ("q", "k", "v", "out", "cq", "ck", "cv", "cout", "fc1", "fc2"):
            np.testing.assert_array_equal(getattr(lg, name).weight, getattr(lw, name).weight, err_msg=name)
            np.testing.assert_array_equal(getattr(lg, name).bias, getattr(lw, name).bias, err_msg=name)
        for name in ("self_norm", "cross_norm", "final_norm"):
            np.testing.assert_array_equal(getattr(lg, name).weight, getattr(lw, name).weight)
            assert np.float32(getattr(lg, name).eps) == np.float32(getattr(lw, name).eps)  # ONNX stores a float32


def test_parity_check_catches_a_wrong_weight():
    from edge_agent.models.export_step import build_cross_kv, build_step

    merged = TINY / "onnx" / "decoder_model_merged.onnx"
    w = weights_from_merged(onnx.load(str(merged)), 3)
    assert check_parity(merged, build_cross_kv(w), build_step(w), 3) < 1e-5
    w.layers[1].fc2.weight = w.layers[1].fc2.weight * 1.1
    assert check_parity(merged, build_cross_kv(w), build_step(w), 3) > 1e-3


def test_token_ids_equal_transformers(optimized):
    torch = pytest.importorskip("torch")  # noqa: F841
    from test_generation_parity import MAX_NEW, assert_token_exact, synthetic_tiles
    from fixtures.make_tiny_model import build_torch_model
    from edge_agent.models.engine import EngineOptions, Florence2Engine

    eng = Florence2Engine(EngineOptions(model_dir=optimized, variant="", num_beams=1, max_new_tokens=MAX_NEW))
    assert type(eng.runner).__name__ == "BufferedRunner"
    tiles = synthetic_tiles()
    outs = eng.run(tiles, ("od", "ocr"))
    assert_token_exact(build_torch_model(), eng, tiles, outs)


def test_not_a_merged_decoder(tmp_path, community):
    d = tmp_path / "m"
    shutil.copytree(community, d, ignore=shutil.ignore_patterns("decoder_cross_kv*", "decoder_step*"))
    shutil.copyfile(d / "onnx" / "encoder_model.onnx", d / "onnx" / "decoder_model_merged.onnx")
    with pytest.raises(ModelDirError, match=r"decoder_model_merged\.onnx: cannot find the decoder weights"):
        optimize_dir(d)
    assert not list((d / "onnx").glob("decoder_step*"))
    (d / "onnx" / "decoder_model_merged.onnx").unlink()
    with pytest.raises(ModelDirError, match=r"decoder_model_merged\.onnx: file missing"):
        optimize_dir(d)


def test_cli_optimize(tmp_path, community):
    d = tmp_path / "m"
    shutil.copytree(community, d, ignore=shutil.ignore_patterns("decoder_cross_kv*", "decoder_step*", "*_int8*"))
    run = subprocess.run([sys.executable, "-m", "edge_agent", "models", "optimize", str(d)], capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "decoder_step.onnx" in run.stdout and "ok decoder_step.onnx" in run.stdout
    assert not (d / "onnx" / "decoder_step_int8.onnx").exists()  # no int8 variant in the folder, none asked
    (d / "onnx" / "decoder_model_merged.onnx").unlink()
    run = subprocess.run([sys.executable, "-m", "edge_agent", "models", "optimize", str(d)], capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 2 and "decoder_model_merged.onnx: file missing" in run.stderr
    assert "Traceback" not in run.stderr
