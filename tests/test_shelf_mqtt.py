"""Shelf analytics end to end: the real Agent (scripted engine, real video through OpenCV)
publishing to a real Mosquitto broker, received by a real subscriber.

- events: the broker stops while the scripted counts change over several frames, then
  starts again; then the agent restarts with the broker away.  Every event arrives, in
  order and right after its result, exactly once after deduplication by message_id;
- Home Assistant discovery: config topics in HA's format, JSON payloads with unique ids
  whose topics then receive data, re-sent on HA's birth message, and an empty retained
  config for a zone removed from the config."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from broker import Subscriber
from shelf_engine import ScriptedShelf, make_video
from edge_agent.agent import Agent, RunLimits
from edge_agent.errors import RuntimeFailure
from edge_agent.homeassistant import TOPIC_RE
from edge_agent.publish import dedupe_by_message_id
from edge_agent.settings import load_settings

PREFIX = "edge-agent/dev1"


ZONES = """
[[zones]]
name = "left"
points = [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]
labels = ["can"]
min_count = 3

[[zones]]
name = "right"
points = [[160, 0], [320, 0], [320, 240], [160, 240]]
"""


LEFT_ONLY = ZONES.split("\n[[zones]]\nname = \"right\"")[0]


def write_config(tmp_path: Path, broker, video: Path, zones: str = ZONES, loop: bool = False, **extra) -> Path:
    text = f"""
[agent]
device_id = "dev1"
state_dir = "{tmp_path / 'state'}"
interval = 0.0

[camera]
id = "shelf"
source = "{video}"
loop = {json.dumps(loop)}

[gating]
threshold = 0.0

[mqtt]
broker = "{broker.url}"
reconnect_min = 0.2
reconnect_max = 0.5

[shelf]
window = 3

