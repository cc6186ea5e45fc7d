"""Zones: named polygons on a camera's frame (a shelf, a bay), and which detection is in which.

    zone = ZoneOptions(name="top-shelf", points=((0, 0), (1, 0), (1, 0.33), (0, 0.33)))
    zones = frame_zones([zone], camera_id="cam0", width=1280, height=720)   # -> [Zone], frame pixels
    index = assign(zones, boxes, labels)    # -> zone index per box, -1 for none

**Points** are frame pixels, or fractions of the frame (0..1) when every coordinate of the
zone is between 0 and 1.  A zone needs at least 3 points, may not cross itself and must
have an area; pixel points must lie inside the frame, which is checked against the first
frame (or the image given to `edge-agent zones`).

**Membership rule.**  A detection belongs to the first zone, in config order, that
contains its box's *bottom-centre* point ((x0 + x1) / 2, y1), border included, and whose
`labels` (when given) include the detection's label.  The bottom centre is where a product
stands on its shelf board, so a tall product leaning into the shelf above still counts
on its own shelf, and a box on the line between two zones is counted once, in the first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edge_agent.topics import check_level


@dataclass(frozen=True)
class ZoneOptions:
    """One `[[zones]]` table.  `camera` "" means every camera."""

    name: str = ""
    points: tuple[tuple[float, float], ...] = ()  # ((x, y), ...): frame pixels, or all within 0..1 for fractions of the frame
    camera: str = ""
    labels: tuple[str, ...] = ()  # only these labels count in this zone; () every label
    min_count: int = 0  # fewer than this (after smoothing) is low stock; 0: no low-stock alert

    def __post_init__(self):
        check_level(self.name, "zone name")  # it is a topic level: <prefix>/<camera>/<zone>/counts
        object.__setattr__(self, "points", _points(self.name, self.points))
        object.__setattr__(self, "labels", tuple(self.labels))
        if any(not isinstance(label, str) or not label for label in self.labels):
            raise ValueError(f"zone {self.name!r}: labels must be non-empty strings")
        if isinstance(self.min_count, bool) or not isinstance(self.min_count, int) or self.min_count < 0:
            raise ValueError(f"zone {self.name!r}: min_count must be an integer >= 0, got {self.min_count!r}")
        if not isinstance(self.camera, str):
            raise ValueError(f"zone {self.name!r}: camera must be a camera id string")
        _check_polygon(self.name, np.array(self.points, dtype=np.float64))

    @property
    def normalised(self) -> bool:
        return all(0.0 <= v <= 1.0 for p in self.points for v in p)

    def applies_to(self, camera_id: str) -> bool:
        return self.camera in ("", camera_id)


@dataclass(frozen=True)
class Zone:
    """A zone resolved on one frame size: `polygon` (N, 2) in frame pixels."""

    name: str
    polygon: np.ndarray
    labels: tuple[str, ...] = ()
    min_count: int = 0

    def accepts(self, label: str) -> bool:
        return not self.labels or label in self.labels

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """(M, 2) points -> (M,) bool, border included."""
        return contains(self.polygon, xy)


def _points(name: str, points) -> tuple:
    bad = ValueError(f"zone {name!r}: points must be a list of [x, y] number pairs")
    try:
        pairs = [tuple(p) for p in points]
    except TypeError:
        raise bad from None
    if any(len(p) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in p) for p in pairs):
        raise bad
    pts = tuple((float(x), float(y)) for x, y in pairs)
    if len(pts) < 3:
        raise ValueError(f"zone {name!r}: a polygon needs at least 3 points, got {len(pts)}")
    for x, y in pts:
        if not (math.isfinite(x) and math.isfinite(y)) or x < 0 or y < 0:
            raise ValueError(f"zone {name!r}: point ({x:g}, {y:g}) is outside the frame (negative or not finite)")
    return pts


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _segments_cross(p1, p2, q1, q2) -> bool:
    """Closed segments p1p2 and q1q2 share a point."""
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True

    def on(a, b, c, d):  # c collinear with ab and within its box
        return d == 0 and min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    return on(q1, q2, p1, d1) or on(q1, q2, p2, d2) or on(p1, p2, q1, d3) or on(p1, p2, q2, d4)


def _check_polygon(name: str, pts: np.ndarray) -> None:
    n = len(pts)
    x, y = pts[:, 0], pts[:, 1]
    for i in range(n):
        a1, a2 = pts[i], pts[(i + 1) % n]
        if np.array_equal(a1, a2):
            raise ValueError(f"zone {name!r}: point {i + 1} repeats point {(i + 1) % n + 1}")
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a corner
            b1, b2 = pts[j], pts[(j + 1) % n]
            if _segments_cross(a1, a2, b1, b2):
                raise ValueError(f"zone {name!r}: the polygon crosses itself (edge {i + 1} and edge {j + 1})")
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    if area <= 0:
        raise ValueError(f"zone {name!r}: the polygon has no area (its points are on one line)")


def contains(polygon: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Points inside the polygon or on its border (even-odd rule), vectorised over points."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    px, py = xy[:, 0:1], xy[:, 1:2]
    a = polygon
    b = np.roll(polygon, -1, axis=0)
    ax, ay, bx, by = a[:, 0], a[:, 1], b[:, 0], b[:, 1]
    # border: collinear and within the segment's bounding box
    cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    scale = np.maximum(np.hypot(bx - ax, by - ay), 1e-12)
    on_edge = (np.abs(cross) / scale <= 1e-6) & (px >= np.minimum(ax, bx) - 1e-9) & (px <= np.maximum(ax, bx) + 1e-9) \
        & (py >= np.minimum(ay, by) - 1e-9) & (py <= np.maximum(ay, by) + 1e-9)
    straddles = (ay > py) != (by > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = ax + (py - ay) * (bx - ax) / (by - ay)
    crossings = straddles & (px < x_at)
    inside = (np.count_nonzero(crossings, axis=1) % 2) == 1
    return inside | on_edge.any(axis=1)


def resolve(options: ZoneOptions, width: int, height: int) -> Zone:
    """The zone in pixels of a width x height frame; ValueError naming the zone when a pixel
    point lies outside the frame."""
    pts = np.array(options.points, dtype=np.float64)
    if options.normalised:
        pts = pts * np.array([width, height], dtype=np.float64)
    else:
        for x, y in options.points:
            if x > width or y > height:
                raise ValueError(f"zone {options.name!r}: point ({x:g}, {y:g}) is outside the {width}x{height} frame")
    return Zone(options.name, pts, options.labels, options.min_count)


def frame_zones(options: Sequence[ZoneOptions], camera_id: str, width: int, height: int) -> list[Zone]:
    """The zones of one camera, in config order, resolved on its frame size."""
    zones = [resolve(o, width, height) for o in options if o.applies_to(camera_id)]
    names = [z.name for z in zones]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"zone {name!r}: defined twice for camera {camera_id!r}")
    return zones


def bottom_centres(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2.0, boxes[:, 3]], axis=1)


def assign(zones: Sequence[Zone], boxes: np.ndarray, labels: Sequence[str] | None = None) -> np.ndarray:
    """Zone index (into `zones`) of each box by the membership rule, -1 for none.  With
    `labels` None the label filters are not applied (e.g. for price tags)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.full(len(boxes), -1, dtype=np.int64)
    if not len(boxes):
        return out
    points = bottom_centres(boxes)
    for k, zone in enumerate(zones):
        free = out < 0
        if not free.any():
            break
        hit = zone.contains(points) & free
        if labels is not None and zone.labels:
            hit &= np.array([zone.accepts(lab) for lab in labels], dtype=bool)
        out[hit] = k
    return out


def zone_counts(zones: Sequence[Zone], index: np.ndarray, labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """{zone name: {label: count}} for every zone (empty dict for a zone with nothing);
    a zone with a `labels` filter lists each of its labels, 0 included."""
    out: dict[str, dict[str, int]] = {z.name: {label: 0 for label in z.labels} for z in zones}
    for k, label in zip(index.tolist(), labels):
        if k >= 0:
            counts = out[zones[k].name]
            counts[label] = counts.get(label, 0) + 1
    return {name: dict(sorted(c.items())) for name, c in out.items()}
