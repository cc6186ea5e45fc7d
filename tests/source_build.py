"""One wheel build from the checkout at a time.

setuptools builds in the source tree's build/ directory, and removes parts of it as it goes; two
builds of the same tree at once (pytest-xdist runs test_wheel.py's and test_service_cli.py's in
two workers) failed with "No such file or directory: 'build/bdist.linux-x86_64/wheel'" when they
overlapped.  The lock is a file outside the tree, one per checkout."""
from __future__ import annotations

import fcntl
import hashlib
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def build_lock():
    name = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"edge-agent-build-{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
