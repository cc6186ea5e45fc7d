"""edge-agent's configuration: one generic loader over the components' options classes.

Each component owns a frozen options dataclass next to its code, which checks itself in
`__post_init__` with plain `ValueError("key: why")`.  `Settings` lists them; its fields
are the config sections (a `tuple[Options, ...]` field is an array of tables, `[[cameras]]`,
also written as one `[camera]` table).  Config keys are the options' field names.  Adding a
section = adding one field to `Settings` (and documenting its keys in config/edge-agent.toml).

Layers, later ones win:

1. the TOML file (`config/edge-agent.toml` documents every key);
2. environment variables `EDGE_AGENT_<SECTION>_<KEY>` (e.g. `EDGE_AGENT_AGENT_INTERVAL=5`,
   `EDGE_AGENT_MQTT_BROKER=mqtts://broker:8883`);
3. command-line flags (`FLAGS`: one table from click parameter to section and key).

Every value goes through one coercion by the field's type hint (`coerce`), then the
section's class checks it.  Any problem raises `ConfigError` with one line naming where
the value came from, the key as written, and the value:
"FILE: [section] key = value: why" (exit status 2).

Then one resolution of defaults (`load_settings` does it, so `config show` prints what
`run` uses): the device id (host name), the state directory, camera ids, the MQTT password
and the embedded demo (the bundled tiny model when no model dir is set, the bundled sample
video when no camera source is set).

Secrets (fields typed `Secret`, i.e. `mqtt.password`) never print.  The password never
comes from argv; it is read, in rising precedence, from `[mqtt] password`,
`[mqtt] password_file`, the systemd credential `$CREDENTIALS_DIRECTORY/mqtt_password`, and
the environment variable `EDGE_AGENT_MQTT_PASSWORD`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from edge_agent.agent import AgentOptions, SnapshotOptions, StatsOptions
from edge_agent.capture import CameraOptions, default_camera_id
from edge_agent.errors import ConfigError
from edge_agent.gating import GatingOptions
from edge_agent.homeassistant import HomeAssistantOptions
from edge_agent.model import ModelOptions
from edge_agent.prices import PriceOptions
from edge_agent.publish import MqttOptions
from edge_agent.redact import redact
from edge_agent.secret import Secret
from edge_agent.shelf import ShelfOptions
from edge_agent.spool import SpoolOptions
from edge_agent.zones import ZoneOptions
from edge_agent.tiling.runner import TilingOptions

ENV_PREFIX = "EDGE_AGENT_"
SINGULAR = {"cameras": "camera"}  # an array-of-tables section also accepts one table of this name
# (and environment variables and flags then set its one table); other array sections come from the file only


@dataclass(frozen=True)
class Settings:
    """Every section, in the order `config show` prints them."""

    agent: AgentOptions = field(default_factory=AgentOptions)
    cameras: tuple[CameraOptions, ...] = ()
    model: ModelOptions = field(default_factory=ModelOptions)
    tiling: TilingOptions = field(default_factory=TilingOptions)
    gating: GatingOptions = field(default_factory=GatingOptions)
    mqtt: MqttOptions = field(default_factory=MqttOptions)
    spool: SpoolOptions = field(default_factory=SpoolOptions)
    snapshot: SnapshotOptions = field(default_factory=SnapshotOptions)
    stats: StatsOptions = field(default_factory=StatsOptions)
    zones: tuple[ZoneOptions, ...] = ()  # [[zones]]
    shelf: ShelfOptions = field(default_factory=ShelfOptions)
    prices: PriceOptions = field(default_factory=PriceOptions)
    homeassistant: HomeAssistantOptions = field(default_factory=HomeAssistantOptions)
    # not sections: where things came from
    path: str = ""  # the config file read, "" for none
    password_origin: str = ""  # where the MQTT password came from (never the value)
    model_note: str = ""  # set when no model dir was configured: the demo model's note (embedded.NOTE)

    @property
    def state_dir(self) -> Path:
        return Path(self.agent.state_dir)


@dataclass(frozen=True)
class Section:
    name: str  # the Settings field: "agent", "cameras"
    cls: type  # its options class
    many: bool  # an array of tables

    @property
    def table(self) -> str:
        """The name a single table is written with ([camera] for cameras)."""
        return SINGULAR.get(self.name, self.name)

    def keys(self) -> dict[str, Any]:
        """key -> type hint, from the options class."""
        hints = typing.get_type_hints(self.cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(self.cls)}


def sections() -> dict[str, Section]:
    """Settings' fields that are options classes (or tuples of them), by field name."""
    out = {}
    hints = typing.get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        tp = hints[f.name]
        if typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            out[f.name] = Section(f.name, typing.get_args(tp)[0], True)
        elif dataclasses.is_dataclass(tp):
            out[f.name] = Section(f.name, tp, False)
    return out


