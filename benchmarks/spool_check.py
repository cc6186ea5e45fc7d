"""What the spool's integrity check at open costs: `PRAGMA quick_check` against a plain open.

    python benchmarks/spool_check.py [--sizes 10,50,100] [--repeat 3] [--dir /tmp/spool-check]

For each size (MB of result payloads, ~3 KB each like a busy shelf's result) a spool is
filled and closed, then opened `--repeat` times each way, interleaved: `Spool(...)` (which
runs quick_check, reads the row sizes and the id counter) and a plain sqlite3 open running
the same two small queries (the reference).  The files are in the page cache (warm): a cold
start on an SD card reads the whole file once more.  Prints the median of each and the ratio,
and the load average, since the machine may be shared.  The spools are written under --dir
(default: a temporary folder, removed after).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.spool import SPOOL_FILE, Spool, SpoolOptions  # noqa: E402


def fill(state: Path, mb: int) -> int:
    payload = os.urandom(1500).hex().encode()[:3000]  # ~3 KB, incompressible like JSON with coordinates
    s = Spool.in_state_dir(state, SpoolOptions(max_mb=mb * 2))
    n = mb * 1024 * 1024 // len(payload)
    for i in range(n):
        s.append("edge-agent/dev1/cam0/detections", payload)
    s.close()
    return n


def plain_open(path: Path) -> None:
    db = sqlite3.connect(str(path))
    db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages").fetchone()
    db.execute("SELECT MAX(seq) FROM sqlite_sequence").fetchone()
    db.close()


def checked_open(state: Path) -> None:
    Spool.in_state_dir(state, SpoolOptions(max_mb=10_000)).close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,50,100")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default="")
    args = ap.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="spool-check-"))
    print(f"load average at start: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    try:
        for mb in (int(x) for x in args.sizes.split(",")):
            state = base / f"{mb}mb"
            shutil.rmtree(state, ignore_errors=True)
            rows = fill(state, mb)
            size = (state / SPOOL_FILE).stat().st_size / 1e6
            plain, checked = [], []
            for _ in range(args.repeat):
                t = time.perf_counter()
                plain_open(state / SPOOL_FILE)
                plain.append(time.perf_counter() - t)
                t = time.perf_counter()
                checked_open(state)
                checked.append(time.perf_counter() - t)
            p, c = statistics.median(plain), statistics.median(checked)
            print(f"{mb:4d} MB payloads ({rows} rows, file {size:.1f} MB): plain open {p * 1e3:7.1f} ms, "
                  f"Spool open with quick_check {c * 1e3:7.1f} ms, ratio {c / p:.2f}x")
            shutil.rmtree(state, ignore_errors=True)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
