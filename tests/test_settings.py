"""Settings: file < environment < flags, one-line errors naming key and value (exit 2),
secrets masked, and config/edge-agent.toml documenting every key."""
from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_agent.cli import cli
from edge_agent.errors import ConfigError
from edge_agent.settings import SECTIONS, load_settings, settings_as_dict, to_toml

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "config" / "edge-agent.toml"
EXAMPLES = sorted((REPO / "config" / "examples").glob("*.toml"))
SECRET = "correct-horse-42"


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "edge-agent.toml"
    p.write_text(text)
    return p


def invoke(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_file_then_env_then_flags(tmp_path):
    p = write(tmp_path, '[agent]\ninterval = 5.0\ndevice_id = "from-file"\n[model]\nmax_new_tokens = 100\n'
                        '[camera]\nsource = "a.mp4"\n[gating]\nthreshold = 3.0\n')
    env = {"EDGE_AGENT_AGENT_INTERVAL": "7", "EDGE_AGENT_MODEL_MAX_NEW_TOKENS": "200", "EDGE_AGENT_TILING_ENABLED": "false"}
    s = load_settings(p, env=env, overrides={"agent": {"interval": 9.0, "device_id": None}})
    assert s.agent.interval == 9.0  # flag beats env beats file
    assert s.model.max_new_tokens == 200  # env beats file
    assert s.agent.device_id == "from-file"  # a None flag does not override
    assert s.tiling.enabled is False and s.tiling.options.tile_size == 768
    assert s.gating.threshold == 3.0
    assert [c.id for c in s.cameras] == ["a"] and s.cameras[0].source == "a.mp4"
    s = load_settings(p, env={}, overrides={"camera": {"source": "3"}})
    assert [(c.id, c.source) for c in s.cameras] == [("cam3", "3")]  # --camera replaces the file's camera


@pytest.mark.parametrize("text, env, needle", [
    ("[agent]\ninterval = -1\n", {}, "[agent] interval = -1.0: must be >= 0"),
    ('[agent]\ninterval = "soon"\n', {}, "[agent] interval = 'soon': expected a number"),
    ("[agent]\ninterval = inf\n", {}, "[agent] interval = Infinity: expected a finite number"),
    ("", {"EDGE_AGENT_SPOOL_MAX_MB": "nan"}, "EDGE_AGENT_SPOOL_MAX_MB = 'nan': expected a finite number"),
    ("[agent]\nintervall = 3\n", {}, "[agent] intervall: unknown key"),
    ("[cameraz]\n", {}, "unknown section [cameraz]"),
    ('[model]\nvariant = "_int9"\n', {}, "[model] variant = '_int9': must be one of"),
    ('[mqtt]\nbroker = "http://x"\n', {}, "[mqtt] broker = 'http://x': must look like mqtt://"),
    ("[gating]\nthreshold = -2\n", {}, "[gating] threshold = -2.0: must be >= 0"),
    ("[agent\n", {}, "invalid TOML"),
    ("", {"EDGE_AGENT_MODEL_THREADS": "many"}, "environment variable EDGE_AGENT_MODEL_THREADS = 'many': expected an integer"),
])
def test_bad_values_are_one_line_exit_2_naming_key_and_value(tmp_path, text, env, needle):
    p = write(tmp_path, text)
    r = invoke("config", "check", str(p), env=env)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.output
    if not env:
        assert str(p) in lines[0]


def test_missing_config_file_names_it(tmp_path):
    r = invoke("config", "check", str(tmp_path / "nope.toml"))
    assert r.exit_code == 2 and "nope.toml: cannot read config file" in r.output


def test_password_never_from_flags():
    with pytest.raises(ConfigError, match="never taken from argv"):
        load_settings(None, env={}, overrides={"mqtt": {"password": "x"}})


def test_config_show_masks_the_password(tmp_path):
    p = write(tmp_path, f'[mqtt]\nbroker = "mqtt://b:1883"\nusername = "u"\npassword = "{SECRET}"\n')
    r = invoke("config", "show", "--config", str(p), env={"EDGE_AGENT_MQTT_PASSWORD": None})
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output and "password = ********" in r.output and "from config file" in r.output
    assert 'broker = "mqtt://b:1883"' in r.output
    r = invoke("config", "show", "--config", str(p), env={"EDGE_AGENT_MQTT_PASSWORD": "env-secret-9"})
    assert "env-secret-9" not in r.output and "EDGE_AGENT_MQTT_PASSWORD" in r.output
    s = load_settings(p, env={})
    assert SECRET not in repr(s) and SECRET not in to_toml(s)
    # the shown config loads again (the password line is a comment)
    shown = tmp_path / "shown.toml"
    shown.write_text(invoke("config", "show", "--config", str(p), env={"EDGE_AGENT_MQTT_PASSWORD": None}).output)
    assert load_settings(shown, env={}).mqtt.broker == "mqtt://b:1883"


def test_password_file_relative_to_the_config(tmp_path):
    (tmp_path / "pw").write_text(SECRET + "\n")
    p = write(tmp_path, '[mqtt]\npassword_file = "pw"\n')
    s = load_settings(p, env={})
    assert s.mqtt.password.reveal() == SECRET and "password_file" in s.password_origin


def test_default_config_documents_every_key_and_loads():
    s = load_settings(DEFAULT, env={})
    text = DEFAULT.read_text()
    data = tomllib.loads(text)
    for section, values in settings_as_dict(s).items():
        name = "camera" if section == "cameras" else section
        keys = values[0].keys() if section == "cameras" else values.keys()
        assert name in data, f"[{name}] missing from {DEFAULT}"
        for key in keys:
            assert key in data[name], f"[{name}] {key} missing from {DEFAULT}"
            # documented: a comment line right above the key (or above its group)
            assert re.search(rf"#[^\n]*\n(?:[a-z_]+ = [^\n]*\n)*{key} = ", text), f"{name}.{key} has no comment"
    assert set(SECTIONS) <= set(data)
    # the default values written there are the defaults of the code (except the model dir and broker)
    assert s.model.dir and s.mqtt.broker.startswith("mqtt://")
    assert dataclasses.replace(s.agent, device_id="", state_dir="") == type(s.agent)()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(example):
    r = invoke("config", "check", str(example), env={"EDGE_AGENT_MQTT_PASSWORD": "x"})
    assert r.exit_code == 0 and ": ok (" in r.output, r.output
    assert EXAMPLES and {p.name for p in EXAMPLES} >= {"two-cameras.toml", "tls-broker.toml"}


def test_two_cameras_with_one_camera_flag_needs_a_source():
    two = REPO / "config" / "examples" / "two-cameras.toml"
    s = load_settings(two, env={})
    assert [c.id for c in s.cameras] == ["top-shelf", "bottom-shelf"]
    with pytest.raises(ConfigError, match="needs --camera or --source"):
        load_settings(two, env={}, overrides={"camera": {"id": "x"}})
