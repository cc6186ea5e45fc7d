"""Publisher pieces without a subprocess: URL and settings checks, the stdout publisher,
the payload schema, the dedupe helper, and MqttPublisher in-process against a real broker."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import Subscriber
from edge_agent.errors import ConfigError
from edge_agent.publish import (MessageIdDeduper, MqttOptions, MqttPublisher, StdoutPublisher, Topics,
                                dedupe_by_message_id, open_publisher, parse_broker_url)
from edge_agent.result import FrameResult
from edge_agent.secret import Secret
from edge_agent.spool import Spool, SpoolOptions
from pub_driver import make_result
from edge_agent.tiling.regions import Regions


# -- URLs and settings -------------------------------------------------------------------
@pytest.mark.parametrize("url,expect", [
    ("mqtt://127.0.0.1:1884", ("mqtt", "127.0.0.1", 1884, False)),
    ("mqtt://broker.local", ("mqtt", "broker.local", 1883, False)),
    ("mqtts://broker.local", ("mqtts", "broker.local", 8883, True)),
    ("mqtts://[::1]:9000", ("mqtts", "::1", 9000, True)),
    ("tcp://h:1", ("mqtt", "h", 1, False)),
    ("ssl://h", ("mqtts", "h", 8883, True)),
])
def test_parse_broker_url(url, expect):
    b = parse_broker_url(url)
    assert (b.scheme, b.host, b.port, b.tls) == expect


@pytest.mark.parametrize("url,words", [
    ("http://x:1883", "not a broker URL"),
    ("127.0.0.1:1883", "not a broker URL"),
    ("mqtt://:1883", "not a broker URL"),
    ("mqtt://h:99999", "not a broker URL"),
    ("mqtt://user:pw@h:1883", "not in the URL"),
    ("mqtt://h:1883/topic", "no path"),
])
def test_bad_broker_url_says_why(url, words):
    with pytest.raises(ValueError) as e:
        parse_broker_url(url)
    assert words in str(e.value)
    assert "user:pw" not in str(e.value)  # a password in a URL is never echoed
    with pytest.raises(ValueError, match="^broker: "):
        MqttOptions(broker=url)


def test_password_never_in_repr():
    s = MqttOptions(broker="mqtt://h", username="agent", password=Secret("hunter2-secret"))
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert s.password.reveal() == "hunter2-secret"


@pytest.mark.parametrize("kw,key", [
    ({"protocol": "4"}, "protocol"),
    ({"qos": 2}, "qos"),
    ({"reconnect_min": 5, "reconnect_max": 1}, "reconnect_max"),
    ({"broker": "mqtt://h", "password": Secret("x")}, "username"),
    ({"broker": "mqtt://h", "ca_file": "/etc/hostname"}, "ca_file"),
    ({"broker": "mqtts://h", "cert_file": "/etc/hostname"}, "cert_file"),
    ({"inflight": 0}, "inflight"),
    ({"keepalive": 4}, "keepalive"),
    ({"prefix": "shop/+/x"}, "prefix"),
])
def test_bad_options_are_value_errors_naming_the_key(kw, key):
    with pytest.raises(ValueError, match=f"^{key}: "):
        MqttOptions(**kw)


def test_missing_tls_file_is_a_config_error_at_start(tmp_path):
    with pytest.raises(ConfigError, match=r"\[mqtt\] ca_file = '/nonexistent/ca.crt': no such file"):
        MqttPublisher(MqttOptions(broker="mqtts://h", ca_file="/nonexistent/ca.crt"), Spool.in_state_dir(tmp_path), "dev1")


def test_topics_and_device_id():
    t = Topics.for_device("dev1")
    assert (t.detections("cam0"), t.counts("cam0"), t.snapshot("cam0"), t.status, t.stats) == (
        "edge-agent/dev1/cam0/detections", "edge-agent/dev1/cam0/counts", "edge-agent/dev1/cam0/snapshot",
        "edge-agent/dev1/status", "edge-agent/dev1/stats")
    assert Topics.for_device("dev1", "shop/aisle3/").status == "shop/aisle3/status"
    for bad in ("a/b", "a+", "#", ""):
        with pytest.raises(ConfigError, match="device_id"):
            Topics.for_device(bad)


def test_open_publisher_picks_stdout_without_a_broker(tmp_path):
    assert isinstance(open_publisher(MqttOptions(), "dev1", tmp_path), StdoutPublisher)
    pub = open_publisher(MqttOptions(broker="mqtt://127.0.0.1:1"), "dev1", tmp_path / "st", SpoolOptions(max_mb=1))
    assert isinstance(pub, MqttPublisher) and (tmp_path / "st" / "spool.sqlite3").exists()


# -- stdout ------------------------------------------------------------------------------
def test_stdout_publisher_writes_schema_valid_json_lines(schema, caplog):
    caplog.set_level("DEBUG", logger="edge_agent.publish")
    out = io.StringIO()
    pub = StdoutPublisher("dev1", stream=out)
    pub.start()
    for seq in range(3):
        pub.publish_result(make_result("cam0", seq), snapshot=b"\xff\xd8jpeg")
    pub.camera_state("cam0", "camera_lost")
    pub.publish_stats({"frames": 3})
    assert pub.drain(1) == 0 and pub.wait_connected(0)
    pub.close()
    lines = out.getvalue().splitlines()
    assert [schema.check(line)["seq"] for line in lines] == [0, 1, 2]  # only results on stdout
    assert "camera_lost" in caplog.text


# -- the payload and its schema ------------------------------------------------------------
finite = st.floats(-1e4, 1e4, allow_nan=False)
unit = st.floats(0, 1, allow_nan=False)


@st.composite
def frame_results(draw):
    n = draw(st.integers(0, 5))
    m = draw(st.integers(0, 3))
    det = Regions(np.array(draw(st.lists(st.lists(finite, min_size=4, max_size=4), min_size=n, max_size=n))).reshape(-1, 4),
                  draw(st.lists(unit, min_size=n, max_size=n)), draw(st.lists(st.text(max_size=12), min_size=n, max_size=n)))
    quads = np.array(draw(st.lists(st.lists(finite, min_size=8, max_size=8), min_size=m, max_size=m))).reshape(-1, 8)
    text = Regions.from_quads(quads, draw(st.lists(unit, min_size=m, max_size=m)),
                              draw(st.lists(st.text(max_size=20), min_size=m, max_size=m)))
    return FrameResult(camera_id=draw(st.sampled_from(["cam0", "shelf-3", "caméra"])), seq=draw(st.integers(0, 10**9)),
                       captured_at=draw(st.floats(0, 4e9)), width=draw(st.integers(1, 8000)),
                       height=draw(st.integers(1, 8000)), detections=det, text=text,
                       model={"name": "florence-2-base", "variant": draw(st.sampled_from(["", "_int8", "_q4"])),
                              "dir": "/opt/models/x"},
                       tiles=draw(st.integers(1, 50)), resplit=draw(st.lists(st.tuples(*[st.integers(0, 4000)] * 4), max_size=3)),
                       timings=draw(st.dictionaries(st.sampled_from(["plan", "engine", "merge", "total"]),
                                                    st.floats(0, 100))))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_results())
def test_every_payload_validates_and_survives_json(schema, result):
    payload = result.to_payload("dev1")
    back = json.loads(json.dumps(payload))
    schema.check(back)
    assert back["counts"] == dict(sorted(__import__("collections").Counter(result.detections.labels).items()))
    assert len(back["detections"]) == len(result.detections) and len(back["text"]) == len(result.text)


def test_schema_is_strict(schema):
    import jsonschema

    good = make_result("cam0", 1).to_payload("dev1")
    schema.check(good)
    for mutate in (lambda p: p.update(extra=1), lambda p: p.pop("message_id"),
                   lambda p: p["detections"][0].update(box=[1, 2, 3]), lambda p: p.update(captured_at="yesterday"),
                   lambda p: p["text"][0].update(quad=[0] * 7), lambda p: p.update(device_id="a/b"),
                   lambda p: p["detections"][0].update(score=1.5)):
        bad = json.loads(json.dumps(good))
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            schema.check(bad)


# -- dedupe ------------------------------------------------------------------------------
def test_dedupe_by_message_id_keeps_first_copies_in_order():
    a, b, c = (make_result("cam0", i).to_payload("dev1") for i in range(3))
    stream = [a, json.dumps(b).encode(), a, json.dumps(c), b, c]
    assert [p["seq"] for p in dedupe_by_message_id(stream)] == [0, 1, 2]
    d = MessageIdDeduper(capacity=2)
    assert d.is_new(a) and d.is_new(b) and not d.is_new(a) and d.is_new(c)
    assert d.is_new(b)  # forgotten: capacity 2 kept a and c


# -- in-process against a real broker ---------------------------------------------------------
def fast(url, **kw):
    return MqttOptions(broker=url, reconnect_min=0.1, reconnect_max=0.5, keepalive=10, **kw)


def test_broker_down_at_start_then_up(tmp_path, broker, schema):
    sub = Subscriber(broker, "edge-agent/dev1/#").start()
    broker.stop()
    pub = MqttPublisher(fast(broker.url), Spool.in_state_dir(tmp_path), "dev1")
    pub.start()
    try:
        assert pub.wait_connected(10) is False  # first attempt failed; it keeps retrying
        for seq in range(3):
            pub.publish_result(make_result("cam0", seq))
        assert pub.drain(0.5) == 3
        broker.start()
        assert pub.drain(30) == 0 and pub.wait_connected(1) is True
        sub.wait_for(lambda msgs: len(sub.on("/detections")) >= 3, 30)
    finally:
        pub.close()
        sub.stop()
    assert [schema.check(m.payload)["seq"] for m in sub.on("/detections")][:3] == [0, 1, 2]


def test_full_spool_drops_oldest_and_stats_report_it(tmp_path, broker, schema):
    sub = Subscriber(broker, "edge-agent/dev1/#").start()
    broker.stop()
    one = len(json.dumps(make_result("cam0", 0).to_payload("dev1"), separators=(",", ":")))
    spool = Spool.in_state_dir(tmp_path, SpoolOptions(max_mb=one * 4.5 / 1024 / 1024))  # room for four results
    pub = MqttPublisher(fast(broker.url), spool, "dev1")
    pub.start()
    try:
        for seq in range(10):
            pub.publish_result(make_result("cam0", seq))
        assert spool.depth() == 4 and spool.dropped() == 6
        broker.start()
        assert pub.drain(30) == 0
        pub.publish_stats({"frames": 10})
        sub.wait_for(lambda msgs: sub.on("/stats") and len(sub.on("/detections")) >= 4, 30)
    finally:
        pub.close()
        sub.stop()
    assert [schema.check(m.payload)["seq"] for m in sub.on("/detections")] == [6, 7, 8, 9]
    stats = schema.check(sub.on("/stats")[-1].payload, "stats_message")
    assert stats["spool_dropped"] == 6 and stats["spool_depth"] == 0 and stats["frames"] == 10


def test_inflight_window_is_respected(tmp_path, broker):
    """Many results while connected: paho never holds more than the window of spooled ones."""
    spool = Spool.in_state_dir(tmp_path)
    pub = MqttPublisher(fast(broker.url, inflight=3), spool, "dev1")
    peak = 0
    broker.stop()
    pub.start()
    try:
        for seq in range(30):
            pub.publish_result(make_result("cam0", seq))
        broker.start()
        deadline = time.monotonic() + 30
        while spool.depth() and time.monotonic() < deadline:
            peak = max(peak, len(pub._inflight))
            time.sleep(0.001)
        assert spool.depth() == 0
    finally:
        pub.close()
    assert 1 <= peak <= 3


def test_snapshot_and_camera_state_are_retained(tmp_path, broker, schema):
    import threading

    pub = MqttPublisher(fast(broker.url), Spool.in_state_dir(tmp_path), "dev1")
    pub.start()
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40 + b"\xff\xd9"
    try:
        pub.publish_result(make_result("cam1", 0), snapshot=jpeg)
        t = threading.Thread(target=pub.camera_state, args=("cam1", "camera_lost"))  # capture's reader thread
        t.start()
        t.join()
        assert pub.drain(30) == 0
    finally:
        pub.close()
    late = Subscriber(broker, "edge-agent/dev1/#").start()
    try:
        late.wait_for(lambda msgs: len(msgs) >= 3, 20, "retained snapshot, counts, status")
    finally:
        late.stop()
    got = {m.topic: m for m in late.messages if m.retain}
    assert got["edge-agent/dev1/cam1/snapshot"].payload == jpeg
    status = schema.check(got["edge-agent/dev1/status"].payload, "status_message")
    assert status["status"] == "offline" and status["cameras"] == {"cam1": "camera_lost"}


def test_mqtt5_puback_error_is_logged_counted_and_not_retried(tmp_path, caplog):
    from broker import Broker

    b = Broker(tmp_path / "acl", users={"agent": "pw"}, acl="user agent\ntopic write edge-agent/dev1/status\n").start()
    pub = MqttPublisher(fast(b.url, protocol="5", username="agent", password=Secret("pw")), Spool.in_state_dir(tmp_path), "dev1")
    pub.start()
    try:
        pub.publish_result(make_result("cam0", 0))
        assert pub.drain(30) == 0  # not stuck behind a message the broker will never take
        assert pub.spool.dropped() == 1
    finally:
        pub.close()
        b.stop()
    assert "result 1 can never be sent (rejected: broker" in caplog.text and "answered Not authorized" in caplog.text
