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
from edge_agent import embedded
from edge_agent.settings import FLAGS, SECTIONS, Settings, load_settings, resolve, to_toml

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
    assert s.tiling.enabled is False and s.tiling.tile_size == 768
    assert s.gating.threshold == 3.0
    assert [c.id for c in s.cameras] == ["a"] and s.cameras[0].source == "a.mp4"
    s = load_settings(p, env={}, overrides={"camera": {"source": "3"}})
    assert [(c.id, c.source) for c in s.cameras] == [("cam3", "3")]  # --camera replaces the file's camera


@pytest.mark.parametrize("text, env, needle", [
    ("[agent]\ninterval = -1\n", {}, "[agent] interval = -1: must be >= 0"),
    ('[agent]\ninterval = "soon"\n', {}, "[agent] interval = 'soon': expected a number"),
    ("[agent]\ninterval = inf\n", {}, "[agent] interval = Infinity: expected a finite number"),
    ("", {"EDGE_AGENT_SPOOL_MAX_MB": "nan"}, "EDGE_AGENT_SPOOL_MAX_MB = 'nan': expected a finite number"),
    ("[agent]\nintervall = 3\n", {}, "[agent] intervall: unknown key"),
    ("[cameraz]\n", {}, "unknown section [cameraz]"),
    ('[model]\nvariant = "_int9"\n', {}, "[model] variant = '_int9': unknown model variant '_int9'"),
    ('[mqtt]\nbroker = "http://x"\n', {}, "[mqtt] broker = 'http://x': not a broker URL: must look like mqtt://"),
    ('[mqtt]\nbroker = "mqtt://x:port"\n', {}, "[mqtt] broker = 'mqtt://x:port': not a broker URL"),
    ('[mqtt]\nbroker = "mqtt://u:p@x"\n', {}, "[mqtt] broker = 'mqtt://u:****@x': put credentials in"),
    ("[mqtt]\nqos = 2\n", {}, "[mqtt] qos = 2: must be 0 or 1"),
    ("[mqtt]\ninflight = 0\n", {}, "[mqtt] inflight = 0: must be >= 1"),
    ("[mqtt]\nkeepalive = 2\n", {}, "[mqtt] keepalive = 2: must be 5..65535 seconds"),
    ("[mqtt]\nreconnect_max = 0.5\n", {}, "[mqtt] reconnect_max = 0.5: must be >= reconnect_min (1)"),
    ("[gating]\nthreshold = -2\n", {}, "[gating] threshold = -2: must be >= 0"),
    ("[tiling]\ntile_size = 8\n", {}, "[tiling] tile_size = 8: invalid value 8"),
    ("[snapshot]\nmax_bytes = 10\n", {}, "[snapshot] max_bytes = 10: must be >= 1000"),
    ("[spool]\nmax_mb = 0\n", {}, "[spool] max_mb = 0: must be > 0"),
    ("[[cameras]]\nsource = \"a.mp4\"\n[[cameras]]\nsource = \"b.mp4\"\nwidth = -1\n", {},
     "[[cameras]] #2 width = -1: must be >= 0"),
    ('[model]\ntasks = ["od", "x"]\n', {}, "[model] tasks = [\"od\", \"x\"]: must be a non-empty list"),
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


def test_a_bad_broker_fails_check_and_run_alike_naming_the_key_as_written(tmp_path):
    p = write(tmp_path, '[mqtt]\nbroker = "mqtt://host:99999"\n')
    for args in (["config", "check", str(p)], ["run", "--once", "--config", str(p)]):
        r = invoke(*args, env={})
        assert r.exit_code == 2, r.output
        assert r.output.strip().splitlines() == [f"edge-agent: error: {p}: [mqtt] broker = 'mqtt://host:99999': "
                                                 "not a broker URL (Port out of range 0-65535)"], r.output


def test_qos_and_inflight_are_keys_and_reach_the_publisher(tmp_path):
    p = write(tmp_path, '[mqtt]\nbroker = "mqtt://127.0.0.1:1"\nqos = 0\ninflight = 3\n')
    s = load_settings(p, env={})
    assert (s.mqtt.qos, s.mqtt.inflight, s.mqtt.keepalive) == (0, 3, 60)


def test_a_cross_key_check_names_a_default_key(tmp_path):
    p = write(tmp_path, "[mqtt]\nreconnect_min = 90.0\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p, env={})
    assert str(e.value) == f"{p}: [mqtt] reconnect_max = 60.0 (default): must be >= reconnect_min (90)"


def test_flags_name_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line --variant = '_int9': unknown model variant '_int9'"):
        resolve(None, {"variant": "_int9"}, env={})
    with pytest.raises(ConfigError, match=r"^command line --broker = 'x': not a broker URL"):
        resolve(None, {"broker": "x"}, env={})


def test_every_flag_names_a_real_key():
    for name, flag in FLAGS.items():
        assert flag.key in SECTIONS[flag.section].keys(), name


def test_sections_are_the_settings_fields():
    assert list(SECTIONS) == [f.name for f in dataclasses.fields(Settings)
                              if f.name not in ("path", "password_origin", "model_note")]
    assert SECTIONS["cameras"].many and SECTIONS["cameras"].table == "camera"


def test_no_file_show_prints_what_run_uses_the_demo_included(tmp_path):
    env = {"HOME": str(tmp_path)}
    r = invoke("config", "show", env=env)
    assert r.exit_code == 0, r.output
    assert f'dir = "{embedded.DEMO_MODEL}"' in r.output
    assert f'source = "{embedded.SAMPLE_VIDEO}"' in r.output and 'id = "shelf"' in r.output
    assert 'broker = ""' in r.output


def test_a_file_without_source_or_model_runs_the_demo(tmp_path):
    """As documented in config/edge-agent.toml: no model dir and no source = the demo."""
    p = write(tmp_path, '[mqtt]\nbroker = "mqtt://b:1883"\n')
    s = resolve(p, {}, env={})
    assert s.model.dir == str(embedded.DEMO_MODEL) and s.model_note == embedded.NOTE
    assert [c.source for c in s.cameras] == [str(embedded.SAMPLE_VIDEO)]
    s = resolve(p, {"camera": 2}, env={})
    assert [(c.id, c.source) for c in s.cameras] == [("cam2", "2")]


def test_config_check_warns_about_missing_paths(tmp_path):
    p = write(tmp_path, '[model]\ndir = "/nonexistent/model"\n[mqtt]\nbroker = "mqtts://b"\nca_file = "/nope/ca.pem"\n'
                        'username = "u"\npassword_file = "pw"\n')
    r = CliRunner().invoke(cli, ["config", "check", str(p)], env={"EDGE_AGENT_MQTT_PASSWORD": None})
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 3, r.stderr
    assert "[model] dir = '/nonexistent/model': no such directory" in warnings[0]
    assert "[mqtt] password_file = 'pw': no such file" in warnings[1]
    assert "[mqtt] ca_file = '/nope/ca.pem': no such file" in warnings[2]
    assert ": ok (" in r.stdout


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


def test_default_config_documents_every_field_and_every_key_there_is_a_field():
    s = load_settings(DEFAULT, env={})
    text = DEFAULT.read_text()
    data = tomllib.loads(text)
    for section, sec in SECTIONS.items():
        name = sec.table
        if sec.many and sec.table == sec.name:  # [[zones]]: a commented example (no zone by default)
            for key in (f.name for f in dataclasses.fields(sec.cls)):
                assert re.search(rf"^# {key} = ", text, re.M), f"[[{name}]] {key} not in the commented example"
            continue
        keys = [f.name for f in dataclasses.fields(sec.cls)]
        assert name in data, f"[{name}] missing from {DEFAULT}"
        assert set(data[name]) == set(keys), f"[{name}] in {DEFAULT} differs from {SECTIONS[section].cls.__name__}"
        for key in keys:
            # documented: a comment line right above the key (or above its group)
            assert re.search(rf"#[^\n]*\n(?:[a-z_]+ = [^\n]*\n)*{key} = ", text), f"{name}.{key} has no comment"
    assert set(data) == {sec.table for sec in SECTIONS.values()} - {"zones"}
    # the default values written there are the defaults of the code (except the model dir and broker)
    assert s.model.dir and s.mqtt.broker.startswith("mqtt://")
    assert dataclasses.replace(s.agent, device_id="", state_dir="") == type(s.agent)()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(example):
    r = CliRunner().invoke(cli, ["config", "check", str(example)], env={"EDGE_AGENT_MQTT_PASSWORD": None})
    assert r.exit_code == 0 and ": ok (" in r.stdout, r.output
    assert all("no such" in line for line in r.stderr.splitlines())  # the /etc and /var/lib paths of a device
    assert EXAMPLES and {p.name for p in EXAMPLES} >= {"two-cameras.toml", "tls-broker.toml"}


def test_two_cameras_with_one_camera_flag_needs_a_source():
    two = REPO / "config" / "examples" / "two-cameras.toml"
    s = load_settings(two, env={})
    assert [c.id for c in s.cameras] == ["top-shelf", "bottom-shelf"]
    with pytest.raises(ConfigError, match="needs --camera or --source"):
        load_settings(two, env={}, overrides={"camera": {"id": "x"}})