[stats]
interval = 0.0
""" + zones + "".join(f"\n[{section}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in body.items()) + "\n"
                      for section, body in extra.items())
    path = tmp_path / "edge-agent.toml"
    path.write_text(text)
    return path


def run_agent(config: Path, engine, frames: int, drain: float = 30.0, stop: threading.Event | None = None) -> int:
    settings = load_settings(config, env={})
    return Agent(settings, RunLimits(max_frames=frames, drain_timeout=drain), stop_event=stop, engine=engine).run(
        install_signals=False)


def arrivals(sub, schema):
    """Results and events as received, first copies only, each validated."""
    out = []
    for m in dedupe_by_message_id(json.loads(m.payload) for m in sub.messages
                                  if m.topic.endswith(("/detections", "/events"))):
        out.append(schema.check(m, "event_message" if "event_type" in m else "result"))
    return out


def test_events_survive_a_broker_outage_and_an_agent_restart(tmp_path, broker, schema):
    video = make_video(tmp_path / "shelf.avi", 14)
    config = write_config(tmp_path, broker, video)
    sub = Subscriber(broker, f"{PREFIX}/#").start()

    def outage(i):
        if i == 3:
            broker.stop()  # frames 3..10 are processed while the broker is away
        if i == 11:
            broker.start()
            sub.wait_connects(2)

    #        0  1  2  3  4  5  6  7  8  9 10 11 12 13
    cans = [4, 4, 4, 4, 2, 2, 2, 0, 0, 0, 5, 5, 5, 5]
    assert run_agent(config, ScriptedShelf(cans, outage), len(cans)) == 0
    # the agent restarts while the broker is away: its events stay in the spool
    broker.stop()
    with pytest.raises(RuntimeFailure, match="not acknowledged"):  # a bounded run that could not deliver: exit 1
        run_agent(config, ScriptedShelf([5, 5, 1, 1, 1]), 5, drain=0.5)
    broker.start()
    sub.wait_connects(3)
    assert run_agent(config, ScriptedShelf([1]), 1) == 0  # replays the spool first
    sub.wait_for(lambda msgs: sum(m.topic.endswith("/detections") for m in msgs) >= 20, 60, "20 results")

    got = arrivals(sub, schema)
    results = [m for m in got if "event_type" not in m]
    events = [m for m in got if "event_type" in m]
    assert len(results) == 20
    assert [(e["event_type"], e["zone"], {k: e[k] for k in ("label", "before", "after", "total") if k in e})
            for e in events] == [
        ("count_changed", "left", {"label": "can", "before": 4, "after": 2}),
        ("low_stock", "left", {"before": 4, "total": 2}),
        ("count_changed", "left", {"label": "can", "before": 2, "after": 0}),
        ("empty", "left", {"before": 2}),
        ("count_changed", "left", {"label": "can", "before": 0, "after": 5}),
        ("restocked", "left", {"before": 0, "total": 5}),
        ("count_changed", "left", {"label": "can", "before": 5, "after": 1}),
        ("low_stock", "left", {"before": 5, "total": 1}),
    ]
    # each event right after its own result, in order
    position = {m["message_id"]: i for i, m in enumerate(got)}
    for e in events:
        r = position[e["result_message_id"]]
        assert all("event_type" in m for m in got[r + 1:position[e["message_id"]] + 1]), "an event after a later result"
    assert [e["seq"] for e in events] == [5, 5, 8, 8, 11, 11, 17, 17]  # seq goes on across the restart
    # the zone counts rode along in every result and on the retained zone topics
    assert [r["zones"]["left"]["total"] for r in results[:14]] == [4, 4, 4, 4, 4, 2, 2, 2, 0, 0, 0, 5, 5, 5]
    assert all(r["zones"]["right"]["counts"] == {"bottle": 2} for r in results)
    assert results[0]["prices"][0]["quantity"] == 2 and results[0]["prices"][0]["label"] == "can"
    zone_msgs = [schema.check(m.payload, "zone_counts_message") for m in sub.on("/shelf/left/counts")]
    assert zone_msgs and zone_msgs[-1]["total"] == 1 and zone_msgs[-1]["state"] == "low"
    sub.stop()


def render_templates(payloads, messages) -> dict:
    """Each config's value and attribute templates rendered, as Home Assistant does (a sandboxed
    Jinja environment with `value_json`), on the last message of the topics they read:
    object id -> (state, attributes); "availability" -> the availability values."""
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment()
    last = {m.topic: m.payload for m in messages}

    def render(template, topic):
        return env.from_string(template).render(value_json=json.loads(last[topic])).strip()

    out = {"availability": set()}
    for p in payloads:
        obj = p["unique_id"].removeprefix("edge_agent_dev1_")
        if "value_template" in p:
            attrs = p.get("json_attributes_template")
            out[obj] = (render(p["value_template"], p["state_topic"]),
                        json.loads(render(attrs, p["json_attributes_topic"])) if attrs else None)
        out["availability"] |= {render(a["value_template"], a["topic"]) for a in p["availability"]}
    return out


def discovery_configs(messages, prefix="homeassistant"):
    return {m.topic: m.payload for m in messages if m.topic.startswith(prefix + "/") and m.topic.endswith("/config")}


def test_home_assistant_discovery(tmp_path, broker, schema):
    video = make_video(tmp_path / "shelf.avi", 3)
    ha = {"enabled": True}
    snapshot = {"enabled": True, "interval": 0.0}
    config = write_config(tmp_path, broker, video, loop=True, homeassistant=ha, snapshot=snapshot)
    sub = Subscriber(broker, "#").start()
    stop = threading.Event()
    engine = ScriptedShelf([4, 4, 4, 1, 1, 1], cycle=True)  # a low_stock and a restocked every 6 frames
    runner = threading.Thread(target=run_agent, args=(config, engine, 0, 10.0, stop))
    runner.start()
    try:
        sub.wait_for(lambda msgs: len(discovery_configs(msgs)) >= 6 and any(m.topic.endswith("/snapshot") for m in msgs),
                     60, "discovery configs and a snapshot")
        configs = discovery_configs(sub.messages)
        # HA's topic format, and the entities we expect: one device, every payload with a unique id
        for topic in configs:
            assert TOPIC_RE.fullmatch(topic[len("homeassistant/"):]), topic
        assert {t.split("/")[1] for t in configs} == {"sensor", "binary_sensor", "image", "event"}
        payloads = [schema.check(p, "discovery_config") for p in configs.values()]
        assert len({p["unique_id"] for p in payloads}) == len(payloads) == 6  # items, 2 zones, camera, events, snapshot
        assert len({json.dumps(p["device"], sort_keys=True) for p in payloads}) == 1
        # every topic a config names receives data
        named = {p[k] for p in payloads for k in ("state_topic", "json_attributes_topic", "image_topic") if k in p}
        named |= {a["topic"] for p in payloads for a in p["availability"]}
        assert f"{PREFIX}/shelf/left/counts" in named and f"{PREFIX}/shelf/snapshot" in named
        sub.wait_for(lambda msgs: named <= {m.topic for m in msgs}, 30, "data on every named topic")
        rendered = render_templates(payloads, sub.messages)
        state, attrs = rendered["shelf_items"]
        assert attrs["bottle"] == 2 and attrs["can"] in (1, 4) and state == str(sum(attrs.values()))
        state, attrs = rendered["shelf_left"]  # smoothed: 4 or 1
        assert state in ("1", "4") and attrs == {"can": int(state), "min_count": 3, "state": "low" if state == "1" else "ok"}
        assert rendered["shelf_right"] == ("2", {"bottle": 2, "min_count": 0, "state": "ok"})
        event = json.loads([m for m in sub.messages if m.topic == f"{PREFIX}/shelf/events"][-1].payload)
        assert event["event_type"] in next(p["event_types"] for p in payloads if "event_types" in p)
        assert rendered["shelf_camera"] == ("ON", None)
        assert rendered["availability"] == {"online"}
        # Home Assistant (re)starts: its birth message makes the agent send every config again
        seen = {t: sum(m.topic == t for m in sub.messages) for t in configs}
        sub.client.publish("homeassistant/status", b"online", qos=1).wait_for_publish(10)
        sub.wait_for(lambda msgs: all(sum(m.topic == t for m in msgs) > seen[t] for t in configs), 30, "configs re-sent")
    finally:
        stop.set()
        runner.join(60)
    sub.stop()

    # the zone "right" is removed from the config: its entity gets an empty retained config
    config = write_config(tmp_path, broker, video, zones=LEFT_ONLY, homeassistant=ha, snapshot=snapshot)
    settings = load_settings(config, env={})
    assert [z.name for z in settings.zones] == ["left"]
    sub2 = Subscriber(broker, "homeassistant/#").start()
    assert run_agent(config, ScriptedShelf([4]), 1) == 0
    removed = [t for t in configs if t.endswith("/shelf_right/config")]
    assert len(removed) == 1
    sub2.wait_for(lambda msgs: any(m.topic == removed[0] and m.payload == b"" for m in msgs), 30, "empty config")
    sub2.stop()
    fresh = Subscriber(broker, "homeassistant/#").start()  # a new HA sees only the retained configs left
    fresh.wait_for(lambda msgs: len(discovery_configs(msgs)) >= 5, 30, "retained configs")
    assert removed[0] not in discovery_configs(fresh.messages)
    assert len(discovery_configs(fresh.messages)) == 5
    assert all(m.retain for m in fresh.messages if m.topic in configs)  # the configs are retained
    fresh.stop()


def test_no_event_lost_or_repeated_when_the_agent_is_killed(tmp_path, broker, schema):
    """The agent dies right after journaling a frame's events and before spooling them
    (twice), and is SIGKILLed at arbitrary moments while busy (frames every few
    milliseconds; three times): across the restarts the count_changed events still form
    one chain, each `before` the previous `after`: none lost, none reported twice."""
    video = make_video(tmp_path / "shelf.avi", 3)
    config = write_config(tmp_path, broker, video, loop=True)
    sub = Subscriber(broker, f"{PREFIX}/#").start()
    driver = [sys.executable, str(Path(__file__).parent / "shelf_driver.py"), str(config)]
    cans = "4,4,4,1,1,1,6,6,6,0,0,0,3,3,3"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))

    def events():
        return [m for m in arrivals(sub, schema) if m.get("event_type") == "count_changed"]

    log = open(tmp_path / "driver.log", "wb")
    for k in (1, 2):
        p = subprocess.run(driver + [cans, "0", str(k)], stdout=log, stderr=log, env=env, cwd=tmp_path, timeout=300)
        assert p.returncode == 137
    for kill in range(3):
        seen = len(events())
        proc = subprocess.Popen(driver + [cans], stdout=log, stderr=log, env=env, cwd=tmp_path)
        try:
            sub.wait_for(lambda msgs: len(events()) >= seen + 3 + kill, 120, "events before the kill")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    assert subprocess.run(driver + [cans, "15"], stdout=log, stderr=log, env=env, cwd=tmp_path, timeout=300).returncode == 0
    log.close()
    chain = [(e["before"], e["after"]) for e in events() if e["zone"] == "left"]
    assert len(chain) >= 9
    assert all(a[1] == b[0] for a, b in zip(chain, chain[1:])), chain
    sub.stop()


def test_the_test_broker_keeps_every_message_for_a_subscriber_that_is_behind(tmp_path, broker):
    """Issue 12: with mosquitto's default per-client queue (max_queued_messages 1000) the
    chain test above loses events once its subscriber falls 1000 messages behind (seen
    with each message's check slowed by 10 ms: the broker logs "Outgoing messages are
    being dropped", and the gaps look like repeated events).  The test broker keeps them
    all: 1500 messages queued for a persistent session arrive, in order."""
    if broker.kind != "mosquitto":
        pytest.skip("amqtt keeps no persistent sessions")
    import paho.mqtt.client as mqtt

    Subscriber(broker, "behind/#", client_id="test-sub-behind").start().stop()  # a persistent session, away
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-pub-behind")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    infos = [pub.publish("behind/x", str(i).encode(), qos=1) for i in range(1500)]
    for info in infos:
        info.wait_for_publish(30)
    pub.disconnect()
    pub.loop_stop()
    sub = Subscriber(broker, "behind/#", client_id="test-sub-behind").start()
    got = sub.wait_for(lambda msgs: len(msgs) >= 1500, 60, "1500 queued messages")
    assert [int(m.payload) for m in got] == list(range(1500))
    sub.stop()
