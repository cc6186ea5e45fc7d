"""Home Assistant MQTT discovery: the device and its entities announce themselves.

With `[homeassistant] enabled = true` (and a broker), retained config messages go to

    <discovery_prefix>/<component>/<node_id>/<object_id>/config

`node_id` is the device id and `object_id` the entity, both reduced to HA's `[A-Za-z0-9_-]`.
Every entity has a `unique_id` (`edge_agent_<node_id>_<object_id>`) and the same device
block (identifiers `edge-agent-<device_id>`, model, sw_version), so Home Assistant shows one
device.  Per camera:

- `sensor` `<camera>_items`: the total detection count, per-label counts as attributes
  (state topic `<prefix>/<camera>/counts`);
- `sensor` `<camera>_<zone>` per zone: the zone's smoothed total, its label counts, min_count
  and state as attributes (`<prefix>/<camera>/<zone>/counts`);
- `image` `<camera>_snapshot`: the annotated JPEG (`image_topic` `<prefix>/<camera>/snapshot`),
  when `[snapshot] enabled`;
- `binary_sensor` `<camera>_camera` (connectivity): ON while the status topic says the camera is `ok`;
- `event` `<camera>_events`: count_changed, low_stock, empty, restocked (`<prefix>/<camera>/events`).

Availability comes from the agent's retained status topic (`<prefix>/status`) with the
value template `{{ value_json.status }}` ("online"/"offline", the Last Will included).

The configs are re-sent whenever Home Assistant announces itself (its birth message,
`online` on `<discovery_prefix>/status` by default), and after every reconnect.  The config
topics published are remembered in `<state_dir>/homeassistant.json`; a topic remembered but
no longer configured (a zone removed from the config) gets an empty retained payload, which
removes the entity.  That payload goes through the spool, so it is delivered even if the
broker is away when the agent starts.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

STATE_FILE = "homeassistant.json"
COMPONENTS = ("sensor", "binary_sensor", "image", "event")
EVENT_TYPES = ("count_changed", "low_stock", "empty", "restocked")
# Home Assistant's discovery topic, after the prefix (homeassistant/components/mqtt/discovery.py)
TOPIC_RE = re.compile(r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config")


@dataclass(frozen=True)
class HomeAssistantOptions:
    """The `[homeassistant]` section."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"  # as set in Home Assistant's MQTT integration
    birth_topic: str = ""  # "" -> <discovery_prefix>/status; "online" there re-sends the configs
    device_name: str = ""  # "" -> "edge-agent <device_id>"

    def __post_init__(self):
        for key in ("discovery_prefix", "birth_topic"):
            value = getattr(self, key)
            if (key == "discovery_prefix" and not value) or any(c in value for c in "+#\0") or value.endswith("/"):
                raise ValueError(f"{key}: {value!r} must be an MQTT topic without wildcards or a trailing '/'")

    @property
    def birth(self) -> str:
        return self.birth_topic or f"{self.discovery_prefix}/status"


