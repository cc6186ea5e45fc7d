"""Linux memory levers for the engine, each a few lines of ctypes (no-ops elsewhere).

- trim_heap: glibc's malloc_trim, which returns free heap pages to the OS.
- fix_mmap_threshold: glibc's mallopt(M_MMAP_THRESHOLD), which serves every allocation at or
  above the threshold with its own mapping, returned to the OS when freed.  By default glibc
  raises the threshold to the size of each mapped block that is freed (up to 32 MB), so after
  ONNX Runtime frees a large block (a graph's load, a stage's activations), blocks up to that
  size come from the heap, where they fragment and stay resident.  Setting it fixes it.
- advise_random: for a weights file that ONNX Runtime maps (external data), madvise(MADV_RANDOM)
  on its mappings: no read-ahead, so a table read a row at a time (the token embedding) is read
  from disk a page at a time.  The kernel still maps the cached pages around a faulting one
  (fault-around, 64 KB), so a table that is already in the page cache (just written, or read by
  an earlier run) becomes resident 64 KB around every row read: on the random tokens of a
  random model, the whole table.
"""
from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

MADV_RANDOM = 1
M_MMAP_THRESHOLD = -3  # glibc malloc.h


@functools.lru_cache(maxsize=None)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def trim_heap() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def fix_mmap_threshold(nbytes: int) -> bool:
    """Fix glibc's mmap threshold at `nbytes` for the whole process (no dynamic raise).  True
    where it was set; False off glibc.  Process-wide: the last caller wins."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(nbytes)))


def advise_random(file: Path) -> int:
    """Returns the number of mappings of `file` advised (0 where /proc or libc is missing).  The
    file's page cache is left alone: evicting it would keep fault-around from mapping neighbours,
    but rows would then be read from disk the first time (base int8 dense-1080p frame: decode
    6.3 -> 7.5 s in a fresh process on this VM)."""
    path, libc = os.path.realpath(file), _libc()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            maps = f.read().splitlines()
    except OSError:
        return 0
    if libc is None:
        return 0
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    advised = 0
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == path:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            advised += libc.madvise(start, end - start, MADV_RANDOM) == 0
    return advised
