"""A full state dir on a real 2 MiB tmpfs (`mount -t tmpfs -o size=2m`, needs root; without
it the test is skipped and says why), a real broker and subscriber: the agent keeps
publishing, holds results in memory while both disk and broker are away, and after space
returns and a restart nothing is lost and nothing is delivered twice."""
from __future__ import annotations

import errno
import os
import subprocess
from collections import Counter

import pytest

from broker import Subscriber
from edge_agent.publish import MqttOptions, MqttPublisher
from edge_agent.spool import Spool, SpoolOptions
from pub_driver import make_result

PREFIX = "edge-agent/dev1"


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        msg = f"cannot mount a 2 MiB tmpfs (needs root): {p.stderr.strip() or p.returncode}"
        print(msg)
        pytest.skip(msg)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(fs) -> None:
    """Fill the file system to the last byte."""
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    if os.write(fd, b"\0" * size) < size:
                        break
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)


def publisher(broker, state):
    settings = MqttOptions(broker=broker.url, reconnect_min=0.1, reconnect_max=0.5, keepalive=10)
    return MqttPublisher(settings, Spool.in_state_dir(state, SpoolOptions(memory_mb=1.0)), "dev1")


def test_full_disk_keeps_publishing_and_nothing_is_lost_or_duplicated(small_fs, broker, schema):
    state = small_fs / "state"
    sub = Subscriber(broker, f"{PREFIX}/#").start()
    pub = publisher(broker, state)
    pub.start()
    seq = 0
    try:
        # 1. spooled while the broker is away, with space
        broker.stop()
        for _ in range(5):
            pub.publish_result(make_result("cam0", seq))
            seq += 1
        assert pub.spool.depth() == 5 and pub.spool.writable()
        # 2. the disk fills up: these five are acknowledged but cannot be deleted
        fill(small_fs)
        broker.start()
        assert pub.drain(30) == 0
        # 3. broker up, disk full: results go out directly
        for _ in range(5):
            pub.publish_result(make_result("cam0", seq))
            seq += 1
        assert pub.drain(30) == 0
        assert not pub.spool.writable()
        # 4. broker and disk away: held in memory
        broker.stop()
        for _ in range(5):
            pub.publish_result(make_result("cam0", seq))
            seq += 1
        assert pub.spool.memory_queued() == 5 and pub.spool.depth() == 5
        pub.publish_stats({"frames": seq})
        health = pub.spool.health()
        assert health["spool_writable"] is False and health["spool_memory_queued"] == 5
        assert health["state_dir_free_mb"] < 0.1
        broker.start()
        assert pub.drain(30) == 0
        # 5. space returns: the remembered deletes go through with the next write
        (small_fs / "filler").unlink()
        pub.publish_result(make_result("cam0", seq))
        seq += 1
        assert pub.drain(30) == 0 and pub.spool.writable()
    finally:
        pub.close()
    # 6. a restart replays nothing that was already delivered
    pub = publisher(broker, state)
    assert pub.spool.depth() == 0
    pub.start()
    try:
        pub.publish_result(make_result("cam0", seq))
        seq += 1
        assert pub.drain(30) == 0
        sub.wait_for(lambda msgs: len(sub.on("/detections")) >= seq, 30, f"{seq} results")
    finally:
        pub.close()
        sub.stop()
    got = [schema.check(m.payload)["seq"] for m in sub.on("/detections")]
    dupes = {s: n for s, n in Counter(got).items() if n > 1}
    assert sorted(set(got)) == list(range(seq)), "lost results"
    assert dupes == {}, f"delivered twice: {dupes}"
    assert got == sorted(got)
    assert pub.spool.dropped() == 0


def test_memory_queue_is_bounded_and_drops_the_oldest_counted(small_fs, broker):
    state = small_fs / "state"
    broker.stop()
    pub = publisher(broker, state)
    pub.start()
    try:
        fill(small_fs)
        one = len(make_result("cam0", 0).to_payload("dev1").__repr__())
        n = int(1.5 * 1024 * 1024 / one) + 10
        for seq in range(n):
            pub.publish_result(make_result("cam0", seq))
        drops = pub.spool.drops()
        assert drops.get("memory_full", 0) > 0
        assert pub.spool.memory_queued() + drops["memory_full"] == n
        assert pub.spool.after(0, 1)[0].id > 1  # the oldest went first
    finally:
        pub.close(timeout=1)


def test_edge_agent_run_with_a_full_state_dir_exits_0_and_delivers(small_fs, broker, schema, tmp_path):
    from test_mqtt_agent import make_video, run_agent, run_args

    state = small_fs / "state"
    video = make_video(tmp_path / "shelf.avi", frames=3)
    # the spool exists (an earlier run), then the disk fills up
    Spool.in_state_dir(state).close()
    fill(small_fs)
    sub = Subscriber(broker, f"{PREFIX}/#").start()
    try:
        p = run_agent(run_args(video, broker, state, "--max-frames", "2"))
        assert p.returncode == 0, p.stderr[-3000:]
        assert "Traceback" not in p.stderr
        assert "results are held in memory" in p.stderr
        sub.wait_for(lambda msgs: len(sub.on("/detections")) >= 2, 30, "2 results")
    finally:
        sub.stop()
    assert sorted(schema.check(m.payload)["seq"] for m in sub.on("/detections")) == [0, 1]
