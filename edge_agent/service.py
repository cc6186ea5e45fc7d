"""systemd integration without a dependency: sd_notify over $NOTIFY_SOCKET, a watchdog
that pings only while frames make progress, and SIGTERM/SIGINT handling.

How the main loop uses it::

    notifier = Notifier(frame_interval=settings.agent.interval)   # or Notifier()
    install_signal_handlers(stop_event, notifier)
    ...load model, try the broker once...
    notifier.ready()                       # READY=1, starts the watchdog heartbeat
    while not stop_event.is_set():
        ...one frame...
        notifier.watchdog()                # "a frame completed" (progress, not a ping)
        notifier.status("ok: 12 frames, broker connected, spool 0")
    ...drain...                            # STOPPING=1 was already sent by the handler

The progress gate (why `watchdog()` does not ping directly): a frame can take longer
than half the watchdog period on a Pi, and a configured capture interval can make the
loop sleep between frames, so pinging only from the loop would either need a huge
WatchdogSec= or restart a healthy agent.  Instead `watchdog()` records the time of the
last completed frame and a small daemon thread sends WATCHDOG=1 every WATCHDOG_USEC/2,
but only while that time is younger than the stall limit.  A camera read or an engine
call that never returns stops the frames, so the pings stop, and systemd kills and
restarts the agent at most stall limit + WatchdogSec after the last completed frame.

The stall limit is ``max(WatchdogSec, 3 * frame_interval)`` unless given, raised to 3x
the slowest of the last 20 gaps between completed frames, so a slow device is not
restarted for being slow.  READY counts as progress, so the first frame has the base
allowance: WatchdogSec= must exceed the time to the first completed frame.  When no
watchdog is configured (WATCHDOG_USEC unset or meant for another PID) no thread runs;
when NOTIFY_SOCKET is unset every call is a no-op.
"""
from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

STALL_FRAMES = 3  # frame intervals (or slowest recent frames) without progress = stalled
GAP_WINDOW = 20  # recent gaps between completed frames that can raise the stall limit


def notify_address(env: Mapping[str, str] | None = None) -> str | bytes | None:
    """The socket address from $NOTIFY_SOCKET: a path, or bytes for the abstract
    namespace ('@name' -> b'\\0name').  None when unset or of an unsupported kind."""
    value = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    if value:
        log.warning("NOTIFY_SOCKET=%r is not a path or @abstract name; sd_notify disabled", value)
    return None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """WatchdogSec= in seconds from $WATCHDOG_USEC, or None when no watchdog is expected
    from this process ($WATCHDOG_PID names another PID, or the value is bad)."""
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Heartbeat:
    """Sends `ping()` every `period` seconds while `progress()` was called recently
    enough.  When progress stops it sends one `on_stall(age)` and goes quiet until
    progress resumes.

    "Recently enough" is `stall_after`, raised to STALL_FRAMES times the slowest of the
    last GAP_WINDOW gaps between progress calls: a device whose frames take 3 minutes
    does not get restarted for being slow, only for stopping.  A wedged camera or engine
    never completes a frame, so no gap can grow the limit while it hangs."""

    def __init__(self, ping: Callable[[], None], period: float, stall_after: float,
                 on_stall: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.period, self.base_stall_after = period, stall_after
        self._ping, self._on_stall, self._clock = ping, on_stall, clock
        self._last = clock()
        self._gaps: collections.deque[float] = collections.deque(maxlen=GAP_WINDOW)
        self._stalled = False
        self._counting = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stall_after(self) -> float:
        return max([self.base_stall_after, *(STALL_FRAMES * g for g in self._gaps)])

    def progress(self) -> None:
        now = self._clock()
        if self._counting:  # gaps count from READY on
            self._gaps.append(now - self._last)
        self._last = now

    def age(self) -> float:
        return self._clock() - self._last

    def reset(self) -> None:
        """READY: progress starts counting now."""
        self._last = self._clock()
        self._counting = True

    def start(self) -> None:
        if self._thread is None:
            self.reset()
            self._thread = threading.Thread(target=self._run, name="edge-agent-watchdog", daemon=True)
            self._thread.start()

    def stop(self, join: bool = False) -> None:
        """Stop pinging.  join=True waits for the thread (never from a signal handler)."""
        self._stop.set()
        if join and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.period + 1)

    def tick(self) -> None:
        """One heartbeat: ping if progress is recent, else report the stall once."""
        age = self.age()
        if age <= self.stall_after:
            self._stalled = False
            self._ping()
        elif not self._stalled:
            self._stalled = True
            if self._on_stall:
                self._on_stall(age)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.tick()


class Notifier:
    """sd_notify for the agent.  ready(), status(text), watchdog() after each completed
    frame, stopping().  Safe to call from any thread; never raises on socket errors."""

    def __init__(self, frame_interval: float | None = None, stall_after: float | None = None,
                 env: Mapping[str, str] | None = None):
        self.address = notify_address(env)
        self.interval = watchdog_interval(env) if self.address else None
        self._sock: socket.socket | None = None
        self._lock = threading.RLock()  # RLock: the SIGTERM handler may interrupt a send()
        self._warned = False
        self.heartbeat: Heartbeat | None = None
        if self.interval:
            limit = stall_after if stall_after is not None else max(
                self.interval, STALL_FRAMES * (frame_interval or 0.0))
            self.heartbeat = Heartbeat(lambda: self.send("WATCHDOG=1"), self.interval / 2, limit,
                                       on_stall=self._stalled)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send 'KEY=value' fields in one datagram.  False when disabled or it failed."""
        if self.address is None:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message, self.address)
                return True
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    log.warning("sd_notify to %r failed: %s", self.address, exc)
                return False

    def ready(self, status: str | None = None) -> None:
        """READY=1 (model loaded, broker tried once); starts the progress-gated watchdog."""
        self.send("READY=1", *([f"STATUS={status}"] if status else []))
        if self.heartbeat:
            self.heartbeat.start()

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """A frame completed.  Records progress; the heartbeat thread does the pinging."""
        if self.heartbeat:
            self.heartbeat.progress()

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more start/stop time (e.g. a slow model load): EXTEND_TIMEOUT_USEC."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def stopping(self, status: str = "stopping: draining") -> None:
        if self.heartbeat:
            self.heartbeat.stop()
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self.heartbeat:
            self.heartbeat.stop(join=True)
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _stalled(self, age: float) -> None:
        log.error("no frame completed for %.0f s; stopping watchdog pings so systemd restarts the agent", age)
        self.send(f"STATUS=stalled: no frame completed for {age:.0f} s")


def install_signal_handlers(stop_event: threading.Event, notifier: Notifier | None = None,
                            signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> dict:
    """First SIGTERM/SIGINT: send STOPPING=1 and set `stop_event` (the main loop drains and
    exits 0).  A second one raises KeyboardInterrupt (exit 130) for an impatient Ctrl-C.
    Call from the main thread.  Returns the previous handlers."""

    def handle(signum, frame):
        if stop_event.is_set():
            raise KeyboardInterrupt
        log.info("%s received: finishing the current frame and draining", signal.Signals(signum).name)
        if notifier is not None:
            notifier.stopping()
        stop_event.set()

    return {s: signal.signal(s, handle) for s in signals}
