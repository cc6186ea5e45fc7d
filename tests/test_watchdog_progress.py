"""The watchdog fed from inside the frame (issue 14, item 5), on a real AF_UNIX datagram
socket standing in for systemd and the real tiny Florence-2 engine.

- EngineOptions.progress reports each graph load, each vision chunk, each decode chunk;
- a frame far longer than the stall limit keeps the pings going while its chunks move
  (the control: the same slow frame without progress reports stalls);
- a stage that hangs stops the pings;
- `edge-agent run` extends the start timeout (EXTEND_TIMEOUT_USEC) before loading and
  after each graph, before READY=1.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.service import Notifier
from edge_agent.models.engine import EngineOptions, Florence2Engine
from test_sd_notify import FakeSystemd

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "tiny-florence2"
TILES = [np.random.default_rng(k).integers(0, 255, (96, 128, 3), dtype=np.uint8) for k in range(4)]
STALL_S = 1.5  # the stall limit given to the notifier; WatchdogSec=1 s, pings every 0.5 s
STEP_S = 0.4  # each reported step of the slow frame takes at least this long


def engine(progress=None) -> Florence2Engine:
    return Florence2Engine(EngineOptions(MODEL, progress=progress, num_beams=1, max_new_tokens=4, decode_batch=1))


def test_progress_reports_loads_vision_chunks_and_decode_chunks():
    calls = []
    eng = engine(lambda *a: calls.append(a))
    loads = [c for c in calls if c[0] == "load"]
    assert len(loads) >= 4 and [c[1] for c in loads] == list(range(1, len(loads) + 1))
    calls.clear()
    eng.run(TILES[:3], tasks=("od",))
    assert [c for c in calls if c[0] == "vision"] == [("vision", k, 3) for k in (1, 2, 3)]
    assert [c for c in calls if c[0] == "decode"] == [("decode", k, 3) for k in (1, 2, 3)]
    assert calls.index(("vision", 3, 3)) < calls.index(("decode", 1, 3))


@pytest.fixture
def systemd(tmp_path):
    path = str(tmp_path / "notify")
    fake = FakeSystemd(path)
    yield fake, path
    fake.close()


def slow_frame(systemd, feed: bool):
    """One 4-tile frame whose every reported step is slowed to STEP_S; -> (pings during it, stalls)."""
    fake, path = systemd
    notifier = Notifier(stall_after=STALL_S, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})

    def progress(stage, done, total):
        if stage != "load":
            if feed:
                notifier.watchdog()
            time.sleep(STEP_S)

    eng = engine(progress)
    notifier.ready()
    start = time.monotonic()
    eng.run(TILES, tasks=("od",))  # 4 vision + 4 decode steps: > 3 s, twice the stall limit
    took = time.monotonic() - start
    notifier.close()
    fake.drain(0.3)
    during = [m for t, m in fake.messages if start <= t <= start + took]
    pings = sum("WATCHDOG=1" in m.split("\n") for m in during)
    stalls = [m for m in during if m.startswith("STATUS=stalled")]
    print(f"frame {took:.1f} s, {pings} pings, stalls: {stalls}")
    assert took > 2 * STALL_S
    return pings, stalls, took


def test_a_slow_frame_that_moves_keeps_the_pings_going(systemd):
    pings, stalls, took = slow_frame(systemd, feed=True)
    assert not stalls
    assert pings >= int(took / 0.5) - 2  # a ping every half WatchdogSec, all through the frame


def test_control_the_same_frame_without_progress_stalls(systemd):
    pings, stalls, took = slow_frame(systemd, feed=False)
    assert stalls and stalls[0].startswith("STATUS=stalled: no frame completed")
    assert pings < int(took / 0.5) - 2


def test_a_hung_stage_stops_the_pings(systemd):
    fake, path = systemd
    notifier = Notifier(stall_after=STALL_S, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    release, hung = threading.Event(), threading.Event()
    steps = []

    def progress(stage, done, total):
        if stage == "load":
            return
        notifier.watchdog()
        steps.append(stage)
        if len(steps) == 3:  # the third step's stage never returns (until the test lets it)
            hung.set()
            release.wait(60)

    eng = engine(progress)
    notifier.ready()
    worker = threading.Thread(target=eng.run, args=(TILES,), kwargs={"tasks": ("od",)}, daemon=True)
    worker.start()
    try:
        assert hung.wait(60)
        stalled_at = fake.wait_for_prefix("STATUS=stalled", timeout=STALL_S + 10)
        fake.drain(2.0)  # four ping periods after the stall
        after = [m for t, m in fake.messages if t > stalled_at]
        assert not any("WATCHDOG=1" in m.split("\n") for m in after), after
    finally:
        release.set()
        worker.join(60)
        notifier.close()


def test_run_extends_the_start_timeout_while_loading(systemd, tmp_path):
    fake, path = systemd
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update({"NOTIFY_SOCKET": path, "EDGE_AGENT_AGENT_STATE_DIR": str(tmp_path / "state")})
    res = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--once", "--no-tiling"], capture_output=True,
                         text=True, timeout=180, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    fake.drain(0.3)
    fields = fake.fields()
    ready = fields.index("READY=1")
    extends = [f for f in fields[:ready] if f.startswith("EXTEND_TIMEOUT_USEC=")]
    assert len(extends) >= 5, fields  # one before loading, one after each of the (>= 4) graphs
    assert all(int(f.split("=")[1]) >= 60_000_000 for f in extends)
