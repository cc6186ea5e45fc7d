"""Durable store-and-forward spool: SQLite in WAL mode under the state directory.

Every result is appended here *before* it is handed to MQTT and deleted only when the
broker acknowledges it (PUBACK).  Rows are keyed by an AUTOINCREMENT rowid, so the key
only ever grows, also after every row was deleted: replay order is rowid order.  (The
paho message id is not a key: it lives in one process and wraps at 65535.)

Guarantees, and what happens when they cannot hold:

- **Bounds.** Total payload size (`max_mb`) and age (`max_age_hours`).  Over a bound the
  oldest rows are dropped first.  Every drop is counted persistently, by reason
  (`drops()`: size, age, rejected, unpublishable, checksum, memory_full, corrupt), so stats
  report drops across restarts.
- **A row that can never be sent** (paho refuses its topic, the broker rejects it, its
  checksum fails) is moved to the `dead` table by `bury()`, counted, and the queue moves
  on.  The last DEAD_KEEP dead rows are kept for inspection.
- **Checksums.** Every row carries a CRC-32 of its topic and payload; a row that fails it is
  never returned by `after()`: it is buried with reason "checksum".
- **Disk full / I/O errors while writing.** `append` never raises for them: the message is
  kept in a bounded in-memory queue (`memory_mb`, oldest dropped first, counted as
  memory_full) with the ids the spool would have given it, so the sender hands it out in
  order while the broker is up; the queue is written back into the file, in order, once
  the file takes writes again.  A delete that fails (an acknowledged row) is remembered,
  hidden from `after()` and `depth()`, and retried, so it is not delivered twice once the
  disk recovers.  Drop counts that cannot be written wait in memory too.
- **A damaged file** (zero length, not a database, `PRAGMA quick_check` failing) is
  renamed `spool.sqlite3.corrupt-<UTC time>` (with its -wal/-shm); the rows that can still
  be read, and whose checksum holds, are copied into a fresh spool in id order, the loss
  is counted (reason corrupt) where it can be known, and `recovery` says what happened.
  quick_check reads every page of the file once at open (measured by
  benchmarks/spool_check.py); it does not look inside payloads, the checksums do.

One connection, guarded by a lock: paho's network thread and the sender thread delete
while the agent appends from the main thread.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edge_agent.errors import ConfigError, RuntimeFailure

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.sqlite3"
DEAD_KEEP = 1000  # dead rows kept for inspection (oldest deleted first)
WRITE_RETRY_S = 2.0  # while the file refuses writes, how often an append tries it again
REASONS = ("size", "age", "rejected", "unpublishable", "checksum", "memory_full", "corrupt")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_at REAL NOT NULL,
    crc INTEGER
);
-- The age bound is checked on every append: without this index that is a scan of the
-- whole spool (every payload) per result, ~40 ms per append with 90 MB spooled.
CREATE INDEX IF NOT EXISTS messages_created_at ON messages (created_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_at REAL NOT NULL,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL
);
"""
_CORRUPT_CODES = {"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CORRUPT_INDEX", "SQLITE_CORRUPT_SEQUENCE",
                  "SQLITE_CORRUPT_VTAB"}


def checksum(topic: str, payload: bytes) -> int:
    """CRC-32 of a row's topic and payload (what `after()` checks before handing a row out)."""
    return zlib.crc32(payload, zlib.crc32(topic.encode("utf-8", "surrogatepass") + b"\0"))


@dataclass(frozen=True)
class SpoolOptions:
    """The `[spool]` section: the bounds of the queue."""

    max_mb: float = 100.0  # total payload size, MiB; the oldest rows go first
    max_age_hours: float = 168.0  # rows older than this are dropped
    memory_mb: float = 8.0  # results held in memory while the spool file refuses writes (disk full)
    min_free_mb: float = 50.0  # warn when the state dir's file system has less free space

    def __post_init__(self):
        for key in ("max_mb", "max_age_hours", "memory_mb"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key}: must be > 0")
        if not self.min_free_mb >= 0:
            raise ValueError("min_free_mb: must be >= 0")


@dataclass(frozen=True)
class SpoolEntry:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_at: float


@dataclass(frozen=True)
class Recovery:
    """What opening a damaged spool did."""

    why: str  # what was wrong with the file
    moved_to: str  # the quarantined file
    salvaged: int  # rows copied into the fresh spool
    lost: int | None  # rows that could not be read or failed their checksum; None: unknown

    def describe(self) -> str:
        lost = "an unknown number of" if self.lost is None else str(self.lost)
        return (f"spool was damaged ({self.why}); moved to {self.moved_to}, {self.salvaged} results salvaged, "
                f"{lost} lost")

    def as_dict(self) -> dict:
        return {"why": self.why, "moved_to": self.moved_to, "salvaged": self.salvaged, "lost": self.lost}


