"""`edge-agent run` with no broker: JSON lines on stdout, through the tiny Florence-2 model.
Includes the embedded default (no arguments, no config) and start-up errors (exit 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "tests" / "fixtures" / "tiny-florence2"


def edge_agent(*args, cwd=None, env_extra=None, timeout=300):
    exe = Path(sys.executable).parent / "edge-agent"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_agent"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "NOTIFY_SOCKET", "CONFIGURATION_DIRECTORY"))}
    env.update(env_extra or {})
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=timeout)


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def make_video(path: Path, frames=3, size=(320, 240)) -> Path:
    w, h = size
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (w, h))
    assert out.isOpened()
    for i in range(frames):
        img = np.full((h, w, 3), 230, np.uint8)
        cv2.rectangle(img, (20 + 10 * i, 30), (120 + 10 * i, 200), (30, 90, 200), -1)
        cv2.putText(img, f"PRICE {i}", (150, 120), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2)
        out.write(img)
    out.release()
    return path


def one_looping_image_settings(tmp_path: Path):
    """In-process settings: one 64x64 image, looped, no interval, no config or environment."""
    from edge_agent.settings import load_settings

    shots = tmp_path / "shots"
    shots.mkdir()
    cv2.imwrite(str(shots / "a.png"), np.full((64, 64, 3), 10, np.uint8))
    return load_settings(None, env={}, overrides={"camera": {"source": str(shots), "loop": True},
                                                  "agent": {"interval": 0.0, "state_dir": str(tmp_path / "st")}})


def test_run_once_prints_one_schema_valid_line(tmp_path, schema):
    video = make_video(tmp_path / "endcap.avi")
    p = edge_agent("run", "--source", str(video), "--once", "--model", str(MODEL), "--device-id", "dev1",
                   "--state-dir", str(tmp_path / "state"), "--interval", "0", env_extra={"EDGE_AGENT_MODEL_MAX_NEW_TOKENS": "32"})
    assert p.returncode == 0, p.stderr[-3000:]
    lines = json_lines(p.stdout)
    assert len(lines) == 1 and p.stdout.count("\n") == 1  # stdout carries only results
    r = schema.check(lines[0])
    assert (r["device_id"], r["camera_id"], r["seq"], r["frame"]) == ("dev1", "endcap", 0, {"width": 320, "height": 240})
    assert r["model"]["name"] == "tiny-florence2" and "note" not in r["model"]
    assert r["model"]["max_new_tokens"] == 32  # the environment reached the engine
    assert {"capture", "plan", "engine", "merge", "total"} <= set(r["timings"])
    assert "noise" not in p.stderr.lower()


def test_image_directory_max_frames_no_tiling(tmp_path, schema):
    shots = tmp_path / "shots"
    shots.mkdir()
    for i in range(3):
        cv2.imwrite(str(shots / f"s{i}.jpg"), np.full((200, 300, 3), 40 * i, np.uint8))
    p = edge_agent("run", "--source", str(shots), "--max-frames", "2", "--interval", "0", "--no-tiling",
                   "--camera-id", "door", "--model", str(MODEL), "--state-dir", str(tmp_path / "state"),
                   env_extra={"EDGE_AGENT_MODEL_MAX_NEW_TOKENS": "16", "EDGE_AGENT_STATS_INTERVAL": "0"})
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [schema.check(x) for x in json_lines(p.stdout)]
    assert [(x["camera_id"], x["seq"], x["tiles"]["count"]) for x in lines] == [("door", 0, 1), ("door", 1, 1)]
    assert '"frames_processed":2' in p.stderr  # the final stats line


def test_embedded_default_no_arguments(tmp_path, schema):
    """No config, no model, no source: the bundled demo model and synthetic video, with a warning."""
    p = edge_agent("run", "--once", cwd=tmp_path,
                   env_extra={"XDG_STATE_HOME": str(tmp_path / "xdg"), "EDGE_AGENT_MODEL_MAX_NEW_TOKENS": "32"})
    assert p.returncode == 0, p.stderr[-3000:]
    r = schema.check(json_lines(p.stdout)[0])
    assert r["camera_id"] == "shelf" and r["frame"] == {"width": 1280, "height": 720}
    assert "synthetic" in r["model"]["note"]
    assert "warning" in p.stderr and "SYNTHETIC" in p.stderr


def test_startup_errors_exit_2_with_one_line(tmp_path):
    p = edge_agent("run", "--source", str(tmp_path / "missing.mp4"), "--once", "--model", str(MODEL))
    assert p.returncode == 2 and "missing.mp4" in p.stderr and "Traceback" not in p.stderr
    p = edge_agent("run", "--source", str(make_video(tmp_path / "v.avi", 1)), "--once", "--model", str(tmp_path / "nomodel"))
    assert p.returncode == 2 and "nomodel" in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = edge_agent("run", "--once", "--broker", "http://x")
    assert p.returncode == 2 and "command line --broker = 'http://x'" in p.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\ninterval = -3\n")
    p = edge_agent("run", "--config", str(bad), "--once")
    assert p.returncode == 2 and f"{bad}: [agent] interval = -3: must be >= 0" in p.stderr
    p = edge_agent("run", "--camera", "0", "--source", "x.mp4")
    assert p.returncode == 2 and "not both" in p.stderr


def test_two_cameras_from_a_config_file(tmp_path, schema):
    dirs = []
    for name, shade in (("left", 60), ("right", 180)):
        d = tmp_path / name
        d.mkdir()
        for i in range(2):
            cv2.imwrite(str(d / f"{i}.png"), np.full((120, 160, 3), shade + i, np.uint8))
        dirs.append(d)
    cfg = tmp_path / "two.toml"
    cfg.write_text(f'[agent]\ninterval = 0\nstate_dir = "{tmp_path / "state"}"\ndevice_id = "aisle"\n'
                   f'[[cameras]]\nid = "left"\nsource = "{dirs[0]}"\n[[cameras]]\nid = "right"\nsource = "{dirs[1]}"\n'
                   f'[model]\ndir = "{MODEL}"\nmax_new_tokens = 16\n[mqtt]\nbroker = ""\n[stats]\ninterval = 0\n')
    p = edge_agent("run", "--config", str(cfg))
    assert p.returncode == 0, p.stderr[-3000:]
    got = sorted((r["camera_id"], r["seq"]) for r in map(schema.check, json_lines(p.stdout)))
    assert got == [("left", 0), ("left", 1), ("right", 0), ("right", 1)]  # both ended: the run ends


def test_frames_failing_in_a_row_end_the_run_with_exit_1(tmp_path, monkeypatch, capsys):
    """In-process, no model: an engine that always fails -> RuntimeFailure (exit status 1)
    after a few frames, logged, publisher closed; no traceback reaches the user as a crash."""
    import pytest

    from edge_agent import agent as agent_mod
    from edge_agent.cli import exit_status
    from edge_agent.errors import RuntimeFailure

    class Broken:
        info = {"name": "broken", "variant": "fp32"}

        def run(self, crops, tasks=("od", "ocr")):
            raise RuntimeError("onnxruntime: out of memory")

    s = one_looping_image_settings(tmp_path)
    monkeypatch.setattr(agent_mod, "build_engine", lambda settings, **kw: Broken())
    with pytest.raises(RuntimeFailure) as err:
        agent_mod.Agent(s, agent_mod.RunLimits(drain_timeout=0)).run(install_signals=False)
    assert exit_status(err.value) == 1 and "out of memory" in str(err.value)
    assert capsys.readouterr().out == ""  # no result was published


def test_stop_request_finishes_the_current_frame_then_exits_0(tmp_path, monkeypatch, capsys):
    """What SIGTERM does (it sets the stop event): the frame in progress is still published."""
    import threading

    from edge_agent import agent as agent_mod
    from edge_agent.models.outputs import TaskOutput
    from edge_agent.tiling.regions import Regions

    stop = threading.Event()

    class StopsMidFrame:
        info = {"name": "fake", "variant": "fp32"}

        def run(self, crops, tasks=("od", "ocr")):
            stop.set()  # the signal arrives while the engine works
            return [{t: TaskOutput(t, Regions.empty(t == "ocr"), False, "", ()) for t in tasks} for _ in crops]

    s = one_looping_image_settings(tmp_path)
    monkeypatch.setattr(agent_mod, "build_engine", lambda settings, **kw: StopsMidFrame())
    code = agent_mod.Agent(s, agent_mod.RunLimits(), stop_event=stop).run(install_signals=False)
    lines = json_lines(capsys.readouterr().out)
    assert code == 0 and [r["seq"] for r in lines] == [0]


def test_model_section_reaches_the_engine_options(tmp_path):
    """[model] keys (decode_batch, threads, num_beams, max_new_tokens, mmap_threshold_kb,
    row_activation_bits) arrive in
    EngineOptions."""
    from edge_agent.model import build_engine
    from edge_agent.settings import load_settings

    cfg = tmp_path / "edge-agent.toml"
    cfg.write_text(f'[model]\ndir = "{MODEL}"\nvariant = ""\ndecode_batch = 3\nthreads = 1\n'
                   'num_beams = 2\nmax_new_tokens = 40\nmmap_threshold_kb = 256\nrow_activation_bits = 7\n')
    engine = build_engine(load_settings(cfg, env={"STATE_DIRECTORY": str(tmp_path / "state")}).model)
    o = engine.opts
    assert (o.decode_batch, o.intra_op_threads, o.num_beams, o.max_new_tokens, o.mmap_threshold_kb,
            o.row_activation_bits) == (3, 1, 2, 40, 256, 7)
    assert engine.row_bits == 7
    assert engine.info["variant"] == "fp32"
