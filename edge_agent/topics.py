"""MQTT topic rules for the names edge-agent builds topics from.

Device id, camera ids, zone names and the prefix end up in topic names such as
`<prefix>/<camera>/detections`.  MQTT (3.1.1 section 4.7, 5.0 section 4.7) allows in a topic
name any UTF-8 text of at most 65535 bytes, without NUL and without the wildcards `+` and
`#`; a topic starting with `$` is reserved for the broker (`$SYS/...`) and is not matched by
a subscriber's `#`.  A name paho refuses would be spooled and then never sent, so every name
is checked here, once, at configuration time; the checks raise `ValueError` with one line
naming what was checked (the options classes and the settings loader turn that into a
config error naming the key).

    check_level(value, "camera id")     one topic level: no '/', plus the rules above
    check_prefix(value, "mqtt.prefix")  several levels: '/' allowed, no empty level at the ends
    check_topic(topic)                  a whole topic name, as paho will be given it
"""
from __future__ import annotations

MAX_TOPIC_BYTES = 65535  # the topic's UTF-8 length is a two-byte field in the PUBLISH packet
# Room left for what edge-agent appends to a prefix and a level: "/<camera>/<zone>/counts".
# Each level and the prefix get a quarter of the protocol limit, so any combination fits.
MAX_LEVEL_BYTES = MAX_TOPIC_BYTES // 4 - 16
FORBIDDEN = {"+": "'+' (an MQTT wildcard)", "#": "'#' (an MQTT wildcard)", "\0": "NUL"}


def _utf8_length(value: str, what: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} {_short(value)}: not valid UTF-8 (a lone surrogate)") from None


def _short(value: str) -> str:
    return repr(value) if len(value) <= 60 else repr(value[:40]) + f"... ({len(value)} characters)"


def _check_common(value, what: str, limit: int) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    for ch, name in FORBIDDEN.items():
        if ch in value:
            raise ValueError(f"{what} {_short(value)}: contains {name}, not allowed in an MQTT topic")
    bad = next((c for c in value if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F), None)
    if bad is not None:
        raise ValueError(f"{what} {_short(value)}: contains the control character {bad!r}")
    n = _utf8_length(value, what)
    if n > limit:
        raise ValueError(f"{what} {_short(value)}: {n} bytes in UTF-8, at most {limit} fit in an MQTT topic")


def check_level(value: str, what: str) -> str:
    """One topic level (device id, camera id, zone name).  Returns the value."""
    _check_common(value, what, MAX_LEVEL_BYTES)
    if "/" in value:
        raise ValueError(f"{what} {_short(value)}: contains '/', which would split it into several topic levels")
    if value.startswith("$"):
        raise ValueError(f"{what} {_short(value)}: starts with '$', reserved for the broker's own topics")
    return value


def check_prefix(value: str, what: str) -> str:
    """A topic prefix of one or more levels (mqtt.prefix).  Returns it without a trailing '/'."""
    stripped = value.rstrip("/") if isinstance(value, str) else value
    _check_common(stripped, what, MAX_LEVEL_BYTES)
    if stripped.startswith("$"):
        raise ValueError(f"{what} {_short(value)}: starts with '$', reserved for the broker's own topics")
    if stripped.startswith("/") or "//" in stripped:
        raise ValueError(f"{what} {_short(value)}: has an empty topic level")
    return stripped


def check_topic(topic: str, what: str = "topic") -> str:
    """A whole topic name, as handed to paho.  Returns it."""
    _check_common(topic, what, MAX_TOPIC_BYTES)
    return topic
