"""Reading pictures: one reader, one colour order (RGB uint8, H x W x 3), used by
`detect`, `tiles`, `zones`, `bench --image` and image-set cameras.

Before decoding, a file's header is checked against a pixel bound (`[camera] max_pixels`;
Pillow's decompression-bomb guard: a small file can decode to gigabytes), and a JPEG/PNG
that ends before its end marker is refused (OpenCV decodes those silently, grey below the
cut)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_agent.errors import ConfigError

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MAX_PIXELS = 50_000_000  # the default of [camera] max_pixels
MAX_PIXELS_LIMIT = 1 << 30  # OpenCV's own decode limit (CV_IO_MAX_IMAGE_PIXELS); a 1 Gpx RGB frame is 3 GB


class ImageRefused(ConfigError):
    """An image that is not read: over the pixel bound, or cut short.  The message says which."""


def check_image_file(path: str | Path, max_pixels: int = MAX_PIXELS) -> None:
    """Before decoding an image file: its header's size against `max_pixels`, through
    Pillow's decompression-bomb guard (Image.MAX_IMAGE_PIXELS), and a JPEG/PNG that ends
    before its end marker.  ImageRefused says why; a file Pillow cannot parse is left to
    OpenCV (the decoded frame is checked again)."""
    import warnings

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow warns above it and refuses above twice it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                fmt = im.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRefused(f"{path}: over {max_pixels} pixels ([camera] max_pixels); not decoded") from None
    except (OSError, SyntaxError, ValueError):
        return
    if w * h > max_pixels:
        raise ImageRefused(f"{path}: {w}x{h} is over {max_pixels} pixels ([camera] max_pixels); not decoded")
    end = {"JPEG": (b"\xff\xd9",), "PNG": (b"IEND\xaeB`\x82",)}.get(fmt)
    if end:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().rstrip(b"\0\r\n ")
        if not tail.endswith(end):
            raise ImageRefused(f"{path}: the {fmt} data is cut short (no end marker); skipped rather than "
                               "processed half grey")


def too_large(image: np.ndarray, max_pixels: int) -> bool:
    return int(image.shape[0]) * int(image.shape[1]) > max_pixels


def to_rgb(decoded: np.ndarray) -> np.ndarray:
    """An OpenCV-decoded image (BGR, BGRA or grey) as RGB."""
    import cv2

    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    if decoded.shape[2] == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """-> RGB uint8; ConfigError naming the file when it is missing, refused (ImageRefused)
    or cannot be decoded."""
    import cv2

    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such image file")
    check_image_file(path, max_pixels)
    decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ConfigError(f"{path}: cannot read this image (not a JPEG/PNG/BMP/WebP/TIFF OpenCV can decode)")
    return to_rgb(decoded)
