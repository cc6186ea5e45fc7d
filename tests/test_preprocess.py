"""Preprocessing parity with the reference image processor.

Reference = the image processor Florence2Processor runs: transformers' CLIPImageProcessor
with Florence-2's preprocessor_config.json.  Without torchvision (this venv, and any
torch-free edge device) transformers uses its Pillow backend, CLIPImageProcessorPil, which
our numpy/Pillow code reproduces exactly (max |diff| == 0, well inside the 1e-4 budget).
With torchvision installed transformers would pick the torchvision backend, whose bicubic
kernel (torch, a=-0.75, on floats) differs from Pillow's (a=-0.5, uint8 output); that is
not what a tokenizer-only run time can use, so it is not our reference.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from edge_agent.models.errors import ModelDirError
from florence_reference import FLORENCE_PREPROCESSOR, processor
from edge_agent.models.preprocess import PreprocessConfig, preprocess

SHAPES = [(480, 640), (1080, 1920), (1000, 300), (768, 768), (77, 123), (1, 1), (2000, 2000)]


def images(shapes, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k, (h, w) in enumerate(shapes):
        if k % 2:  # smooth content as well as noise: bicubic overshoot and rounding both matter
            y, x = np.mgrid[0:h, 0:w]
            img = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) % 256)], -1)
            out.append(img.astype(np.uint8))
        else:
            out.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return out


def test_matches_reference_image_processor():
    ims = images(SHAPES)
    ref = processor().image_processor(images=ims, return_tensors="np")["pixel_values"]
    ours = preprocess(ims, PreprocessConfig())
    assert ours.shape == (len(ims), 3, 768, 768) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.array_equal(ours, ref)  # bit-exact in fact


def test_matches_full_processor_call():
    ims = images([(300, 500)], seed=3)
    ref = processor()(images=ims, text="<OD>", return_tensors="np")["pixel_values"]
    assert np.array_equal(preprocess(ims), ref)


def test_reference_is_not_trivially_equal():
    """Different images give different tensors (the comparison above can fail)."""
    a, b = preprocess(images([(480, 640)], seed=1)), preprocess(images([(480, 640)], seed=2))
    assert np.abs(a - b).max() > 1


def test_from_dir_reads_preprocessor_config(tmp_path):
    cfg = dict(FLORENCE_PREPROCESSOR, size={"height": 384, "width": 512}, image_mean=[0.5, 0.5, 0.5],
               image_std=[0.5, 0.5, 0.5], resample=2)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    c = PreprocessConfig.from_dir(tmp_path)
    assert c.size == (384, 512) and c.mean == (0.5, 0.5, 0.5) and c.resample == 2
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    ims = images([(200, 300)])
    ref = CLIPImageProcessorPil(**cfg)(images=ims, return_tensors="np")["pixel_values"]
    assert np.array_equal(preprocess(ims, c), ref)


def test_from_dir_defaults_when_missing(tmp_path):
    assert PreprocessConfig.from_dir(tmp_path) == PreprocessConfig()


@pytest.mark.parametrize("content, match", [
    ("{not json", "cannot read JSON"),
    ('{"size": {"shortest_edge": 768}}', "size must be"),
    ('{"resample": 9}', "resample"),
    ('{"image_std": [0.2, 0.2]}', "image_std"),
    ('{"do_center_crop": true}', "do_center_crop"),
])
def test_bad_config_names_file(tmp_path, content, match):
    f = tmp_path / "preprocessor_config.json"
    f.write_text(content)
    with pytest.raises(ModelDirError, match=match) as e:
        PreprocessConfig.from_dir(tmp_path)
    assert str(f) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)])
def test_rejects_non_rgb_uint8(bad):
    with pytest.raises(ValueError, match="image 0"):
        preprocess([bad])


def test_empty_batch():
    assert preprocess([]).shape == (0, 3, 768, 768)
