"""Capture from a real video file written with OpenCV here, and from image directories."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.capture import STATE_ENDED, STATE_OK, Camera, CameraOptions, list_images, source_kind
from edge_agent.errors import ConfigError
from edge_agent.settings import load_settings


def make_video(path, frames=4, size=(160, 120)):
    w, h = size
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (w, h))
    assert out.isOpened()
    for i in range(frames):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, :, 2] = 200  # red in BGR
        cv2.rectangle(img, (10 + 20 * i, 10), (40 + 20 * i, 60), (255, 255, 255), -1)
        out.write(img)
    out.release()
    return path


def cam(source, **kw):
    s = load_settings(None, env={}, overrides={"camera": {"source": str(source), **kw}})
    return s.cameras[0]


def test_video_file_every_frame_in_order_rgb_then_ended(tmp_path):
    video = make_video(tmp_path / "aisle3.avi")
    states = []
    settings = cam(video)
    assert settings.id == "aisle3" and source_kind(settings.source) == "video"
    c = Camera(settings, on_state=lambda cid, st: states.append((cid, st))).start()
    frames = []
    while (f := c.get()) is not None:
        frames.append(f)
    c.close()
    assert [f.seq for f in frames] == [0, 1, 2, 3]
    assert all(f.camera_id == "aisle3" and (f.width, f.height) == (160, 120) for f in frames)
    r, g, b = frames[0].image[100, 150]  # background: red, given as RGB
    assert r > 150 and b < 80
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (120, 160, 3)
    assert not np.array_equal(frames[0].image, frames[1].image)  # the box moved
    assert c.exhausted and states == [("aisle3", STATE_OK), ("aisle3", STATE_ENDED)]


def test_video_loop_starts_again(tmp_path):
    video = make_video(tmp_path / "v.avi", frames=2)
    c = Camera(cam(video, loop=True)).start()
    seqs = [c.get().seq for _ in range(5)]
    c.close()
    assert seqs == [0, 1, 2, 3, 4] and not c.exhausted


def test_image_directory_sorted_unreadable_skipped(tmp_path):
    d = tmp_path / "shots"
    d.mkdir()
    for i, name in enumerate(["b.png", "a.jpg", "c.jpg"]):
        cv2.imwrite(str(d / name), np.full((30, 40 + 10 * i, 3), 50 * i, np.uint8))
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    (d / "notes.txt").write_text("ignored")
    assert [p.name for p in list_images(str(d))] == ["a.jpg", "b.png", "broken.jpg", "c.jpg"]
    c = Camera(cam(d)).start()
    widths = []
    while (f := c.get()) is not None:
        widths.append(f.width)
    assert widths == [50, 40, 60] and c.exhausted  # a, b, (broken skipped), c
    glob_cam = Camera(cam(str(d / "*.png"))).start()
    assert glob_cam.get().width == 40 and glob_cam.get() is None


def test_missing_or_empty_sources_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        Camera(cam(tmp_path / "gone.mp4")).start()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images found"):
        Camera(cam(tmp_path / "empty")).start()
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 100)
    with pytest.raises(ConfigError, match="cannot open"):
        Camera(cam(tmp_path / "junk.mp4")).start()


def test_lost_live_source_reports_camera_lost(tmp_path):
    """A URL that cannot be opened: camera_lost through the callback, get() returns None."""
    states = []
    settings = CameraOptions(id="door", source="rtsp://127.0.0.1:9/none", retry_max=1.0)
    c = Camera(settings, on_state=lambda cid, st: states.append(st), backoff_min=0.1).start()
    try:
        assert c.get(timeout=3.0) is None
        assert "camera_lost" in states
    finally:
        c.close()


def test_live_mjpeg_stream_gives_fresh_frames(tmp_path):
    """A live HTTP MJPEG source at 10 fps: every get() returns a new frame promptly (the
    reader thread grabbing continuously must not starve the agent)."""
    import socket
    import threading

    ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))
    jpeg = jpeg.tobytes()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    stop = threading.Event()

    def serve():
        try:
            conn, _ = srv.accept()
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
            while not stop.is_set():
                conn.sendall(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                             + jpeg + b"\r\n")
                stop.wait(0.1)
            conn.close()
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    settings = CameraOptions(id="ipcam", source=f"http://127.0.0.1:{srv.getsockname()[1]}/s.mjpg")
    c = Camera(settings).start()
    try:
        frames = [c.get(timeout=10.0) for _ in range(5)]
        assert all(f is not None for f in frames), frames
        assert [f.seq for f in frames] == [0, 1, 2, 3, 4] and frames[0].image.shape == (48, 64, 3)
        assert len({f.captured_at for f in frames}) == 5  # each one newly grabbed
        assert c.state == STATE_OK
    finally:
        stop.set()
        c.close()
        srv.close()
