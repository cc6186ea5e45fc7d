"""Publishing results: MQTT (paho-mqtt 2.x, store and forward through the spool) or stdout.

Both publishers share one small interface (`Publisher`):

    start()                                   connect / get ready; never blocks on the network
    publish_result(result, snapshot=None, events=())
                                              one FrameResult (+ optional JPEG bytes, + its shelf events)
    publish_events(events)                    shelf events alone (re-sent from the journal at start)
    camera_state(camera_id, state)            "ok", "camera_lost", ...: goes out on the status topic
    publish_stats(stats)                      periodic counters (spool depth and drops are added)
    drain(timeout) -> remaining               wait until the spool is empty
    close()                                   retained "offline", disconnect

Topics, under `prefix` (default `edge-agent/<device_id>`):

    <prefix>/<camera>/detections   QoS 1 (mqtt.qos), the full result; through the spool
    <prefix>/<camera>/counts       retained per-label counts
    <prefix>/<camera>/events       QoS 1, shelf events (edge_agent/shelf.py); spooled right after their result
    <prefix>/<camera>/<zone>/counts  retained smoothed counts of one zone
    <prefix>/<camera>/snapshot     retained JPEG, optional
    <prefix>/status                retained {"status": "online"|"offline", "cameras": {...}}; the
                                   Last Will publishes "offline" when the agent dies
    <prefix>/stats                 periodic, not retained

Store and forward: a result is appended to the SQLite spool before anything else.  One
sender thread hands spool rows to paho in rowid order, at most `inflight` at a time, and
deletes a row only once paho reports its PUBACK.  While the broker is away paho keeps the
in-flight messages and resends them after reconnecting; the sender then continues with
the rows after them, so order is kept.  After an agent restart the sender starts again at
the oldest row.  QoS 1 means a result may arrive twice: subscribers drop duplicates by
`message_id` (see `dedupe_by_message_id`).

Retained state (counts, snapshot, status) is last-value-wins: only the latest value per
topic is kept in memory, sent when connected, and sent again after every reconnect (a
restarted broker without persistence has forgotten it).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Iterator, Protocol, Sequence
from urllib.parse import urlsplit

from edge_agent import topics
from edge_agent.errors import ConfigError
from edge_agent.result import FrameResult
from edge_agent.secret import Secret
from edge_agent.spool import Spool, SpoolOptions

log = logging.getLogger(__name__)

MQTT_MAX_PAYLOAD = 268_435_455
PROTOCOLS = ("3.1.1", "5")
PAHO_INFLIGHT_SLACK = 10  # room above the spool window for retained status/counts/snapshots
MQTT_MAX_KEEPALIVE = 65535  # a two-byte field in CONNECT
MQTT_MAX_STRING_BYTES = 65535  # client id, user name, password: two-byte length prefixes
CONNACK_TIMEOUT_MAX = 10.0  # seconds a broker that accepted TCP has to answer CONNECT
WARN_EVERY_S = 300.0  # the same connection problem is logged as a warning at most this often
HEALTH_EVERY_S = 30.0  # how often the sender looks at the spool's health (disk space, writability)


# scheme -> (canonical scheme, default port); tcp:// and ssl:// are paho-style aliases
BROKER_SCHEMES = {"mqtt": ("mqtt", 1883), "tcp": ("mqtt", 1883), "mqtts": ("mqtts", 8883), "ssl": ("mqtts", 8883)}


@dataclass(frozen=True)
class BrokerAddress:
    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://host[:port]` or `mqtts://host[:port]` (also tcp://, ssl://).  ValueError otherwise."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a broker URL ({e})") from None
    if parts.scheme not in BROKER_SCHEMES or not parts.hostname:
        raise ValueError("not a broker URL: must look like mqtt://host[:port] or mqtts://host[:port]")
    if parts.username or parts.password:
        raise ValueError("put credentials in [mqtt] username and the password settings, not in the URL")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError("a broker URL has no path or query")
    scheme, default = BROKER_SCHEMES[parts.scheme]
    return BrokerAddress(scheme, parts.hostname, port or default)


@dataclass(frozen=True)
class MqttOptions:
    """The `[mqtt]` section: everything the MQTT publisher needs.  The password arrives
    resolved (config, file, systemd credential or environment: settings.py's job) as a
    `Secret`, so it never shows in a repr or a log line."""

    broker: str = ""  # mqtt://host[:1883] or mqtts://host[:8883]; "" -> JSON lines on stdout
    prefix: str = ""  # "" -> edge-agent/<device_id>
    protocol: str = "3.1.1"  # "3.1.1" or "5"
    client_id: str = ""  # "" -> edge-agent-<device_id>
    keepalive: int = 60  # seconds
    qos: int = 1  # of the results (detections topic); 0 or 1
    inflight: int = 10  # spooled messages handed to paho before their PUBACK
    ca_file: str = ""  # TLS: CA bundle (mqtts:// without it uses the system CAs)
    cert_file: str = ""  # TLS client certificate (optional)
    key_file: str = ""  # its key
    tls_insecure: bool = False  # skip the host name check (testing only)
    username: str = ""
    password: Secret = Secret()
    password_file: str = ""  # read by settings.py into `password`
    reconnect_min: float = 1.0  # seconds; doubles up to reconnect_max
    reconnect_max: float = 60.0

    def __post_init__(self):
        if isinstance(self.password, str):
            object.__setattr__(self, "password", Secret(self.password))
        if self.broker:
            try:
                address = parse_broker_url(self.broker)
            except ValueError as e:
                raise ValueError(f"broker: {e}") from None
            if (self.ca_file or self.cert_file or self.key_file) and not address.tls:
                raise ValueError("ca_file: TLS files are set but the broker is not mqtts://")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol: must be one of {', '.join(map(repr, PROTOCOLS))}")
        if self.qos not in (0, 1):
            raise ValueError("qos: must be 0 or 1")
        if not self.inflight >= 1:
            raise ValueError("inflight: must be >= 1")
        if not self.reconnect_min > 0:
            raise ValueError("reconnect_min: must be > 0")
        if not self.reconnect_max >= self.reconnect_min:
            raise ValueError(f"reconnect_max: must be >= reconnect_min ({self.reconnect_min:g})")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file: a client certificate needs both cert_file and key_file")
        if not 5 <= self.keepalive <= MQTT_MAX_KEEPALIVE:
            raise ValueError(f"keepalive: must be 5..{MQTT_MAX_KEEPALIVE} seconds (an MQTT limit)")
        if self.inflight > MQTT_MAX_KEEPALIVE:
            raise ValueError(f"inflight: at most {MQTT_MAX_KEEPALIVE} (MQTT packet ids)")
        for key, value in (("client_id", self.client_id), ("username", self.username),
                           ("password", self.password.reveal())):
            if value and len(value.encode("utf-8", "surrogatepass")) > MQTT_MAX_STRING_BYTES:
                raise ValueError(f"{key}: longer than {MQTT_MAX_STRING_BYTES} bytes in UTF-8 (an MQTT limit)")
        if "\0" in self.client_id:
            raise ValueError("client_id: contains NUL")
        if self.prefix:
            try:
                topics.check_prefix(self.prefix, "[mqtt] prefix")
            except ValueError as e:
                raise ValueError(f"prefix: {e}") from None
        if self.broker and self.password and not self.username:
            raise ValueError("username: a password is set but no username")

    @property
    def enabled(self) -> bool:
        return bool(self.broker)

    @property
    def address(self) -> BrokerAddress:
        return parse_broker_url(self.broker)


@dataclass(frozen=True)
class Topics:
    prefix: str

    @classmethod
    def for_device(cls, device_id: str, prefix: str | None = None) -> "Topics":
        _check_topic_level(device_id, "agent.device_id")
        try:
            return cls(topics.check_prefix(prefix or f"edge-agent/{device_id}", "mqtt.prefix"))
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def detections(self, camera_id: str) -> str:
        return f"{self.prefix}/{camera_id}/detections"

    def counts(self, camera_id: str) -> str:
        return f"{self.prefix}/{camera_id}/counts"

    def snapshot(self, camera_id: str) -> str:
        return f"{self.prefix}/{camera_id}/snapshot"

    def events(self, camera_id: str) -> str:
        return f"{self.prefix}/{camera_id}/events"

    def zone_counts(self, camera_id: str, zone: str) -> str:
        return f"{self.prefix}/{camera_id}/{zone}/counts"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def stats(self) -> str:
        return f"{self.prefix}/stats"


def _check_topic_level(value: str, key: str) -> None:
    try:
        topics.check_level(value, key)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_bytes(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def counts_message(result: FrameResult, payload: dict) -> dict:
    keys = ("message_id", "device_id", "camera_id", "seq", "captured_at", "counts")
    return {k: payload[k] for k in keys}


def zone_counts_messages(payload: dict) -> dict[str, dict]:
    """zone name -> its retained counts message, from a result payload with `zones`."""
    head = {k: payload[k] for k in ("message_id", "device_id", "camera_id", "seq", "captured_at")}
    return {name: {**head, "zone": name, "total": z["total"], "counts": z["counts"], "min_count": z["min_count"],
                   "state": z["state"]} for name, z in (payload.get("zones") or {}).items()}


class Publisher(Protocol):
    def start(self) -> None: ...
    def publish_result(self, result: FrameResult, snapshot: bytes | None = None, events: Sequence = ()) -> None: ...
    def publish_events(self, events: Sequence) -> None: ...
    def camera_state(self, camera_id: str, state: str) -> None: ...
    def publish_stats(self, stats: dict) -> None: ...
    def drain(self, timeout: float) -> int: ...
    def close(self) -> None: ...
    def wait_connected(self, timeout: float) -> bool: ...


# -- stdout ----------------------------------------------------------------------------
class StdoutPublisher:
    """Results as JSON lines on stdout: the embedded default when no broker is configured.
    Status and stats go to the log (stderr), so stdout carries only results."""

    def __init__(self, device_id: str, stream=None):
        _check_topic_level(device_id, "agent.device_id")
        self.device_id = device_id
        self.stream = stream

    def start(self) -> None:
        log.info("no MQTT broker configured: results go to stdout as JSON lines")

    def publish_result(self, result: FrameResult, snapshot: bytes | None = None, events: Sequence = ()) -> None:
        """The result, then its shelf events (lines with an "event_type")."""
        out = self.stream or sys.stdout
        out.write(json.dumps(result.to_payload(self.device_id), separators=(",", ":"), ensure_ascii=False) + "\n")
        self.publish_events(events)

    def publish_events(self, events: Sequence) -> None:
        out = self.stream or sys.stdout
        for e in events:
            out.write(json.dumps(e.to_payload(self.device_id), separators=(",", ":"), ensure_ascii=False) + "\n")
        out.flush()

    def camera_state(self, camera_id: str, state: str) -> None:
        log.debug("camera %s: %s", camera_id, state)  # capture.py logs the change (and its retries)

    def publish_stats(self, stats: dict) -> None:
        log.info("stats %s", json.dumps(stats, separators=(",", ":")))

    def drain(self, timeout: float) -> int:
        return 0

    def wait_connected(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        (self.stream or sys.stdout).flush()


# -- MQTT ------------------------------------------------------------------------------
def _paho():
    import paho.mqtt.client as mqtt

    return mqtt


class _InFlight:
    __slots__ = ("spool_id", "info")

    def __init__(self, spool_id: int, info):
        self.spool_id, self.info = spool_id, info


class MqttPublisher:
    """Store-and-forward MQTT publisher.  See the module docstring."""

    def __init__(self, settings: MqttOptions, spool: Spool, device_id: str):
        self.settings = settings
        self.spool = spool
        self.device_id = device_id
        self.broker = settings.address
        self.topics = Topics.for_device(device_id, settings.prefix)
        _check_files(settings)
        self._lock = threading.Lock()  # guards the fields below; never held while calling paho
        self._wake = threading.Event()
        self._attempted = threading.Event()  # set after the first connection attempt, good or bad
        self._cameras: dict[str, str] = {}
        self._subscriptions: dict[str, object] = {}  # topic -> callback(payload), see subscribe()
        self._retained: dict[str, tuple[bytes, int]] = {}  # topic -> (payload, qos), latest only
        self._dirty: set[str] = set()
        self._retained_info: dict = {}  # topic -> paho MQTTMessageInfo of its last publish (sender thread)
        self._stats: bytes | None = None
        self._acked: set[int] = set()  # mids acknowledged since the sender last looked
        self._rejected: dict[int, str] = {}  # mid -> reason, PUBACKs with an error reason code (MQTT 5)
        self._hello_due = False
        self._stopping = False
        self._ever_connected = False
        self._warned: tuple[str, float] | None = None  # (reason, monotonic time) of the last connection warning
        self._spool_state: str | None = None  # what the status topic says about the spool
        self._last_connect_error: str | None = None
        # sender-thread state
        self._inflight: list[_InFlight] = []
        self._cursor = 0
        self._next_expire = 0.0
        self._next_health = 0.0
        self._client = self._make_client()
        self._thread: threading.Thread | None = None

    # -- interface -------------------------------------------------------------------
    def start(self) -> None:
        self._set_status("online")
        log.info("MQTT: publishing to %s as %s under %s/ (MQTT %s, %d results spooled)",
                 self.broker, self.client_id, self.topics.prefix, self.settings.protocol, self.spool.depth())
        if self.settings.password and not self.broker.tls:
            log.warning("MQTT: a password is set but %s is not TLS (mqtts://): it crosses the network in clear "
                        "text", self.broker)
        if self.spool.recovery:
            log.error("MQTT: %s", self.spool.recovery.describe())
        kw = {"clean_start": True} if self.settings.protocol == "5" else {}
        self._client.connect_async(self.broker.host, self.broker.port, self.settings.keepalive, **kw)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self._thread.start()

    def publish_result(self, result: FrameResult, snapshot: bytes | None = None, events: Sequence = ()) -> None:
        """Spool the result, then its events (QoS 1, in order, right after it); update the
        retained counts, zone counts and snapshot."""
        payload = result.to_payload(self.device_id)
        self.spool.append(self.topics.detections(result.camera_id), json_bytes(payload), self.settings.qos, False)
        self.publish_events(events)
        self._put_retained(self.topics.counts(result.camera_id), json_bytes(counts_message(result, payload)))
        for zone, msg in zone_counts_messages(payload).items():
            self._put_retained(self.topics.zone_counts(result.camera_id, zone), json_bytes(msg))
        if snapshot:
            if len(snapshot) > MQTT_MAX_PAYLOAD:
                log.warning("snapshot of %s is %d bytes, over the MQTT limit; not sent", result.camera_id, len(snapshot))
            else:
                self._put_retained(self.topics.snapshot(result.camera_id), bytes(snapshot))
        self._wake.set()

    def camera_state(self, camera_id: str, state: str) -> None:
        with self._lock:
            self._cameras[camera_id] = state
        self._set_status("online")

    def publish_stats(self, stats: dict) -> None:
        msg = {"device_id": self.device_id, "at": utc_now(), **stats, **self.spool.health()}
        with self._lock:
            self._stats = json_bytes(msg)
        self._wake.set()

    def publish_events(self, events: Sequence) -> None:
        """Shelf events (edge_agent/shelf.py) through the spool, QoS 1, in order."""
        for event in events:
            self.spool.append(self.topics.events(event.camera_id), json_bytes(event.to_payload(self.device_id)), 1, False)
        self._wake.set()

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """A retained message (last value wins), sent now or once connected, again after
        every reconnect."""
        self._put_retained(topic, bytes(payload))

    def spool_message(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """One message through the spool (QoS 1, in order, kept until acknowledged)."""
        self.spool.append(topic, bytes(payload), 1, retain)
        self._wake.set()

    def subscribe(self, topic: str, callback) -> None:
        """Call `callback(payload)` (on paho's network thread) for each message on `topic`;
        subscribed again after every reconnect."""
        with self._lock:
            self._subscriptions[topic] = callback
        self._client.message_callback_add(topic, lambda client, userdata, msg: callback(bytes(msg.payload)))
        if self._client.is_connected():
            self._client.subscribe(topic, qos=1)

    def wait_connected(self, timeout: float) -> bool:
        """Wait (bounded) for the first connection attempt to finish: True if connected now,
        False if it failed or was refused (the publisher keeps retrying in the background)."""
        self._attempted.wait(timeout)
        return self._client.is_connected()

    def drain(self, timeout: float) -> int:
        """Wait up to `timeout` s until every spooled result is acknowledged; returns what is left."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            depth = self.spool.depth()
            with self._lock:
                idle = not self._dirty and self._stats is None
            if (depth == 0 and idle) or time.monotonic() >= deadline:
                return depth
            self._wake.set()
            time.sleep(0.05)

    def close(self, timeout: float = 5.0) -> None:
        """Stop sending, publish retained "offline", disconnect.  Unacknowledged results stay
        in the spool for the next start."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._client.is_connected():
            self._send_retained()  # the latest counts/stats not yet out
            info = self._client.publish(self.topics.status, self._status_payload("offline", "shutdown"), 1, True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as e:
                log.warning("MQTT: could not publish offline status: %s", e)
        self._client.disconnect()
        self._client.loop_stop()
        log.info("MQTT: closed; %d results left in the spool", self.spool.depth())

    @property
    def client_id(self) -> str:
        return self.settings.client_id or f"edge-agent-{self.device_id}"

    @property
    def last_error(self) -> str | None:
        """Why the broker is not connected now (refused, unreachable), or None."""
        return None if self._client.is_connected() else self._last_connect_error

    # -- client setup ----------------------------------------------------------------
    def _make_client(self):
        mqtt = _paho()
        s = self.settings
        v5 = s.protocol == "5"
        kw = {} if v5 else {"clean_session": True}
        client = _client_class()(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                   protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, **kw)
        client.suppress_exceptions = True  # a bug in a callback must not kill the network thread
        client.will_set(self.topics.status, self._status_payload("offline", "connection lost", at=False), 1, True)
        if s.username:
            client.username_pw_set(s.username, s.password.reveal() or None)
        if self.broker.tls:
            _set_tls(client, s)
        client.reconnect_delay_set(s.reconnect_min, s.reconnect_max)
        client.max_inflight_messages_set(s.inflight + PAHO_INFLIGHT_SLACK)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # -- paho callbacks (network thread): update state, wake the sender ---------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.connack_received = True
        self._attempted.set()
        if reason_code.is_failure:
            hint = ""
            if reason_code.value in (4, 5, 0x86, 0x87):  # bad user name or password / not authorized
                hint = " (check mqtt.username and the password)"
            log.error("MQTT broker %s refused the connection: %s%s; retrying with backoff up to %gs",
                      self.broker, reason_code, hint, self.settings.reconnect_max)
            self._last_connect_error = f"{self.broker} refused the connection: {reason_code}{hint}"
            return
        limit = getattr(properties, "ReceiveMaximum", None)  # MQTT 5: the broker's in-flight limit
        if limit:
            client.max_inflight_messages_set(max(1, min(self.settings.inflight + PAHO_INFLIGHT_SLACK, limit)))
        with self._lock:
            subscriptions = list(self._subscriptions)
        for topic in subscriptions:
            client.subscribe(topic, qos=1)
        with self._lock:
            self._hello_due = True
            self._warned = None
            again = self._ever_connected
            self._ever_connected = True
            self._last_connect_error = None
        log.info("MQTT: %s to %s; %d results spooled", "reconnected" if again else "connected", self.broker,
                 self.spool.depth())
        self._wake.set()

    def _on_connect_fail(self, client, userdata):
        self._attempted.set()
        self._trouble(f"unreachable ({client.last_connect_error or 'connection failed'})")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        before_connack = client.awaiting_connack()
        timed_out = client.connack_timed_out
        client.connection_closed()
        with self._lock:
            stopping = self._stopping
        if stopping:
            return
        if before_connack:  # accepted TCP but never completed the MQTT handshake
            self._attempted.set()
            if timed_out:
                why = f"no CONNACK within {self._connack_timeout:g}s of connecting (is it an MQTT broker?)"
            elif reason_code == "Protocol error":
                why = "answered CONNECT with something that is not MQTT (protocol error)"
            elif reason_code == "Keep alive timeout":
                why = f"no CONNACK within the keepalive ({self.settings.keepalive}s)"
            else:
                why = f"closed the connection before CONNACK ({reason_code})"
            self._trouble(why)
        elif self._ever_connected:
            log.warning("MQTT connection to %s lost (%s); spooling results and reconnecting", self.broker, reason_code)
            with self._lock:
                self._warned = ("lost", time.monotonic())

    def _trouble(self, why: str) -> None:
        """A failed connection attempt: a warning naming the broker and the reason, at most
        once per WARN_EVERY_S for the same reason (debug in between)."""
        self._last_connect_error = f"{self.broker}: {why}"
        now = time.monotonic()
        with self._lock:
            last = self._warned
            loud = last is None or last[0] != why or now - last[1] >= WARN_EVERY_S
            if loud:
                self._warned = (why, now)
        (log.warning if loud else log.debug)(
            "MQTT broker %s: %s; results stay in the spool (%d); retrying with backoff %g..%gs",
            self.broker, why, self.spool.depth(), self.settings.reconnect_min, self.settings.reconnect_max)

    @property
    def _connack_timeout(self) -> float:
        return float(min(self.settings.keepalive, CONNACK_TIMEOUT_MAX))

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._lock:
            self._acked.add(mid)
            if reason_code.is_failure:
                self._rejected[mid] = str(reason_code)
        self._wake.set()

    # -- sender thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(0.05 if self._inflight or self._dirty else 1.0)
            self._wake.clear()
            try:
                if self._step():
                    return
            except Exception:  # keep sending; the spool still holds everything
                log.exception("MQTT sender: unexpected error")
                time.sleep(1.0)

    def _step(self) -> bool:
        self._collect_acks()
        with self._lock:
            if self._stopping:
                return True
            hello, self._hello_due = self._hello_due, False
        now = time.monotonic()
        if now >= self._next_expire:  # the age bound also applies while offline
            self._next_expire = now + 60.0
            self.spool.expire()
        if now >= self._next_health:
            self._next_health = now + HEALTH_EVERY_S
            self._check_spool_health()
        if not self._client.is_connected():
            # paho waits for CONNACK until the keepalive runs out; a broker that accepted TCP
            # and then says nothing would be retried only once a keepalive.
            self._client.close_if_no_connack(self._connack_timeout)
            return False
        if hello:
            with self._lock:  # the main thread adds a new camera's topics to _retained
                topics = list(self._retained)
            acked = [t for t in topics if self._retained_acked(t)]
            with self._lock:
                self._dirty.update(acked)
        self._send_retained()
        self._pump()
        return False

    def _collect_acks(self) -> None:
        """Delete acknowledged rows.  PUBACK mids recorded by on_publish since the last call
        (the same cycle holds any rejection reason); is_published() as a fallback."""
        with self._lock:
            acked, self._acked = self._acked, set()
            rejected, self._rejected = self._rejected, {}
        if not self._inflight:
            return
        done = [m for m in self._inflight if m.info.mid in acked or m.info.is_published()]
        if not done:
            return
        gone = {id(m) for m in done}
        self._inflight = [m for m in self._inflight if id(m) not in gone]
        for m in done:
            reason = rejected.get(m.info.mid)
            if reason:
                self.spool.bury(m.spool_id, "rejected", f"broker {self.broker} answered {reason}")
            else:
                self.spool.delete(m.spool_id)

    def _pump(self) -> None:
        room = self.settings.inflight - len(self._inflight)
        if room <= 0:
            return
        mqtt = _paho()
        ok = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)  # NO_CONN: paho queues it, sends it on reconnect
        for e in self.spool.after(self._cursor, room):
            try:
                topics.check_topic(e.topic, "topic")
                info = self._client.publish(e.topic, e.payload, e.qos, e.retain)
            except ValueError as err:  # refused for good: a wildcard in the topic, a payload too large
                why = str(err) if str(err).startswith("topic") else f"paho: {err} (topic {e.topic[:200]!r})"
                self.spool.bury(e.id, "unpublishable", why)
                self._cursor = e.id
                continue
            if info.rc == mqtt.MQTT_ERR_PAYLOAD_SIZE:  # over the broker's MQTT 5 maximum packet size
                self.spool.bury(e.id, "unpublishable", f"{len(e.payload)} bytes, over the broker's maximum packet size")
                self._cursor = e.id
                continue
            if info.rc not in ok:
                log.warning("MQTT: paho did not take spooled message %d (%s); will retry", e.id, mqtt.error_string(info.rc))
                return
            self._inflight.append(_InFlight(e.id, info))
            self._cursor = e.id

    def _check_spool_health(self) -> None:
        """Low disk space warning (Spool.health) and the spool's state on the status topic."""
        self.spool.health()
        state = "ok" if self.spool.writable() else "memory"
        if state != self._spool_state:
            first = self._spool_state is None
            self._spool_state = state
            if not (first and state == "ok" and not self.spool.recovery):
                self._set_status("online")

    def _send_retained(self) -> None:
        """Publish the latest value of each changed retained topic.  A topic whose previous
        value is still unacknowledged waits (paho resends that one after a reconnect), so
        at most one message per retained topic sits in paho's queue."""
        with self._lock:
            ready = [t for t in self._dirty if self._retained_acked(t)]
            todo = [(t, self._retained[t]) for t in sorted(ready, key=self._retained_order)]
            self._dirty.difference_update(ready)
            stats, self._stats = self._stats, None
        for topic, (payload, qos) in todo:
            self._retained_info[topic] = self._client.publish(topic, payload, qos, True)
        if stats is not None:
            self._client.publish(self.topics.stats, stats, 0, False)

    def _retained_acked(self, topic: str) -> bool:
        info = self._retained_info.get(topic)
        return info is None or info.is_published() or info.rc not in (0, 4)

    def _retained_order(self, topic: str):
        return (topic != self.topics.status, topic)  # status first

    # -- retained state --------------------------------------------------------------
    def _put_retained(self, topic: str, payload: bytes, qos: int = 1) -> None:
        with self._lock:
            self._retained[topic] = (payload, qos)
            self._dirty.add(topic)
        self._wake.set()

    def _set_status(self, status: str) -> None:
        self._put_retained(self.topics.status, self._status_payload(status))

    def _status_payload(self, status: str, reason: str | None = None, at: bool = True) -> bytes:
        with self._lock:
            cameras = dict(sorted(self._cameras.items()))
        msg = {"status": status, "device_id": self.device_id}
        if at:
            msg["at"] = utc_now()
        if reason:
            msg["reason"] = reason
        if cameras:
            msg["cameras"] = cameras
        if self._spool_state == "memory" or self.spool.recovery:
            spool = {"writable": self._spool_state != "memory"}
            if self.spool.recovery:
                spool["recovered"] = self.spool.recovery.as_dict()
            msg["spool"] = spool
        return json_bytes(msg)


@functools.lru_cache(maxsize=1)
def _client_class():
    """A paho Client that remembers why the last connection attempt failed (paho's
    on_connect_fail does not say; the reason goes into the log line)."""
    mqtt = _paho()

    class ClientWithErrors(mqtt.Client):
        last_connect_error: str | None = None
        connected_at: float | None = None  # monotonic time the socket opened; None once closed
        connack_timed_out = False
        connack_received = False

        def _create_socket(self):
            try:
                sock = super()._create_socket()
            except OSError as e:
                self.last_connect_error = _describe_os_error(e)
                raise
            self.last_connect_error = None
            self.connected_at = time.monotonic()
            self.connack_timed_out = False
            self.connack_received = False
            return sock

        def awaiting_connack(self) -> bool:
            return self.connected_at is not None and not self.connack_received

        def connection_closed(self) -> None:
            self.connected_at = None
            self.connack_timed_out = False

        def close_if_no_connack(self, timeout: float) -> None:
            """Close a socket that has waited `timeout` s for CONNACK: paho then reports the
            loss and reconnects after its backoff."""
            opened = self.connected_at
            sock = self.socket()
            if opened is None or sock is None or self.connack_received or time.monotonic() - opened < timeout:
                return
            self.connack_timed_out = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return ClientWithErrors


def _describe_os_error(e: OSError) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate check failed: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    return e.strerror or e.__class__.__name__


def _check_files(s: MqttOptions) -> None:
    """The TLS files exist (`config check` only warns: they may be on the device only)."""
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(s, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"[mqtt] {key} = {path!r}: no such file")


def _set_tls(client, s: MqttOptions) -> None:
    try:
        client.tls_set(ca_certs=s.ca_file or None, certfile=s.cert_file or None, keyfile=s.key_file or None,
                       cert_reqs=ssl.CERT_REQUIRED)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise ConfigError(f"[mqtt] ca_file/cert_file/key_file: cannot load {s.ca_file or ''} {s.cert_file or ''}: {e}") from None
    if s.tls_insecure:
        client.tls_insecure_set(True)


def open_publisher(mqtt: MqttOptions, device_id: str, state_dir, spool: SpoolOptions = SpoolOptions()) -> "Publisher":
    """The publisher the agent runs with: MQTT when a broker URL is configured, else stdout."""
    if not mqtt.enabled:
        return StdoutPublisher(device_id)
    return MqttPublisher(mqtt, Spool.in_state_dir(state_dir, spool), device_id)


# -- subscribers -----------------------------------------------------------------------
class MessageIdDeduper:
    """QoS 1 delivers at least once: a result can arrive twice (a PUBACK lost in an outage,
    a replay after a restart).  Subscribers keep the first copy of each `message_id`.
    Remembers the last `capacity` ids."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def is_new(self, payload) -> bool:
        if isinstance(payload, (bytes, bytearray, str)):
            payload = json.loads(payload)
        mid = payload["message_id"]
        if mid in self._seen:
            self._seen.move_to_end(mid)
            return False
        self._seen[mid] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True


def dedupe_by_message_id(payloads: Iterable, capacity: int = 100_000) -> Iterator[dict]:
    """Yield each result payload (dict, or JSON bytes/str) the first time its message_id is seen."""
    seen = MessageIdDeduper(capacity)
    for p in payloads:
        d = json.loads(p) if isinstance(p, (bytes, bytearray, str)) else p
        if seen.is_new(d):
            yield d
