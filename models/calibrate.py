"""Fixed scales for the int8 self-attention caches of the fast decoder
(models/export_step.int8_self_kv_step), measured on the model's own fp32 graphs.

    key_scales, value_scales = self_kv_scales(model_dir, images)

GroupQueryAttention's quantized cache takes its scales as inputs, fixed before a sequence starts,
so they are measured once, when `models quantize` writes the int8 variant: every image (HxWx3
uint8) runs `<OD>` and `<OCR_WITH_REGION>` greedy through the fp32 engine, each sequence is fed
through the fp32 decoder_step again, and the largest |key| and |value| per layer, head and channel
over every position is taken.  scale = MARGIN x that peak / 127: a value up to twice the largest
one seen is still represented, at the cost of one bit for the values seen.  Values beyond are
clipped to +-127 steps.

Default images (none given): a drawn stand-in, coloured boxes on a shelf-like background (no
fonts, no files).  `edge-agent models quantize` passes the bundled sample frame instead.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

MARGIN = 2.0
TOKENS = 128  # new tokens per sequence while measuring
TINY = 1e-6


def stand_in_images(count: int = 2, side: int = 768, seed: int = 0) -> list[np.ndarray]:
    """Deterministic shelf-like pictures: rows of coloured boxes over a lit background, with noise."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        yy, xx = np.mgrid[0:side, 0:side] / side
        img = (80 + 120 * (0.6 * yy + 0.4 * xx))[..., None] * np.ones(3)
        rows = int(rng.integers(2, 5))
        for r in range(rows):
            top, bottom = int(r * side / rows), int((r + 1) * side / rows)
            x = 0
            while x < side:
                w = int(rng.integers(side // 24, side // 8))
                h = int((bottom - top) * rng.uniform(0.5, 0.9))
                img[bottom - h:bottom - 6, x:x + w - 3] = rng.integers(20, 236, 3)
                x += w
            img[bottom - 6:bottom] = rng.integers(40, 200, 3)
        img += rng.normal(0, 4, img.shape)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images


def self_kv_scales(model_dir, images: list[np.ndarray] | None = None, tokens: int = TOKENS,
                   margin: float = MARGIN) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer, [H, Dh] scales for the self-attention keys and values (see the module doc).
    Needs the folder's fp32 graphs with the fast decoder; raises ModelError otherwise."""
    from edge_agent.models.engine import TASKS, EngineOptions, Florence2Engine
    from edge_agent.models.errors import ModelDirError
    from edge_agent.models.runners import BufferedRunner

    eng = Florence2Engine(EngineOptions(model_dir=model_dir, variant="", num_beams=1, max_new_tokens=tokens,
                                        fast_decoder=True))
    runner = eng.runner
    if not isinstance(runner, BufferedRunner) or runner.self_dtype != np.float32:
        raise ModelDirError(f"{model_dir}: calibration needs the fp32 fast decoder (decoder_step.onnx)")
    images = stand_in_images() if images is None else images
    feats = eng.image_features(list(images))
    seqs = [g.ids for g in eng.decode(feats, TASKS, [eng.settings] * (len(feats) * len(TASKS)))]
    hidden, mask = eng.encode(feats, TASKS)  # the same (tile, task) rows, in the same order
    layers = runner.num_layers
    peaks = np.zeros((2 * layers, runner.heads, runner.head_dim), np.float32)
    for r, ids in enumerate(seqs):
        _, cache = runner.first(np.asarray(ids[:1], np.int64), hidden[r:r + 1], mask[r:r + 1], len(ids))
        for tok in ids[1:-1]:  # the last token's key/value is never read
            runner.step(np.asarray([tok], np.int64), cache)
        for j, buf in enumerate(cache.bufs):
            np.maximum(peaks[j], np.abs(buf[0, :, :cache.length]).max(axis=1), out=peaks[j])
    scales = np.maximum(peaks * (margin / 127), TINY)
    log.info("self-attention cache scales from %d sequences, %d positions", len(seqs), sum(len(s) - 1 for s in seqs))
    return [scales[2 * i] for i in range(layers)], [scales[2 * i + 1] for i in range(layers)]