SECTIONS = sections()
_BY_TABLE = {s.table: s for s in SECTIONS.values()} | SECTIONS


# ---------------------------------------------------------------- the one coercion


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        return "a list of " + _type_name(typing.get_args(tp)[0]) + "s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return {bool: "boolean", int: "integer", float: "number", str: "string", Secret: "string"}.get(tp, str(tp))


def coerce(tp, value, from_text: bool = False):
    """A TOML or flag value (or, from_text, an environment string) as type `tp`; ValueError
    saying what was expected otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp) and (value is None or (from_text and value.strip().lower() in ("", "none"))):
            return None
        for a in args:
            try:
                return coerce(a, value, from_text)
            except ValueError:
                continue
        raise ValueError(f"expected {_type_name(tp)}")
    if origin in (tuple, list):
        item = typing.get_args(tp)[0]
        if from_text:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError(f"expected {_type_name(tp)}")
        return tuple(coerce(item, v, from_text) for v in value)
    if tp is bool:
        if from_text:
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        elif isinstance(value, bool):
            return value
        raise ValueError("expected a boolean (true/false)")
    if tp is int:
        if from_text:
            try:
                return int(value.strip())
            except ValueError:
                raise ValueError("expected an integer") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError("expected an integer")
    if tp is float:
        if from_text:
            try:
                number = float(value.strip())
            except ValueError:
                raise ValueError("expected a number") from None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            raise ValueError("expected a number")
        if not math.isfinite(number):  # TOML inf/nan, "1e400": no setting means "forever" this way
            raise ValueError("expected a finite number")
        return number
    if tp is Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return Secret(value)
        raise ValueError("expected a string")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError("expected a string")
    raise ValueError(f"unsupported type {tp}")


def _shown(value, secret: bool = False) -> str:
    """A value for an error message: secrets masked, credentials in URLs masked, long ones cut."""
    if secret:
        return "'********'"
    if isinstance(value, Secret):
        return repr(value)
    if isinstance(value, str):
        value = redact(value)
        return repr(value) if len(value) <= 80 else repr(value[:60]) + f"... ({len(value)} characters)"
    return json.dumps(value) if isinstance(value, (bool, int, float, list, tuple)) else repr(value)


# ---------------------------------------------------------------- layers


@dataclass
class _Given:
    """One value as given: where (for messages), as written, and coerced."""

    where: str  # "FILE: [agent] interval", "environment variable EDGE_AGENT_AGENT_INTERVAL", "command line --interval"
    written: Any
    value: Any
    secret: bool = False

    def line(self, why: str) -> str:
        return f"{self.where} = {_shown(self.written, self.secret)}: {why}"


Table = dict  # key -> _Given


def _put(table: Table, section: Section, key: str, written, where: str, from_text: bool = False) -> None:
    keys = section.keys()
    if key not in keys:
        raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(keys))})")
    secret = keys[key] is Secret
    given = _Given(where, written, None, secret)
    try:
        given.value = coerce(keys[key], written, from_text)
    except ValueError as e:
        raise ConfigError(given.line(str(e))) from None
    table[key] = given


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


class _Layers:
    """The given values of every section: single sections as one table, array-of-tables
    sections as a list of tables (None: not configured at all)."""

    def __init__(self):
        self.single: dict[str, Table] = {n: {} for n, s in SECTIONS.items() if not s.many}
        self.many: dict[str, list[Table] | None] = {n: None for n, s in SECTIONS.items() if s.many}

    def file(self, path: Path) -> None:
        data = _read_toml(path)
        known = ", ".join(sorted({s.table for s in SECTIONS.values()} | {n for n, s in SECTIONS.items() if s.many}))
        for sec in SECTIONS.values():
            if sec.many and sec.name in data and sec.table in data and sec.table != sec.name:
                raise ConfigError(f"{path}: use either [{sec.table}] or [[{sec.name}]], not both")
        for name, body in data.items():
            sec = _BY_TABLE.get(name)
            if sec is None:
                raise ConfigError(f"{path}: unknown section [{name}] (known: {known})")
            if sec.many and name == sec.name:  # [[cameras]]
                if not isinstance(body, list) or not all(isinstance(b, dict) for b in body):
                    raise ConfigError(f"{path}: {name} must be an array of tables ([[{name}]])")
                tables = []
                for i, item in enumerate(body):
                    table: Table = {}
                    for k, v in item.items():
                        _put(table, sec, k, v, f"{path}: [[{name}]] #{i + 1} {k}")
                    tables.append(table)
                self.many[sec.name] = tables
                continue
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: {name} must be a table ([{name}]), got {body!r}")
            table = {}
            for k, v in body.items():
                _put(table, sec, k, v, f"{path}: [{name}] {k}")
            if sec.many:
                self.many[sec.name] = [table]
            else:
                self.single[sec.name] = table

    def _target(self, sec: Section, what: str) -> Table:
        """The table env/flag values of `sec` go into: its one table (made if none)."""
        if not sec.many:
            return self.single[sec.name]
        tables = self.many[sec.name]
        if tables is None:
            tables = self.many[sec.name] = [{}]
        if len(tables) > 1:
            raise ConfigError(f"{what}: applies to one of [[{sec.name}]], the config has {len(tables)}")
        return tables[0]

    def env(self, env: Mapping[str, str]) -> None:
        by_length = sorted(SECTIONS.values(), key=lambda s: -len(s.table))
        for var in sorted(env):
            if not var.startswith(ENV_PREFIX) or var in (ENV_PREFIX + "CONFIG", ENV_PREFIX + "MQTT_PASSWORD"):
                continue  # the password is resolved with its other sources in _resolve_password
            rest = var[len(ENV_PREFIX):].lower()
            sec = next((s for s in by_length if rest.startswith(s.table + "_")), None)
            if sec is None or (sec.many and sec.table == sec.name):
                continue  # not a settings variable (other tools may share the prefix), or [[zones]]
            key = rest[len(sec.table) + 1:]
            where = f"environment variable {var}"
            _put(self._target(sec, where), sec, key, env[var], where, from_text=True)

    def flags(self, given: list[tuple[str, str, str, Any]]) -> None:
        """[(flag, section, key, value)]; a flag for a source replaces an array section by one table."""
        for flag, name, key, value in sorted(given, key=lambda g: g[2] != "source"):
            sec = _BY_TABLE[name]
            where = f"command line {flag}"
            if sec.keys().get(key) is Secret:
                raise ConfigError(f"{where}: the MQTT password is never taken from argv; use password_file, "
                                  f"{ENV_PREFIX}MQTT_PASSWORD or a systemd credential")
            if sec.many and key == "source":
                # The flag names another camera than the file's, but EDGE_AGENT_CAMERA_* still
                # apply to it: the environment is stronger than the file, weaker than flags.
                old = self.many[sec.name] or []
                env_given = {k: g for k, g in old[0].items() if g.where.startswith("environment variable")} \
                    if len(old) == 1 else {}
                self.many[sec.name] = [env_given]
            if sec.many and len(self.many[sec.name] or ()) > 1:
                raise ConfigError(f"{where} needs --camera or --source with several [[{sec.name}]] configured")
            _put(self._target(sec, where), sec, key, value, where)


def _build(sec: Section, table: Table, where: str):
    """The options object from one table; its ValueError as one line naming the key."""
    try:
        return sec.cls(**{k: g.value for k, g in table.items()})
    except ValueError as e:
        raise ConfigError(_explain(sec, table, str(e), where)) from None


def _explain(sec: Section, table: Table, message: str, where: str) -> str:
    """'key: why' (or 'section.key: why') from an options class -> the line naming it."""
    head, sep, why = message.partition(": ")
    key = head.split(".")[-1]
    if sep and key in sec.keys():
        if key in table:
            return table[key].line(why)
        return f"{where} {key} = {_shown(_default(sec, key), sec.keys()[key] is Secret)} (default): {why}"
    return f"{where}: {message}"


def _default(sec: Section, key: str):
    f = next(f for f in dataclasses.fields(sec.cls) if f.name == key)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


# ---------------------------------------------------------------- defaults


def default_state_dir(env: Mapping[str, str]) -> str:
    if env.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return env["STATE_DIRECTORY"].split(":")[0]
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "edge-agent")


def _read_secret_file(p: Path, what: str) -> str:
    try:
        return p.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as e:
        raise ConfigError(f"{what} {p}: cannot read: {e.strerror or e}") from None


def _resolve_password(mqtt: Table, env: Mapping[str, str], path: str, read: bool = True) -> str:
    """Set mqtt's password from its sources; -> where it came from.  Rising precedence:
    config value, password_file, systemd credential, environment.  read=False: files are
    not read (a placeholder stands for their content), for `config check`."""
    def put(value: str, origin: str) -> str:
        mqtt["password"] = _Given(origin, value, Secret(value), True)
        return origin

    if env.get(ENV_PREFIX + "MQTT_PASSWORD"):
        return put(env[ENV_PREFIX + "MQTT_PASSWORD"], f"environment variable {ENV_PREFIX}MQTT_PASSWORD")
    cred = Path(env["CREDENTIALS_DIRECTORY"]) / "mqtt_password" if env.get("CREDENTIALS_DIRECTORY") else None
    # An empty credential is "none": `edge-agent service install` creates the file empty
    # because LoadCredential= fails the start when it is missing.
    if cred is not None and cred.is_file() and cred.stat().st_size:
        return put(_read_secret_file(cred, "systemd credential") if read else "(unread)", f"systemd credential {cred}")
    if "password_file" in mqtt and mqtt["password_file"].value:
        p = password_file_path(mqtt["password_file"].value, path)
        return put(_read_secret_file(p, "[mqtt] password_file") if read else "(unread)", f"password_file {p}")
    return "config file" if "password" in mqtt and mqtt["password"].value else ""


def password_file_path(value: str, config: str) -> Path:
    """password_file as read: relative paths are relative to the config file."""
    p = Path(value).expanduser()
    return Path(config).parent / p if not p.is_absolute() and config else p


def _check_zones(s: Settings, camera_ids: list[str]) -> None:
    """[[zones]] against the cameras: a name once per camera; a zone for a camera that is not
    configured (e.g. after --source) counts nothing, which is said once."""
    where = s.path or "configuration"
    for cam in camera_ids:
        names = [z.name for z in s.zones if z.applies_to(cam)]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice:
            raise ConfigError(f"{where}: [[zones]] name {twice!r}: defined twice for camera {cam!r}")
    for z in s.zones:
        if z.camera and z.camera not in camera_ids:
            logging.getLogger(__name__).warning("%s: [[zones]] %r is for camera %r, which is not configured (cameras: %s); "
                                                "it counts nothing", where, z.name, z.camera, ", ".join(camera_ids))


def _resolve_defaults(s: Settings, env: Mapping[str, str]) -> Settings:
    """The one resolution of what "" means: host name, state dir, camera ids, the demo."""
    from edge_agent import embedded

    agent = dataclasses.replace(s.agent, device_id=s.agent.device_id or socket.gethostname(),
                                state_dir=str(Path(s.agent.state_dir or default_state_dir(env)).expanduser()))
    cameras = []
    for i, cam in enumerate(s.cameras or (CameraOptions(),)):
        source = cam.source or str(embedded.sample_video())
        try:
            cameras.append(dataclasses.replace(cam, source=source, id=cam.id or default_camera_id(source, i)))
        except ValueError as e:  # an id made from a file name that cannot be a topic level
            raise ConfigError(f"{s.path or 'configuration'}: [camera] {e}; set [camera] id") from None
    ids = [c.id for c in cameras]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{s.path or 'configuration'}: [[cameras]] id: camera ids must be unique, got {ids}")
    _check_zones(s, ids)
    if s.model.dir:
        return dataclasses.replace(s, agent=agent, cameras=tuple(cameras))
    model = dataclasses.replace(s.model, dir=str(embedded.demo_model_dir()))
    return dataclasses.replace(s, agent=agent, cameras=tuple(cameras), model=model, model_note=embedded.NOTE)


# ---------------------------------------------------------------- loading


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
    read_secrets: bool = True,
) -> Settings:
    """TOML file (optional) -> environment -> overrides -> checked, defaults resolved.

    `overrides` maps section -> key -> value (None values are ignored), as flags give them;
    a "source" for an array section ([[cameras]]) replaces the configured ones by one.
    read_secrets=False (`config check`): password files are not read, only named."""
    given = [(f"{section}.{key}", section, key, v) for section, values in (overrides or {}).items()
             for key, v in values.items() if v is not None]
    return _load(path, os.environ if env is None else env, given, read_secrets)


def _load(path, env: Mapping[str, str], flags: list[tuple[str, str, str, Any]], read_secrets: bool = True) -> Settings:
    layers = _Layers()
    if path:
        layers.file(Path(path))
    layers.env(env)
    layers.flags(flags)
    where = f"{path}:" if path else "configuration:"
    password_origin = _resolve_password(layers.single["mqtt"], env, str(path or ""), read_secrets)
    built: dict[str, Any] = {}
    for name, sec in SECTIONS.items():
        if sec.many:
            tables = layers.many[name] or []
            multi = len(tables) > 1
            built[name] = tuple(_build(sec, t, f"{where} [[{name}]]" + (f" #{i + 1}" if multi else ""))
                                for i, t in enumerate(tables))
        else:
            built[name] = _build(sec, layers.single[name], f"{where} [{sec.table}]")
    settings = Settings(**built, path=str(path or ""), password_origin=password_origin)
    return _resolve_defaults(settings, env)


# ---------------------------------------------------------------- flags


@dataclass(frozen=True)
class Flag:
    section: str
    key: str
    convert: Callable[[Any], Any] | None = None  # flag value -> config value (None: not given)


TASK_CHOICES = {"od": ("od",), "ocr": ("ocr",), "both": ("od", "ocr")}

# click parameter name -> the setting it overrides.  Commands declare their click options;
# `resolve` picks the ones named here from the parameters click parsed.
FLAGS: dict[str, Flag] = {
    "camera": Flag("cameras", "source", str),  # --camera N: device N
    "source": Flag("cameras", "source"),
    "camera_id": Flag("cameras", "id"),
    "interval": Flag("agent", "interval"),
    "state_dir": Flag("agent", "state_dir"),
    "device_id": Flag("agent", "device_id"),
    "log_level": Flag("agent", "log_level"),
    "model": Flag("model", "dir"),
    "variant": Flag("model", "variant"),
    "task": Flag("model", "tasks", lambda v: TASK_CHOICES[v]),
    "num_beams": Flag("model", "num_beams"),
    "max_new_tokens": Flag("model", "max_new_tokens"),
    "threads": Flag("model", "threads"),
    "providers": Flag("model", "providers", lambda v: tuple(v) or None),
    "broker": Flag("mqtt", "broker"),
    "no_tiling": Flag("tiling", "enabled", lambda v: False if v else None),
    "tile_size": Flag("tiling", "tile_size"),
}


def flag_values(params: Mapping[str, Any]) -> list[tuple[str, str, str, Any]]:
    """[(flag, section, key, value)] for the FLAGS given in click's `params`."""
    out = []
    for name, value in params.items():
        flag = FLAGS.get(name)
        if flag is None or value is None:
            continue
        value = flag.convert(value) if flag.convert else value
        if value is not None:
            out.append(("--" + name.replace("_", "-"), flag.section, flag.key, value))
    return out


