"""Frames from cameras, streams, video files and image sets.

Sources (`[camera] source` / `--camera N` / `--source PATH_OR_URL`):

- a device index (`0`): OpenCV `VideoCapture` on V4L2 (USB UVC cameras);
- `picamera2:N`: Raspberry Pi Camera Module N (CSI) through picamera2/libcamera, which
  OpenCV's V4L2 path cannot open on a Pi 5 (edge_agent/picam.py);
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
`retry_max` seconds (one log line per retry says when the next try is), and reports
`ok` again when frames flow.  `opened` tells whether a frame was ever grabbed; the agent
gives up on a live source that has none `open_timeout` seconds after `start()` in a
bounded run (--once / --max-frames).  OpenCV's own log lines are silenced
(`quiet_opencv`; kept at `--log-level debug`).

**Files** (video files, image sets) are read frame by frame, one frame each time the
agent asks, that is one frame per processing interval: no frame is skipped, so a
recorded video gives the same results on every run and a test sees every frame.  At the
end a file source is exhausted (or starts again with `loop = true`).
"""
from __future__ import annotations

import logging
import glob
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge_agent.errors import ConfigError, RuntimeFailure
from edge_agent.redact import redact
from edge_agent.images import MAX_PIXELS, MAX_PIXELS_LIMIT, SUFFIXES, ImageRefused, read_image, to_rgb, too_large
from edge_agent.topics import check_level

log = logging.getLogger(__name__)

STATE_OK = "ok"
STATE_LOST = "camera_lost"
STATE_ENDED = "ended"

StateCallback = Callable[[str, str], None]  # (camera_id, state)


@dataclass(frozen=True)
class CameraOptions:
    """One camera: the `[camera]` section, or one `[[cameras]]` table."""

    id: str = ""  # "" -> cam<N> for a device, picam<N> for picamera2:N, the file stem for a file (default_camera_id)
    source: str | int = ""  # device index, video file, rtsp/http URL, image directory or glob; "" -> the demo video
    loop: bool = False  # video file / image set: start again at the end instead of stopping
    width: int = 0  # ask a device for this capture size (0: driver default)
    height: int = 0
    retry_max: float = 60.0  # cap of the reconnect backoff, seconds
    open_timeout: float = 30.0  # --once/--max-frames: give up (exit 1) on a live camera with no frame by then; 0: never
    max_pixels: int = MAX_PIXELS  # frames (and image files, checked before decoding) larger are skipped

    def __post_init__(self):
        if isinstance(self.source, int) and not isinstance(self.source, bool):
            object.__setattr__(self, "source", str(self.source))  # source = 0 in TOML: device 0
        if self.id:
            try:
                check_level(self.id, "camera id")
            except ValueError as e:
                raise ValueError(f"id: {e}") from None
        for key in ("width", "height"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key}: must be >= 0")
        if not self.retry_max > 0:
            raise ValueError("retry_max: must be > 0")
        if not self.open_timeout >= 0:
            raise ValueError("open_timeout: must be >= 0")
        if not 1 <= self.max_pixels <= MAX_PIXELS_LIMIT:
            raise ValueError(f"max_pixels: must be 1..{MAX_PIXELS_LIMIT}")


def default_camera_id(source: str, index: int) -> str:
    """cam<N> for device N, cam<index> for a URL, else the file or folder stem."""
    src = source.strip()
    if src.isdigit():
        return f"cam{int(src)}"
    if src.startswith("picamera2:") and src[len("picamera2:"):].isdigit():
        return f"picam{int(src[len('picamera2:'):])}"
    if "://" in src:
        return f"cam{index}"
    stem = Path(source.rstrip("/")).stem.replace("*", "").strip("._-")
    return stem or f"cam{index}"


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


_OPENCV_QUIET: list[bool] = []


def quiet_opencv(keep: bool = False) -> None:
    """Silence OpenCV's own log (its `[ WARN:0@...] cap_v4l.cpp` lines on stderr between our
    retries), unless `keep` (debug logging).  Before the import through OPENCV_LOG_LEVEL, after
    it through cv2.utils.logging."""
    if _OPENCV_QUIET:
        return
    _OPENCV_QUIET.append(True)
    level = "WARNING" if keep else "SILENT"
    os.environ["OPENCV_LOG_LEVEL"] = level
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "16" if keep else "-8")  # AV_LOG_ERROR / AV_LOG_QUIET
    import cv2

    logging_ = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_ is not None:
        logging_.setLogLevel(getattr(logging_, f"LOG_LEVEL_{level}"))


def _cv2():
    quiet_opencv(keep=log.isEnabledFor(10))  # logging.DEBUG
    import cv2

    return cv2


def source_kind(source: str) -> str:
    """'device', 'picamera2', 'url', 'images' or 'video'."""
    s = source.strip()
    if s.isdigit():
        return "device"
    if s.startswith("picamera2:"):
        return "picamera2"
    if "://" in s:
        return "url"
    p = Path(s).expanduser()
    if p.is_dir() or any(ch in s for ch in "*?[") or p.suffix.lower() in SUFFIXES:
        return "images"
    return "video"


def redact_url(url: str) -> str:
    """rtsp://user:secret@host/... -> rtsp://user:****@host/... (for log lines and errors)."""
    return redact(url)


def list_images(source: str) -> list[Path]:
    p = Path(source).expanduser()
    if p.is_dir():
        files = [f for f in p.iterdir() if f.suffix.lower() in SUFFIXES and f.is_file()]
    elif any(ch in source for ch in "*?["):
        files = [Path(f) for f in glob.glob(os.path.expanduser(source)) if Path(f).suffix.lower() in SUFFIXES]
    else:
        files = [p] if p.is_file() else []
    return sorted(files)


