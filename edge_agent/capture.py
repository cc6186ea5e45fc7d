"""Frames from cameras, streams, video files and image sets.

Sources (`[camera] source` / `--camera N` / `--source PATH_OR_URL`):

- a device index (`0`): OpenCV `VideoCapture` on V4L2;
- an `rtsp://`, `http(s)://` ... URL: `VideoCapture` through FFmpeg;
- a video file;
- an image file, a directory of images, or a glob (`/data/shelf/*.jpg`), sorted by name.

**Live sources** (devices and URLs) run a reader thread that keeps grabbing so only the
newest frame is kept: the frames between two processed ones are dropped, and no backlog
builds up however slow the engine is.  The thread only `grab()`s, without holding a lock
(a grab blocks until the source sends); when the agent asks for a frame, the next grabbed
one is decoded (`retrieve()`) by the thread and handed over, which spares a Pi decoding
frames nobody uses.
When the device or stream fails, the camera state goes to `camera_lost` (reported through
the `on_state` callback), the thread retries with exponential backoff up to
`retry_max` seconds, and reports `ok` again when frames flow.

**Files** (video files, image sets) are read frame by frame, one frame each time the
agent asks, that is one frame per processing interval: no frame is skipped, so a
recorded video gives the same results on every run and a test sees every frame.  At the
end a file source is exhausted (or starts again with `loop = true`).
"""
from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge_agent import logs
from edge_agent.errors import ConfigError
from edge_agent.settings import CameraSettings

log = logs.get("capture")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
STATE_OK = "ok"
STATE_LOST = "camera_lost"
STATE_ENDED = "ended"

StateCallback = Callable[[str, str], None]  # (camera_id, state)


@dataclass
class Frame:
    camera_id: str
    seq: int  # 0, 1, ... per camera and run
    captured_at: float  # epoch seconds
    image: np.ndarray  # RGB uint8, H x W x 3

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


def _cv2():
    import cv2

    return cv2


def source_kind(source: str) -> str:
    """'device', 'url', 'images' or 'video'."""
    s = source.strip()
    if s.isdigit():
        return "device"
    if "://" in s:
        return "url"
    p = Path(s).expanduser()
    if p.is_dir() or any(ch in s for ch in "*?[") or p.suffix.lower() in IMAGE_SUFFIXES:
        return "images"
    return "video"


