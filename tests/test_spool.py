"""The SQLite store-and-forward spool: order, durability, bounds, drops, threads."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.spool import SPOOL_FILE, Spool, SpoolOptions

REPO = Path(__file__).resolve().parent.parent


def test_append_replays_in_order_and_delete_only_removes_acked(tmp_path):
    s = Spool.in_state_dir(tmp_path)
    ids = [s.append("t/a", f"m{i}".encode(), 1, False) for i in range(5)]
    assert ids == sorted(ids)
    assert [e.payload for e in s.after(0, 10)] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert [e.payload for e in s.after(ids[1], 2)] == [b"m2", b"m3"]
    assert s.delete(ids[2]) and not s.delete(ids[2])
    assert [e.payload for e in s.after(0, 10)] == [b"m0", b"m1", b"m3", b"m4"]
    assert s.depth() == 4
    e = s.after(0, 1)[0]
    assert (e.topic, e.qos, e.retain) == ("t/a", 1, False)


def test_wal_mode_file_under_state_dir(tmp_path):
    s = Spool.in_state_dir(tmp_path / "state")
    s.append("t", b"x")
    assert (tmp_path / "state" / SPOOL_FILE).exists()
    db = sqlite3.connect(tmp_path / "state" / SPOOL_FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_ids_never_reused_after_everything_was_acked(tmp_path):
    # the sender's cursor is "last id handed out": a reused id would be skipped
    s = Spool.in_state_dir(tmp_path)
    last = 0
    for _ in range(3):
        i = s.append("t", b"x")
        assert i > last
        assert s.delete(i)
        last = i
    s.close()
    s = Spool.in_state_dir(tmp_path)
    assert s.append("t", b"y") > last


def test_survives_sigkill_of_the_writer(tmp_path):
    code = (
        "import os, signal, sys\n"
        "from edge_agent.spool import Spool\n"
        "s = Spool.in_state_dir(sys.argv[1])\n"
        "for i in range(20): s.append('t', b'%d' % i)\n"
        "print('written', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == -signal.SIGKILL and "written" in p.stdout
    s = Spool.in_state_dir(tmp_path)
    assert [e.payload for e in s.after(0, 100)] == [b"%d" % i for i in range(20)]


def test_size_bound_drops_oldest_first_and_counts_persist(tmp_path):
    s = Spool.in_state_dir(tmp_path, SpoolOptions(max_mb=10_000 / 1024 / 1024))  # 10 kB
    for i in range(25):
        s.append("t", bytes([i]) * 1000)
    left = s.after(0, 100)
    assert len(left) == 10 and s.size_bytes() <= 10_000
    assert [e.payload[0] for e in left] == list(range(15, 25))
    assert s.dropped() == 15
    s.close()
    s = Spool.in_state_dir(tmp_path, SpoolOptions(max_mb=10_000 / 1024 / 1024))
    assert s.dropped() == 15 and s.size_bytes() == 10_000
    s.count_dropped(2)
    assert s.dropped() == 17


def test_one_message_larger_than_the_bound_is_kept(tmp_path):
    s = Spool.in_state_dir(tmp_path, SpoolOptions(max_mb=1000 / 1024 / 1024))
    s.append("t", b"a" * 10)
    s.append("t", b"b" * 5000)
    assert [e.payload[:1] for e in s.after(0, 10)] == [b"b"]
    assert s.dropped() == 1


def test_age_bound(tmp_path):
    s = Spool.in_state_dir(tmp_path, SpoolOptions(max_age_hours=1.0))
    a = s.append("t", b"old")
    s.append("t", b"new")
    with s._lock, s._db:  # backdate the first row by two hours
        s._db.execute("UPDATE messages SET created_at = created_at - 7200 WHERE id = ?", (a,))
    assert s.expire() == 1
    assert [e.payload for e in s.after(0, 10)] == [b"new"]
    assert s.dropped() == 1


def test_concurrent_append_and_delete(tmp_path):
    s = Spool.in_state_dir(tmp_path)
    n_threads, per = 4, 50
    acked = []

    def producer(k):
        for i in range(per):
            s.append("t", f"{k}-{i}".encode())

    def acker():
        done = 0
        while done < n_threads * per:
            for e in s.after(0, 20):
                if s.delete(e.id):
                    acked.append(e.payload)
                    done += 1

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(n_threads)]
    ack = threading.Thread(target=acker)
    for t in threads + [ack]:
        t.start()
    for t in threads + [ack]:
        t.join(60)
    assert s.depth() == 0
    assert sorted(acked) == sorted(f"{k}-{i}".encode() for k in range(n_threads) for i in range(per))
    for k in range(n_threads):  # each producer's messages were acked in the order written
        mine = [p for p in acked if p.startswith(f"{k}-".encode())]
        assert mine == [f"{k}-{i}".encode() for i in range(per)]


def test_bad_bounds_and_unwritable_state_dir(tmp_path):
    with pytest.raises(ValueError, match="^max_mb: "):
        SpoolOptions(max_mb=0)
    with pytest.raises(ValueError, match="^max_age_hours: "):
        SpoolOptions(max_age_hours=-1)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="state dir"):
        Spool.in_state_dir(blocker / "sub")
    assert os.path.exists(blocker)
