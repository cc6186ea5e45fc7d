"""MqttPublisher against a real broker (mosquitto, or amqtt where it is absent), driven in a
real subprocess (tests/pub_driver.py) so it can be SIGKILLed, with a real paho subscriber.

Every result payload received is validated against edge_agent/schema/result.schema.json."""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from broker import Broker, DriverProc, Subscriber, broker_kind
from edge_agent.publish import dedupe_by_message_id

PREFIX = "edge-agent/dev1"


def driver(tmp_path, broker, *extra, state="state", password=None):
    return DriverProc(tmp_path, "--broker", broker.url, "--device-id", "dev1",
                      "--state-dir", tmp_path / state, *extra, password=password)


def publish_drain_close(tmp_path, broker, n=2, *extra):
    """A driver publishes n results, waits for every PUBACK, and closes cleanly."""
    d = driver(tmp_path, broker, *extra)
    try:
        d.cmd(f"pub {n}")
        assert d.cmd("drain 30") == "drained 0"
        assert d.close() == 0
    finally:
        d.cleanup()


def results(sub, schema, camera="cam0"):
    """Detections received, schema-checked, QoS 1 duplicates dropped, in arrival order."""
    got = [schema.check(m.payload) for m in sub.on(f"/{camera}/detections")]
    return list(dedupe_by_message_id(got))


def seqs(sub, schema):
    return [r["seq"] for r in results(sub, schema)]


def wait_results(sub, n, timeout=60):
    sub.wait_for(lambda msgs: len({m.payload for m in msgs if m.topic.endswith("/detections")}) >= n,
                 timeout, f"{n} results")


def statuses(sub):
    return [m.json()["status"] for m in sub.on("/status")]


@pytest.fixture
def sub(broker):
    s = Subscriber(broker, f"{PREFIX}/#").start()
    yield s
    s.stop()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_results_counts_status_stats_are_schema_valid(tmp_path, broker, sub, schema, protocol):
    if protocol == "5" and broker.kind == "amqtt":
        pytest.skip("amqtt speaks MQTT 3.1.1 only")
    d = driver(tmp_path, broker, "--protocol", protocol)
    try:
        assert d.cmd("pub 3").startswith("spooled 2")
        assert d.cmd("camera cam0 camera_lost") == "ok"
        assert d.cmd("stats") == "ok"
        assert d.cmd("drain 30") == "drained 0"
        assert d.close() == 0
    finally:
        d.cleanup()
    sub.wait_for(lambda msgs: any(m.topic.endswith("/status") and b"offline" in m.payload for m in msgs), 30,
                 "offline status")
    assert seqs(sub, schema) == [0, 1, 2]
    counts = [schema.check(m.payload, "counts_message") for m in sub.on("/cam0/counts")]
    assert counts and counts[-1]["seq"] == 2 and counts[-1]["counts"] == results(sub, schema)[-1]["counts"]
    status = [schema.check(m.payload, "status_message") for m in sub.on("/status")]
    assert status[0]["status"] == "online" and status[-1]["status"] == "offline"
    assert any(s.get("cameras") == {"cam0": "camera_lost"} for s in status)
    stats = [schema.check(m.payload, "stats_message") for m in sub.on("/stats")]
    assert stats and stats[-1]["frames"] == 3
    assert {m.topic for m in sub.messages} <= {f"{PREFIX}/{t}" for t in
                                               ("cam0/detections", "cam0/counts", "status", "stats")}


def test_retained_counts_and_offline_for_a_late_subscriber(tmp_path, broker, schema):
    publish_drain_close(tmp_path, broker)
    late = Subscriber(broker, f"{PREFIX}/#").start()
    try:
        late.wait_for(lambda msgs: len(msgs) >= 2, 20, "retained messages")
        time.sleep(0.3)
        retained = {m.topic: m for m in late.messages if m.retain}
        assert schema.check(retained[f"{PREFIX}/cam0/counts"].payload, "counts_message")["seq"] == 1
        assert schema.check(retained[f"{PREFIX}/status"].payload, "status_message")["status"] == "offline"
        assert not late.on("/detections")  # results are not retained
    finally:
        late.stop()


def test_broker_outage_all_results_arrive_in_order(tmp_path, broker, sub, schema):
    d = driver(tmp_path, broker)
    try:
        d.cmd("pub 2")
        wait_results(sub, 2)
        broker.stop()
        n = 6
        reply = d.cmd(f"pub {n}")
        assert reply.startswith("spooled 7") and int(reply.split("depth=")[1]) >= n
        broker.start()
        assert d.cmd("drain 60") == "drained 0"
        wait_results(sub, 2 + n)
        assert d.close() == 0
    finally:
        d.cleanup()
    assert seqs(sub, schema) == list(range(2 + n))
    assert "lost" in d.stderr() and "reconnected" in d.stderr()


