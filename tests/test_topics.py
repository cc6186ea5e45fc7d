"""MQTT topic rules for device id, camera ids, zone names and the prefix (edge_agent/topics.py),
and the config errors they give."""
from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest

from edge_agent.errors import ConfigError
from edge_agent.settings import load_settings
from edge_agent.topics import MAX_LEVEL_BYTES, MAX_TOPIC_BYTES, check_level, check_prefix, check_topic


@pytest.mark.parametrize("value", ["cam0", "Regal-3_links", "kühlregal", "ラック1", "a.b c"])
def test_good_levels_pass_and_paho_accepts_the_topic(value):
    assert check_level(value, "camera id") == value
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    assert client.publish(f"edge-agent/dev/{value}/detections", b"x", 1).rc == mqtt.MQTT_ERR_NO_CONN


@pytest.mark.parametrize("value, words", [
    ("a#b", "'#'"), ("a+b", "'+'"), ("a\0b", "NUL"), ("a/b", "'/'"), ("", "non-empty"),
    ("$SYS", "'$'"), ("a\nb", "control character"), ("x" * (MAX_LEVEL_BYTES + 1), "bytes in UTF-8"),
    ("ü" * (MAX_LEVEL_BYTES // 2 + 1), "bytes in UTF-8"), ("\ud800", "UTF-8"),
])
def test_bad_levels_give_one_line_naming_what(value, words):
    with pytest.raises(ValueError) as e:
        check_level(value, "camera id")
    msg = str(e.value)
    assert msg.startswith("camera id") and words in msg and "\n" not in msg and len(msg) < 300


def test_prefix_allows_levels_but_not_wildcards_or_empty_levels():
    assert check_prefix("shop/aisle3/", "mqtt.prefix") == "shop/aisle3"
    for bad in ("shop/+/x", "shop/#", "/shop", "shop//x", "$SYS/x", ""):
        with pytest.raises(ValueError, match="mqtt.prefix"):
            check_prefix(bad, "mqtt.prefix")


def test_whole_topic_limit_is_the_protocols():
    check_topic("a" * MAX_TOPIC_BYTES)
    with pytest.raises(ValueError, match="65535"):
        check_topic("a" * (MAX_TOPIC_BYTES + 1))


@pytest.mark.parametrize("table, line, words", [
    ("[[cameras]]", 'id = "shelf#1"\nsource = "x.mp4"', "camera id 'shelf#1': contains '#'"),
    ("[[cameras]]", 'id = "a+b"\nsource = "x.mp4"', "camera id 'a+b': contains '+'"),
    ("[agent]", 'device_id = "dev/1"', "device_id 'dev/1': contains '/'"),
])
def test_config_rejects_topic_unsafe_ids(tmp_path, table, line, words):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"{table}\n{line}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, env={})
    assert words in str(e.value) and str(cfg) in str(e.value)