def list_images(source: str) -> list[Path]:
    p = Path(source).expanduser()
    if p.is_dir():
        files = [f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    elif any(ch in source for ch in "*?["):
        files = [Path(f) for f in glob.glob(os.path.expanduser(source)) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [p] if p.is_file() else []
    return sorted(files)


def _to_rgb(bgr: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    if bgr.ndim == 2:
        return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    if bgr.shape[2] == 4:
        return cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Camera:
    """One source.  `start()`, then `get(timeout)` for the next frame to process,
    `exhausted` once a file source has ended, `close()`."""

    def __init__(self, settings: CameraSettings, on_state: StateCallback | None = None,
                 live: bool | None = None, backoff_min: float = 1.0):
        self.settings = settings
        self.id = settings.id
        self.kind = source_kind(settings.source)
        self.live = self.kind in ("device", "url") if live is None else live
        self.on_state = on_state
        self.backoff_min = backoff_min
        self.state = ""
        self.exhausted = False
        self.seq = 0
        self.reconnects = 0
        self._cap = None
        self._images: list[Path] = []
        self._next_image = 0
        # live reader thread
        self._lock = threading.Condition()  # never held during a (blocking) grab()
        self._want = False  # the agent waits for a frame: decode the next one grabbed
        self._latest: tuple[np.ndarray, float] | None = None  # (BGR, grabbed at) handed over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- opening

    def _open_capture(self):
        cv2 = _cv2()
        src = self.settings.source.strip()
        if self.kind == "device":
            api = getattr(cv2, "CAP_V4L2", cv2.CAP_ANY) if os.name == "posix" else cv2.CAP_ANY
            cap = cv2.VideoCapture(int(src), api)
            if self.settings.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.settings.width)
            if self.settings.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.settings.height)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        elif self.kind == "url":
            cap = cv2.VideoCapture(src, cv2.CAP_FFMPEG)
        else:
            cap = cv2.VideoCapture(str(Path(src).expanduser()))
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        (log.warning if state == STATE_LOST else log.info)("camera %s (%s): %s", self.id, self.settings.source, state)
        if self.on_state:
            try:
                self.on_state(self.id, state)
            except Exception:  # a publisher problem must not stop capture
                log.exception("camera %s: state callback failed", self.id)

    def start(self) -> "Camera":
        """Open the source.  A missing file or an empty image set is a config error (exit
        2); a live source that cannot be opened yet is retried in the background."""
        src = self.settings.source
        if self.kind == "images":
            self._images = list_images(src)
            if not self._images:
                raise ConfigError(f"camera {self.id}: source {src!r}: no images found (jpg, png, bmp, webp, tif)")
        elif self.kind == "video" and not self.live:
            if not Path(src).expanduser().is_file():
                raise ConfigError(f"camera {self.id}: source {src!r}: no such file")
            self._cap = self._open_capture()
            if self._cap is None:
                raise ConfigError(f"camera {self.id}: source {src!r}: OpenCV cannot open this video")
        if self.live:
            self._thread = threading.Thread(target=self._reader, name=f"capture-{self.id}", daemon=True)
            self._thread.start()
        else:
            self._set_state(STATE_OK)
        return self

    # -------------------------------------------------------------- live

    def _reader(self) -> None:
        delay = self.backoff_min
        while not self._stop.is_set():
            if self._cap is None:
                cap = self._open_capture()
                if cap is None:
                    self._lost(delay, "cannot open")
                    delay = min(delay * 2, self.settings.retry_max)
                    continue
                self._cap = cap
                if self.state == STATE_LOST:
                    self.reconnects += 1
            ok = self._cap.grab()  # blocks until the source sends a frame; no lock held
            if ok:
                self._hand_over(time.time())
                if self.state != STATE_OK:
                    self._set_state(STATE_OK)
                delay = self.backoff_min
                continue
            self._cap.release()
            self._cap = None
            self._lost(delay, "read failed")
            delay = min(delay * 2, self.settings.retry_max)

    def _lost(self, delay: float, why: str) -> None:
        if self.state != STATE_LOST:
            log.warning("camera %s: %s", self.id, why)
        self._set_state(STATE_LOST)
        log.debug("camera %s: retrying in %.1f s", self.id, delay)
        self._stop.wait(delay)

    def _hand_over(self, at: float) -> None:
        """Reader thread, after a grab: decode it only if the agent is waiting for a frame."""
        with self._lock:
            if not self._want:
                return
            ok, bgr = self._cap.retrieve()
            if ok and bgr is not None:
                self._latest = (bgr, at)
                self._want = False
                self._lock.notify_all()

    def _get_live(self, timeout: float) -> Frame | None:
        """The next frame the reader grabs (the newest, at most one frame period old)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._want, self._latest = True, None
            while self._latest is None:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    self._want = False
                    return None
                self._lock.wait(left)
            bgr, at = self._latest
            self._latest = None
        return self._frame(bgr, at)

    # -------------------------------------------------------------- files

    def _get_file(self) -> Frame | None:
        if self.exhausted:
            return None
        if self.kind == "images":
            return self._next_from_images()
        ok, bgr = self._cap.read()
        if not ok and self.settings.loop and self.seq:
            self._cap.release()
            self._cap = self._open_capture()
            ok, bgr = self._cap.read() if self._cap is not None else (False, None)
        if not ok:
            return self._end()
        return self._frame(bgr, time.time())

    def _next_from_images(self) -> Frame | None:
        cv2 = _cv2()
        tries = 0
        while tries < len(self._images):
            if self._next_image >= len(self._images):
                if not self.settings.loop:
                    return self._end()
                self._next_image = 0
            path = self._images[self._next_image]
            self._next_image += 1
            tries += 1
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is not None:
                return self._frame(bgr, time.time())
            log.warning("camera %s: cannot read image %s, skipped", self.id, path)
        return self._end()

    def _end(self) -> None:
        self.exhausted = True
        self._set_state(STATE_ENDED)
        return None

    # -------------------------------------------------------------- common

    def _frame(self, bgr: np.ndarray, at: float) -> Frame:
        self.seq += 1  # frames handed out so far
        return Frame(self.id, self.seq - 1, at, _to_rgb(bgr))

    def get(self, timeout: float = 1.0) -> Frame | None:
        """The next frame to process, or None (live: none newer within `timeout`;
        file: ended, see `exhausted`)."""
        return self._get_live(timeout) if self.live else self._get_file()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():  # stuck in a grab() on a wedged source: leave it to exit
                log.warning("camera %s: reader thread did not stop; not releasing its capture", self.id)
                return
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def open_cameras(cameras, on_state: StateCallback | None = None) -> list[Camera]:
    """Start every configured camera; close those already started if one fails."""
    started: list[Camera] = []
    try:
        for c in cameras:
            started.append(Camera(c, on_state).start())
    except BaseException:
        for cam in started:
            cam.close()
        raise
    return started