def test_sigkill_while_broker_down_then_restart_replays_spool(tmp_path, broker, sub, schema):
    d = driver(tmp_path, broker)
    try:
        d.cmd("pub 2")
        wait_results(sub, 2)
        broker.stop()
        assert d.cmd("pub 5").startswith("spooled 6")
        d.kill()
    finally:
        d.cleanup()
    broker.start()
    sub.wait_connects(2)
    d2 = driver(tmp_path, broker, "--start-seq", "7")  # same state dir: same spool
    try:
        assert d2.cmd("drain 60") == "drained 0"
        d2.cmd("pub 1")
        assert d2.cmd("drain 60") == "drained 0"
        wait_results(sub, 8)
        assert d2.close() == 0
    finally:
        d2.cleanup()
    assert seqs(sub, schema) == list(range(8))


def test_last_will_offline_when_the_process_is_killed(tmp_path, broker, sub, schema):
    d = driver(tmp_path, broker, "--keepalive", "5")
    try:
        d.cmd("pub 1")
        wait_results(sub, 1)
        sub.wait_for(lambda msgs: "online" in statuses(sub), 20, "online")
        d.kill()
        sub.wait_for(lambda msgs: statuses(sub)[-1:] == ["offline"], 30, "offline via Last Will")
    finally:
        d.cleanup()
    will = schema.check(sub.on("/status")[-1].payload, "status_message")
    assert will["reason"] == "connection lost"


@pytest.mark.skipif(not shutil.which("mosquitto_sub"), reason="mosquitto_sub not installed")
def test_mosquitto_sub_receives_schema_valid_results(tmp_path, broker, schema):
    ms = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", f"{PREFIX}/#",
                           "-v", "-q", "1", "-W", "60"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)  # let it subscribe
    publish_drain_close(tmp_path, broker)
    lines = []
    for line in ms.stdout:
        lines.append(line)
        if line.startswith(f"{PREFIX}/status ") and "offline" in line:
            break
    ms.terminate()
    ms.wait(10)
    det = [line.split(" ", 1)[1] for line in lines if line.startswith(f"{PREFIX}/cam0/detections ")]
    assert [schema.check(p)["seq"] for p in det] == [0, 1]


# -- TLS and passwords (mosquitto only) --------------------------------------------------
@pytest.mark.parametrize("client_cert", [False, True], ids=["server-auth", "mutual-tls"])
def test_tls_with_test_ca(tmp_path, tls_files, schema, client_cert):
    b = Broker(tmp_path / "tlsbroker", tls=tls_files, require_client_cert=client_cert).start()
    try:
        s = Subscriber(b, f"{PREFIX}/#", client_cert=True).start()
        extra = ["--tls-ca", tls_files.ca]
        if client_cert:
            extra += ["--tls-cert", tls_files.client_cert, "--tls-key", tls_files.client_key]
        d = driver(tmp_path, b, *extra)
        try:
            assert b.url.startswith("mqtts://")
            d.cmd("pub 2")
            assert d.cmd("drain 30") == "drained 0"
            wait_results(s, 2)
            assert d.close() == 0
        finally:
            d.cleanup()
        assert seqs(s, schema) == [0, 1]
        s.stop()
    finally:
        b.stop()


def test_tls_untrusted_server_is_a_clear_error_not_a_crash(tmp_path, tls_files):
    from broker import make_test_ca

    other_ca = make_test_ca(tmp_path / "other-ca")
    b = Broker(tmp_path / "tlsbroker", tls=tls_files).start()
    try:
        d = driver(tmp_path, b, "--tls-ca", other_ca.ca)
        try:
            assert d.cmd("pub 1").startswith("spooled 0")
            time.sleep(2)
            assert d.proc.poll() is None
            assert d.cmd("drain 0.5") == "drained 1"
        finally:
            d.cleanup()
        err = d.stderr()
        assert "TLS certificate check failed" in err and b.url in err, err
    finally:
        b.stop()


def test_wrong_password_is_a_clear_error_and_a_retry(tmp_path, schema):
    secret, wrong = "right-horse-battery", "wrong-staple-9"
    b = Broker(tmp_path / "authbroker", users={"agent": secret, "viewer": "view-pass"}).start()
    try:
        d = driver(tmp_path, b, "--username", "agent", password=wrong)
        try:
            assert d.cmd("pub 2").startswith("spooled 1")
            deadline = time.monotonic() + 30
            while d.stderr().count("refused the connection") < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert d.proc.poll() is None, "publisher crashed on a wrong password"
            assert d.cmd("drain 0.5") == "drained 2"  # kept in the spool
        finally:
            d.cleanup()
        err = d.stderr()
        refusals = [line for line in err.splitlines() if "refused the connection" in line]
        assert len(refusals) >= 2, err  # it retried
        assert b.url in refusals[0] and "retrying" in refusals[0]
        assert "check mqtt.username and the password" in refusals[0]  # mosquitto says "Not authorized" 
        assert wrong not in err and secret not in err

        # the right password, same spool: the two results go out
        s = Subscriber(b, f"{PREFIX}/#", username="viewer", password="view-pass").start()
        d2 = driver(tmp_path, b, "--username", "agent", "--start-seq", "2", password=secret)
        try:
            assert d2.cmd("drain 30") == "drained 0"
            wait_results(s, 2)
            assert d2.close() == 0
        finally:
            d2.cleanup()
        assert seqs(s, schema) == [0, 1]
        assert secret not in d2.stderr()
        s.stop()
    finally:
        b.stop()


def test_report_says_which_broker(broker):
    assert broker.kind == broker_kind() in ("mosquitto", "amqtt")
