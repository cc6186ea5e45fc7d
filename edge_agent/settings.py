"""All of edge-agent's configuration, typed, in one place.

Layers, later ones win:

1. the TOML file (`config/edge-agent.toml` documents every key);
2. environment variables `EDGE_AGENT_<SECTION>_<KEY>` (e.g. `EDGE_AGENT_AGENT_INTERVAL=5`,
   `EDGE_AGENT_MQTT_BROKER=mqtts://broker:8883`);
3. command-line flags (passed in as `overrides`).

Everything is checked at load: an unknown key, a wrong type or a bad value raises
`ConfigError` with one line naming the file (or variable, or flag), the key and the value.

Secrets (`mqtt.password`) are `Secret` objects whose repr is masked.  The password never
comes from argv; it is read, in rising precedence, from `mqtt.password`,
`mqtt.password_file`, the systemd credential `$CREDENTIALS_DIRECTORY/mqtt_password`, and
the environment variable `EDGE_AGENT_MQTT_PASSWORD`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from edge_agent.errors import ConfigError

ENV_PREFIX = "EDGE_AGENT_"
LOG_LEVELS = ("debug", "info", "warning", "error")
VARIANTS = ("", "_fp16", "_int8", "_uint8", "_quantized", "_q4", "_q4f16")
BROKER_SCHEMES = {"mqtt": 1883, "mqtts": 8883, "tcp": 1883, "ssl": 8883}


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__


# ---------------------------------------------------------------- sections


@dataclass(frozen=True)
class AgentSettings:
    device_id: str = ""  # "" -> this machine's hostname
    state_dir: str = ""  # "" -> $STATE_DIRECTORY (systemd) or ~/.local/state/edge-agent
    interval: float = 10.0  # seconds between processed frames, per camera
    log_level: str = "info"


@dataclass(frozen=True)
class CameraSettings:
    id: str = ""  # "" -> cam<N> for a device, the file stem for a file
    source: str = "0"  # device index, video file, rtsp/http URL, image directory or glob
    loop: bool = False  # video file / image set: start again at the end instead of stopping
    width: int = 0  # ask a device for this capture size (0: driver default)
    height: int = 0
    retry_max: float = 60.0  # cap of the reconnect backoff, seconds


@dataclass(frozen=True)
class ModelSettings:
    dir: str = ""  # onnx-community Florence-2 layout; "" without a config file -> the bundled tiny demo model
    variant: str = "_int8"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 0  # ONNX Runtime intra-op threads, 0: its default
    tasks: tuple[str, ...] = ("od", "ocr")
    num_beams: int = 0  # 0: as generation_config.json says
    max_new_tokens: int = 1024
    decode_batch: int = 0  # sequences decoded together (bounds KV-cache memory), 0: see kv_cache_mb
    kv_cache_mb: int = 256  # with decode_batch 0: worst-case KV-cache size per decode call; 0: no bound


@dataclass(frozen=True)
class TilingSettings:
    enabled: bool = True  # false: one pass over the whole frame (--no-tiling)
    options: Any = None  # tiling.runner.TilingOptions; its fields are the other [tiling] keys


@dataclass(frozen=True)
class MqttConfig:
    broker: str = ""  # mqtt://host[:port] or mqtts://host[:port]; "" -> JSON lines on stdout
    prefix: str = ""  # "" -> edge-agent/<device_id>
    protocol: str = "3.1.1"  # "3.1.1" or "5"
    client_id: str = ""  # "" -> edge-agent-<device_id>
    keepalive: int = 60
    ca_file: str = ""  # TLS: CA bundle (mqtts:// without it uses the system CAs)
    cert_file: str = ""  # TLS client certificate (optional)
    key_file: str = ""
    tls_insecure: bool = False  # skip host name check (testing only)
    username: str = ""
    password: Secret = Secret("")
    password_file: str = ""
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0

    @property
    def enabled(self) -> bool:
        return bool(self.broker)


@dataclass(frozen=True)
class SpoolSettings:
    max_mb: float = 100.0
    max_age_hours: float = 168.0


@dataclass(frozen=True)
class SnapshotSettings:
    enabled: bool = False
    max_bytes: int = 200_000
    interval: float = 60.0  # seconds between snapshots per camera; 0: every frame


@dataclass(frozen=True)
class GatingSettings:
    threshold: float = 6.0  # grey levels (0-255) a tile's block mean must move to be run again; 0: off
    downscale: int = 32  # signature grid: at most downscale x downscale blocks per tile
    max_age_s: float = 600.0  # re-run an unchanged tile after this many seconds; 0: never


@dataclass(frozen=True)
class StatsSettings:
    interval: float = 60.0  # seconds between stats messages; 0: off


@dataclass(frozen=True)
class Settings:
    agent: AgentSettings = field(default_factory=AgentSettings)
    cameras: tuple[CameraSettings, ...] = ()
    model: ModelSettings = field(default_factory=ModelSettings)
    tiling: TilingSettings = field(default_factory=TilingSettings)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    snapshot: SnapshotSettings = field(default_factory=SnapshotSettings)
    gating: GatingSettings = field(default_factory=GatingSettings)
    stats: StatsSettings = field(default_factory=StatsSettings)
    path: str = ""  # the config file read, "" for none
    password_origin: str = ""  # where the MQTT password came from (never the value)

    @property
    def state_dir(self) -> Path:
        return Path(self.agent.state_dir)


SECTIONS: dict[str, type] = {
    "agent": AgentSettings,
    "camera": CameraSettings,
    "model": ModelSettings,
    "tiling": TilingSettings,
    "mqtt": MqttConfig,
    "spool": SpoolSettings,
    "snapshot": SnapshotSettings,
    "gating": GatingSettings,
    "stats": StatsSettings,
}
SECRET_KEYS = {("mqtt", "password")}


def tiling_options_class():
    from tiling.runner import TilingOptions

    return TilingOptions


# ---------------------------------------------------------------- value checks


def _positive(v):
    return None if v > 0 else "must be > 0"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _one_of(choices):
    def check(v):
        return None if v in choices else f"must be one of {', '.join(map(repr, choices))}"

    return check


def _subset_of(choices):
    def check(v):
        bad = [x for x in v if x not in choices]
        if bad or not v:
            return f"must be a non-empty list of {', '.join(map(repr, choices))}"
        return None

    return check


def _broker(v):
    if not v:
        return None
    u = urlsplit(v)
    if u.scheme not in BROKER_SCHEMES or not u.hostname:
        return "must look like mqtt://host[:port] or mqtts://host[:port]"
    try:
        u.port
    except ValueError:
        return "has a bad port"
    return None


CHECKS: dict[tuple[str, str], Callable[[Any], str | None]] = {
    ("agent", "interval"): _non_negative,
    ("agent", "log_level"): _one_of(LOG_LEVELS),
    ("camera", "width"): _non_negative,
    ("camera", "height"): _non_negative,
    ("camera", "retry_max"): _positive,
    ("model", "variant"): _one_of(VARIANTS),
    ("model", "threads"): _non_negative,
    ("model", "tasks"): _subset_of(("od", "ocr")),
    ("model", "num_beams"): _non_negative,
    ("model", "max_new_tokens"): _positive,
    ("model", "decode_batch"): _non_negative,
    ("model", "kv_cache_mb"): _non_negative,
    ("mqtt", "broker"): _broker,
    ("mqtt", "protocol"): _one_of(("3.1.1", "5")),
    ("mqtt", "keepalive"): _positive,
    ("mqtt", "reconnect_min"): _positive,
    ("mqtt", "reconnect_max"): _positive,
    ("spool", "max_mb"): _positive,
    ("spool", "max_age_hours"): _positive,
    ("snapshot", "max_bytes"): lambda v: None if v >= 1000 else "must be >= 1000",
    ("snapshot", "interval"): _non_negative,
    ("stats", "interval"): _non_negative,
    ("gating", "threshold"): _non_negative,
    ("gating", "downscale"): _positive,
    ("gating", "max_age_s"): _non_negative,
    ("tiling", "tile_size"): _positive,
}


# ---------------------------------------------------------------- schema helpers


def _section_fields(section: str) -> dict[str, Any]:
    """key -> type for one section, the tiling section taken from TilingOptions."""
    if section == "tiling":
        cls = tiling_options_class()
        types = {"enabled": bool}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            types[f.name] = hints[f.name]
        return types
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _section_defaults(section: str) -> dict[str, Any]:
    if section == "tiling":
        opts = tiling_options_class()()
        return {"enabled": True, **{f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}}
    return {f.name: getattr(SECTIONS[section](), f.name) for f in dataclasses.fields(SECTIONS[section])}


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        return "a list of " + _type_name(typing.get_args(tp)[0]) + "s"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return {bool: "boolean", int: "integer", float: "number", str: "string", Secret: "string"}.get(tp, str(tp))


class _BadType(ValueError):
    pass


def _coerce(tp, value, from_text: bool):
    """Convert a TOML/flag value (or an env string when from_text) to type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (from_text and value.strip().lower() in ("", "none")):
            return None
        for a in args:
            try:
                return _coerce(a, value, from_text)
            except _BadType:
                continue
        raise _BadType(f"expected {_type_name(tp)}")
    if origin in (tuple, list):
        item = typing.get_args(tp)[0]
        if from_text:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise _BadType(f"expected {_type_name(tp)}")
        return tuple(_coerce(item, v, from_text) for v in value)
    if tp is bool:
        if from_text:
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        elif isinstance(value, bool):
            return value
        raise _BadType("expected a boolean (true/false)")
    if tp is int:
        if from_text:
            try:
                return int(value.strip())
            except ValueError:
                raise _BadType("expected an integer") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _BadType("expected an integer")
    if tp is float:
        if from_text:
            try:
                number = float(value.strip())
            except ValueError:
                raise _BadType("expected a number") from None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            raise _BadType("expected a number")
        if not math.isfinite(number):  # TOML inf/nan, "1e400": no setting means "forever" this way
            raise _BadType("expected a finite number")
        return number
    if tp is Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return Secret(value)
        raise _BadType("expected a string")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _BadType("expected a string")
    raise _BadType(f"unsupported type {tp}")


