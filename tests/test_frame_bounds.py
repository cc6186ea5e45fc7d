"""Frame size bounds and unreadable images: a real decompression-bomb PNG (30000 x 30000 in
about 1 MB) is refused from its header, decoded frames over [camera] max_pixels are skipped
before tiling, a cut-short JPEG is skipped, and a single image that cannot be read ends
`edge-agent run` with exit 1 and one line."""
from __future__ import annotations

import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent import embedded
from edge_agent.capture import Camera, CameraOptions
from edge_agent.images import ImageRefused, check_image_file
from edge_agent.errors import RuntimeFailure

REPO = Path(__file__).resolve().parent.parent


def png_bomb(path: Path, side: int = 30000) -> Path:
    """A valid greyscale PNG of side x side zero pixels, compressed row by row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    return png_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png")


def jpeg(path: Path, w=320, h=240) -> Path:
    img = np.full((h, w, 3), 128, np.uint8)
    cv2.rectangle(img, (10, 10), (100, 100), (0, 0, 255), -1)
    path.write_bytes(cv2.imencode(".jpg", img)[1].tobytes())
    return path


def test_decompression_bomb_is_refused_from_its_header(bomb):
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(ImageRefused, match="over 50000000 pixels"):
        check_image_file(bomb, CameraOptions.max_pixels)


def test_bomb_in_an_image_set_is_skipped_and_the_rest_is_processed(tmp_path, bomb, caplog):
    d = tmp_path / "set"
    d.mkdir()
    (d / "a_bomb.png").write_bytes(bomb.read_bytes())
    jpeg(d / "b_ok.jpg")
    cam = Camera(CameraOptions(id="c", source=str(d))).start()
    frame = cam.get()
    assert frame is not None and (frame.width, frame.height) == (320, 240)
    assert cam.get() is None and cam.exhausted
    assert "a_bomb.png" in caplog.text and "max_pixels" in caplog.text


def test_cut_short_jpeg_is_skipped(tmp_path, caplog):
    good = jpeg(tmp_path / "good.jpg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    assert cv2.imread(str(cut)) is not None  # OpenCV alone decodes it, grey below the cut
    with pytest.raises(ImageRefused, match="cut short"):
        check_image_file(cut, CameraOptions.max_pixels)
    check_image_file(good, CameraOptions.max_pixels)


def test_decoded_frames_over_max_pixels_are_skipped_before_tiling(caplog):
    cam = Camera(CameraOptions(id="v", source=str(embedded.sample_video()), max_pixels=1000)).start()
    frames = [cam.get() for _ in range(50)]
    assert frames == [None] * 50 and cam.exhausted
    warned = [r for r in caplog.records if "over 1000 pixels" in r.getMessage()]
    assert len(warned) == 1


def test_single_unreadable_image_is_a_runtime_failure(tmp_path):
    bad = tmp_path / "shelf.jpg"
    bad.write_bytes(b"not an image at all")
    cam = Camera(CameraOptions(id="c", source=str(bad))).start()
    with pytest.raises(RuntimeFailure, match="the image could be read"):
        cam.get()


def test_run_on_a_single_unreadable_image_exits_1_with_one_line(tmp_path):
    bad = tmp_path / "shelf.jpg"
    bad.write_bytes(b"not an image at all")
    p = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--once", "--source", str(bad),
                        "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, cwd=REPO,
                       timeout=600)
    assert p.returncode == 1, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert "edge-agent: error: camera shelf: source" in p.stderr and "could be read" in p.stderr


def test_max_pixels_bound_in_config(tmp_path):
    from edge_agent.errors import ConfigError
    from edge_agent.settings import load_settings

    cfg = tmp_path / "c.toml"
    cfg.write_text("[camera]\nsource = \"x.mp4\"\nmax_pixels = 2000000000\n")
    with pytest.raises(ConfigError, match="max_pixels"):
        load_settings(cfg, env={})
