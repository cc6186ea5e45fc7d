"""The agent's main loop: cameras -> pipeline (one shared engine) -> publisher, under systemd.

    Agent(settings, RunLimits(max_frames=1, drain_timeout=30)).run() -> exit status

Start-up order (`edge-agent run` has already checked the model directory): cameras are
opened first (a missing file is a config error, exit 2, before the slow model load), the
publisher starts connecting in the background, the model loads, the first broker connection attempt is awaited (bounded), then READY=1.

The loop takes, for every camera whose interval has passed, its newest frame, runs it
through the pipeline and publishes the result (the MQTT publisher spools it first).
Cameras share one engine and one change gate; the frames of the cameras due together run
together, each tiling round's tiles of all of them batched into one engine call
(pipeline.process_frames).  File
sources end the run when all of them are exhausted.  `max_frames` (or `--once`) stops
capturing after that many processed frames.  SIGTERM/SIGINT finish the current frame.
Then the spool is drained for up to `drain_timeout` seconds (what is left stays for the
next start) and the publisher closes (retained "offline").

Stats (frames, latency, errors, gating hit rate, camera states; the MQTT publisher adds
spool depth and drops) go out every `[stats] interval` seconds and once at the end.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from edge_agent import logs
from edge_agent.errors import RuntimeFailure
from edge_agent.settings import Settings

log = logs.get("agent")

FIRST_CONNECT_WAIT = 5.0  # seconds READY waits for the first broker connection attempt
MAX_CONSECUTIVE_FAILURES = 5  # frames failing in a row before the agent gives up (exit 1)


@dataclass(frozen=True)
class RunLimits:
    max_frames: int = 0  # 0: no limit
    drain_timeout: float = 30.0
    model_note: str = ""  # added to the model info of every result (embedded demo model)


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    frames: int = 0
    errors: int = 0
    last_latency: float = 0.0
    total_latency: float = 0.0
    max_latency: float = 0.0

    def add(self, seconds: float) -> None:
        self.frames += 1
        self.last_latency = seconds
        self.total_latency += seconds
        self.max_latency = max(self.max_latency, seconds)

    def as_dict(self) -> dict:
        mean = self.total_latency / self.frames if self.frames else 0.0
        return {"frames_processed": self.frames, "errors": self.errors,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "latency_s": {"last": round(self.last_latency, 3), "mean": round(mean, 3),
                              "max": round(self.max_latency, 3)}}


def build_engine(settings: Settings):
    from models.engine import EngineOptions, Florence2Engine

    m = settings.model
    return Florence2Engine(EngineOptions(
        model_dir=m.dir, variant=m.variant, providers=tuple(m.providers), intra_op_threads=m.threads,
        num_beams=m.num_beams or None, max_new_tokens=m.max_new_tokens,
        decode_batch=m.decode_batch, kv_cache_mb=m.kv_cache_mb))


def build_publisher(settings: Settings):
    from edge_agent.publish import MqttSettings, open_publisher

    mqtt = MqttSettings.from_config(settings.mqtt) if settings.mqtt.enabled else None
    return open_publisher(mqtt, settings.agent.device_id, settings.state_dir,
                          settings.spool.max_mb, settings.spool.max_age_hours)


def build_gate(settings: Settings):
    from edge_agent.gating import TileGate

    g = settings.gating
    return TileGate(threshold=g.threshold, downscale=g.downscale, max_age_s=g.max_age_s or None)


def wait_first_connect(publisher, timeout: float = FIRST_CONNECT_WAIT) -> None:
    """Until the publisher's first broker connection attempt has finished (bounded)."""
    publisher.wait_connected(timeout)


