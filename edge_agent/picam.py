"""`picamera2:N`: a Raspberry Pi Camera Module (CSI, libcamera) as a capture source.

On Raspberry Pi OS Bookworm the Camera Module is driven by libcamera; OpenCV's V4L2 path
(`--camera N`) does not open it on a Pi 5.  picamera2 is libcamera's Python binding.  It
comes from apt (`python3-picamera2`), not PyPI in practice (its pip build needs libcamera's
own Python module), so the venv must see the system site-packages (docs/deploy.md).

`Picamera2Capture` gives the live reader in capture.py the part of OpenCV's VideoCapture
it uses (grab, retrieve, release), so a Pi camera is retried, kept newest-frame-only and
reported exactly like a V4L2 or RTSP camera.
"""
from __future__ import annotations

import logging

import numpy as np

from edge_agent.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL = ("on Raspberry Pi OS Bookworm: `sudo apt install python3-picamera2`, then create the venv with "
           "`python3 -m venv --system-site-packages .venv` (pip cannot build it without libcamera); "
           "or use a USB camera with --camera N")


def camera_index(source: str) -> int:
    _, _, rest = source.strip().partition(":")
    if not rest.strip().isdigit():
        raise ConfigError(f"camera source {source!r}: expected picamera2:N with N a camera number (picamera2:0)")
    return int(rest)


def check_picamera2(camera_id: str, source: str) -> None:
    """ConfigError (exit 2) when the source is malformed or picamera2 is not importable."""
    camera_index(source)
    try:
        import picamera2  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"camera {camera_id}: source {source!r} needs the picamera2 module ({e}); {INSTALL}") from None


class Picamera2Capture:
    """One started Picamera2 camera with VideoCapture's grab/retrieve/release."""

    def __init__(self, camera, index: int):
        self.camera, self.index = camera, index
        self._frame: np.ndarray | None = None

    def isOpened(self) -> bool:  # noqa: N802 (VideoCapture's name)
        return self.camera is not None

    def grab(self) -> bool:
        """Blocks until the next frame; False when the camera fails (the reader then retries)."""
        try:
            self._frame = self.camera.capture_array("main")
        except Exception as e:  # libcamera errors come as RuntimeError and friends
            log.warning("picamera2 camera %d: capture failed: %s", self.index, e)
            return False
        return self._frame is not None

    def retrieve(self):
        # "RGB888" is libcamera's name for byte order B, G, R: what OpenCV calls BGR
        return (self._frame is not None), self._frame

    def release(self) -> None:
        if self.camera is None:
            return
        try:
            self.camera.stop()
            self.camera.close()
        except Exception as e:
            log.debug("picamera2 camera %d: close: %s", self.index, e)
        self.camera = None


def open_picamera2(source: str, width: int = 0, height: int = 0) -> Picamera2Capture | None:
    """Start camera N at width x height (0: its default video size); None when it cannot be
    opened now (the reader logs the retry and tries again)."""
    from picamera2 import Picamera2

    index = camera_index(source)
    try:
        cam = Picamera2(index)
    except Exception as e:  # no such camera, camera busy: IndexError, RuntimeError
        log.debug("picamera2 camera %d: %s", index, e)
        return None
    try:
        main = {"format": "RGB888"}
        if width and height:
            main["size"] = (int(width), int(height))
        cam.configure(cam.create_video_configuration(main=main))
        cam.start()
    except Exception as e:
        log.debug("picamera2 camera %d: cannot start: %s", index, e)
        try:
            cam.close()
        except Exception:
            pass
        return None
    return Picamera2Capture(cam, index)
