"""Real MQTT brokers and subscribers for the tests.

`Broker` runs /usr/sbin/mosquitto (or `mosquitto` on PATH) on a free port, optionally with
TLS and a password file, and can be stopped and started again on the same port.  Where
mosquitto is absent (or EDGE_AGENT_TEST_BROKER=amqtt), the pure-Python amqtt broker
stands in (TLS and password files too; only tests that require client certificates skip).

Mosquitto runs with persistence on, so a subscriber with a persistent session (QoS 1,
clean_session=False) gets the messages that arrive while it reconnects after a broker
restart.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def mosquitto_path() -> str | None:
    if os.environ.get("EDGE_AGENT_TEST_BROKER", "").lower() == "amqtt":
        return None
    for cand in ("/usr/sbin/mosquitto", shutil.which("mosquitto")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def amqtt_path() -> str | None:
    here = Path(sys.executable).parent / "amqtt"
    return str(here) if here.exists() else shutil.which("amqtt")


def broker_kind() -> str:
    return "mosquitto" if mosquitto_path() else "amqtt"


def describe_broker() -> str:
    m = mosquitto_path()
    if m:
        out = subprocess.run([m, "-h"], capture_output=True, text=True).stdout.splitlines()
        return f"mosquitto ({m}, {out[0] if out else 'version unknown'})"
    return f"amqtt (pure Python, {amqtt_path()}): mosquitto not found or EDGE_AGENT_TEST_BROKER=amqtt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, up: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not go {'up' if up else 'down'} within {timeout}s")


# -- TLS and passwords -----------------------------------------------------------------
@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_test_ca(directory: Path) -> TlsFiles:
    """A throwaway CA, a server cert for 127.0.0.1/localhost and a client cert, via openssl."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=edge-agent test CA")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "localhost"), ("client", "edge-agent test client")):
        ossl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


def write_password_file(path: Path, users: dict[str, str]) -> Path:
    """Mosquitto `$6$` (salted SHA-512) password file, written without putting secrets in argv."""
    lines = []
    for user, password in users.items():
        salt = secrets.token_bytes(12)
        digest = hashlib.sha512(password.encode() + salt).digest()
        lines.append(f"{user}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


# -- the broker ------------------------------------------------------------------------
class Broker:
    def __init__(self, workdir: Path, tls: TlsFiles | None = None, users: dict[str, str] | None = None,
                 require_client_cert: bool = False, acl: str | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kind = broker_kind()
        self.tls = tls
        self.users = users
        self.require_client_cert = require_client_cert
        self.acl = acl  # mosquitto acl_file text
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "broker.log"
        if self.kind == "amqtt" and (require_client_cert or acl):
            import pytest

            pytest.skip("client-certificate or ACL broker tests need mosquitto (amqtt: CERT_OPTIONAL, no acl_file)")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> "Broker":
        assert self.proc is None, "broker already running"
        if self.kind == "mosquitto":
            cmd = [mosquitto_path(), "-c", str(self._mosquitto_conf())]
        else:
            cmd = [amqtt_path(), "-c", str(self._amqtt_conf())]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        try:
            wait_port(self.port, timeout=15)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.kind} did not start on port {self.port}:\n{self.log.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        wait_port(self.port, timeout=10, up=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _mosquitto_conf(self) -> Path:
        # max_queued_messages 0: no per-client queue limit.  Mosquitto's default (1000) drops
        # QoS 1 messages for a subscriber that falls that far behind ("Outgoing messages are
        # being dropped for client ..."): a test subscriber slowed by a busy machine can be,
        # and the agent's messages would then go missing between the broker and the test.
        lines = [f"listener {self.port} 127.0.0.1", "persistence true",
                 f"persistence_location {self.workdir}/", "log_dest stdout", "log_type all",
                 "max_queued_messages 0", f"allow_anonymous {'false' if self.users else 'true'}"]
        if os.geteuid() == 0:  # mosquitto would switch to user "mosquitto", who cannot read pytest's tmp dirs
            lines.append("user root")
        if self.users:
            lines.append(f"password_file {write_password_file(self.workdir / 'passwd', self.users)}")
        if self.acl:
            (self.workdir / "acl").write_text(self.acl)
            lines.append(f"acl_file {self.workdir / 'acl'}")
        if self.tls:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.server_cert}", f"keyfile {self.tls.server_key}",
                      f"require_certificate {'true' if self.require_client_cert else 'false'}"]
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def _amqtt_conf(self) -> Path:
        listener = [f"    type: tcp", f"    bind: 127.0.0.1:{self.port}"]
        if self.tls:
            listener += ["    ssl: true", f"    certfile: {self.tls.server_cert}", f"    keyfile: {self.tls.server_key}",
                         f"    cafile: {self.tls.ca}"]
        if self.users:
            auth = ["  amqtt.plugins.authentication.FileAuthPlugin:",
                    f"    password_file: {self._amqtt_password_file()}"]
        else:
            auth = ["  amqtt.plugins.authentication.AnonymousAuthPlugin:", "    allow_anonymous: true"]
        conf = self.workdir / "amqtt.yaml"
        conf.write_text("\n".join(["listeners:", "  default:", *listener, "plugins:", *auth]) + "\n")
        return conf

    def _amqtt_password_file(self) -> Path:
        try:
            from pwdlib import PasswordHash
            from pwdlib.hashers.argon2 import Argon2Hasher

            hasher = PasswordHash((Argon2Hasher(),))
        except ImportError as e:  # pwdlib comes with amqtt; its argon2 backend (argon2-cffi) may not
            import pytest

            pytest.skip(f"amqtt password file needs argon2-cffi ({e}); or install mosquitto")
        path = self.workdir / "amqtt-passwd"
        path.write_text("".join(f"{u}:{hasher.hash(p)}\n" for u, p in self.users.items()))
        path.chmod(0o600)
        return path


# -- a real subscriber -----------------------------------------------------------------
@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self):
        return json.loads(self.payload)


