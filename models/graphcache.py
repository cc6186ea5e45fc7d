"""ONNX Runtime's optimized graphs, kept on disk so that loading a graph again skips optimizing it.

    cache = GraphCache(dir)
    path, hit = cache.entry(source, context)   # hit: an optimized copy exists; load it as is
    ... on a miss, load source with SessionOptions.optimized_model_filepath = cache.staging(path),
    ... then cache.commit(path) once the session exists

Why: at ORT_ENABLE_ALL, ONNX Runtime rewrites a vision tower for its NCHWc kernels at every load.
Base int8, one session on a 2-vCPU AMD EPYC (Zen 4), `benchmarks/frame-results.md` session 17:
0.73-0.81 s to load `vision_encoder_int8.onnx`, 0.16-0.26 s to load the same graph as ONNX Runtime
saved it after optimizing, and the load's peak RSS 282 against 198 MB; the features are
bit-identical.  With `load_per_stage` (the 2 GB Pi profile) the vision tower is loaded for every
frame, so that is paid per frame.  The text encoder and decoders load in 0.01-0.13 s either way,
so the engine caches the vision tower only.

**Valid only where it was written.**  The optimized graph holds layouts chosen for this CPU's
vector width (NCHWc blocks), so an entry's name carries a key over what it depends on: the
source file (path, size, modification time), the onnxruntime version, the machine and its CPU
flags, and the caller's context (the activation bits).  It does not hold the engine's
load-time constants (models/rowscale.py, models/convint.py): ONNX Runtime writes the graph's own
initializers, not those given by `add_initializer`, so the engine gives them again when it
loads an entry.  A changed model file, an upgraded
onnxruntime or a disk moved to another CPU makes a new key; the entries of the same source under
older keys are removed when the new one is written, and beyond the MAX_ENTRIES most recently
used entries (a hit marks its entry used) the rest go too, so that a model tried once and left
does not hold its copy for ever.

**Guarantees.**  An entry appears whole or not at all: ONNX Runtime writes a staging file, which
is renamed into place after the session loaded (`commit`).  A cache that cannot be written, or an
entry that cannot be loaded (truncated, damaged), is never an error: the caller loads the source
and says so in the log (`discard` removes a bad entry).  Nothing here imports onnxruntime.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path

from edge_agent.models.cpu import cpu_flags

log = logging.getLogger(__name__)

SUFFIX = ".onnx"
MAX_ENTRIES = 4  # the most recently used entries kept (a model's int8 and fp32 towers, and a spare pair)


class GraphCache:
    def __init__(self, directory: str | Path, runtime_version: str):
        self.dir = Path(directory)
        self.runtime_version = runtime_version
        self._host = {"machine": platform.machine(), "cpu": sorted(cpu_flags())}  # read once, not per load
        self._given_up: set[Path] = set()  # entries whose writing failed in this process

    def key(self, source: Path, context: dict) -> str:
        """What an optimized copy of `source` depends on, hashed."""
        st = source.stat()
        data = {"source": str(source.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "runtime": self.runtime_version, **self._host, "context": context}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def entry(self, source: str | Path, context: dict) -> tuple[Path, bool]:
        """The cache path for `source` in `context`, and whether an optimized copy is there.  The
        entries of one source file share a prefix: its name and a hash of its full path."""
        source = Path(source)
        where = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:8]
        path = self.dir / f"{source.stem}-{where}.{self.key(source, context)}{SUFFIX}"
        return path, path.is_file()

    def used(self, path: Path) -> None:
        """Mark an entry as just used (its modification time), for the MAX_ENTRIES rule."""
        try:
            os.utime(path)
        except OSError:
            pass

    def staging(self, path: Path) -> Path | None:
        """Where ONNX Runtime should write the optimized copy of `path`'s graph (None: the cache
        directory cannot be created, or writing this entry failed before in this process; load
        without caching)."""
        if path in self._given_up:
            return None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            log.warning("graph cache %s: cannot create it (%s); graphs load without it", self.dir, e.strerror or e)
            return None
        return path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def commit(self, path: Path, staged: Path) -> None:
        """Move the staged copy into place (after its session loaded), then remove the entries of
        the same source under other keys, its staging files left by killed processes, and the
        entries beyond the MAX_ENTRIES most recently used."""
        try:
            with open(staged, "rb") as f:
                os.fsync(f.fileno())
            os.replace(staged, path)
        except OSError as e:
            log.warning("graph cache %s: cannot keep %s (%s)", self.dir, path.name, e.strerror or e)
            self._remove(staged)
            return
        prefix = path.name[:-len(SUFFIX)].rsplit(".", 1)[0] + "."  # the name without its key
        for old in self.dir.glob(f"{prefix}*{SUFFIX}"):
            if old != path:
                self._remove(old)
        for old in self.dir.glob(f".{prefix}*.tmp"):  # staging files a killed process left
            self._remove(old)
        by_use = []
        for entry in self.dir.glob(f"*{SUFFIX}"):
            try:
                by_use.append((entry.stat().st_mtime_ns, entry))
            except OSError:
                pass
        for _, old in sorted(by_use, reverse=True)[MAX_ENTRIES:]:
            if old != path:
                self._remove(old)

    def discard(self, path: Path) -> None:
        """Remove an entry (or a staging file) that could not be used."""
        self._remove(path)

    def give_up(self, path: Path, staged: Path) -> None:
        """Loading with `staged` as the optimized copy's destination failed: remove it, and do not
        try to write `path` again in this process (each try costs a load)."""
        self._remove(staged)
        self._given_up.add(path)

    @staticmethod
    def _remove(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("graph cache: cannot remove %s (%s)", path, e.strerror or e)
