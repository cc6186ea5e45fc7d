"""`edge-agent run` under a fake systemd: a real AF_UNIX datagram socket as NOTIFY_SOCKET,
WATCHDOG_USEC set, a real MQTT broker, and a realistic camera that hangs.

- READY, STATUS and WATCHDOG arrive while frames flow;
- WATCHDOG stops when the camera hangs (an HTTP MJPEG camera that stops sending but keeps
  the connection open, as a wedged IP camera does);
- SIGTERM gives STOPPING=1, a retained `offline` status on the broker, and exit 0;
- the same run works under the unit's seccomp rules (tests/unit_sandbox.py): the engine,
  the spool, the broker connection and sd_notify all live with the unit's filters.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import broker as broker_mod
from broker import Subscriber
from test_sd_notify import FakeSystemd, systemd_path  # noqa: F401 (systemd_path: a fixture used here)

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "tiny-florence2"
SAMPLE = ROOT / "tests" / "fixtures" / "sample" / "shelf.jpg"
UNIT = ROOT / "systemd" / "edge-agent.service"
DEVICE = "notifytest"
WATCHDOG_USEC = 2_000_000  # pings every 1 s; stall limit max(2 s, 3 x interval)

pytestmark = pytest.mark.slow


class HangingMjpegCamera:
    """An HTTP MJPEG camera on 127.0.0.1.  Streams `jpeg` at `fps` until `hang()`; from then
    on it keeps every connection (old and new) open and never sends another byte."""

    def __init__(self, jpeg: bytes, fps: float = 5.0):
        self.jpeg, self.fps = jpeg, fps
        self.hung = threading.Event()
        self.closed = threading.Event()
        self.frames_sent = 0
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}/stream.mjpg"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed.is_set():
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        try:
            conn.recv(65536)
            if self.hung.is_set():  # a wedged camera: accepts, never answers
                self.closed.wait()
                return
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
            while not self.hung.is_set() and not self.closed.is_set():
                conn.sendall(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(self.jpeg)
                             + self.jpeg + b"\r\n")
                self.frames_sent += 1
                time.sleep(1 / self.fps)
            self.closed.wait()
        except OSError:
            pass

    def hang(self):
        self.hung.set()

    def close(self):
        self.closed.set()
        self.srv.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def edge_agent() -> str:
    exe = Path(sys.executable).parent / "edge-agent"
    return str(exe) if exe.exists() else shutil.which("edge-agent")


class Agent:
    """`edge-agent run` in a subprocess, with NOTIFY_SOCKET and WATCHDOG_USEC like systemd."""

    def __init__(self, tmp_path: Path, source: str, broker_url: str, notify: str, sandbox: bool = False,
                 loop: bool = False, extra_env: dict | None = None):
        self.log = tmp_path / "agent.log"
        env = dict(os.environ, NOTIFY_SOCKET=notify, WATCHDOG_USEC=str(WATCHDOG_USEC),
                   STATE_DIRECTORY=str(tmp_path / "state"),
                   EDGE_AGENT_AGENT_DEVICE_ID=DEVICE, EDGE_AGENT_AGENT_INTERVAL="0.2",
                   EDGE_AGENT_TILING_ENABLED="false", EDGE_AGENT_MODEL_MAX_NEW_TOKENS="16",
                   EDGE_AGENT_MODEL_THREADS="1", EDGE_AGENT_STATS_INTERVAL="0",
                   EDGE_AGENT_CAMERA_LOOP="true" if loop else "false")
        env.pop("WATCHDOG_PID", None)
        env.pop("EDGE_AGENT_MQTT_PASSWORD", None)
        env.pop("CREDENTIALS_DIRECTORY", None)
        env.update(extra_env or {})
        cmd = [edge_agent(), "run", "--source", source, "--model", str(MODEL), "--broker", broker_url]
        if sandbox:
            cmd = [sys.executable, str(ROOT / "tests" / "unit_sandbox.py"), str(UNIT), "--", *cmd]
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=self._out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 45.0) -> int | None:
        """SIGTERM, then wait up to `timeout` (the unit's TimeoutStopSec); None if it hung."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture
def camera():
    cam = HangingMjpegCamera(SAMPLE.read_bytes())
    yield cam
    cam.close()


def watchdogs_between(fake: FakeSystemd, start: float, end: float) -> int:
    return sum(1 for t, m in fake.messages if start <= t < end and "WATCHDOG=1" in m.split("\n"))


def wait_results(sub: Subscriber, n: int, timeout: float = 120):
    return sub.wait_for(lambda ms: sum(m.topic.endswith("/detections") for m in ms) >= n,
                        timeout=timeout, what=f"{n} results")


def test_watchdog_follows_frames_and_stops_when_the_camera_hangs(tmp_path, broker, systemd_path, camera):
    fake, path = systemd_path
    sub = Subscriber(broker, f"edge-agent/{DEVICE}/#").start()
    agent = Agent(tmp_path, camera.url, broker.url, path)
    try:
        ready = fake.wait_for("READY=1", timeout=120)
        assert ready, agent.output()
        wait_results(sub, 3)                              # frames flow and reach the broker
        t0 = time.monotonic()
        wait_results(sub, 6)
        fake.drain(2.5)
        assert watchdogs_between(fake, t0, time.monotonic()) >= 2, (fake.messages, agent.output())
        assert any(f.startswith("STATUS=") for f in fake.fields())

        camera.hang()                                     # the camera wedges: no error, no frames
        hung_at = time.monotonic()
        # The stall limit is max(WatchdogSec, 3 x interval, 3 x the slowest recent frame),
        # so on a loaded machine the pings may go on for a while after the hang.
        stalled_at = fake.wait_for_prefix("STATUS=stalled", timeout=180, after=hung_at)
        quiet_from = time.monotonic()
        fake.drain(4 * WATCHDOG_USEC / 1e6)               # 4 watchdog periods without a frame
        assert watchdogs_between(fake, quiet_from, time.monotonic()) == 0, fake.messages[-10:]
        assert agent.proc.poll() is None                  # alive but hung: systemd's job to kill it
        print(f"pings stopped {stalled_at - hung_at:.1f} s after the camera hung")
        t = time.monotonic()
        code = agent.stop(timeout=45)  # informative: systemd would SIGKILL after TimeoutStopSec
        print(f"SIGTERM with the camera hung: exit {code} after {time.monotonic() - t:.1f} s")
    finally:
        agent.kill()
        sub.stop()


@pytest.mark.parametrize("sandbox", [False, True], ids=["plain", "unit-seccomp"])
def test_sigterm_sends_stopping_publishes_offline_and_exits_0(tmp_path, broker, systemd_path, sandbox):
    if sandbox and not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze absent: cannot expand the unit's syscall groups")
    fake, path = systemd_path
    sub = Subscriber(broker, f"edge-agent/{DEVICE}/#").start()
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        shutil.copyfile(SAMPLE, frames / f"shelf{i}.jpg")
    agent = Agent(tmp_path, str(frames), broker.url, path, sandbox=sandbox, loop=True)
    try:
        assert fake.wait_for("READY=1", timeout=120), agent.output()
        wait_results(sub, 1)
        code = agent.stop()
        assert code == 0, agent.output()
        assert fake.wait_for("STOPPING=1", timeout=5)
        status = sub.wait_for(lambda ms: any(m.topic.endswith("/status") and m.json().get("status") == "offline"
                                             for m in ms), timeout=10, what="offline status")
        offline = [m for m in status if m.topic.endswith("/status")][-1].json()
        assert offline["status"] == "offline" and offline.get("reason") == "shutdown", offline
    finally:
        agent.kill()
        sub.stop()


def test_mqtt_password_comes_from_the_systemd_credential(tmp_path, systemd_path):
    """As under LoadCredential=mqtt_password:...: the password is read from
    $CREDENTIALS_DIRECTORY/mqtt_password, reaches a broker that requires it, and appears
    neither in argv nor in the log."""
    if broker_mod.broker_kind() != "mosquitto":
        pytest.skip("password brokers need mosquitto")
    password = "cred-" + os.urandom(6).hex()
    b = broker_mod.Broker(tmp_path / "broker", users={"agent": password, "reader": "r"}).start()
    fake, path = systemd_path
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt_password").write_text(password + "\n")
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copyfile(SAMPLE, frames / "shelf.jpg")
    sub = Subscriber(b, f"edge-agent/{DEVICE}/#", username="reader", password="r").start()
    agent = Agent(tmp_path, str(frames), b.url, path, loop=True,
                  extra_env={"CREDENTIALS_DIRECTORY": str(creds), "EDGE_AGENT_MQTT_USERNAME": "agent"})
    try:
        assert fake.wait_for("READY=1", timeout=120), agent.output()
        wait_results(sub, 1)
        assert password not in " ".join(agent.proc.args)
        assert agent.stop() == 0, agent.output()
        assert password not in agent.log.read_text(errors="replace")
    finally:
        agent.kill()
        sub.stop()
        b.stop()
