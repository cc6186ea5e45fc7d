"""Shelf analytics on each frame's result: zone counts smoothed over the last frames, stock
events, and prices read from the tags.

    shelf = Shelf(zones, ShelfOptions(window=5, method="median"), PriceOptions(), state_path)
    events = shelf.analyse(result)       # sets result.zones and result.prices; -> [ShelfEvent]
    shelf.commit(pending=events)         # state and these events to disk, before they are spooled
    publisher.publish_result(result, snapshot, events)
    if events:
        shelf.commit()                   # they are in the spool: the journal is cleared
    ...
    publisher.publish_events(shelf.pending())   # at start: events a killed agent had not spooled

**Stable counts.**  Each (zone, label) count is smoothed over the last `window` processed
frames of its camera:

- `median`: the median of the last `window` raw counts (the lower middle one for an even
  count of frames), so one missed box (or one false one) changes nothing;
- `hysteresis`: the stable count moves only once every one of the last `window` raw counts
  lies on the same side of it, and then only as far as the nearest of them.

A zone's first frame fills its window with that frame's counts; a label new to a zone
enters with zeros for the frames before it, so it too needs the majority of the window.
The zone's total is the sum of its stable label counts.

**Events** (`ShelfEvent`, published on `<prefix>/<camera>/events`), for changes of the
stable counts only, never on a zone's first frame:

- `count_changed`: one (zone, label) stable count changed (`label`, `before`, `after`);
- `low_stock`: the zone's total fell below its `min_count` (`total`, `min_count`, `before`);
- `empty`: the zone's total fell to 0 (`before`);
- `restocked`: the total is back at `min_count` or more (at least 1 when `min_count` is 0)
  after being low or empty (`total`, `min_count`, `before`).

Per zone, in config order: its `count_changed` events by label, then its state event.

**Nothing lost across a restart.**  The smoothing state is written to
`<state_dir>/shelf-state.json` (write, fsync, atomic rename) together with the frame's
events *before* they are spooled, and written again without them once they are: a
write-ahead journal.  An agent killed in between finds the events at its next start and
spools them again with the same `message_id`s (subscribers drop the copies already
delivered).  An agent killed before the state write loses that frame whole (its result
was not spooled either) and no event of it was sent, so the next frame's events continue
from the saved counts: no transition is lost or reported twice.  (An event's `message_id`
is also derived from the state it came from: a random epoch made with the state file, a
frame counter, camera, zone, type and counts.)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import statistics
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from edge_agent.prices import PriceOptions, read_prices
from edge_agent.zones import ZoneOptions, assign, frame_zones, zone_counts

log = logging.getLogger(__name__)

METHODS = ("median", "hysteresis")
EVENT_TYPES = ("count_changed", "low_stock", "empty", "restocked")
STATE_FILE = "shelf-state.json"
STATE_VERSION = 1
_ID_NAMESPACE = uuid.UUID("5b0e8c2e-2f4e-4d0a-9f55-7e3c6f1d2a10")


@dataclass(frozen=True)
class ShelfOptions:
    """The `[shelf]` section."""

    window: int = 5  # processed frames each zone count is smoothed over; 1: no smoothing
    method: str = "median"  # "median" or "hysteresis"

    def __post_init__(self):
        if isinstance(self.window, bool) or not isinstance(self.window, int) or not 1 <= self.window <= 100:
            raise ValueError(f"window: {self.window!r} must be an integer from 1 to 100")
        if self.method not in METHODS:
            raise ValueError(f"method: {self.method!r} must be one of {', '.join(map(repr, METHODS))}")


def smooth(window: Sequence[int], stable: int, method: str) -> int:
    """The stable count after `window` (oldest first, the newest last) by `method`."""
    if method == "median":
        return int(statistics.median_low(window))
    if all(v > stable for v in window):
        return min(window)
    if all(v < stable for v in window):
        return max(window)
    return stable


def zone_state(total: int, min_count: int) -> str:
    if total == 0:
        return "empty"
    return "low" if total < min_count else "ok"


@dataclass(frozen=True)
class ShelfEvent:
    event_type: str  # one of EVENT_TYPES
    camera_id: str
    zone: str
    seq: int  # the frame's seq (as in its result)
    time: float  # the frame's capture time, epoch seconds
    result_message_id: str
    message_id: str
    details: dict = field(default_factory=dict)  # label/before/after, or total/min_count/before

    def to_payload(self, device_id: str) -> dict:
        return {"schema_version": 1, "message_id": self.message_id, "event_type": self.event_type,
                "device_id": device_id, "camera_id": self.camera_id, "zone": self.zone, "seq": self.seq,
                "time": datetime.fromtimestamp(self.time, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "result_message_id": self.result_message_id, **self.details}


class Shelf:
    """Zones, smoothing, events and prices for every camera.  Not thread-safe: the agent
    calls it from its loop."""

    def __init__(self, zones: Sequence[ZoneOptions] = (), options: ShelfOptions = ShelfOptions(),
                 prices: PriceOptions | None = PriceOptions(), state_path: str | Path | None = None):
        self.zone_options = tuple(zones)
        self.options = options
        self.prices = prices if prices is not None and prices.enabled else None
        self.state_path = Path(state_path) if state_path else None
        self._zones: dict[tuple, list] = {}  # (camera, width, height) -> [Zone]
        self.state = self._load()

    @property
    def active(self) -> bool:
        return bool(self.zone_options) or self.prices is not None

    def zones_for(self, camera_id: str, width: int, height: int) -> list:
        """The camera's zones on this frame size (ValueError naming a bad zone)."""
        key = (camera_id, width, height)
        if key not in self._zones:
            self._zones[key] = frame_zones(self.zone_options, camera_id, width, height)
        return self._zones[key]

    # -- per frame -------------------------------------------------------------------------
    def analyse(self, result) -> list[ShelfEvent]:
        """Set `result.zones` (when the camera has zones) and `result.prices` (when prices are
        on); -> the events of this frame."""
        zones = self.zones_for(result.camera_id, result.width, result.height)
        det = result.detections
        labels = list(det.labels)
        index = assign(zones, det.boxes, labels)
        if self.prices is not None:
            quads = result.text.quads if result.text.quads is not None else []
            result.prices = read_prices(list(result.text.labels), quads, zones, det.boxes, index, labels, self.prices)
        if not zones:
            return []
        raw = zone_counts(zones, index, labels)
        self.state["gen"] += 1
        cam_state = self.state["cameras"].setdefault(result.camera_id, {})
        for name in [n for n in cam_state if n not in raw]:
            del cam_state[name]  # a zone removed from the config
        events: list[ShelfEvent] = []
        out = {}
        for zone in zones:
            entry, zone_events = self._update_zone(cam_state, zone, raw[zone.name], result)
            out[zone.name] = entry
            events += zone_events
        result.zones = out
        return events

    def _update_zone(self, cam_state: dict, zone, raw: dict[str, int], result):
        k = self.options.window
        z = cam_state.get(zone.name)
        first = z is None
        if first:
            z = cam_state[zone.name] = {"labels": {}, "total": None}
        labels = z["labels"]
        changes = []
        for label in sorted(set(labels) | set(raw)):
            s = labels.get(label)
            if s is None:  # a zone's first frame fills its window; a label new to a zone enters with zeros
                s = labels[label] = {"window": [raw.get(label, 0)] * (k - 1) if first else [0] * (k - 1), "stable": 0}
            s["window"] = (s["window"] + [raw.get(label, 0)])[-k:]
            before = s["stable"]
            s["stable"] = raw.get(label, 0) if first else smooth(s["window"], before, self.options.method)
            if not first and s["stable"] != before:
                changes.append((label, before, s["stable"]))
            if s["stable"] == 0 and not any(s["window"]) and label not in zone.labels:
                del labels[label]  # gone for a whole window
        counts = {label: s["stable"] for label, s in sorted(labels.items())}
        for label in zone.labels:
            counts.setdefault(label, 0)
        total = sum(counts.values())
        before_total = z["total"]
        z["total"] = total
        state = zone_state(total, zone.min_count)
        entry = {"total": total, "counts": dict(sorted(counts.items())), "raw": raw, "min_count": zone.min_count,
                 "state": state}
        events = [self._event("count_changed", result, zone.name, {"label": lab, "before": b, "after": a})
                  for lab, b, a in changes]
        if before_total is not None:
            was = zone_state(before_total, zone.min_count)
            kind = None
            if state != was:
                if state == "empty":
                    kind = "empty"
                elif state == "low":
                    kind = "low_stock"
                else:
                    kind = "restocked"
            if kind == "empty":
                events.append(self._event(kind, result, zone.name, {"before": before_total}))
            elif kind:
                events.append(self._event(kind, result, zone.name,
                                          {"total": total, "min_count": zone.min_count, "before": before_total}))
        return entry, events

    def _event(self, kind: str, result, zone: str, details: dict) -> ShelfEvent:
        key = json.dumps([self.state["epoch"], self.state["gen"], result.camera_id, zone, kind, details], sort_keys=True)
        return ShelfEvent(kind, result.camera_id, zone, result.seq, result.captured_at, result.message_id,
                          uuid.uuid5(_ID_NAMESPACE, key).hex, details)

    # -- state -----------------------------------------------------------------------------
    def _fresh(self) -> dict:
        return {"version": STATE_VERSION, "epoch": secrets.token_hex(8), "gen": 0, "cameras": {}}

    def _load(self) -> dict:
        if self.state_path is None or not self.state_path.exists():
            return self._fresh()
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            if state.get("version") != STATE_VERSION or not isinstance(state.get("cameras"), dict):
                raise ValueError("unknown layout")
            int(state["gen"]), str(state["epoch"])
            [ShelfEvent(**e) for e in state.setdefault("pending", [])]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("shelf state %s unreadable (%s); zone counts start again", self.state_path, e)
            return self._fresh()
        k = self.options.window
        for zones in state["cameras"].values():
            for z in zones.values():
                for s in z["labels"].values():
                    s["window"] = ([s["window"][0]] * k + s["window"])[-k:]  # a longer window starts padded
        return state

    def pending(self) -> list[ShelfEvent]:
        """Events journaled by `commit(pending=...)` and not yet cleared (an agent killed
        before they were all spooled)."""
        return [ShelfEvent(**e) for e in self.state.get("pending", [])]

    def commit(self, pending: Sequence[ShelfEvent] = ()) -> None:
        """Write the smoothing state atomically, with `pending`: the events about to be
        spooled (cleared by the next commit)."""
        self.state["pending"] = [dataclasses.asdict(e) for e in pending]
        if self.state_path is None or not (self.state["cameras"] or self.state["pending"]):
            return
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.state, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except OSError as e:
            log.warning("shelf state %s not saved: %s", self.state_path, e.strerror or e)
