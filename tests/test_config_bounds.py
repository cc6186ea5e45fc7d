"""Every bound `run` enforces fails `edge-agent config check` too (one code path), with one
line naming the key, exit 2; credentials never appear in config check/show output, URLs
included."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def edge_agent(*args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, cwd=REPO,
                          env=e, timeout=120)


BASE = '[camera]\nsource = "shelf.mp4"\n'
CASES = [
    ("[mqtt]\nbroker = \"mqtt://h\"\nkeepalive = 70000\n", "keepalive"),
    ("[mqtt]\nbroker = \"mqtt://h\"\nkeepalive = 2\n", "keepalive"),
    (f"[mqtt]\nbroker = \"mqtt://h\"\nclient_id = \"{'c' * 70000}\"\n", "client_id"),
    (f"[mqtt]\nbroker = \"mqtt://h\"\nprefix = \"{'p' * 70000}\"\n", "prefix"),
    ("[mqtt]\nbroker = \"mqtt://h\"\nprefix = \"shop/#\"\n", "prefix"),
    ("[mqtt]\nbroker = \"mqtt://h\"\nreconnect_min = 30.0\nreconnect_max = 5.0\n", "reconnect_m"),
    ("[mqtt]\nbroker = \"mqtt://h\"\nca_file = \"ca.pem\"\n", "ca_file"),
    ("[mqtt]\nbroker = \"mqtt://h\"\ninflight = 100000\n", "inflight"),
    ("[mqtt]\nbroker = \"mqtt://h\"\nqos = 2\n", "qos"),
    ("[model]\nthreads = 100000\n", "threads"),
    ("[model]\nnum_beams = 1000\n", "num_beams"),
    ("[model]\nmax_new_tokens = 5000\n", "max_new_tokens"),
    ("[camera]\nmax_pixels = 2000000000\n", "max_pixels"),
    ("[agent]\ndevice_id = \"dev+1\"\n", "device_id"),
]


@pytest.mark.parametrize("toml, key", CASES, ids=[f"{k}-{i}" for i, (_, k) in enumerate(CASES)])
def test_config_check_rejects_values_past_each_bound(tmp_path, toml, key):
    cfg = tmp_path / "c.toml"
    text = toml if toml.startswith("[camera]") else BASE + toml
    cfg.write_text(text)
    p = edge_agent("config", "check", str(cfg))
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and str(cfg) in lines[0], p.stderr
    assert "Traceback" not in p.stderr and len(lines[0]) < 400


def test_camera_id_with_a_wildcard_fails_config_check(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[cameras]]\nid = "shelf#1"\nsource = "a.mp4"\n')
    p = edge_agent("config", "check", str(cfg))
    assert p.returncode == 2 and "shelf#1" in p.stderr and "'#'" in p.stderr


def test_credentials_in_urls_are_masked_in_check_show_and_errors(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[camera]\nsource = "rtsp://admin:hunter2@10.0.0.5/stream"\n'
                   '[mqtt]\nbroker = "mqtt://127.0.0.1:1883"\nusername = "u"\npassword = "pw-secret"\n')
    for args in (("config", "check", str(cfg)), ("config", "show", "--config", str(cfg))):
        p = edge_agent(*args)
        assert p.returncode == 0, p.stderr
        out = p.stdout + p.stderr
        assert "hunter2" not in out and "pw-secret" not in out
        assert "rtsp://admin:****@10.0.0.5/stream" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[mqtt]\nbroker = "mqtt://u:url-secret@broker:1883"\n')
    for args in (("config", "check", str(bad)), ("config", "show", "--config", str(bad))):
        p = edge_agent(*args)
        assert p.returncode == 2 and "url-secret" not in p.stdout + p.stderr, p.stderr
        assert "broker" in p.stderr


def test_environment_camera_settings_survive_source_flag(tmp_path):
    from edge_agent.settings import load_settings

    cfg = tmp_path / "c.toml"
    cfg.write_text('[camera]\nsource = "file-camera.mp4"\nwidth = 640\n')
    s = load_settings(cfg, env={"EDGE_AGENT_CAMERA_LOOP": "1"}, overrides={"cameras": {"source": "flag.mp4"}})
    (cam,) = s.cameras
    assert (cam.source, cam.loop, cam.width) == ("flag.mp4", True, 0)  # env kept, the file's camera replaced
    s = load_settings(None, env={"EDGE_AGENT_CAMERA_LOOP": "1"}, overrides={"cameras": {"source": "flag.mp4"}})
    assert s.cameras[0].loop is True
    s = load_settings(None, env={"EDGE_AGENT_CAMERA_LOOP": "1", "EDGE_AGENT_CAMERA_SOURCE": "env.mp4"},
                      overrides={"cameras": {"source": "flag.mp4"}})
    assert (s.cameras[0].source, s.cameras[0].loop) == ("flag.mp4", True)