class Damaged(Exception):
    """The spool file cannot be used as it is (raised inside `_open`, handled by quarantine)."""


@dataclass
class _Pending:
    """What could not be written yet (disk full): retried on the next successful write."""

    deletes: set[int] = field(default_factory=set)  # acknowledged rows still in the file
    buries: dict[int, str] = field(default_factory=dict)  # rows to move to dead, with the reason
    drops: Counter = field(default_factory=Counter)  # reason -> count not yet in meta


class Spool:
    """Ordered durable queue of MQTT messages.  Thread-safe."""

    def __init__(self, path: str | Path, options: SpoolOptions = SpoolOptions(), clock=time.time):
        self.path = Path(path)
        self.max_bytes = int(options.max_mb * 1024 * 1024)
        self.max_age_s = float(options.max_age_hours) * 3600.0
        self.memory_max_bytes = int(options.memory_mb * 1024 * 1024)
        self.min_free_bytes = int(options.min_free_mb * 1024 * 1024)
        self.clock = clock
        self._lock = threading.Lock()
        self._pending = _Pending()
        self._memory: list[tuple[SpoolEntry, int]] = []  # (entry, crc), ids above every row in the file
        self._memory_bytes = 0
        self._write_error: str | None = None  # why the last write failed; None: the file takes writes
        self._next_try = 0.0
        self._low_space_warned = False
        self.recovery: Recovery | None = None
        self.volatile: str | None = None  # why the file could not be opened: this run spools in memory
        self._db = self._open_or_recover()
        self._bytes = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages").fetchone()[0]
        self._bytes_committed = self._bytes  # what a rolled-back transaction returns _bytes to
        self._next_id = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM sqlite_sequence WHERE name = 'messages'").fetchone()[0]

    @classmethod
    def in_state_dir(cls, state_dir: str | Path, options: SpoolOptions = SpoolOptions(), clock=time.time) -> "Spool":
        state_dir = Path(state_dir)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"state dir {state_dir}: cannot create it: {e.strerror}") from None
        return cls(state_dir / SPOOL_FILE, options, clock)

    # -- writing -------------------------------------------------------------------
    def append(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Store one message; returns its id.  Drops the oldest rows if over bounds.  When the
        file refuses the write (disk full, I/O error) the message is held in memory instead."""
        payload = bytes(payload)
        now = self.clock()
        crc = checksum(topic, payload)
        with self._lock:
            if not self._memory or self._flush_memory_locked(now):
                try:
                    with self._db:
                        entry_id = self._insert_locked(None, topic, payload, qos, retain, now, crc)
                        self._enforce_bounds_locked(now, keep_id=entry_id)
                        self._write_pending_locked()
                    self._wrote_locked()
                    return entry_id
                except sqlite3.DatabaseError as e:
                    self._write_failed_locked(e, "append")
            return self._append_memory_locked(topic, payload, qos, retain, now, crc)

    def delete(self, entry_id: int) -> bool:
        """Forget an acknowledged message.  False if it was already gone (dropped, duplicate ack)."""
        with self._lock:
            for i, (e, _) in enumerate(self._memory):
                if e.id == entry_id:
                    del self._memory[i]
                    self._memory_bytes -= len(e.payload)
                    return True
            try:
                with self._db:
                    found = self._delete_locked(entry_id)
                    self._write_pending_locked()
                self._wrote_locked()
                return found
            except sqlite3.DatabaseError as e:
                self._write_failed_locked(e, "delete")
                self._pending.deletes.add(entry_id)
                return True

    def bury(self, entry_id: int, reason: str, why: str = "") -> None:
        """Move a row that can never be sent to the dead table and count it as dropped."""
        log.error("spool: result %d can never be sent (%s%s); moved aside, the queue goes on", entry_id, reason,
                  f": {why}" if why else "")
        with self._lock:
            for i, (e, _) in enumerate(self._memory):
                if e.id == entry_id:
                    del self._memory[i]
                    self._memory_bytes -= len(e.payload)
                    self._count_locked(reason, 1)
                    return
            self._pending.buries[entry_id] = reason
            self._flush_pending_locked("bury")

    def expire(self, now: float | None = None) -> int:
        """Drop rows older than the age bound (and any over the size bound); retry what could
        not be written before.  Returns rows dropped."""
        now = self.clock() if now is None else now
        with self._lock:
            n = self._expire_memory_locked(now)
            try:
                with self._db:
                    n += self._enforce_bounds_locked(now)
                    self._write_pending_locked()
                self._wrote_locked()
            except sqlite3.DatabaseError as e:
                self._write_failed_locked(e, "expire")
            if self._memory:
                self._flush_memory_locked(now, force=True)
            return n

    def count_dropped(self, n: int, reason: str = "rejected") -> None:
        """Count messages lost for another reason (e.g. the broker rejected them)."""
        with self._lock:
            self._count_locked(reason, n)

    # -- reading -------------------------------------------------------------------
    def after(self, entry_id: int, limit: int) -> list[SpoolEntry]:
        """Up to `limit` messages with id > entry_id, oldest first.  Rows failing their
        checksum are buried, not returned."""
        out: list[SpoolEntry] = []
        bad: list[int] = []
        with self._lock:
            cursor = entry_id
            while len(out) < limit:
                want = limit - len(out) + len(self._pending.deletes) + len(self._pending.buries)
                rows = self._db.execute(
                    "SELECT id, topic, payload, qos, retain, created_at, crc FROM messages WHERE id > ? "
                    "ORDER BY id LIMIT ?", (cursor, want)).fetchall()
                for r in rows:
                    if r[0] in self._pending.deletes or r[0] in self._pending.buries:
                        continue
                    if r[6] is not None and checksum(r[1], bytes(r[2])) != r[6]:
                        bad.append(r[0])
                        continue
                    if len(out) < limit:
                        out.append(SpoolEntry(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]))
                if len(rows) < want:
                    break
                cursor = rows[-1][0]
            for e, _ in self._memory:
                if len(out) >= limit:
                    break
                if e.id > entry_id:
                    out.append(e)
        for row_id in bad:
            self.bury(row_id, "checksum", "its payload does not match the checksum written with it")
        return out

    def depth(self) -> int:
        with self._lock:
            n = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            return n - len(self._pending.deletes) - len(self._pending.buries) + len(self._memory)

    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes + self._memory_bytes

    def dropped(self) -> int:
        with self._lock:
            stored = self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0]
            return stored + sum(self._pending.drops.values())

    def drops(self) -> dict[str, int]:
        """Dropped messages by reason (persisted ones plus any not written yet)."""
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM meta WHERE key LIKE 'dropped:%'").fetchall()
            out = Counter({k.split(":", 1)[1]: v for k, v in rows})
            out.update(self._pending.drops)
            return {k: v for k, v in sorted(out.items()) if v}

    def dead(self) -> list[tuple[int, str, str]]:
        """(id, topic, reason) of the dead rows kept, oldest first."""
        with self._lock:
            return [tuple(r) for r in self._db.execute("SELECT id, topic, reason FROM dead ORDER BY id")]

    def memory_queued(self) -> int:
        with self._lock:
            return len(self._memory)

    def writable(self) -> bool:
        with self._lock:
            return self._write_error is None and self.volatile is None

    def health(self) -> dict:
        """Stats fields: depth, drops, the memory queue, the state dir's space; warns once when
        the free space falls under min_free_mb (and again after it recovered)."""
        depth, dropped, drops = self.depth(), self.dropped(), self.drops()
        with self._lock:
            out = {"spool_depth": depth, "spool_dropped": dropped, "spool_drops": drops,
                   "spool_memory_queued": len(self._memory) + (depth if self.volatile else 0),
                   "spool_writable": self._write_error is None and self.volatile is None,
                   "spool_mb": round(self._file_bytes() / 1e6, 3)}
            if self._write_error or self.volatile:
                out["spool_write_error"] = self._write_error or self.volatile
            if self.recovery:
                out["spool_recovered"] = self.recovery.as_dict()
        try:
            usage = shutil.disk_usage(self.path.parent)
        except OSError:
            return out
        out["state_dir_free_mb"] = round(usage.free / 1e6, 1)
        out["state_dir_used_pct"] = round(100.0 * (usage.total - usage.free) / usage.total, 1) if usage.total else 0.0
        low = usage.free < self.min_free_bytes
        if low and not self._low_space_warned:
            log.warning("state dir %s: only %.1f MB free (warning below %.0f MB); when it is full, results are "
                        "held in memory (up to %.0f MB) and the oldest are dropped",
                        self.path.parent, usage.free / 1e6, self.min_free_bytes / 1e6, self.memory_max_bytes / 1e6)
        elif not low and self._low_space_warned:
            log.info("state dir %s: %.1f MB free again", self.path.parent, usage.free / 1e6)
        self._low_space_warned = low
        return out

    def close(self) -> None:
        with self._lock:
            if self._memory or self._pending.deletes or self._pending.buries:
                self._flush_memory_locked(self.clock(), force=True)
                try:
                    with self._db:
                        self._write_pending_locked()
                except sqlite3.DatabaseError as e:
                    self._write_failed_locked(e, "close")
            if self._memory:
                log.error("spool: %d results held in memory could not be written (%s); they are lost",
                          len(self._memory), self._write_error)
            if self._pending.deletes:
                log.warning("spool: %d acknowledged results could not be deleted (%s); they will be sent again",
                            len(self._pending.deletes), self._write_error)
            if self.volatile:
                left = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
                if left:
                    log.error("spool: %d results held only in memory this run (%s) are lost", left, self.volatile)
            self._db.close()

    # -- internals (lock held) -------------------------------------------------------
    def _insert_locked(self, entry_id, topic, payload, qos, retain, created_at, crc) -> int:
        # Explicit ids: results held in memory took ids the file never saw, and AUTOINCREMENT
        # would hand those out again.
        entry_id = self._next_id if entry_id is None else entry_id
        cur = self._db.execute(
            "INSERT INTO messages (id, topic, payload, qos, retain, created_at, crc) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry_id, topic, payload, int(qos), int(bool(retain)), created_at, crc))
        self._bytes += len(payload)
        self._next_id = max(self._next_id, cur.lastrowid + 1)
        return cur.lastrowid

    def _delete_locked(self, entry_id: int) -> bool:
        row = self._db.execute("SELECT LENGTH(payload) FROM messages WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            return False
        self._db.execute("DELETE FROM messages WHERE id = ?", (entry_id,))
        self._bytes -= row[0]
        return True

    def _append_memory_locked(self, topic, payload, qos, retain, now, crc) -> int:
        entry = SpoolEntry(self._next_id, topic, payload, int(qos), bool(retain), now)
        self._next_id += 1
        self._memory.append((entry, crc))
        self._memory_bytes += len(payload)
        while self._memory_bytes > self.memory_max_bytes and len(self._memory) > 1:
            old, _ = self._memory.pop(0)
            self._memory_bytes -= len(old.payload)
            self._count_locked("memory_full", 1)
            log.warning("spool: memory queue over %.1f MB while the file refuses writes; dropped result %d",
                        self.memory_max_bytes / 1e6, old.id)
        return entry.id

    def _flush_memory_locked(self, now: float, force: bool = False) -> bool:
        """Write the memory queue into the file, in order.  True when it is empty after."""
        if not self._memory:
            return True
        if not force and now < self._next_try:
            return False
        try:
            with self._db:
                for e, crc in self._memory:
                    self._insert_locked(e.id, e.topic, e.payload, e.qos, e.retain, e.created_at, crc)
                self._write_pending_locked()
        except sqlite3.DatabaseError as err:
            self._write_failed_locked(err, "write back")
            return False
        log.info("spool: %d results held in memory written back to %s", len(self._memory), self.path)
        self._memory.clear()
        self._memory_bytes = 0
        self._wrote_locked()
        return True

    def _expire_memory_locked(self, now: float) -> int:
        old = [e for e, _ in self._memory if e.created_at < now - self.max_age_s]
        if old:
            self._memory = [(e, c) for e, c in self._memory if e.created_at >= now - self.max_age_s]
            self._memory_bytes = sum(len(e.payload) for e, _ in self._memory)
            self._count_locked("age", len(old))
        return len(old)

    def _write_pending_locked(self) -> None:
        """Inside a transaction: deletes, burials and drop counts that failed before.  The
        pending sets are cleared by `_wrote_locked`, once the transaction has committed."""
        p = self._pending
        drops = Counter(p.drops)
        for entry_id in sorted(p.deletes):
            self._delete_locked(entry_id)
        for entry_id, reason in sorted(p.buries.items()):
            self._db.execute(
                "INSERT OR REPLACE INTO dead (id, topic, payload, qos, retain, created_at, reason, dead_at) "
                "SELECT id, topic, payload, qos, retain, created_at, ?, ? FROM messages WHERE id = ?",
                (reason, self.clock(), entry_id))
            if self._delete_locked(entry_id):
                drops[reason] += 1
        if p.buries:
            self._db.execute("DELETE FROM dead WHERE id NOT IN (SELECT id FROM dead ORDER BY id DESC LIMIT ?)",
                             (DEAD_KEEP,))
        for reason, n in drops.items():
            if n:
                self._add_dropped_locked(reason, n)

    def _wrote_locked(self) -> None:
        """After a committed write (which always includes the pending work)."""
        self._pending = _Pending()
        self._bytes_committed = self._bytes
        if self._write_error is not None:
            log.warning("spool %s takes writes again", self.path)
        self._write_error = None

    def _write_failed_locked(self, e: sqlite3.DatabaseError, what: str) -> None:
        self._bytes = self._bytes_committed  # the transaction was rolled back
        why = str(e)
        if self._write_error is None:
            log.error("spool %s: %s failed (%s); results are held in memory (up to %.0f MB) and sent directly "
                      "while the broker is up", self.path, what, why, self.memory_max_bytes / 1e6)
        self._write_error = why
        self._next_try = self.clock() + WRITE_RETRY_S

    def _count_locked(self, reason: str, n: int) -> None:
        self._pending.drops[reason] += int(n)
        if self._write_error is not None and self.clock() < self._next_try:
            return  # the file refuses writes: counted with the next write that works
        self._flush_pending_locked("count")

    def _flush_pending_locked(self, what: str) -> None:
        """Write the pending buries and drop counts in one transaction; a refused write is
        remembered (`_write_failed_locked`) and retried with the next write."""
        try:
            with self._db:
                self._write_pending_locked()
            self._wrote_locked()
        except sqlite3.DatabaseError as e:
            self._write_failed_locked(e, what)

    def _enforce_bounds_locked(self, now: float, keep_id: int | None = None) -> int:
        cut = now - self.max_age_s
        aged = self._db.execute("DELETE FROM messages WHERE created_at < ?", (cut,)).rowcount
        if aged:
            self._bytes = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages").fetchone()[0]
            self._add_dropped_locked("age", aged)
        sized = 0
        while self._bytes > self.max_bytes:
            row = self._db.execute("SELECT id, LENGTH(payload) FROM messages ORDER BY id LIMIT 1").fetchone()
            if row is None or row[0] == keep_id:
                break  # a single message larger than the bound is still kept
            self._db.execute("DELETE FROM messages WHERE id = ?", (row[0],))
            self._bytes -= row[1]
            sized += 1
        if sized:
            self._add_dropped_locked("memory_full" if self.volatile else "size", sized)
        return aged + sized

    def _add_dropped_locked(self, reason: str, n: int) -> None:
        self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (int(n),))
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value", (f"dropped:{reason}", int(n)))

    def _file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except OSError:
                pass
        return total

    # -- opening, damage ---------------------------------------------------------------
    def _open_or_recover(self) -> sqlite3.Connection:
        try:
            return _open(self.path, check=True)
        except Damaged as e:
            why = str(e)
        except Unwritable as e:
            return self._open_volatile(str(e))
        moved = _quarantine(self.path, self.clock())
        log.error("spool %s is damaged (%s); moved it to %s, salvaging what can be read", self.path, why, moved)
        db = _open(self.path, check=False)
        salvaged, lost, dropped = _salvage(moved, db)
        with db:
            if dropped:
                db.execute("UPDATE meta SET value = ? WHERE key = 'dropped'", (dropped.pop("", 0),))
                for reason, n in dropped.items():
                    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"dropped:{reason}", n))
            if lost:
                db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (lost,))
                db.execute("INSERT INTO meta (key, value) VALUES ('dropped:corrupt', ?) "
                           "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value", (lost,))
        self.recovery = Recovery(why, moved.name, salvaged, lost)
        log.error("spool: %s", self.recovery.describe())
        return db

    def _open_volatile(self, why: str) -> sqlite3.Connection:
        """The file cannot even be opened (its -wal/-shm need space): spool in memory for
        this run, within memory_mb.  The results already in the file wait for a start with space."""
        self.volatile = why
        self.max_bytes = min(self.max_bytes, self.memory_max_bytes)
        log.error("spool %s cannot be opened (%s): results are held in memory this run (up to %.0f MB, sent while "
                  "the broker is up); the results already in the file are sent after a start with space",
                  self.path, why, self.memory_max_bytes / 1e6)
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level="DEFERRED")
        with db:
            db.executescript(_SCHEMA)
        return db


class Unwritable(Exception):
    """The spool file cannot be opened for writing (disk full, I/O error)."""


def _open(path: Path, check: bool) -> sqlite3.Connection:
    """Open (create) the spool.  With `check`: Damaged if the file is not a usable database."""
    if check and path.exists() and path.stat().st_size == 0:
        raise Damaged("the file is empty (0 bytes)")
    try:
        db = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False, isolation_level="DEFERRED")
    except sqlite3.DatabaseError as e:
        raise RuntimeFailure(f"spool {path}: cannot open it: {e}") from None
    try:
        if check:
            result = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
            if result != ["ok"]:
                db.close()
                raise Damaged(f"quick_check: {'; '.join(result[:3])}")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        # FULL: an appended result survives a power cut, not only a crash of the agent.
        db.execute("PRAGMA synchronous=FULL")
        with db:
            db.executescript(_SCHEMA)
            columns = {r[1] for r in db.execute("PRAGMA table_info(messages)")}
            if "crc" not in columns:  # a spool written before checksums: its rows stay unchecked
                db.execute("ALTER TABLE messages ADD COLUMN crc INTEGER")
    except sqlite3.DatabaseError as e:
        db.close()
        name = getattr(e, "sqlite_errorname", "")
        if name in _CORRUPT_CODES or "malformed" in str(e) or "not a database" in str(e):
            raise Damaged(str(e)) from None
        if name.startswith(("SQLITE_FULL", "SQLITE_IOERR")) or "disk is full" in str(e) or "I/O error" in str(e):
            raise Unwritable(str(e)) from None
        raise RuntimeFailure(f"spool {path}: cannot open it as SQLite: {e}") from None
    if mode.lower() != "wal":
        db.close()
        raise RuntimeFailure(f"spool {path}: SQLite refused WAL mode (got {mode}); is the state dir on a network file system?")
    return db


def _quarantine(path: Path, now: float) -> Path:
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while moved.exists():
        moved = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    for suffix in ("-wal", "-shm", ""):  # the main file last: SQLite pairs them by name
        src = Path(f"{path}{suffix}")
        if src.exists():
            try:
                os.replace(src, f"{moved}{suffix}")
            except OSError as e:
                raise RuntimeFailure(f"spool {path} is damaged and cannot be moved aside: {e.strerror}") from None
    return moved


def _salvage(damaged: Path, db: sqlite3.Connection) -> tuple[int, int | None, dict]:
    """Copy the readable rows of a damaged spool into `db`, in id order.
    -> (salvaged, lost or None if unknown, drop counters read from its meta)."""
    try:
        src = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return 0, None, {}
    try:
        ids, complete = _readable_ids(src)
        if not ids and not complete:
            return 0, None, {}
        salvaged = lost = 0
        with db:
            for row_id in ids:
                try:
                    r = src.execute("SELECT id, topic, payload, qos, retain, created_at, crc FROM messages WHERE id = ?",
                                    (row_id,)).fetchone()
                except sqlite3.DatabaseError:
                    r = None
                if r is None or not isinstance(r[1], str) or r[2] is None or (
                        r[6] is not None and checksum(r[1], bytes(r[2])) != r[6]):
                    lost += 1
                    continue
                db.execute("INSERT INTO messages (id, topic, payload, qos, retain, created_at, crc) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (r[0], r[1], bytes(r[2]), r[3], r[4], r[5], checksum(r[1], bytes(r[2]))))
                salvaged += 1
        if not complete:
            # Live rows are consecutive ids (acknowledged ones are deleted oldest first), so
            # the ids missing between the readable ones are the lost ones.
            lost += (max(ids) - min(ids) + 1 - len(ids)) if ids else 0
            if not ids:
                return 0, None, {}
        drops = {}
        try:
            for k, v in src.execute("SELECT key, value FROM meta WHERE key = 'dropped' OR key LIKE 'dropped:%'"):
                drops["" if k == "dropped" else k.split(":", 1)[1]] = int(v)
        except sqlite3.DatabaseError:
            pass
        return salvaged, lost, drops
    finally:
        src.close()


def _readable_ids(src: sqlite3.Connection) -> tuple[list[int], bool]:
    """Row ids reachable in the table b-tree: forwards until the damage, then backwards until it.
    -> (sorted ids, True if both walks went through without an error)."""
    found: set[int] = set()
    complete = True
    for order in ("ASC", "DESC"):
        try:
            for (row_id,) in src.execute(f"SELECT id FROM messages ORDER BY id {order}"):
                found.add(row_id)
        except sqlite3.DatabaseError:
            complete = False
        if complete:
            break
    return sorted(found), complete
