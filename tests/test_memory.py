"""models/memory.py: the Linux memory levers the engine uses, measured on a real mapping."""
from __future__ import annotations

import mmap
import os
import sys

import numpy as np
import pytest

from edge_agent.models.memory import advise_random, trim_heap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and madvise are Linux's")


def rss_file_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile"))


def evict(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def scattered_reads(path, stride: int, advise: bool) -> int:
    """Map `path`, read one byte every `stride` bytes; RssFile growth in KB."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        if advise:
            assert advise_random(path) == 1
            evict(path)  # as after a reboot: fault-around then finds no cached neighbours
        before = rss_file_kb()
        total = sum(m[i] for i in range(0, len(m), stride))
        grown = rss_file_kb() - before
    assert total >= 0
    return grown


def test_advised_mapping_is_resident_only_where_read(tmp_path):
    path = tmp_path / "table.bin"
    with open(path, "wb") as f:  # in the page cache now, written back (clean) as a model file would be
        f.write(np.random.default_rng(0).integers(0, 255, 64 << 20, np.uint8).tobytes())
        f.flush()
        os.fsync(f.fileno())
    stride = 256 << 10  # 256 reads
    plain = scattered_reads(path, stride, advise=False)
    advised = scattered_reads(path, stride, advise=True)
    print(f"RssFile growth over {(64 << 20) // stride} reads: {plain} KB plain, {advised} KB advised")
    # one 4 KB page per read (1 MB), against 64 KB around each read without the advice (fault-around)
    assert advised <= 2048, (advised, plain)


def test_advise_random_on_an_unmapped_file_maps_nothing(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"\0" * 8192)
    assert advise_random(path) == 0


def test_trim_heap_runs():
    trim_heap()  # glibc: returns free heap pages; elsewhere a no-op; must never raise


HEAP_PROBE = """
import ctypes, sys
from edge_agent.models.memory import fix_mmap_threshold
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold(128 * 1024)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(8 << 20))  # a mapped 8 MB block, freed: glibc's dynamic threshold rises to 8 MB
block = libc.malloc(1 << 20)
with open("/proc/self/maps") as f:
    heap = [[int(x, 16) for x in line.split()[0].split("-")] for line in f if line.rstrip().endswith("[heap]")]
print("heap" if any(lo <= block < hi for lo, hi in heap) else "mapped")
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/maps") or os.uname().sysname != "Linux", reason="glibc on Linux")
def test_a_fixed_mmap_threshold_keeps_large_blocks_off_the_heap():
    """glibc raises its mmap threshold to a freed mapped block's size, so the next 1 MB block comes
    from the heap (where it can stay resident after free); fixed at 128 KB it gets its own mapping."""
    import subprocess

    def where(mode):
        p = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()

    assert where("dynamic") == "heap"
    assert where("fixed") == "mapped"