def _shown(section: str, key: str, value) -> str:
    if (section, key) in SECRET_KEYS:
        return "'********'"
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value) if isinstance(value, (bool, int, float, list, tuple)) else repr(value)


@dataclass(frozen=True)
class _Origin:
    """Where a value came from, for error messages."""

    kind: str  # "file", "env", "flag"
    name: str = ""  # file path

    def where(self, section: str, key: str, index: int | None = None) -> str:
        if self.kind == "env":
            return f"environment variable {ENV_PREFIX}{section.upper()}_{key.upper()}"
        if self.kind == "flag":
            return f"command line: {section}.{key}"
        sec = f"[{section}]" if index is None else f"[[cameras]] #{index + 1}"
        return f"{self.name}: {sec} {key}"


def _set(table: dict, section: str, key: str, value, origin: _Origin, from_text=False, index=None):
    """Validate one value into `table` (section dict)."""
    fields = _section_fields(section)
    if key not in fields:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{origin.where(section, key, index)}: unknown key (known: {known})")
    if section == "camera" and key == "source" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # source = 0 in TOML means device 0
    try:
        v = _coerce(fields[key], value, from_text)
    except _BadType as e:
        raise ConfigError(f"{origin.where(section, key, index)} = {_shown(section, key, value)}: {e}") from None
    check = CHECKS.get((section, key))
    why = check(v) if check and v is not None else None
    if why:
        raise ConfigError(f"{origin.where(section, key, index)} = {_shown(section, key, v)}: {why}")
    table[key] = v