def object_id(text: str) -> str:
    """Home Assistant's id character class: anything else becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


@dataclass(frozen=True)
class CameraEntities:
    camera_id: str
    zones: tuple[str, ...] = ()


class Discovery:
    """The discovery config messages of one agent, and which old ones to remove."""

    def __init__(self, options: HomeAssistantOptions, device_id: str, prefix: str,
                 cameras: Sequence[CameraEntities], snapshot: bool, model: str, sw_version: str,
                 state_dir: str | Path | None = None):
        self.options = options
        self.device_id = device_id
        self.prefix = prefix.rstrip("/")
        self.node_id = object_id(device_id)
        self.cameras = tuple(cameras)
        self.snapshot = snapshot
        self.device = {"identifiers": [f"edge-agent-{device_id}"], "name": options.device_name or f"edge-agent {device_id}",
                       "manufacturer": "edge-agent", "model": model or "edge-agent", "sw_version": sw_version}
        self.state_path = Path(state_dir) / STATE_FILE if state_dir else None
        self._configs = self._build()

    # -- configs ---------------------------------------------------------------------------
    def _topic(self, component: str, obj: str) -> str:
        return f"{self.options.discovery_prefix}/{component}/{self.node_id}/{obj}/config"

    def _entity(self, component: str, obj: str, name: str, extra: dict) -> tuple[str, dict]:
        payload = {"name": name, "unique_id": f"edge_agent_{self.node_id}_{obj}",
                   "device": self.device, "origin": {"name": "edge-agent", "sw_version": self.device["sw_version"]},
                   "availability": [{"topic": f"{self.prefix}/status", "value_template": "{{ value_json.status }}",
                                     "payload_available": "online", "payload_not_available": "offline"}],
                   "availability_mode": "latest", **extra}
        return self._topic(component, obj), payload

    def _build(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        ids: dict[str, str] = {}
        for cam in self.cameras:
            c = cam.camera_id
            base = f"{self.prefix}/{c}"
            entities = [
                ("sensor", f"{c}_items", f"{c} items", {
                    "state_topic": f"{base}/counts", "value_template": "{{ value_json.counts.values() | sum }}",
                    "json_attributes_topic": f"{base}/counts", "json_attributes_template": "{{ value_json.counts | tojson }}",
                    "state_class": "measurement", "unit_of_measurement": "items", "icon": "mdi:package-variant"}),
                ("binary_sensor", f"{c}_camera", f"{c} camera", {
                    "state_topic": f"{self.prefix}/status", "device_class": "connectivity",
                    "value_template": "{{ 'ON' if (value_json.cameras | default({})).get('%s') == 'ok' else 'OFF' }}" % c}),
                ("event", f"{c}_events", f"{c} stock events", {
                    "state_topic": f"{base}/events", "event_types": list(EVENT_TYPES), "icon": "mdi:bell-alert"}),
            ]
            if self.snapshot:
                entities.append(("image", f"{c}_snapshot", f"{c} snapshot", {
                    "image_topic": f"{base}/snapshot", "content_type": "image/jpeg"}))
            for zone in cam.zones:
                entities.append(("sensor", f"{c}_{zone}", f"{c} {zone}", {
                    "state_topic": f"{base}/{zone}/counts", "value_template": "{{ value_json.total }}",
                    "json_attributes_topic": f"{base}/{zone}/counts",
                    "json_attributes_template": "{{ dict(value_json.counts, min_count=value_json.min_count, state=value_json.state) | tojson }}",
                    "state_class": "measurement", "unit_of_measurement": "items", "icon": "mdi:fridge-outline"}))
            for component, raw, name, extra in entities:
                obj = object_id(raw)
                if obj in ids and ids[obj] != raw:
                    raise ValueError(f"Home Assistant object id {obj!r} would stand for both {ids[obj]!r} and {raw!r}; "
                                     "rename a camera or zone")
                ids[obj] = raw
                topic, payload = self._entity(component, obj, name, extra)
                out[topic] = payload
        return out

    def configs(self) -> dict[str, bytes]:
        """config topic -> JSON payload (retained)."""
        return {t: json.dumps(p, separators=(",", ":"), ensure_ascii=False).encode("utf-8") for t, p in self._configs.items()}

    # -- removals --------------------------------------------------------------------------
    def published(self) -> set[str]:
        if self.state_path is None or not self.state_path.exists():
            return set()
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            return {str(t) for t in data["topics"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("Home Assistant state %s unreadable (%s); removed entities may stay in Home Assistant",
                        self.state_path, e)
            return set()

    def stale(self) -> list[str]:
        """Config topics published before and no longer configured: they get an empty retained payload."""
        return sorted(self.published() - set(self._configs))

    def remember(self) -> None:
        """Record the topics configured now (call once the removals are spooled)."""
        if self.state_path is None:
            return
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"topics": sorted(self._configs)}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except OSError as e:
            log.warning("Home Assistant state %s not saved: %s", self.state_path, e.strerror or e)

    def is_birth(self, payload: bytes) -> bool:
        return bytes(payload).strip() == b"online"


def start(publisher, discovery: Discovery) -> None:
    """Announce the entities through `publisher` (an MqttPublisher): empty retained payloads
    for stale topics (spooled), the configs (retained, re-sent after each reconnect), and a
    subscription to Home Assistant's birth topic that re-sends them."""
    stale = discovery.stale()
    for topic in stale:
        publisher.spool_message(topic, b"", retain=True)
    if stale:
        log.info("Home Assistant: removing %d entities no longer configured", len(stale))
    discovery.remember()
    configs = discovery.configs()
    for topic, payload in configs.items():
        publisher.publish_retained(topic, payload)

    def on_birth(payload: bytes) -> None:
        if discovery.is_birth(payload):
            log.info("Home Assistant is online: re-sending %d discovery configs", len(configs))
            for topic, body in configs.items():
                publisher.publish_retained(topic, body)

    publisher.subscribe(discovery.options.birth, on_birth)
    log.info("Home Assistant discovery: %d entities under %s/+/%s/", len(configs), discovery.options.discovery_prefix,
             discovery.node_id)
