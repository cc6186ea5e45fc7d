"""The spool under damage: checksums, dead rows, a damaged file quarantined and salvaged,
writes refused (a real full tmpfs is in test_full_disk.py).  Real SQLite files."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.spool import SPOOL_FILE, Spool, SpoolOptions

REPO = Path(__file__).resolve().parent.parent


def filled(state: Path, n: int = 200, size: int = 300) -> list[int]:
    """A closed spool of n rows whose payloads carry a findable marker; -> their ids."""
    s = Spool.in_state_dir(state)
    ids = [s.append(f"p/cam0/detections", b"MARK%05d" % i + b"x" * size) for i in range(n)]
    s.close()  # the last connection checkpoints the WAL into the file
    assert not Path(f"{state / SPOOL_FILE}-wal").exists()
    return ids


def pages(path: Path, name: str, kind: str) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ? ORDER BY pageno",
                                         (name, kind))]
    finally:
        db.close()


def overwrite_page(path: Path, pageno: int, data: bytes | None = None) -> None:
    db = sqlite3.connect(path)
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(path, "r+b") as f:
        f.seek((pageno - 1) * size)
        f.write(data if data is not None else bytes([0xA5]) * size)


def damage(state: Path, kind: str) -> None:
    path = state / SPOOL_FILE
    if kind == "zero_length":
        path.write_bytes(b"")
    elif kind == "garbage_header":
        with open(path, "r+b") as f:
            f.write(os.urandom(100))
    elif kind == "data_page":
        leaves = pages(path, "messages", "leaf")
        overwrite_page(path, leaves[len(leaves) // 2])
    elif kind == "index_page":
        overwrite_page(path, pages(path, "messages_created_at", "leaf")[0])
    elif kind == "payload":
        raw = path.read_bytes()
        at = raw.index(b"MARK00042") + 9
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(b"Y")
    else:
        raise ValueError(kind)


def test_rows_carry_a_checksum_and_a_damaged_payload_is_buried_not_returned(tmp_path):
    ids = filled(tmp_path, 100)
    damage(tmp_path, "payload")
    s = Spool.in_state_dir(tmp_path)
    assert s.recovery is None  # the file is sound; only one payload changed
    got = s.after(0, 1000)
    assert [e.id for e in got] == [i for i in ids if i != ids[42]]
    assert all(b"Y" not in e.payload[:20] for e in got)
    assert s.drops() == {"checksum": 1} and s.dropped() == 1
    assert [(d[0], d[2]) for d in s.dead()] == [(ids[42], "checksum")]
    assert s.depth() == 99


@pytest.mark.parametrize("kind", ["zero_length", "garbage_header", "data_page", "index_page"])
def test_damaged_file_is_quarantined_and_salvaged_in_order_with_a_counted_loss(tmp_path, kind, caplog):
    ids = filled(tmp_path, 200)
    damage(tmp_path, kind)
    s = Spool.in_state_dir(tmp_path)
    r = s.recovery
    assert r is not None, kind
    quarantined = list(tmp_path.glob(f"{SPOOL_FILE}.corrupt-*"))
    assert [q.name for q in quarantined if not q.name.endswith(("-wal", "-shm"))] == [r.moved_to]
    got = [e.id for e in s.after(0, 1000)]
    assert got == sorted(got) and set(got) <= set(ids)
    assert r.salvaged == len(got) == s.depth()
    if kind in ("zero_length", "garbage_header"):
        assert r.salvaged == 0 and r.lost is None  # nothing readable says how many there were
        assert "unknown number" in r.describe()
    elif kind == "index_page":
        assert r.lost == 0 and got == ids  # the rows are all in the table b-tree
    else:
        assert 0 < r.lost < len(ids) and r.salvaged + r.lost == len(ids)
        assert s.drops() == {"corrupt": r.lost}
    assert r.describe() in caplog.text
    # the fresh spool works and keeps counting ids upwards
    new = s.append("p/cam0/detections", b"after")
    assert new > max(got or [0]) and s.after(0, 1000)[-1].payload == b"after"
    s.close()
    assert Spool.in_state_dir(tmp_path).recovery is None  # the fresh file is sound


@pytest.mark.parametrize("kind", ["zero_length", "garbage_header", "data_page", "index_page", "payload"])
def test_damaged_spool_opens_without_a_traceback_in_a_real_process(tmp_path, kind):
    filled(tmp_path, 200)
    damage(tmp_path, kind)
    code = ("import logging, sys\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "from edge_agent.spool import Spool\n"
            "s = Spool.in_state_dir(sys.argv[1])\n"
            "rows = s.after(0, 10000)\n"
            "print(len(rows), s.dropped(), s.health()['spool_drops'])\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert ("damaged" in p.stderr) or kind == "payload"


def test_unpublishable_row_goes_to_the_dead_table_and_is_counted_by_reason(tmp_path):
    s = Spool.in_state_dir(tmp_path)
    a = s.append("ok/1", b"1")
    b = s.append("bad/#", b"2")
    c = s.append("ok/3", b"3")
    s.bury(b, "unpublishable", "Publish topic cannot contain wildcards.")
    assert [e.id for e in s.after(0, 10)] == [a, c]
    assert s.drops() == {"unpublishable": 1} and s.dropped() == 1
    assert s.dead() == [(b, "bad/#", "unpublishable")]
    s.close()
    s = Spool.in_state_dir(tmp_path)
    assert s.drops() == {"unpublishable": 1} and s.depth() == 2


def test_size_and_age_drops_are_counted_by_reason(tmp_path):
    now = [1_000_000.0]
    s = Spool(tmp_path / SPOOL_FILE, SpoolOptions(max_mb=1000 / 1024 / 1024, max_age_hours=1.0), clock=lambda: now[0])
    for i in range(5):
        s.append("t", b"x" * 400)
    now[0] += 7200
    s.append("t", b"y")
    drops = s.drops()
    assert drops["size"] == 3 and drops["age"] == 2, drops
    assert s.dropped() == 5


def test_spool_written_before_checksums_is_migrated_and_its_rows_still_delivered(tmp_path):
    db = sqlite3.connect(tmp_path / SPOOL_FILE)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript("""
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
                               qos INTEGER NOT NULL, retain INTEGER NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta VALUES ('dropped', 7);
    """)
    import time
    db.execute("INSERT INTO messages (topic, payload, qos, retain, created_at) VALUES ('t', x'01', 1, 0, ?)",
               (time.time(),))
    db.commit()
    db.close()
    s = Spool.in_state_dir(tmp_path)
    assert [e.payload for e in s.after(0, 10)] == [b"\x01"] and s.dropped() == 7
    s.append("t", b"\x02")
    assert [e.payload for e in s.after(0, 10)] == [b"\x01", b"\x02"]


def test_low_space_warning_once_and_state_dir_usage_in_health(tmp_path, caplog):
    s = Spool(tmp_path / SPOOL_FILE, SpoolOptions(min_free_mb=1e12))  # more than any disk has free
    s.append("t", b"x" * 1000)
    first, second = s.health(), s.health()
    warned = [r for r in caplog.records if "MB free (warning below" in r.getMessage()]
    assert len(warned) == 1
    assert first["state_dir_free_mb"] > 0 and 0 <= first["state_dir_used_pct"] <= 100
    assert first["spool_mb"] > 0 and first["spool_writable"] is True and second["spool_depth"] == 1
