"""sd_notify against a real AF_UNIX datagram socket standing in for systemd.

Unit level: edge_agent.service alone.  End to end (`edge-agent run` under a fake
NOTIFY_SOCKET, a real broker and a camera that hangs): tests/test_sd_notify_run.py."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid

import pytest

from edge_agent.service import (Heartbeat, Notifier, install_signal_handlers, notify_address,
                                watchdog_interval)


class FakeSystemd:
    """A bound datagram socket; a thread records what the service sends, with the time
    each datagram arrived."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self):
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def drain(self, seconds: float) -> list[str]:
        """Let `seconds` pass; all messages so far."""
        time.sleep(seconds)
        return [m for _, m in self.messages]

    def wait_for(self, field: str, timeout: float = 10.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for _, m in list(self.messages):
                if field in m.split("\n"):
                    return m
            self.drain(0.2)
        raise AssertionError(f"{field!r} never arrived; got {[m for _, m in self.messages]}")

    def wait_for_prefix(self, prefix: str, timeout: float = 10.0, after: float = 0.0) -> float:
        """Wait for a field starting with `prefix` that arrived after `after` (monotonic);
        returns its arrival time."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for t, m in list(self.messages):
                if t >= after and any(f.startswith(prefix) for f in m.split("\n")):
                    return t
            time.sleep(0.1)
        raise AssertionError(f"no {prefix!r} arrived; got {[m for _, m in self.messages]}")

    def fields(self) -> list[str]:
        return [f for _, m in self.messages for f in m.split("\n")]

    def close(self):
        self._closed.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def systemd_path(tmp_path):
    path = str(tmp_path / "notify")
    fake = FakeSystemd(path)
    yield fake, path
    fake.close()


@pytest.fixture
def systemd_abstract():
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(b"\0" + name.encode())
    yield fake, "@" + name
    fake.close()


def test_notify_address_forms():
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@abc"}) == b"\0abc"
    assert notify_address({"NOTIFY_SOCKET": "relative"}) is None


def test_watchdog_interval_reads_usec_and_checks_pid():
    me = str(os.getpid())
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": me}) == 2.5
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_everything_is_a_noop_without_notify_socket():
    n = Notifier(env={})
    assert not n.enabled and n.heartbeat is None
    n.ready()
    n.status("x")
    n.watchdog()
    n.stopping()
    assert n.send("READY=1") is False
    n.close()


def test_a_missing_socket_is_not_fatal(tmp_path):
    n = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.send("READY=1") is False
    n.status("still fine")
    n.close()


@pytest.mark.parametrize("which", ["path", "abstract"])
def test_ready_status_stopping_arrive(which, systemd_path, systemd_abstract):
    fake, address = systemd_path if which == "path" else systemd_abstract
    n = Notifier(env={"NOTIFY_SOCKET": address})
    n.ready("loading done")
    n.status("ok: 3 frames\nsecond line is flattened")
    n.stopping()
    n.close()
    fake.drain(0.5)
    msgs = [m for _, m in fake.messages]
    assert msgs[0] == "READY=1\nSTATUS=loading done"
    assert msgs[1] == "STATUS=ok: 3 frames second line is flattened"
    assert msgs[2].split("\n")[0] == "STOPPING=1"


def test_watchdog_pings_while_frames_progress_and_stop_when_they_stall(systemd_path):
    fake, address = systemd_path
    # WatchdogSec=0.4 s -> ping every 0.2 s; stall limit 0.6 s.
    n = Notifier(stall_after=0.6, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
    n.ready()
    stop = threading.Event()

    def frame_loop():  # a camera that delivers frames, then hangs forever (until stop)
        for _ in range(15):
            time.sleep(0.1)
            n.watchdog()
        stop.wait()

    loop = threading.Thread(target=frame_loop)
    loop.start()
    fake.wait_for("WATCHDOG=1")
    fake.drain(1.5)  # frames were progressing for ~1.5 s
    pings_while_progressing = fake.fields().count("WATCHDOG=1")
    assert pings_while_progressing >= 2
    fake.wait_for_prefix("STATUS=stalled: no frame completed for ", timeout=10)
    mark = len(fake.messages)
    fake.drain(1.5)  # the loop is hung: not a single ping may arrive now
    after = [m for _, m in fake.messages[mark:]]
    assert "WATCHDOG=1" not in after, after
    # Progress resumes -> pings resume.
    n.watchdog()
    mark = len(fake.messages)
    fake.drain(0.8)
    assert "WATCHDOG=1" in [m for _, m in fake.messages[mark:]]
    stop.set()
    loop.join()
    n.close()


def test_stall_limit_is_derived_from_the_frame_interval(systemd_path):
    _, address = systemd_path
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "10000000"}
    assert Notifier(env=env).heartbeat.stall_after == 10.0          # at least WatchdogSec (before any frame)
    assert Notifier(frame_interval=60, env=env).heartbeat.stall_after == 180.0
    assert Notifier(frame_interval=60, env=env).heartbeat.period == 5.0
    assert Notifier(env={"NOTIFY_SOCKET": address}).heartbeat is None  # no watchdog configured


def test_heartbeat_gate_with_a_fake_clock():
    now = [100.0]
    pings, stalls = [], []
    hb = Heartbeat(lambda: pings.append(now[0]), period=1.0, stall_after=5.0,
                   on_stall=stalls.append, clock=lambda: now[0])
    hb.progress()
    for t in (101.0, 103.0, 105.0):      # within the stall limit: pings
        now[0] = t
        hb.tick()
    assert pings == [101.0, 103.0, 105.0] and stalls == []
    for t in (105.5, 107.0, 200.0):      # no progress for > 5 s: one stall report, no pings
        now[0] = t
        hb.tick()
    assert pings == [101.0, 103.0, 105.0] and stalls == [5.5]
    hb.progress()                        # a frame completes: pings resume
    now[0] = 201.0
    hb.tick()
    assert pings[-1] == 201.0


def test_slow_frames_raise_the_stall_limit_a_hang_does_not():
    now = [0.0]
    pings, stalls = [], []
    hb = Heartbeat(lambda: pings.append(now[0]), period=1.0, stall_after=10.0,
                   on_stall=stalls.append, clock=lambda: now[0])
    hb.reset()                           # READY at t=0
    for t in (8.0, 16.0, 24.0):          # frames every 8 s: limit stays 3 x 8 = 24 s
        now[0] = t
        hb.progress()
    assert hb.stall_after == 24.0
    now[0] = 44.0                        # a slow 20 s frame is still progress...
    hb.tick()
    assert pings == [44.0]
    hb.progress()
    assert hb.stall_after == 60.0        # ...and the device is now allowed 3 x 20 s
    now[0] = 104.0                       # then it hangs: 60 s with no frame
    hb.tick()
    assert pings == [44.0, 104.0]
    now[0] = 104.5
    hb.tick()
    assert pings == [44.0, 104.0] and stalls == [60.5]
    assert hb.stall_after == 60.0        # hanging never raises the limit


def test_sigterm_sends_stopping_and_sets_the_event(systemd_path):
    fake, address = systemd_path
    n = Notifier(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
    n.ready()
    stop = threading.Event()
    previous = install_signal_handlers(stop, n)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
        fake.wait_for("STOPPING=1")
        assert n.heartbeat._stop.is_set()
        with pytest.raises(KeyboardInterrupt):  # a second signal is the impatient way out
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        n.close()