# ---------------------------------------------------------------- loading


def _read_toml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def _layer_file(path: Path) -> tuple[dict, list[dict]]:
    """-> (sections, cameras) validated from a TOML file."""
    data = _read_toml(path)
    origin = _Origin("file", str(path))
    sections: dict[str, dict] = {}
    cameras: list[dict] = []
    if "camera" in data and "cameras" in data:
        raise ConfigError(f"{path}: use either [camera] or [[cameras]], not both")
    for name, body in data.items():
        if name == "cameras":
            if not isinstance(body, list) or not all(isinstance(b, dict) for b in body):
                raise ConfigError(f"{path}: cameras must be an array of tables ([[cameras]])")
            for i, cam in enumerate(body):
                table: dict = {}
                for k, v in cam.items():
                    _set(table, "camera", k, v, origin, index=i)
                cameras.append(table)
            continue
        if name not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{name}] (known: {', '.join(sorted(SECTIONS))}, cameras)")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {name} must be a table ([{name}]), got {body!r}")
        table = {}
        for k, v in body.items():
            _set(table, name, k, v, origin)
        if name == "camera":
            cameras.append(table)
        else:
            sections[name] = table
    return sections, cameras


def _layer_env(env: Mapping[str, str], sections: dict, cameras: list[dict]) -> None:
    origin = _Origin("env")
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in (ENV_PREFIX + "CONFIG", ENV_PREFIX + "MQTT_PASSWORD"):
            continue  # the password is resolved with its other sources in _resolve_password
        rest = var[len(ENV_PREFIX):].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            continue  # not a settings variable (other tools may share the prefix)
        key = rest[len(section) + 1:]
        if section == "camera":
            if len(cameras) > 1:
                raise ConfigError(f"environment variable {var}: applies to one camera, the config has {len(cameras)} [[cameras]]")
            if not cameras:
                cameras.append({})
            _set(cameras[0], "camera", key, env[var], origin, from_text=True)
        else:
            _set(sections.setdefault(section, {}), section, key, env[var], origin, from_text=True)


