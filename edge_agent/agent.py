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
spool depth and drops) go out every `[stats] interval` seconds and always once at the end,
even after 0 frames.  Each result's `seq` comes from `<state_dir>/seq.json`
(edge_agent/seqstore.py): it goes on increasing across restarts.

Exit status (`run()` returns 0, or raises RuntimeFailure: one line, exit 1):
- a bounded run (--once / --max-frames, or file sources only) whose live camera delivered
  no frame within `[camera] open_timeout` gives that camera up; the run exits 1 naming it;
- a bounded run with results still unacknowledged at the drain deadline exits 1 with how
  many (they stay in the spool);
- any run that ends with 0 frames processed because its cameras never opened exits 1, also
  on SIGTERM; SIGTERM on a service that has been working is 0.

The systemd watchdog is fed from inside the frame: the engine reports each loaded graph,
each vision chunk and each decode chunk (EngineOptions.progress), so a slow frame that is
moving keeps the pings going and a hung stage stops them; each graph load also extends the
start timeout (EXTEND_TIMEOUT_USEC).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edge_agent.errors import ConfigError, RuntimeFailure
from edge_agent.model import build_engine
from edge_agent.redact import redact
from edge_agent.topics import check_level

if TYPE_CHECKING:
    from edge_agent.settings import Settings

log = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error")

FIRST_CONNECT_WAIT = 5.0  # seconds READY waits for the first broker connection attempt
MAX_CONSECUTIVE_FAILURES = 5  # frames failing in a row before the agent gives up (exit 1)
LOAD_EXTEND_S = 180.0  # EXTEND_TIMEOUT_USEC per model graph load: a large graph on a Pi's SD card


@dataclass(frozen=True)
class AgentOptions:
    """The `[agent]` section."""

    device_id: str = ""  # "" -> this machine's host name
    state_dir: str = ""  # "" -> $STATE_DIRECTORY (systemd) or ~/.local/state/edge-agent
    interval: float = 10.0  # seconds between processed frames, per camera
    log_level: str = "info"

    def __post_init__(self):
        if self.device_id:
            try:
                check_level(self.device_id, "[agent] device_id")
            except ValueError as e:
                raise ValueError(f"device_id: {e}") from None
        if not self.interval >= 0:
            raise ValueError("interval: must be >= 0")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level: must be one of {', '.join(map(repr, LOG_LEVELS))}")


@dataclass(frozen=True)
class SnapshotOptions:
    """The `[snapshot]` section: an annotated JPEG, retained on <prefix>/<camera>/snapshot."""

    enabled: bool = False
    max_bytes: int = 200_000
    interval: float = 60.0  # seconds between snapshots per camera; 0: every frame

    def __post_init__(self):
        if not self.max_bytes >= 1000:
            raise ValueError("max_bytes: must be >= 1000")
        if not self.interval >= 0:
            raise ValueError("interval: must be >= 0")


@dataclass(frozen=True)
class StatsOptions:
    """The `[stats]` section."""

    interval: float = 60.0  # seconds between stats messages; 0: off (one is still sent at exit)

    def __post_init__(self):
        if not self.interval >= 0:
            raise ValueError("interval: must be >= 0")


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


def build_publisher(settings: Settings):
    from edge_agent.publish import open_publisher

    return open_publisher(settings.mqtt, settings.agent.device_id, settings.state_dir, settings.spool)


def wait_first_connect(publisher, timeout: float = FIRST_CONNECT_WAIT) -> None:
    """Until the publisher's first broker connection attempt has finished (bounded)."""
    publisher.wait_connected(timeout)


def build_shelf(settings: Settings):
    """Zones, smoothing, events and prices (edge_agent/shelf.py), state in the state dir."""
    from edge_agent.shelf import STATE_FILE, Shelf

    return Shelf(settings.zones, settings.shelf, settings.prices, settings.state_dir / STATE_FILE)


def start_homeassistant(settings: Settings, publisher, model: dict) -> None:
    """Home Assistant MQTT discovery (edge_agent/homeassistant.py), when enabled and MQTT is on."""
    from importlib.metadata import PackageNotFoundError, version

    from edge_agent import homeassistant as ha

    if not settings.homeassistant.enabled:
        return
    if not hasattr(publisher, "subscribe"):
        log.warning("[homeassistant] enabled needs an MQTT broker ([mqtt] broker); no discovery")
        return
    try:
        sw = version("edge-agent")
    except PackageNotFoundError:
        sw = "unknown"
    cameras = [ha.CameraEntities(c.id, tuple(z.name for z in settings.zones if z.applies_to(c.id)))
               for c in settings.cameras]
    name = " ".join(str(model.get(k)) for k in ("name", "variant") if model.get(k)) or "Florence-2"
    try:
        discovery = ha.Discovery(settings.homeassistant, settings.agent.device_id, publisher.topics.prefix, cameras,
                                 settings.snapshot.enabled, name, sw, settings.state_dir)
    except ValueError as e:  # two zones or cameras that Home Assistant's id characters cannot tell apart
        raise ConfigError(f"{settings.path or 'configuration'}: [homeassistant]: {e}") from None
    ha.start(publisher, discovery)


