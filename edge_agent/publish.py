"""Publishing results: MQTT (paho-mqtt 2.x, store and forward through the spool) or stdout.

Both publishers share one small interface (`Publisher`):

    start()                                   connect / get ready; never blocks on the network
    publish_result(result, snapshot=None)     one FrameResult (+ optional JPEG bytes)
    camera_state(camera_id, state)            "ok", "camera_lost", ...: goes out on the status topic
    publish_stats(stats)                      periodic counters (spool depth and drops are added)
    drain(timeout) -> remaining               wait until the spool is empty
    close()                                   retained "offline", disconnect

Topics, under `prefix` (default `edge-agent/<device_id>`):

    <prefix>/<camera>/detections   QoS 1 (mqtt.qos), the full result; through the spool
    <prefix>/<camera>/counts       retained per-label counts
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
import ssl
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Iterable, Iterator, Protocol
from urllib.parse import urlsplit

from edge_agent.errors import ConfigError
from edge_agent.result import FrameResult
from edge_agent.spool import Spool

log = logging.getLogger("edge_agent.publish")

MQTT_MAX_PAYLOAD = 268_435_455
PROTOCOLS = ("3.1.1", "5")
SCHEME_ALIASES = {"tcp": "mqtt", "ssl": "mqtts"}
PAHO_INFLIGHT_SLACK = 10  # room above the spool window for retained status/counts/snapshots


@dataclass(frozen=True)
class MqttSettings:
    """Everything the MQTT publisher needs.  The password arrives resolved (config, env or
    file: settings.py's job) and is never shown: repr=False keeps it out of logs."""

    url: str = "mqtt://127.0.0.1:1883"  # mqtt://host[:1883] or mqtts://host[:8883]
    prefix: str | None = None  # None/"" -> "edge-agent/<device_id>"
    protocol: str = "3.1.1"  # "3.1.1" or "5"
    client_id: str | None = None  # None/"" -> "edge-agent-<device_id>"
    keepalive: int = 30
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None  # CA bundle; mqtts:// without it uses the system CAs
    tls_cert: str | None = None  # client certificate (optional)
    tls_key: str | None = None  # its key
    tls_insecure: bool = False  # skip the host name check (testing only)
    qos: int = 1
    reconnect_min: float = 1.0  # seconds; doubles up to reconnect_max
    reconnect_max: float = 60.0
    inflight: int = 10  # spooled messages handed to paho before their PUBACK

    @classmethod
    def from_config(cls, cfg, **overrides) -> "MqttSettings":
        """From settings.py's `[mqtt]` section (broker, prefix, protocol, client_id, keepalive,
        ca_file, cert_file, key_file, tls_insecure, username, password (a Secret or str),
        reconnect_min, reconnect_max).  Missing attributes keep the defaults."""
        names = {"url": "broker", "tls_ca": "ca_file", "tls_cert": "cert_file", "tls_key": "key_file"}
        kw = {}
        for f in fields(cls):
            src = names.get(f.name, f.name)
            if hasattr(cfg, src):
                kw[f.name] = getattr(cfg, src)
        pw = kw.get("password")
        if pw is not None and not isinstance(pw, str):
            kw["password"] = pw.reveal()  # settings.Secret
        kw.update(overrides)
        return cls(**kw)


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


def parse_broker_url(url: str, key: str = "mqtt.url") -> BrokerAddress:
    """`mqtt://host[:port]` or `mqtts://host[:port]`.  ConfigError naming `key` otherwise."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{key}: {url!r} is not a broker URL ({e})") from None
    scheme = SCHEME_ALIASES.get(parts.scheme, parts.scheme)
    if scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"{key}: {url!r} is not a broker URL; use mqtt://host:port or mqtts://host:port")
    if parts.username or parts.password:
        raise ConfigError(f"{key}: put credentials in mqtt.username and the password setting, not in the URL")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"{key}: {url!r}: a broker URL has no path or query")
    default = 8883 if scheme == "mqtts" else 1883
    return BrokerAddress(scheme, parts.hostname, port or default)


@dataclass(frozen=True)
class Topics:
    prefix: str

    @classmethod
    def for_device(cls, device_id: str, prefix: str | None = None) -> "Topics":
        _check_topic_level(device_id, "agent.device_id")
        prefix = (prefix or f"edge-agent/{device_id}").rstrip("/")
        if not prefix or "+" in prefix or "#" in prefix:
            raise ConfigError(f"mqtt.prefix: {prefix!r} must be a topic without wildcards")
        return cls(prefix)

    def detections(self, camera_id: str) -> str:
        return f"{self.prefix}/{camera_id}/detections"

    def counts(self, camera_id: str) -> str:
        return f"{self.prefix}/{camera_id}/counts"

    def snapshot(self, camera_id: str) -> str:
        return f"{self.prefix}/{camera_id}/snapshot"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def stats(self) -> str:
        return f"{self.prefix}/stats"


def _check_topic_level(value: str, key: str) -> None:
    if not value or any(c in value for c in "/+#\0"):
        raise ConfigError(f"{key}: {value!r} must be non-empty and contain no '/', '+', '#'")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_bytes(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def counts_message(result: FrameResult, payload: dict) -> dict:
    keys = ("message_id", "device_id", "camera_id", "seq", "captured_at", "counts")
    return {k: payload[k] for k in keys}


class Publisher(Protocol):
    def start(self) -> None: ...
    def publish_result(self, result: FrameResult, snapshot: bytes | None = None) -> None: ...
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

    def publish_result(self, result: FrameResult, snapshot: bytes | None = None) -> None:
        out = self.stream or sys.stdout
        out.write(json.dumps(result.to_payload(self.device_id), separators=(",", ":"), ensure_ascii=False) + "\n")
        out.flush()

    def camera_state(self, camera_id: str, state: str) -> None:
        (log.warning if state != "ok" else log.info)("camera %s: %s", camera_id, state)

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

    def __init__(self, settings: MqttSettings, spool: Spool, device_id: str):
        self.settings = settings
        self.spool = spool
        self.device_id = device_id
        self.broker = parse_broker_url(settings.url)
        self.topics = Topics.for_device(device_id, settings.prefix)
        _check_settings(settings)
        self._lock = threading.Lock()  # guards the fields below; never held while calling paho
        self._wake = threading.Event()
        self._attempted = threading.Event()  # set after the first connection attempt, good or bad
        self._cameras: dict[str, str] = {}
        self._retained: dict[str, tuple[bytes, int]] = {}  # topic -> (payload, qos), latest only
        self._dirty: set[str] = set()
        self._retained_info: dict = {}  # topic -> paho MQTTMessageInfo of its last publish (sender thread)
        self._stats: bytes | None = None
        self._acked: set[int] = set()  # mids acknowledged since the sender last looked
        self._rejected: dict[int, str] = {}  # mid -> reason, PUBACKs with an error reason code (MQTT 5)
        self._hello_due = False
        self._stopping = False
        self._outage_logged = False
        self._ever_connected = False
        self._last_connect_error: str | None = None
        # sender-thread state
        self._inflight: list[_InFlight] = []
        self._cursor = 0
        self._next_expire = 0.0
        self._client = self._make_client()
        self._thread: threading.Thread | None = None

    # -- interface -------------------------------------------------------------------
    def start(self) -> None:
        self._set_status("online")
        log.info("MQTT: publishing to %s as %s under %s/ (MQTT %s, %d results spooled)",
                 self.broker, self.client_id, self.topics.prefix, self.settings.protocol, self.spool.depth())
        kw = {"clean_start": True} if self.settings.protocol == "5" else {}
        self._client.connect_async(self.broker.host, self.broker.port, self.settings.keepalive, **kw)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self._thread.start()

    def publish_result(self, result: FrameResult, snapshot: bytes | None = None) -> None:
        payload = result.to_payload(self.device_id)
        self.spool.append(self.topics.detections(result.camera_id), json_bytes(payload), self.settings.qos, False)
        self._put_retained(self.topics.counts(result.camera_id), json_bytes(counts_message(result, payload)))
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
        msg = {"device_id": self.device_id, "at": utc_now(), **stats,
               "spool_depth": self.spool.depth(), "spool_dropped": self.spool.dropped()}
        with self._lock:
            self._stats = json_bytes(msg)
        self._wake.set()

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
            client.username_pw_set(s.username, s.password or None)
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
        self._attempted.set()
        if reason_code.is_failure:
            hint = ""
            if reason_code.value in (4, 5, 0x86, 0x87):  # bad user name or password / not authorized
                hint = " (check mqtt.username and the password)"
            log.error("MQTT broker %s refused the connection: %s%s; retrying with backoff up to %gs",
                      self.broker, reason_code, hint, self.settings.reconnect_max)
            return
        limit = getattr(properties, "ReceiveMaximum", None)  # MQTT 5: the broker's in-flight limit
        if limit:
            client.max_inflight_messages_set(max(1, min(self.settings.inflight + PAHO_INFLIGHT_SLACK, limit)))
        with self._lock:
            self._hello_due = True
            self._outage_logged = False
            again = self._ever_connected
            self._ever_connected = True
        log.info("MQTT: %s to %s; %d results spooled", "reconnected" if again else "connected", self.broker,
                 self.spool.depth())
        self._wake.set()

    def _on_connect_fail(self, client, userdata):
        self._attempted.set()
        err = client.last_connect_error or "connection failed"
        with self._lock:
            first = not self._outage_logged
            self._outage_logged = True
        (log.warning if first else log.debug)(
            "MQTT broker %s unreachable (%s); results stay in the spool (%d); retrying with backoff up to %gs",
            self.broker, err, self.spool.depth(), self.settings.reconnect_max)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._lock:
            stopping = self._stopping
            self._outage_logged = True
        if not stopping and self._ever_connected:
            log.warning("MQTT connection to %s lost (%s); spooling results and reconnecting", self.broker, reason_code)

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
        if time.monotonic() >= self._next_expire:  # the age bound also applies while offline
            self._next_expire = time.monotonic() + 60.0
            self.spool.expire()
        if not self._client.is_connected():
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
                log.error("MQTT broker %s rejected spooled message %d: %s; dropped", self.broker, m.spool_id, reason)
                self.spool.count_dropped(1)
            self.spool.delete(m.spool_id)

    def _pump(self) -> None:
        room = self.settings.inflight - len(self._inflight)
        if room <= 0:
            return
        ok = (0, 4)  # MQTT_ERR_SUCCESS, MQTT_ERR_NO_CONN (paho queues it and sends it on reconnect)
        for e in self.spool.after(self._cursor, room):
            info = self._client.publish(e.topic, e.payload, e.qos, e.retain)
            if info.rc not in ok:
                log.warning("MQTT: paho did not take spooled message %d (rc %s); will retry", e.id, info.rc)
                return
            self._inflight.append(_InFlight(e.id, info))
            self._cursor = e.id

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
        return json_bytes(msg)


@functools.lru_cache(maxsize=1)
def _client_class():
    """A paho Client that remembers why the last connection attempt failed (paho's
    on_connect_fail does not say; the reason goes into the log line)."""
    mqtt = _paho()

    class ClientWithErrors(mqtt.Client):
        last_connect_error: str | None = None

        def _create_socket(self):
            try:
                sock = super()._create_socket()
            except OSError as e:
                self.last_connect_error = _describe_os_error(e)
                raise
            self.last_connect_error = None
            return sock

    return ClientWithErrors


def _describe_os_error(e: OSError) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate check failed: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    return e.strerror or e.__class__.__name__


def _check_settings(s: MqttSettings) -> None:
    if s.protocol not in PROTOCOLS:
        raise ConfigError(f"mqtt.protocol: {s.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if s.qos not in (0, 1):
        raise ConfigError(f"mqtt.qos: {s.qos!r} must be 0 or 1")
    if not 0 < s.reconnect_min <= s.reconnect_max:
        raise ConfigError(f"mqtt.reconnect_min/reconnect_max: need 0 < min <= max, got {s.reconnect_min}, {s.reconnect_max}")
    if s.inflight < 1:
        raise ConfigError(f"mqtt.inflight: must be >= 1, got {s.inflight}")
    if s.keepalive < 5:
        raise ConfigError(f"mqtt.keepalive: must be >= 5 seconds, got {s.keepalive}")
    if s.password and not s.username:
        raise ConfigError("mqtt.username: a password is set but no username")
    if (s.tls_ca or s.tls_cert or s.tls_key) and not parse_broker_url(s.url).tls:
        raise ConfigError(f"mqtt.url: TLS files are set but {s.url!r} is not mqtts://")
    if bool(s.tls_cert) != bool(s.tls_key):
        raise ConfigError("mqtt.tls_cert/mqtt.tls_key: a client certificate needs both")
    for key in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(s, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"mqtt.{key}: {path}: no such file")


def _set_tls(client, s: MqttSettings) -> None:
    try:
        client.tls_set(ca_certs=s.tls_ca or None, certfile=s.tls_cert or None, keyfile=s.tls_key or None,
                       cert_reqs=ssl.CERT_REQUIRED)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise ConfigError(f"mqtt.tls_ca/tls_cert/tls_key: cannot load {s.tls_ca or ''} {s.tls_cert or ''}: {e}") from None
    if s.tls_insecure:
        client.tls_insecure_set(True)


def open_publisher(mqtt: MqttSettings | None, device_id: str, state_dir, spool_max_mb: float = 100.0,
                   spool_max_age_hours: float = 168.0) -> "Publisher":
    """The publisher the agent runs with: MQTT when a broker URL is configured, else stdout."""
    if mqtt is None or not mqtt.url:
        return StdoutPublisher(device_id)
    spool = Spool.in_state_dir(state_dir, max_mb=spool_max_mb, max_age_hours=spool_max_age_hours)
    return MqttPublisher(mqtt, spool, device_id)


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
