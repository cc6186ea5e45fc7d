"""systemd/edge-agent.service: `systemd-analyze verify` is clean and the offline
exposure score of `systemd-analyze security` is <= 2.0, for the shipped unit and for
the units `edge-agent service install` renders."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.cmd_service import render_unit

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "edge-agent.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed here: the unit's verify and exposure checks did not run")
MAX_EXPOSURE = 2.0


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            out.setdefault(m[1], []).append(m[2])
    return out


def stand_in() -> Path:
    """An executable that exists, for ExecStart= when /usr/local/bin/edge-agent is absent."""
    real = Path("/usr/local/bin/edge-agent")
    if real.exists():
        return real
    return Path(shutil.which("edge-agent") or Path(sys.executable).parent / "edge-agent")


def staged(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge-agent.service"  # the name matters to systemd-analyze
    path.write_text(text)
    return path


def exposure(unit: Path) -> float:
    done = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+)", done.stdout + done.stderr)
    assert m, done.stdout[-2000:] + done.stderr
    print(f"systemd-analyze security --offline=yes {unit.name}: overall exposure {m[1]}")
    return float(m[1])


def verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)


def test_unit_has_what_the_service_needs():
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] and d["Restart"] == ["on-failure"]
    assert d["RestartSec"] and d["StartLimitIntervalSec"] and d["StartLimitBurst"] and d["TimeoutStopSec"]
    assert d["DynamicUser"] == ["yes"] and d["SupplementaryGroups"] == ["video"]
    assert d["StateDirectory"] == ["edge-agent"] and d["ConfigurationDirectory"] == ["edge-agent"]
    assert d["LoadCredential"] == ["mqtt_password:/etc/edge-agent/mqtt_password"]
    assert d["ExecStart"] == ["/usr/local/bin/edge-agent run --config /etc/edge-agent/edge-agent.toml"]
    # the camera: V4L2 devices allowed, no private /dev
    assert "char-video4linux rw" in d["DeviceAllow"]
    assert d.get("PrivateDevices", ["no"]) == ["no"]
    # the network: IP and the notify socket allowed, no private network, no IP deny list
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert d.get("PrivateNetwork", ["no"]) == ["no"] and "IPAddressDeny" not in d


@needs_analyze
def test_systemd_analyze_verify_passes_with_a_stand_in_exec(tmp_path):
    text = render_unit(UNIT.read_text(), stand_in(), None)
    done = verify(staged(tmp_path, text))
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


@needs_analyze
def test_verify_reports_a_missing_exec(tmp_path):
    """The check above would catch a broken ExecStart: the shipped path, absent here, fails."""
    if Path("/usr/local/bin/edge-agent").exists():
        pytest.skip("/usr/local/bin/edge-agent exists on this machine")
    done = verify(staged(tmp_path, UNIT.read_text()))
    assert "is not executable" in done.stderr


@needs_analyze
def test_exposure_of_the_shipped_unit_is_at_most_2(tmp_path):
    assert exposure(staged(tmp_path, UNIT.read_text())) <= MAX_EXPOSURE


@needs_analyze
@pytest.mark.parametrize("user", [None, "edgeagent"])
def test_installed_units_verify_and_score_at_most_2(tmp_path, user):
    text = render_unit(UNIT.read_text(), stand_in(), user)
    unit = staged(tmp_path, text)
    assert exposure(unit) <= MAX_EXPOSURE
    done = verify(unit)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


SANDBOXED_WORK = r'''
import sys, socket
sys.path.insert(0, sys.argv[1])
import cv2, numpy as np, paho.mqtt.client as mqtt
from edge_agent.models.engine import EngineOptions, Florence2Engine
from edge_agent.service import Notifier
from edge_agent.spool import Spool
root, port, state = sys.argv[1], int(sys.argv[2]), sys.argv[3]
eng = Florence2Engine(EngineOptions(model_dir=root + "/tests/fixtures/tiny-florence2", variant="_int8",
                                    max_new_tokens=8))
img = cv2.cvtColor(cv2.imread(root + "/tests/fixtures/sample/shelf.jpg"), cv2.COLOR_BGR2RGB)
out = eng.run([img[:768, :768]], tasks=("od", "ocr"))
ok, frame = cv2.VideoCapture(root + "/tests/fixtures/sample/shelf.mp4").read()
spool = Spool(state + "/spool.db")
spool.append("t", b"x")
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
c.connect("127.0.0.1", port)
c.loop_start()
c.publish("sandbox/ok", b"1", qos=1).wait_for_publish(10)
c.disconnect()
c.loop_stop()
Notifier().ready("sandboxed")
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
    print("netlink allowed")
except OSError as e:
    print("netlink refused:", e.strerror)
print("engine", sorted(out[0]), "video", ok)
'''


@needs_analyze
def test_the_agent_stack_works_under_the_units_syscall_rules(tmp_path, broker):
    """Engine (onnxruntime, tiny model), OpenCV (image, video), the SQLite spool, paho to a
    real broker and sd_notify, all under the unit's SystemCallFilter=,
    RestrictAddressFamilies= and MemoryDenyWriteExecute= (tests/unit_sandbox.py)."""
    from broker import Subscriber
    from test_sd_notify import FakeSystemd

    fake = FakeSystemd(str(tmp_path / "notify"))
    sub = Subscriber(broker, "sandbox/#").start()
    script = tmp_path / "work.py"
    script.write_text(SANDBOXED_WORK)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"))
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "unit_sandbox.py"), str(UNIT), "--",
                           sys.executable, str(script), str(ROOT), str(broker.port), str(tmp_path)],
                          capture_output=True, text=True, timeout=240, env=env)
    try:
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        assert "engine ['ocr', 'od'] video True" in done.stdout
        assert "netlink refused: Address family not supported by protocol" in done.stdout  # the filter is on
        assert "pthread_setaffinity_np failed" not in done.stderr
        sub.wait_for(lambda ms: any(m.topic == "sandbox/ok" for m in ms), timeout=10, what="sandboxed publish")
        assert fake.wait_for("READY=1")
    finally:
        sub.stop()
        fake.close()