def snapshot_jpeg(image_rgb, result, max_bytes: int) -> bytes | None:
    """Annotated JPEG no larger than max_bytes (lower quality, then smaller), or None."""
    import cv2

    from edge_agent.draw import draw_regions

    img = draw_regions(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), result.detections, result.text)
    for _ in range(8):
        for quality in (85, 70, 50):
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and len(buf) <= max_bytes:
                return buf.tobytes()
        img = cv2.resize(img, (max(1, img.shape[1] // 2), max(1, img.shape[0] // 2)), interpolation=cv2.INTER_AREA)
    return None


class Agent:
    def __init__(self, settings: Settings, limits: RunLimits = RunLimits(), stop_event: threading.Event | None = None):
        self.settings = settings
        self.limits = limits
        self.stop = stop_event or threading.Event()
        self.stats = Stats()
        self.cameras: list = []
        self.publisher = None
        self.engine = None
        self.gate = None
        self.notifier = None
        self._camera_states: dict[str, str] = {}
        self._last_snapshot: dict[str, float] = {}
        self._failures = 0

    # -------------------------------------------------------------- lifecycle

    def run(self, install_signals: bool = True) -> int:
        from edge_agent.service import Notifier, install_signal_handlers

        self.notifier = Notifier(frame_interval=self.settings.agent.interval)
        if install_signals and threading.current_thread() is threading.main_thread():
            install_signal_handlers(self.stop, self.notifier)
        try:
            self._start()
            self._loop()
            return 0
        finally:
            self._shutdown()

    def _start(self) -> None:
        from edge_agent.capture import open_cameras
        from edge_agent.pipeline import PipelineOptions, model_info, tiling_options

        s = self.settings
        self.cameras = open_cameras(s.cameras, on_state=self._on_camera_state)
        self.publisher = build_publisher(s)
        self.publisher.start()
        for cam_id, state in self._camera_states.items():
            self.publisher.camera_state(cam_id, state)
        self.notifier.status("loading model")
        t0 = time.monotonic()
        self.engine = build_engine(s)
        self.gate = build_gate(s)
        self.opts = PipelineOptions(tiling=tiling_options(s), tasks=tuple(s.model.tasks),
                                    model=model_info(self.engine, self.limits.model_note))
        log.info("model %s (%s) loaded in %.1f s; cameras: %s; tiling %s; gating threshold %g",
                 self.opts.model.get("name"), self.opts.model.get("variant"), time.monotonic() - t0,
                 ", ".join(f"{c.id}={c.settings.source}" for c in self.cameras),
                 "on" if self.opts.tiling.enabled else "off", s.gating.threshold)
        wait_first_connect(self.publisher)
        self.notifier.ready(f"running: {len(self.cameras)} camera(s)")

    def _on_camera_state(self, camera_id: str, state: str) -> None:
        self._camera_states[camera_id] = state
        if self.publisher is not None:
            self.publisher.camera_state(camera_id, state)

    def _shutdown(self) -> None:
        for cam in self.cameras:
            cam.close()
        if self.publisher is not None:
            if self.stats.frames or self.stats.errors:
                self._publish_stats()
            remaining = self.publisher.drain(self.limits.drain_timeout)
            if remaining:
                log.warning("%d results not acknowledged within %g s; they stay in the spool for the next start",
                            remaining, self.limits.drain_timeout)
            self.publisher.close()
        if self.notifier is not None:
            self.notifier.close()
        if self.cameras or self.publisher is not None:  # not when start-up failed before anything ran
            log.info("stopped after %d frames", self.stats.frames)

    # -------------------------------------------------------------- loop

    def _done(self) -> bool:
        if self.stop.is_set():
            return True
        if self.limits.max_frames and self.stats.frames >= self.limits.max_frames:
            return True
        return all(c.exhausted for c in self.cameras)

    def _loop(self) -> None:
        interval = self.settings.agent.interval
        stats_every = self.settings.stats.interval
        next_due = {c.id: 0.0 for c in self.cameras}
        next_stats = time.monotonic() + stats_every if stats_every else float("inf")
        while not self._done():
            now = time.monotonic()
            if now >= next_stats:
                self._publish_stats()
                next_stats = now + stats_every
            due = [c for c in self.cameras if not c.exhausted and next_due[c.id] <= now]
            if not due:
                wake = min([next_due[c.id] for c in self.cameras if not c.exhausted] + [next_stats])
                self.stop.wait(max(0.0, min(wake - now, 1.0)))
                continue
            started = time.monotonic()
            for cam_id in self._process(due):
                next_due[cam_id] = started + interval

    def _capture(self, due) -> list[tuple]:
        """[(frame, capture seconds)] from the due cameras, within the frame budget."""
        left = self.limits.max_frames - self.stats.frames if self.limits.max_frames else len(due)
        got = []
        for cam in due:
            if len(got) >= left or self.stop.is_set():
                break
            t0 = time.perf_counter()
            frame = cam.get(timeout=1.0)
            if frame is not None:
                got.append((frame, time.perf_counter() - t0))
        return got

    def _process(self, due) -> list[str]:
        """One frame from each due camera, run together on the shared engine; -> camera ids done."""
        from edge_agent.pipeline import process_frames

        got = self._capture(due)
        if not got:
            return []
        outcomes = process_frames([f for f, _ in got], self.engine, self.opts, gate=self.gate,
                                  capture_s=[c for _, c in got])
        for (frame, _), outcome in zip(got, outcomes):
            if isinstance(outcome, Exception):
                self._failed(frame, outcome)
            else:
                self._publish(frame, outcome[0])
        return [f.camera_id for f, _ in got]

    def _failed(self, frame, error: Exception) -> None:
        """One bad frame must not stop a shelf camera; many in a row end the run (exit 1)."""
        self.stats.errors += 1
        self._failures += 1
        log.error("camera %s frame %d failed: %s: %s", frame.camera_id, frame.seq, type(error).__name__, error,
                  exc_info=error)
        if self._failures >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeFailure(f"{self._failures} frames in a row failed; last error: {error}") from error

    def _publish(self, frame, result) -> None:
        self._failures = 0
        cam_id = frame.camera_id
        self.publisher.publish_result(result, self._snapshot(frame, result))
        self.stats.add(result.timings.get("total", 0.0))
        log.info("camera %s frame %d: %d tiles, %d detections, %d text lines, %.2f s",
                 cam_id, frame.seq, result.tiles, len(result.detections), len(result.text),
                 result.timings.get("total", 0.0))
        self.notifier.watchdog()
        self.notifier.status(f"ok: {self.stats.frames} frames, last {result.timings.get('total', 0.0):.1f} s")

    def _snapshot(self, frame, result) -> bytes | None:
        snap = self.settings.snapshot
        if not snap.enabled:
            return None
        now = time.monotonic()
        last = self._last_snapshot.get(frame.camera_id)
        if last is not None and now - last < snap.interval:
            return None
        self._last_snapshot[frame.camera_id] = now
        jpeg = snapshot_jpeg(frame.image, result, snap.max_bytes)
        if jpeg is None:
            log.warning("camera %s: snapshot does not fit in %d bytes; skipped", frame.camera_id, snap.max_bytes)
        return jpeg

    def _publish_stats(self) -> None:
        stats = self.stats.as_dict()
        if self.gate is not None:
            stats["gating"] = self.gate.stats()
        stats["cameras"] = {c.id: c.state or "starting" for c in self.cameras}
        self.publisher.publish_stats(stats)
