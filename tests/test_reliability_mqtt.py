"""Reliability with real parts: a poisoned spool row does not block the queue, a damaged
spool's salvaged results reach a real broker, and a broker that misbehaves before CONNACK
(a small TCP server on 127.0.0.1) is reported and retried with the configured backoff."""
from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest

from broker import Subscriber
from edge_agent.publish import MqttOptions, MqttPublisher, json_bytes
from edge_agent.spool import SPOOL_FILE, Spool
from pub_driver import make_result
from test_spool_recovery import damage

PREFIX = "edge-agent/dev1"


def fast(url, **kw):
    kw.setdefault("keepalive", 10)
    return MqttOptions(broker=url, reconnect_min=0.1, reconnect_max=0.5, **kw)


def seqs(sub, schema):
    return [schema.check(m.payload)["seq"] for m in sub.on("/detections")]


def test_poisoned_row_is_moved_aside_and_valid_results_still_arrive(tmp_path, broker, schema, caplog):
    # A row spooled under a topic paho refuses (an older version did not check camera ids).
    spool = Spool.in_state_dir(tmp_path)
    spool.append(f"{PREFIX}/sh#lf/detections", json_bytes(make_result("cam0", 0).to_payload("dev1")))
    spool.append(f"{PREFIX}/cam0/detections", json_bytes(make_result("cam0", 1).to_payload("dev1")))
    sub = Subscriber(broker, f"{PREFIX}/#").start()
    pub = MqttPublisher(fast(broker.url), spool, "dev1")
    pub.start()
    try:
        for seq in range(2, 5):
            pub.publish_result(make_result("cam0", seq))
        assert pub.drain(30) == 0
        pub.publish_stats({"frames": 3})
        sub.wait_for(lambda msgs: sub.on("/stats") and len(sub.on("/detections")) >= 4, 30)
    finally:
        pub.close()
        sub.stop()
    assert seqs(sub, schema) == [1, 2, 3, 4]
    stats = schema.check(sub.on("/stats")[-1].payload, "stats_message")
    assert stats["spool_dropped"] == 1 and stats["spool_drops"] == {"unpublishable": 1}
    assert spool.dead()[0][1] == f"{PREFIX}/sh#lf/detections"
    lines = [r for r in caplog.records if "can never be sent" in r.getMessage()]
    assert len(lines) == 1 and "contains '#' (an MQTT wildcard)" in lines[0].getMessage()


def test_damaged_spool_salvaged_results_arrive_in_order_and_status_and_stats_say_so(tmp_path, broker, schema):
    spool = Spool.in_state_dir(tmp_path)
    for seq in range(150):
        spool.append(f"{PREFIX}/cam0/detections", json_bytes(make_result("cam0", seq).to_payload("dev1")))
    spool.close()
    damage(tmp_path, "data_page")
    sub = Subscriber(broker, f"{PREFIX}/#").start()
    spool = Spool.in_state_dir(tmp_path)
    r = spool.recovery
    assert r is not None and r.lost > 0 and r.salvaged + r.lost == 150
    pub = MqttPublisher(fast(broker.url), spool, "dev1")
    pub.start()
    try:
        assert pub.drain(60) == 0
        pub.publish_stats({"frames": 0})
        sub.wait_for(lambda msgs: sub.on("/stats") and len(sub.on("/detections")) >= r.salvaged, 60)
    finally:
        pub.close()
        sub.stop()
    got = seqs(sub, schema)
    assert got == sorted(got) and len(got) == r.salvaged
    stats = schema.check(sub.on("/stats")[-1].payload, "stats_message")
    assert stats["spool_drops"] == {"corrupt": r.lost} and stats["spool_recovered"]["moved_to"] == r.moved_to
    online = [schema.check(m.payload, "status_message") for m in sub.on("/status")]
    assert online[0]["spool"]["recovered"]["lost"] == r.lost
    assert (tmp_path / r.moved_to).exists() and (tmp_path / SPOOL_FILE).exists()


class MisbehavingBroker:
    """Accepts TCP on 127.0.0.1, then: "close" (reads CONNECT, closes), "garbage" (answers
    bytes that are not MQTT, keeps the socket open) or "silent" (never answers)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[float] = []
        self._held: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(time.monotonic())
            conn.settimeout(2.0)
            try:
                conn.recv(4096)  # the CONNECT
            except OSError:
                pass
            if self.mode == "close":
                conn.close()
                continue
            if self.mode == "garbage":
                conn.sendall(b"\x00\x00not mqtt at all")
            self._held.append(conn)

    def wait_accepted(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.accepted) >= n

    def close(self):
        self._stop = True
        self._thread.join(2)
        for c in self._held:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("mode, words", [
    ("close", "closed the connection before CONNACK"),
    ("garbage", "not MQTT (protocol error)"),
    ("silent", "no CONNACK within 10s"),
])
def test_broker_trouble_before_connack_is_a_rate_limited_warning_and_retries_follow_the_backoff(tmp_path, caplog,
                                                                                               mode, words):
    caplog.set_level(logging.DEBUG, logger="edge_agent.publish")
    bad = MisbehavingBroker(mode)
    # keepalive 60: paho alone would give a silent broker a whole minute per attempt
    pub = MqttPublisher(fast(bad.url, keepalive=60), Spool.in_state_dir(tmp_path), "dev1")
    pub.start()
    try:
        pub.publish_result(make_result("cam0", 0))
        attempts = 3 if mode != "silent" else 2
        assert bad.wait_accepted(attempts, 40), f"{len(bad.accepted)} connection attempts"
        assert pub.wait_connected(0.1) is False
        time.sleep(0.5)
    finally:
        pub.close(timeout=1)
        bad.close()
    assert pub.spool.depth() == 1  # still spooled for the next start
    msgs = [r for r in caplog.records if r.name == "edge_agent.publish" and words in r.getMessage()]
    warnings = [r for r in msgs if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in msgs]  # rate-limited: the rest are debug
    assert bad.url.replace("mqtt://", "") in warnings[0].getMessage()
    assert len(msgs) >= attempts - 1


def test_password_over_plain_mqtt_gives_one_warning(tmp_path, broker, caplog):
    pub = MqttPublisher(fast(broker.url, username="u", password="secret-pw"), Spool.in_state_dir(tmp_path), "dev1")
    pub.start()
    pub.close(timeout=1)
    warned = [r.getMessage() for r in caplog.records if "clear text" in r.getMessage()]
    assert len(warned) == 1 and "secret-pw" not in caplog.text