def _layer_flags(overrides: Mapping[str, Mapping[str, Any]], sections: dict, cameras: list[dict]) -> None:
    origin = _Origin("flag")
    for section, values in overrides.items():
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            continue
        if section == "camera":
            if "source" in values:  # --camera/--source replaces the configured cameras
                cameras[:] = [{}]
            elif not cameras:
                cameras.append({})
            elif len(cameras) > 1:
                raise ConfigError(f"command line: {', '.join(values)} needs --camera or --source with several [[cameras]] configured")
            for k, v in values.items():
                _set(cameras[0], "camera", k, v, origin)
            continue
        if (section, "password") in SECRET_KEYS and "password" in values:
            raise ConfigError("command line: the MQTT password is never taken from argv; use password_file, EDGE_AGENT_MQTT_PASSWORD or a systemd credential")
        for k, v in values.items():
            _set(sections.setdefault(section, {}), section, k, v, origin)


def default_state_dir(env: Mapping[str, str]) -> str:
    if env.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return env["STATE_DIRECTORY"].split(":")[0]
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "edge-agent")


def _resolve_password(mqtt: dict, env: Mapping[str, str], path: str) -> tuple[Secret, str]:
    """-> (password, origin).  Rising precedence: config value, password_file, systemd
    credential, environment."""
    if env.get(ENV_PREFIX + "MQTT_PASSWORD"):
        return Secret(env[ENV_PREFIX + "MQTT_PASSWORD"]), f"environment variable {ENV_PREFIX}MQTT_PASSWORD"
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    # An empty credential is "none": `edge-agent service install` creates the file empty
    # because LoadCredential= fails the start when it is missing.
    if cred_dir and (Path(cred_dir) / "mqtt_password").is_file() and (Path(cred_dir) / "mqtt_password").stat().st_size:
        p = Path(cred_dir) / "mqtt_password"
        return Secret(_read_secret_file(p, "systemd credential")), f"systemd credential {p}"
    if mqtt.get("password_file"):
        p = Path(mqtt["password_file"]).expanduser()
        if not p.is_absolute() and path:
            p = Path(path).parent / p
        return Secret(_read_secret_file(p, "[mqtt] password_file")), f"password_file {p}"
    pw = mqtt.get("password", Secret(""))
    return pw, ("config file" if pw else "")


def _read_secret_file(p: Path, what: str) -> str:
    try:
        return p.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as e:
        raise ConfigError(f"{what} {p}: cannot read: {e.strerror or e}") from None


def _camera_id(cam: dict, index: int) -> str:
    if cam.get("id"):
        return cam["id"]
    src = cam.get("source", CameraSettings.source)
    if src.strip().isdigit():
        return f"cam{int(src)}"
    if "://" in src:
        return f"cam{index}"
    stem = Path(src.rstrip("/")).stem.replace("*", "").strip("._-")
    return stem or f"cam{index}"