class Agent:
    def __init__(self, settings: Settings, limits: RunLimits = RunLimits(), stop_event: threading.Event | None = None,
                 engine=None):
        """`engine`: an engine to use instead of loading [model] (tests pass a scripted one)."""
        self.settings = settings
        self.limits = limits
        self.stop = stop_event or threading.Event()
        self.stats = Stats()
        self.cameras: list = []
        self.publisher = None
        self.engine = engine
        self.shelf = None
        self.gate = None
        self.notifier = None
        self._camera_states: dict[str, str] = {}
        self._last_snapshot: dict[str, float] = {}
        self._failures = 0
        self._given_up: list[str] = []  # one line per camera given up (bounded runs)
        self.seqs = None

    # -------------------------------------------------------------- lifecycle

    def run(self, install_signals: bool = True) -> int:
        from edge_agent.service import Notifier, install_signal_handlers

        self.notifier = Notifier(frame_interval=self.settings.agent.interval)
        if install_signals and threading.current_thread() is threading.main_thread():
            install_signal_handlers(self.stop, self.notifier)
        remaining = 0
        try:
            self._start()
            self._loop()
        finally:
            remaining = self._shutdown()
        return self._exit_status(remaining)

    @property
    def bounded(self) -> bool:
        """--once / --max-frames, or nothing but files: a run that is meant to end."""
        return bool(self.limits.max_frames) or all(not c.live for c in self.cameras)

    def _exit_status(self, remaining: int) -> int:
        problems = list(self._given_up)
        if not self.stats.frames and not problems:
            never = [c for c in self.cameras if c.live and not c.opened]
            problems += [f"camera {c.id}: {c.describe()} never delivered a frame ({c.tries} tries); "
                         f"{c.what_to_check()}" for c in never]
        if remaining and self.bounded:
            problems.append(f"{remaining} spooled message(s) not acknowledged by the broker within --drain-timeout "
                            f"{self.limits.drain_timeout:g} s; they stay in the spool {self.settings.state_dir} "
                            f"for the next start" + self._broker_problem())
        if problems:
            raise RuntimeFailure("; ".join(problems))
        return 0

    def _broker_problem(self) -> str:
        why = getattr(self.publisher, "last_error", None)
        return f" (last broker error: {why})" if why else ""

    def _start(self) -> None:
        from edge_agent.capture import open_cameras
        from edge_agent.gating import TileGate
        from edge_agent.pipeline import PipelineOptions, model_info

        from edge_agent.seqstore import SeqStore

        s = self.settings
        self.seqs = SeqStore(s.state_dir)
        self.cameras = open_cameras(s.cameras, on_state=self._on_camera_state)
        self.publisher = build_publisher(s)
        self.publisher.start()
        for cam_id, state in self._camera_states.items():
            self.publisher.camera_state(cam_id, state)
        self.notifier.status("loading model")
        t0 = time.monotonic()
        self.notifier.extend_timeout(LOAD_EXTEND_S)
        self.engine = self.engine or build_engine(s.model, state_dir=s.state_dir, progress=self._engine_progress)
        self.gate = TileGate(s.gating)
        self.shelf = build_shelf(s)
        pending = self.shelf.pending()
        if pending:  # a killed agent journaled these and may not have spooled them all
            log.info("re-sending %d shelf events journaled before the last stop", len(pending))
            self.publisher.publish_events(pending)
            self.shelf.commit()
        self.opts = PipelineOptions(tiling=s.tiling, tasks=s.model.tasks,
                                    model=model_info(self.engine, self.limits.model_note))
        log.info("model %s (%s) loaded in %.1f s; cameras: %s; tiling %s; gating threshold %g",
                 self.opts.model.get("name"), self.opts.model.get("variant"), time.monotonic() - t0,
                 ", ".join(f"{c.id}={redact(c.settings.source)}" for c in self.cameras),
                 "on" if self.opts.tiling.enabled else "off", s.gating.threshold)
        start_homeassistant(s, self.publisher, self.opts.model)
        wait_first_connect(self.publisher)
        self.notifier.ready(f"running: {len(self.cameras)} camera(s)")

    def _on_camera_state(self, camera_id: str, state: str) -> None:
        self._camera_states[camera_id] = state
        if self.publisher is not None:
            self.publisher.camera_state(camera_id, state)

    def _engine_progress(self, stage: str, done: int, total: int) -> None:
        """From inside the engine: a graph loaded (extend the start timeout), or a vision or
        decode chunk done (progress for the watchdog)."""
        if stage == "load":
            self.notifier.extend_timeout(LOAD_EXTEND_S)
        else:
            self.notifier.watchdog()

    def _shutdown(self) -> int:
        """-> results left unacknowledged in the spool."""
        remaining = 0
        for cam in self.cameras:
            cam.close()
        if self.publisher is not None:
            self._publish_stats()  # always, 0 frames included
            remaining = self.publisher.drain(self.limits.drain_timeout)
            if remaining:
                log.warning("%d results not acknowledged within %g s; they stay in the spool for the next start",
                            remaining, self.limits.drain_timeout)
            self.publisher.close()
        if self.notifier is not None:
            self.notifier.close()
        if self.cameras or self.publisher is not None:  # not when start-up failed before anything ran
            log.info("stopped after %d frames", self.stats.frames)
        return remaining

    # -------------------------------------------------------------- loop

    def _done(self) -> bool:
        if self.stop.is_set():
            return True
        if self.limits.max_frames and self.stats.frames >= self.limits.max_frames:
            return True
        if self.bounded:
            self._give_up_overdue()
        return all(c.exhausted for c in self.cameras)

    def _give_up_overdue(self) -> None:
        """Bounded runs: a live camera with no frame `open_timeout` s after its start ends."""
        now = time.monotonic()
        for cam in self.cameras:
            limit = cam.settings.open_timeout
            if cam.exhausted or not cam.live or cam.opened or not limit or now - cam.started_at < limit:
                continue
            line = (f"camera {cam.id}: no frame from {cam.describe()} within open_timeout {limit:g} s "
                    f"({cam.tries} tries); {cam.what_to_check()}")
            self._given_up.append(line)
            if len(self.cameras) > 1:
                log.error("%s", line)
            cam.close()
            cam.exhausted = True

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
                frame.seq = self.seqs.take(cam.id)  # across restarts (seqstore.py)
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
        events = self._analyse(result)
        snapshot = self._snapshot(frame, result)
        self.shelf.commit(pending=events)  # journaled before they are spooled (edge_agent/shelf.py)
        self.publisher.publish_result(result, snapshot, events)
        if events:
            self.shelf.commit()
        self.stats.add(result.timings.get("total", 0.0))
        log.info("camera %s frame %d: %d tiles, %d detections, %d text lines, %.2f s",
                 cam_id, frame.seq, result.tiles, len(result.detections), len(result.text),
                 result.timings.get("total", 0.0))
        self.notifier.watchdog()
        self.notifier.status(f"ok: {self.stats.frames} frames, last {result.timings.get('total', 0.0):.1f} s")

    def _analyse(self, result) -> list:
        """Zone counts, prices and stock events; a zone that does not fit the frame is a config error."""
        if not self.shelf.active:
            return []
        try:
            return self.shelf.analyse(result)
        except ValueError as e:
            raise ConfigError(f"{self.settings.path or 'configuration'}: {e}") from None

    def _snapshot(self, frame, result) -> bytes | None:
        snap = self.settings.snapshot
        if not snap.enabled:
            return None
        now = time.monotonic()
        last = self._last_snapshot.get(frame.camera_id)
        if last is not None and now - last < snap.interval:
            return None
        self._last_snapshot[frame.camera_id] = now
        from edge_agent.draw import picture

        zones = self.shelf.zones_for(frame.camera_id, frame.width, frame.height)
        jpeg = picture(frame.image, result, ".jpg", snap.max_bytes, zones, self.limits.model_note)
        if jpeg is None:
            log.warning("camera %s: snapshot does not fit in %d bytes; skipped", frame.camera_id, snap.max_bytes)
        return jpeg

    def _publish_stats(self) -> None:
        stats = self.stats.as_dict()
        if self.gate is not None:
            stats["gating"] = self.gate.stats()
        stats["cameras"] = {c.id: c.state or "starting" for c in self.cameras}
        self.publisher.publish_stats(stats)
