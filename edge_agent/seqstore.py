"""Per-camera result sequence numbers that survive restarts: `<state_dir>/seq.json`.

    seqs = SeqStore(state_dir)
    n = seqs.take("cam0")      # 0, 1, 2, ... across processes

Guarantee: a number is written to disk (temporary file, fsync, atomic rename, directory
fsync) before `take` returns it, so no two results of a camera ever carry the same `seq`,
even after a SIGKILL or a power cut between a result and the next; a crash can only skip
numbers.  One small write per processed frame.  When the state directory cannot be
written (full disk), numbering goes on in memory with one warning: results are not held
back for it.  An unreadable file is set aside
(`seq.json.corrupt-<time>`) with a warning and numbering restarts at 0.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "seq.json"


class SeqStore:
    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / FILE_NAME
        self._lock = threading.Lock()
        self._next: dict[str, int] = self._load()
        self._write_failed = False

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or not all(isinstance(v, int) and v >= 0 for v in data.values()):
                raise ValueError("not an object of camera -> next seq")
            return {str(k): v for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            aside = self.path.with_name(f"{FILE_NAME}.corrupt-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = self.path
            log.warning("%s: unreadable (%s), set aside as %s; seq numbers restart at 0", self.path, e, aside.name)
            return {}

    def peek(self, camera_id: str) -> int:
        with self._lock:
            return self._next.get(camera_id, 0)

    def take(self, camera_id: str) -> int:
        """The camera's next seq, durably reserved."""
        with self._lock:
            n = self._next.get(camera_id, 0)
            self._next[camera_id] = n + 1
            try:
                self._write()
                self._write_failed = False
            except OSError as e:
                if not self._write_failed:
                    log.warning("%s: cannot write (%s); seq numbers go on in memory only", self.path, e)
                self._write_failed = True
            return n

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(self._next, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