class Subscriber:
    """A paho subscriber on `topic` with a persistent session (QoS 1) that reconnects quickly.
    `messages` holds everything received, in order of arrival."""

    def __init__(self, broker: Broker, topic: str, client_id: str | None = None, protocol: str = "3.1.1",
                 username: str | None = None, password: str | None = None, client_cert: bool = False):
        self.broker, self.topic = broker, topic
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        v5 = protocol == "5"
        cid = client_id or f"test-sub-{secrets.token_hex(4)}"
        kw = {} if v5 else {"clean_session": False}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, **kw)
        if username:
            self.client.username_pw_set(username, password)
        if broker.tls:
            cert = (str(broker.tls.client_cert), str(broker.tls.client_key)) if client_cert else (None, None)
            self.client.tls_set(ca_certs=str(broker.tls.ca), certfile=cert[0], keyfile=cert[1])
        self.client.reconnect_delay_set(0.05, 0.2)  # back before the publisher (amqtt keeps no sessions)
        self.connects = 0
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.connected = threading.Event()
        self._v5 = v5

    def start(self, timeout: float = 10.0) -> "Subscriber":
        kw = {"clean_start": False, "properties": _session_expiry()} if self._v5 else {}
        self.client.connect_async("127.0.0.1", self.broker.port, 30, **kw)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError(f"subscriber did not connect to {self.broker.url}")
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            return
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:  # connected means subscribed (SUBACK), so nothing published after is missed
            self.connects += 1
            self._cond.notify_all()
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "messages"):
        """Until `predicate(messages)` holds.  The predicate runs on a copy, outside the lock:
        paho's network thread (`_on_message`) never waits for it, so a slow predicate does
        not hold the subscriber back."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                msgs = list(self.messages)
            if predicate(msgs):
                return msgs
            with self._cond:
                left = deadline - time.monotonic()
                if left <= 0:
                    topics = [m.topic for m in self.messages][-20:]
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; got {len(self.messages)}: {topics}")
                if len(self.messages) == len(msgs):
                    self._cond.wait(min(left, 0.5))

    def wait_connects(self, n: int, timeout: float = 30.0) -> None:
        """Wait until the subscriber has (re)connected n times in all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.connects < n:
                if time.monotonic() > deadline:
                    raise AssertionError(f"subscriber did not reconnect to {self.broker.url}")
                self._cond.wait(0.2)

    def on(self, suffix: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _session_expiry():
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 3600
    return p


def count_topic(suffix: str):
    """Predicate factory: at least n messages on topics ending with `suffix`."""

    def at_least(n: int):
        return lambda msgs: sum(m.topic.endswith(suffix) for m in msgs) >= n

    return at_least


# -- the driver process ----------------------------------------------------------------
class DriverProc:
    """tests/pub_driver.py in a real subprocess, talking over stdin/stdout."""

    def __init__(self, workdir: Path, *args: str, password: str | None = None):
        import queue

        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.args = [str(a) for a in args]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        env.pop("EDGE_AGENT_MQTT_PASSWORD", None)
        if password is not None:
            env["EDGE_AGENT_MQTT_PASSWORD"] = password
        self.stderr_path = self.workdir / f"driver-{secrets.token_hex(3)}.err"
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "pub_driver.py"), *self.args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                     text=True, env=env, cwd=self.workdir)
        self._lines: "queue.Queue[str | None]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def cmd(self, line: str, timeout: float = 60.0) -> str:
        import queue

        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        try:
            out = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"driver did not answer {line!r} within {timeout}s:\n{self.stderr()}") from None
        if out is None:
            raise AssertionError(f"driver exited ({self.proc.poll()}) on {line!r}:\n{self.stderr()}")
        return out

    def close(self, timeout: float = 30.0) -> int:
        assert self.cmd("close") == "closed"
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.stderr_path.read_text(errors="replace")

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._err.close()
