"""Image preprocessing identical to the reference image processor, numpy + Pillow only.

The reference is what `Florence2Processor` uses: transformers' `CLIPImageProcessor`
configured by Florence-2's preprocessor_config.json.  Without torchvision (the case on an
edge device and in this venv) transformers picks its Pillow backend
(`CLIPImageProcessorPil`), which does exactly this:

1. Pillow `Image.resize((768, 768), BICUBIC)` on the uint8 image, aspect ratio not kept;
2. `x.astype(float64) * rescale_factor` then cast to float32;
3. `(x - mean) / std` in float32.

We replicate those steps bit for bit (tests/test_preprocess.py: max |diff| == 0).  The
torchvision backend (used by transformers only when torchvision is installed) resizes a
float tensor with torch's bicubic kernel (a=-0.75, antialias) instead of Pillow's (a=-0.5,
uint8 rounding), which differs by up to a few 1/255 steps; that backend is not the one the
tokenizer-only run time can use, so it is not our reference.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from edge_agent.models.errors import ModelDirError

log = logging.getLogger(__name__)

FILENAME = "preprocessor_config.json"
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class PreprocessConfig:
    size: tuple[int, int] = (768, 768)  # (height, width)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    rescale_factor: float = 1 / 255
    resample: int = 3  # PIL code: 3 = bicubic
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def from_dir(cls, path) -> "PreprocessConfig":
        """Read `preprocessor_config.json` in a model directory; Florence-2's defaults if absent."""
        file = Path(path) / FILENAME
        if not file.is_file():
            log.warning("%s not found; using Florence-2's preprocessing defaults", file)
            return cls()
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelDirError(f"{file}: cannot read JSON: {exc}") from None
        return cls.from_dict(data, file)

    @classmethod
    def from_dict(cls, data: dict, source="preprocessor_config") -> "PreprocessConfig":
        if not isinstance(data, dict):
            raise ModelDirError(f"{source}: expected a JSON object")
        d = cls()
        try:
            if data.get("do_resize", True) is False:
                raise ModelDirError(f"{source}: do_resize=false is not supported (the model needs a fixed size)")
            if data.get("do_center_crop"):
                raise ModelDirError(f"{source}: do_center_crop=true is not supported")
            size = data.get("size", {"height": d.size[0], "width": d.size[1]})
            if not (isinstance(size, dict) and "height" in size and "width" in size):
                raise ModelDirError(f"{source}: size must be {{'height': H, 'width': W}}, got {size!r}")
            resample = int(data.get("resample", d.resample))
            if resample not in _RESAMPLE_NAMES:
                raise ModelDirError(f"{source}: unknown resample {resample!r}")
            mean = tuple(float(v) for v in data.get("image_mean", d.mean))
            std = tuple(float(v) for v in data.get("image_std", d.std))
            if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
                raise ModelDirError(f"{source}: image_mean/image_std must be 3 numbers (std > 0)")
            return cls(
                size=(int(size["height"]), int(size["width"])),
                mean=mean,
                std=std,
                rescale_factor=float(data.get("rescale_factor", d.rescale_factor)),
                resample=resample,
                do_rescale=bool(data.get("do_rescale", True)),
                do_normalize=bool(data.get("do_normalize", True)),
            )
        except (TypeError, ValueError) as exc:
            raise ModelDirError(f"{source}: bad value: {exc}") from None


def _check_image(i: int, img) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"image {i}: expected RGB uint8 HxWx3, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def resize(img: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 HxWx3 -> uint8 (size) x3, exactly as Pillow resizes it for the reference."""
    h, w = cfg.size
    if img.shape[:2] == (h, w):
        return img  # Pillow's resize to the same size is an exact copy
    return np.asarray(Image.fromarray(img, "RGB").resize((w, h), resample=cfg.resample))


def preprocess(images: Sequence[np.ndarray], cfg: PreprocessConfig | None = None) -> np.ndarray:
    """RGB uint8 HxWx3 images of any sizes -> float32 [B, 3, H, W] pixel_values."""
    cfg = cfg or PreprocessConfig()
    h, w = cfg.size
    out = np.empty((len(images), 3, h, w), dtype=np.float32)
    mean = np.asarray(cfg.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(cfg.std, dtype=np.float32).reshape(3, 1, 1)
    for i, img in enumerate(images):
        x = resize(_check_image(i, img), cfg).transpose(2, 0, 1)
        if cfg.do_rescale:
            x = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if cfg.do_normalize:
            x = (x - mean) / std
        out[i] = x
    return out