class Camera:
    """One source.  `start()`, then `get(timeout)` for the next frame to process,
    `exhausted` once a file source has ended, `close()`."""

    def __init__(self, settings: CameraOptions, on_state: StateCallback | None = None,
                 live: bool | None = None, backoff_min: float = 1.0):
        self.settings = settings
        self.id = settings.id
        self.kind = source_kind(settings.source)
        self.live = self.kind in ("device", "picamera2", "url") if live is None else live
        self.on_state = on_state
        self.backoff_min = backoff_min
        self.state = ""
        self.exhausted = False
        self.seq = 0
        self.reconnects = 0
        self.opened = False  # a frame was grabbed at least once
        self.started_at = 0.0  # time.monotonic() of start()
        self.tries = 0  # failed attempts to open or read the live source
        self._cap = None
        self._images: list[Path] = []
        self._next_image = 0
        self._read_any = False  # an image set gave at least one readable image
        self._oversize_warned = False
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
        elif self.kind == "picamera2":
            from edge_agent.picam import open_picamera2

            return open_picamera2(src, self.settings.width, self.settings.height)
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
        if state != STATE_LOST:  # _lost() says it, with the next try's time
            log.info("camera %s (%s): %s", self.id, self.describe(), state)
        if self.on_state:
            try:
                self.on_state(self.id, state)
            except Exception:  # a publisher problem must not stop capture
                log.exception("camera %s: state callback failed", self.id)

    def start(self) -> "Camera":
        """Open the source.  A missing file or an empty image set is a config error (exit
        2); a live source that cannot be opened yet is retried in the background."""
        src = self.settings.source
        self.started_at = time.monotonic()
        if self.kind == "picamera2":
            from edge_agent.picam import check_picamera2

            check_picamera2(self.id, src)  # exit 2 saying what to install
        if self.kind == "images":
            self._images = list_images(src)
            if not self._images:
                raise ConfigError(f"camera {self.id}: source {redact(src)!r}: no images found (jpg, png, bmp, webp, tif)")
        elif self.kind == "video" and not self.live:
            if not Path(src).expanduser().is_file():
                raise ConfigError(f"camera {self.id}: source {redact(src)!r}: no such file")
            self._cap = self._open_capture()
            if self._cap is None:
                raise ConfigError(f"camera {self.id}: source {redact(src)!r}: OpenCV cannot open this video")
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
                self.opened = True
                self._hand_over(time.time())
                if self.state != STATE_OK:
                    self._set_state(STATE_OK)
                delay = self.backoff_min
                continue
            self._cap.release()
            self._cap = None
            self._lost(delay, "read failed")
            delay = min(delay * 2, self.settings.retry_max)

    def describe(self) -> str:
        """The source in words, for log lines: 'V4L2 device 0 (/dev/video0)'."""
        src = self.settings.source.strip()
        if self.kind == "device":
            return f"V4L2 device {src} (/dev/video{src})"
        if self.kind == "picamera2":
            return f"Pi camera {src.partition(':')[2]} (picamera2)"
        if self.kind == "url":
            return redact_url(src)
        return src

    def what_to_check(self) -> str:
        if self.kind == "device":
            return (f"check that the camera is plugged in (ls /dev/video*; v4l2-ctl --list-devices), that this "
                    f"user may open it (group video), and that no other program holds it; a Pi Camera Module "
                    f"is --source picamera2:0")
        if self.kind == "picamera2":
            return "check the ribbon cable and `rpicam-hello --list-cameras`"
        return "check the URL, that the camera is reachable from here, and its user name and password"

    def _lost(self, delay: float, why: str) -> None:
        self.tries += 1
        self._set_state(STATE_LOST)
        at = time.strftime("%H:%M:%S", time.localtime(time.time() + delay))
        log.warning("camera %s: %s %s; next try in %.0f s (at %s)", self.id, why, self.describe(), delay, at)
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
        return self._frame(to_rgb(bgr), at)

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
        return self._frame(to_rgb(bgr), time.time())  # None if over max_pixels: the next call reads on

    def _next_from_images(self) -> Frame | None:
        tries = 0
        while tries < len(self._images):
            if self._next_image >= len(self._images):
                if not self.settings.loop:
                    return self._end()
                self._next_image = 0
            path = self._images[self._next_image]
            self._next_image += 1
            tries += 1
            try:
                rgb = read_image(path, self.settings.max_pixels)
            except ImageRefused as e:
                log.warning("camera %s: %s", self.id, e)
                continue
            except ConfigError:
                log.warning("camera %s: cannot read image %s, skipped", self.id, path)
                continue
            frame = self._frame(rgb, time.time())
            if frame is not None:
                self._read_any = True
                return frame
        if not self._read_any:
            n = len(self._images)
            raise RuntimeFailure(f"camera {self.id}: source {redact(self.settings.source)!r}: "
                                 f"{'the image' if n == 1 else f'none of the {n} images'} could be read")
        return self._end()

    def _end(self) -> None:
        self.exhausted = True
        self._set_state(STATE_ENDED)
        return None

    # -------------------------------------------------------------- common

    def _frame(self, rgb: np.ndarray, at: float) -> Frame | None:
        """A decoded RGB frame, checked against max_pixels before it reaches tiling (None: skipped)."""
        if too_large(rgb, self.settings.max_pixels):
            if not self._oversize_warned:
                log.warning("camera %s: frame %dx%d is over %d pixels ([camera] max_pixels); skipped",
                            self.id, rgb.shape[1], rgb.shape[0], self.settings.max_pixels)
                self._oversize_warned = True
            return None
        self.seq += 1  # frames handed out so far
        return Frame(self.id, self.seq - 1, at, rgb)

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
