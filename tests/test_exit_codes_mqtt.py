"""Exit codes that tell the truth, against a real Mosquitto (issue 14, items 2 and 4).

`run --once` whose result is still unacknowledged at the drain deadline exits 1 and says
how many; the result stays in the spool, and the next run delivers it.  Two causes: a
stopped broker and a wrong password.  The next run's result carries the next `seq`
(persistent per camera), and the final stats message is sent.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import broker as broker_mod
from broker import Broker, Subscriber

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "fixtures" / "sample" / "shelf.jpg"
DEVICE = "exitcodes"


def run_once(tmp_path, url: str, *, username: str | None = None, password: str | None = None,
             drain: float = 3.0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_") and k != "NOTIFY_SOCKET"}
    if username:
        env["EDGE_AGENT_MQTT_USERNAME"] = username
    if password:
        env["EDGE_AGENT_MQTT_PASSWORD"] = password  # never in argv
    cmd = [sys.executable, "-m", "edge_agent", "run", "--once", "--source", str(SAMPLE), "--broker", url,
           "--device-id", DEVICE, "--state-dir", str(tmp_path / "state"), "--drain-timeout", str(drain)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    print(res.stderr)
    return res


def assert_unacknowledged_exit(res, why: str) -> None:
    assert res.returncode == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("edge-agent: error: 1 spooled message(s) not acknowledged by the broker within --drain-timeout 3 s"), last
    assert "they stay in the spool" in last and why in last, last
    assert "Traceback" not in res.stderr


def test_stopped_broker_is_exit_1_and_the_result_is_delivered_next_time(tmp_path, broker):
    url = broker.url
    broker.stop()
    res = run_once(tmp_path, url)
    assert_unacknowledged_exit(res, "unreachable")

    broker.start()
    sub = Subscriber(broker, f"edge-agent/{DEVICE}/#").start()
    try:
        res = run_once(tmp_path, url, drain=30)
        assert res.returncode == 0, res.stderr
        msgs = sub.wait_for(lambda m: sum(x.topic.endswith("/detections") for x in m) >= 2
                            and any(x.topic.endswith("/stats") for x in m), what="both results and stats")
    finally:
        sub.stop()
    seqs = [m.json()["seq"] for m in msgs if m.topic.endswith("/detections")]
    assert seqs == [0, 1], seqs  # the spooled one, then the new one: seq goes on across processes
    stats = [m.json() for m in msgs if m.topic.endswith("/stats")]
    assert stats[-1]["frames_processed"] == 1


def test_wrong_password_is_exit_1_naming_the_refusal(tmp_path):
    if broker_mod.broker_kind() != "mosquitto":
        import pytest

        pytest.skip("password files: mosquitto only")
    b = Broker(tmp_path / "authbroker", users={"agent": "right-secret"}).start()
    try:
        res = run_once(tmp_path, b.url, username="agent", password="wrong-secret")
        assert_unacknowledged_exit(res, "refused the connection")
        assert "wrong-secret" not in res.stderr and "right-secret" not in res.stderr
        res = run_once(tmp_path, b.url, username="agent", password="right-secret", drain=30)
        assert res.returncode == 0, res.stderr
        assert "0 results left in the spool" in res.stderr
    finally:
        b.stop()
