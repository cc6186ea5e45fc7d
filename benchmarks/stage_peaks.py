"""Exact peak RSS of each engine stage inside a real `edge-agent run` (Linux only).

    python benchmarks/stage_peaks.py run --once --model DIR --variant _int8

Runs the edge-agent CLI in this process with the given arguments.  Around each engine stage
(model load, vision, text encoder, each decode call) it reads the kernel's high-water mark
(VmHWM) and resets it (`/proc/self/clear_refs` 5), so every line is that stage's exact peak,
not a sampled one.  `/usr/bin/time -v` on the same command reports the whole run's maximum
(measured ~20 MB above the largest VmHWM here; the kernel counts them differently).
"""
from __future__ import annotations

import atexit
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edge_agent.models.engine as engine  # noqa: E402

LINES: list[str] = []


def status_mb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) // 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def traced(name: str, fn):
    def run(*args, **kwargs):
        LINES.append(f"{'between stages':<26} peak {status_mb('VmHWM'):5d} MB")
        reset_peak()
        out = fn(*args, **kwargs)
        LINES.append(f"{name:<26} peak {status_mb('VmHWM'):5d} MB   resident after {status_mb('VmRSS'):5d} MB")
        reset_peak()
        return out
    return run


def main() -> None:
    for name in ("__init__", "image_features", "encode"):
        setattr(engine.Florence2Engine, name, traced(name, getattr(engine.Florence2Engine, name)))
    engine.generate = traced("generate (one decode call)", engine.generate)
    atexit.register(lambda: print("\n".join(LINES + [f"{'after the last stage':<26} peak "
                                                     f"{status_mb('VmHWM'):5d} MB"]), file=sys.stderr))
    from edge_agent.cli import main as cli

    sys.argv = ["edge-agent", *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    main()
