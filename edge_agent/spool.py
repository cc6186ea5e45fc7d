"""Durable store-and-forward spool: SQLite in WAL mode under the state directory.

Every result is appended here *before* it is handed to MQTT and deleted only when the
broker acknowledges it (PUBACK).  Rows are keyed by an AUTOINCREMENT rowid, so the key
only ever grows, also after every row was deleted: replay order is rowid order.  (The
paho message id is not a key: it lives in one process and wraps at 65535.)

The spool is bounded by total payload size and by age.  When a bound is exceeded the
oldest rows are dropped first and the drops are added to a counter that is persisted
in the same database, so `stats` can report drops across restarts.

One connection, guarded by a lock: paho calls `delete` from its network thread while
the agent appends from the main thread.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import ConfigError, RuntimeFailure

SPOOL_FILE = "spool.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_at REAL NOT NULL
);
-- The age bound is checked on every append: without this index that is a scan of the
-- whole spool (every payload) per result, ~40 ms per append with 90 MB spooled.
CREATE INDEX IF NOT EXISTS messages_created_at ON messages (created_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0);
"""


@dataclass(frozen=True)
class SpoolEntry:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_at: float


class Spool:
    """Ordered durable queue of MQTT messages.  Thread-safe."""

    def __init__(self, path: str | Path, max_mb: float = 100.0, max_age_hours: float = 168.0):
        if max_mb <= 0:
            raise ConfigError(f"spool.max_mb: must be > 0, got {max_mb}")
        if max_age_hours <= 0:
            raise ConfigError(f"spool.max_age_hours: must be > 0, got {max_age_hours}")
        self.path = Path(path)
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.max_age_s = float(max_age_hours) * 3600.0
        self._lock = threading.Lock()
        self._db = _open(self.path)
        self._bytes = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages").fetchone()[0]

    @classmethod
    def in_state_dir(cls, state_dir: str | Path, **bounds) -> "Spool":
        state_dir = Path(state_dir)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"state dir {state_dir}: cannot create it: {e.strerror}") from None
        return cls(state_dir / SPOOL_FILE, **bounds)

    # -- writing -------------------------------------------------------------------
    def append(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Store one message durably; returns its id.  Drops the oldest rows if over bounds."""
        payload = bytes(payload)
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT INTO messages (topic, payload, qos, retain, created_at) VALUES (?, ?, ?, ?, ?)",
                (topic, payload, int(qos), int(bool(retain)), time.time()),
            )
            self._bytes += len(payload)
            self._enforce_bounds_locked(time.time(), keep_id=cur.lastrowid)
            return cur.lastrowid

    def delete(self, entry_id: int) -> bool:
        """Forget an acknowledged message.  False if it was already gone (dropped, duplicate ack)."""
        with self._lock, self._db:
            row = self._db.execute("SELECT LENGTH(payload) FROM messages WHERE id = ?", (entry_id,)).fetchone()
            if row is None:
                return False
            self._db.execute("DELETE FROM messages WHERE id = ?", (entry_id,))
            self._bytes -= row[0]
            return True

    def expire(self, now: float | None = None) -> int:
        """Drop rows older than the age bound (and any over the size bound).  Returns rows dropped."""
        with self._lock, self._db:
            return self._enforce_bounds_locked(time.time() if now is None else now)

    def count_dropped(self, n: int) -> None:
        """Count messages lost for another reason (e.g. the broker rejected them)."""
        with self._lock, self._db:
            self._add_dropped_locked(n)

    # -- reading -------------------------------------------------------------------
    def after(self, entry_id: int, limit: int) -> list[SpoolEntry]:
        """Up to `limit` messages with id > entry_id, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, created_at FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (entry_id, limit),
            ).fetchall()
        return [SpoolEntry(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def depth(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def dropped(self) -> int:
        with self._lock:
            return self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- bounds --------------------------------------------------------------------
    def _enforce_bounds_locked(self, now: float, keep_id: int | None = None) -> int:
        dropped = self._db.execute("DELETE FROM messages WHERE created_at < ?", (now - self.max_age_s,)).rowcount
        if dropped:
            self._bytes = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages").fetchone()[0]
        while self._bytes > self.max_bytes:
            row = self._db.execute("SELECT id, LENGTH(payload) FROM messages ORDER BY id LIMIT 1").fetchone()
            if row is None or row[0] == keep_id:
                break  # a single message larger than the bound is still kept
            self._db.execute("DELETE FROM messages WHERE id = ?", (row[0],))
            self._bytes -= row[1]
            dropped += 1
        if dropped:
            self._add_dropped_locked(dropped)
        return dropped

    def _add_dropped_locked(self, n: int) -> None:
        self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (int(n),))


def _open(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False, isolation_level="DEFERRED")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        # FULL: an appended result survives a power cut, not only a crash of the agent.
        db.execute("PRAGMA synchronous=FULL")
        with db:
            db.executescript(_SCHEMA)
    except sqlite3.DatabaseError as e:
        raise RuntimeFailure(f"spool {path}: cannot open it as SQLite: {e}") from None
    if mode.lower() != "wal":
        db.close()
        raise RuntimeFailure(f"spool {path}: SQLite refused WAL mode (got {mode}); is the state dir on a network file system?")
    return db