def _build(sections: dict, cameras: list[dict], env: Mapping[str, str], path: str) -> Settings:
    agent = dict(sections.get("agent", {}))
    agent.setdefault("device_id", "")
    agent["device_id"] = agent["device_id"] or socket.gethostname()
    agent["state_dir"] = str(Path(agent.get("state_dir") or default_state_dir(env)).expanduser())
    cams = []
    for i, cam in enumerate(cameras or [{}]):
        cams.append(CameraSettings(**{**cam, "id": _camera_id(cam, i)}))
    ids = [c.id for c in cams]
    if len(set(ids)) != len(ids):
        where = path or "configuration"
        raise ConfigError(f"{where}: camera ids must be unique, got {ids}")
    tiling = dict(sections.get("tiling", {}))
    enabled = tiling.pop("enabled", True)
    opts = tiling_options_class()(**tiling)
    mqtt = dict(sections.get("mqtt", {}))
    password, pw_origin = _resolve_password(mqtt, env, path)
    mqtt["password"] = password
    return Settings(
        agent=AgentSettings(**agent),
        cameras=tuple(cams),
        model=ModelSettings(**sections.get("model", {})),
        tiling=TilingSettings(enabled=enabled, options=opts),
        mqtt=MqttConfig(**mqtt),
        spool=SpoolSettings(**sections.get("spool", {})),
        snapshot=SnapshotSettings(**sections.get("snapshot", {})),
        gating=GatingSettings(**sections.get("gating", {})),
        stats=StatsSettings(**sections.get("stats", {})),
        path=path,
        password_origin=pw_origin,
    )


def config_path(explicit: str | os.PathLike | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file to read: --config, else $EDGE_AGENT_CONFIG, else
    $CONFIGURATION_DIRECTORY/edge-agent.toml (systemd ConfigurationDirectory=) if present."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get(ENV_PREFIX + "CONFIG"):
        return Path(env[ENV_PREFIX + "CONFIG"])
    if env.get("CONFIGURATION_DIRECTORY"):
        p = Path(env["CONFIGURATION_DIRECTORY"].split(":")[0]) / "edge-agent.toml"
        if p.is_file():
            return p
    return None


def load_settings(
    path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """TOML file (optional) -> environment -> flag overrides -> validated Settings.

    `overrides` maps section -> key -> value (None values are ignored); the special
    section "camera" with a "source" replaces the configured cameras by one."""
    env = os.environ if env is None else env
    sections: dict[str, dict] = {}
    cameras: list[dict] = []
    if path:
        sections, cameras = _layer_file(Path(path))
    _layer_env(env, sections, cameras)
    _layer_flags(overrides or {}, sections, cameras)
    try:
        return _build(sections, cameras, env, str(path or ""))
    except (TypeError, ValueError) as e:  # a TilingOptions/dataclass check of its own
        raise ConfigError(f"{path or 'configuration'}: {e}") from None


# ---------------------------------------------------------------- showing


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        return '""'
    return json.dumps(str(v), ensure_ascii=False)


def _table_lines(section: str, values: dict, settings: Settings) -> list[str]:
    lines = []
    for k, v in values.items():
        if (section, k) in SECRET_KEYS:
            state = f"set, from {settings.password_origin}" if v else "not set"
            lines.append(f"# {k} = ********  ({state}; secrets are never shown)")
            continue
        if v is None:
            lines.append(f"# {k} = (none)")
            continue
        lines.append(f"{k} = {_toml_value(v)}")
    return lines


def settings_as_dict(s: Settings) -> dict[str, Any]:
    def plain(obj):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}

    opts = s.tiling.options
    tiling = {"enabled": s.tiling.enabled, **(plain(opts) if opts is not None else {})}
    return {
        "agent": plain(s.agent),
        "cameras": [plain(c) for c in s.cameras],
        "model": plain(s.model),
        "tiling": tiling,
        "mqtt": plain(s.mqtt),
        "spool": plain(s.spool),
        "snapshot": plain(s.snapshot),
        "gating": plain(s.gating),
        "stats": plain(s.stats),
    }


def to_toml(s: Settings) -> str:
    """The effective configuration as TOML, secrets masked (as comments, so the output can
    be saved and checked again without carrying a bogus password)."""
    d = settings_as_dict(s)
    out = [f"# effective edge-agent configuration (file: {s.path or 'none'}, then environment, then flags)"]
    for section, values in d.items():
        if section == "cameras":
            for cam in values:
                out += ["", "[[cameras]]"] + _table_lines("camera", cam, s)
            continue
        out += ["", f"[{section}]"] + _table_lines(section, values, s)
    return "\n".join(out) + "\n"