def resolve(config: str | os.PathLike | None, params: Mapping[str, Any] | None = None,
            env: Mapping[str, str] | None = None) -> Settings:
    """What `run`, `detect`, `bench` and `config show` use: the config file (--config, or
    config_path's defaults), the environment, then the flags in `params` (click's)."""
    env = os.environ if env is None else env
    return _load(config_path(config, env), env, flag_values(params or {}))


# ---------------------------------------------------------------- showing


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(redact(str(v)), ensure_ascii=False)


def _table_lines(options, settings: Settings) -> list[str]:
    lines = []
    for f in dataclasses.fields(options):
        v = getattr(options, f.name)
        if isinstance(v, Secret):
            state = f"set, from {settings.password_origin}" if v else "not set"
            lines.append(f"# {f.name} = ********  ({state}; secrets are never shown)")
        elif v is None:
            lines.append(f"# {f.name} = (none)")
        else:
            lines.append(f"{f.name} = {_toml_value(v)}")
    return lines


def to_toml(s: Settings) -> str:
    """The effective configuration as TOML, secrets masked (as comments, so the output can
    be saved and checked again without carrying a bogus password)."""
    out = [f"# effective edge-agent configuration (file: {s.path or 'none'}, then environment, then flags)"]
    for name, sec in SECTIONS.items():
        for options in getattr(s, name) if sec.many else (getattr(s, name),):
            out += ["", f"[[{name}]]" if sec.many else f"[{name}]"] + _table_lines(options, s)
    return "\n".join(out) + "\n"
