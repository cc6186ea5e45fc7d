"""Zones, smoothing and stock events on scripted detections (no model): the membership rule
with a box on a zone border, one missed frame, stable changes, low stock, empty, restocked,
state kept across a restart, and bad polygons named."""
from __future__ import annotations

import time

import numpy as np
import pytest

from edge_agent.result import FrameResult
from edge_agent.shelf import Shelf, ShelfOptions, smooth
from edge_agent.zones import ZoneOptions, assign, frame_zones
from edge_agent.tiling.regions import Regions

W, H = 400, 200
TOP = ZoneOptions("top", ((0, 0), (400, 0), (400, 100), (0, 100)), min_count=3)
BOTTOM = ZoneOptions("bottom", ((0, 0.5), (1, 0.5), (1, 1), (0, 1)), labels=("can",))


def facings(n: int, label: str = "bottle", y1: float = 90.0, x0: float = 10.0) -> list[tuple]:
    return [(label, (x0 + 30 * i, y1 - 60, x0 + 30 * i + 25, y1)) for i in range(n)]


def result(items, seq: int = 0, camera: str = "cam0") -> FrameResult:
    boxes = np.array([b for _, b in items], dtype=float).reshape(-1, 4)
    det = Regions(boxes, np.full(len(items), 0.9), tuple(lab for lab, _ in items))
    text = Regions.from_quads(np.zeros((0, 8)), np.zeros(0), ())
    return FrameResult(camera, seq, time.time(), W, H, det, text, {"name": "scripted", "variant": ""})


def test_bottom_centre_on_the_border_counts_once_in_the_first_zone():
    zones = frame_zones([TOP, ZoneOptions("rest", ((0, 100), (400, 100), (400, 200), (0, 200)))], "cam0", W, H)
    boxes = np.array([[10, 40, 40, 100],   # bottom centre (25, 100): on the shared border
                      [50, 60, 80, 130],   # bottom centre in "rest" though the box starts in "top"
                      [90, 10, 120, 95]])  # inside "top"
    assert assign(zones, boxes).tolist() == [0, 1, 0]


def test_label_filter_passes_a_detection_on_to_the_next_zone():
    zones = frame_zones([ZoneOptions("cans", ((0, 0), (400, 0), (400, 200), (0, 200)), labels=("can",)),
                         ZoneOptions("all", ((0, 0), (400, 0), (400, 200), (0, 200)))], "cam0", W, H)
    assert assign(zones, np.array([[0, 0, 10, 10], [0, 0, 10, 10]]), ["can", "bottle"]).tolist() == [0, 1]


def test_normalised_points_scale_with_the_frame():
    (z,) = frame_zones([BOTTOM], "cam0", W, H)
    assert z.polygon.tolist() == [[0, 100], [400, 100], [400, 200], [0, 200]]


@pytest.mark.parametrize("points,why", [
    (((0, 0), (10, 0)), "at least 3 points"),
    (((0, 0), (10, 10), (10, 0), (0, 10)), "crosses itself"),
    (((0, 0), (5, 5), (10, 10)), "no area"),
    (((0, 0), (-5, 0), (0, 5)), "outside the frame"),
    ("abc", "number pairs"),
])
def test_bad_polygon_names_the_zone(points, why):
    with pytest.raises(ValueError, match=f"zone 'aisle-3': .*{why}"):
        ZoneOptions("aisle-3", points)


def test_pixel_point_outside_the_frame_names_the_zone():
    with pytest.raises(ValueError, match=r"zone 'wide': point \(500, 0\) is outside the 400x200 frame"):
        frame_zones([ZoneOptions("wide", ((0, 0), (500, 0), (0, 50)))], "cam0", W, H)


@pytest.mark.parametrize("name", ["a/b", "x+", "#", ""])
def test_zone_names_are_topic_levels(name):
    with pytest.raises(ValueError, match="zone"):
        ZoneOptions(name, ((0, 0), (1, 0), (0, 1)))


def test_zones_for_other_cameras_are_ignored():
    other = ZoneOptions("door", ((0, 0), (1, 0), (0, 1)), camera="cam1")
    assert [z.name for z in frame_zones([TOP, other], "cam0", W, H)] == ["top"]
    assert [z.name for z in frame_zones([TOP, other], "cam1", W, H)] == ["top", "door"]


def test_smoothing_methods():
    assert smooth([5, 5, 4, 5, 5], 5, "median") == 5
    assert smooth([5, 4, 4], 5, "median") == 4
    assert smooth([4, 4, 3], 5, "hysteresis") == 4  # all below: moves to the nearest
    assert smooth([4, 5, 4], 5, "hysteresis") == 5  # one frame back at 5: holds


def run(shelf: Shelf, counts: list[int], start: int = 0, label: str = "bottle") -> list:
    out = []
    for i, n in enumerate(counts):
        r = result(facings(n, label), seq=start + i)
        events = shelf.analyse(r)
        shelf.commit()
        out.append((r, events))
    return out


@pytest.mark.parametrize("method", ["median", "hysteresis"])
def test_one_missed_frame_changes_nothing(tmp_path, method):
    shelf = Shelf([TOP], ShelfOptions(window=3, method=method), state_path=tmp_path / "s.json")
    frames = run(shelf, [4, 4, 3, 4, 4])
    assert [r.zones["top"]["total"] for r, _ in frames] == [4, 4, 4, 4, 4]
    assert [r.zones["top"]["raw"] for r, _ in frames][2] == {"bottle": 3}
    assert all(not events for _, events in frames)


def test_events_follow_the_stable_counts(tmp_path):
    shelf = Shelf([TOP], ShelfOptions(window=3), state_path=tmp_path / "s.json")
    frames = run(shelf, [4, 4, 2, 2, 2, 0, 0, 0, 5, 5])
    totals = [r.zones["top"]["total"] for r, _ in frames]
    assert totals == [4, 4, 4, 2, 2, 2, 0, 0, 0, 5]
    got = [(r.seq, e.event_type, e.details) for r, events in frames for e in events]
    assert got == [
        (3, "count_changed", {"label": "bottle", "before": 4, "after": 2}),
        (3, "low_stock", {"total": 2, "min_count": 3, "before": 4}),
        (6, "count_changed", {"label": "bottle", "before": 2, "after": 0}),
        (6, "empty", {"before": 2}),
        (9, "count_changed", {"label": "bottle", "before": 0, "after": 5}),
        (9, "restocked", {"total": 5, "min_count": 3, "before": 0}),
    ]
    r, events = frames[3]
    payload = events[1].to_payload("dev1")
    assert payload["result_message_id"] == r.message_id and payload["seq"] == 3 and payload["zone"] == "top"
    assert len({e.message_id for _, ev in frames for e in ev}) == 6


def test_zone_payload_and_label_filter(schema):
    shelf = Shelf([TOP, BOTTOM], ShelfOptions(window=1))
    r = result(facings(2) + facings(1, "can", y1=180) + facings(1, "bottle", y1=190, x0=200))
    shelf.analyse(r)
    assert r.zones == {"top": {"total": 2, "counts": {"bottle": 2}, "raw": {"bottle": 2}, "min_count": 3, "state": "low"},
                       "bottom": {"total": 1, "counts": {"can": 1}, "raw": {"can": 1}, "min_count": 0, "state": "ok"}}
    schema.check(r.to_payload("dev1"))


def test_state_survives_a_restart_and_a_replayed_frame_gets_the_same_event_ids(tmp_path):
    path = tmp_path / "shelf-state.json"
    a = Shelf([TOP], ShelfOptions(window=3), state_path=path)
    run(a, [4, 4, 2])
    # "crash" after the events of the next frame were spooled but before the state was saved
    r = result(facings(2), seq=3)
    lost_events = a.analyse(r)
    b = Shelf([TOP], ShelfOptions(window=3), state_path=path)
    r2 = result(facings(2), seq=3)
    again = b.analyse(r2)
    assert [e.event_type for e in again] == ["count_changed", "low_stock"]
    assert [e.message_id for e in again] == [e.message_id for e in lost_events]
    b.commit()
    c = Shelf([TOP], ShelfOptions(window=3), state_path=path)
    assert [e for _, e in run(c, [2], start=4)] == [[]]  # continues from the saved state: no new event


def test_damaged_state_file_starts_again(tmp_path, caplog):
    path = tmp_path / "shelf-state.json"
    path.write_text("{not json")
    shelf = Shelf([TOP], ShelfOptions(window=3), state_path=path)
    assert run(shelf, [4])[0][0].zones["top"]["total"] == 4
    assert "unreadable" in caplog.text


@pytest.mark.parametrize("kw,why", [({"window": 0}, "window"), ({"window": 2.5}, "window"), ({"method": "mean"}, "method")])
def test_bad_shelf_options(kw, why):
    with pytest.raises(ValueError, match=why):
        ShelfOptions(**kw)


def test_events_journaled_before_spooling_are_found_by_the_next_start(tmp_path):
    path = tmp_path / "shelf-state.json"
    a = Shelf([TOP], ShelfOptions(window=1), state_path=path)
    run(a, [4])
    events = a.analyse(result(facings(1), seq=1))
    a.commit(pending=events)  # the agent dies here, before the events reach the spool
    b = Shelf([TOP], ShelfOptions(window=1), state_path=path)
    assert b.pending() == events and [e.event_type for e in events] == ["count_changed", "low_stock"]
    b.commit()  # spooled again: the journal is cleared
    assert Shelf([TOP], ShelfOptions(window=1), state_path=path).pending() == []


def test_stdout_carries_the_result_then_its_events(tmp_path):
    import io
    import json

    from edge_agent.publish import StdoutPublisher

    shelf = Shelf([TOP], ShelfOptions(window=1))
    run(shelf, [4])
    r = result(facings(2), seq=1)
    events = shelf.analyse(r)
    out = io.StringIO()
    StdoutPublisher("dev1", stream=out).publish_result(r, None, events)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line.get("event_type") for line in lines] == [None, "count_changed", "low_stock"]
    assert lines[1]["result_message_id"] == lines[0]["message_id"]


def test_home_assistant_ids_that_collide_are_refused():
    from edge_agent.homeassistant import CameraEntities, Discovery, HomeAssistantOptions

    with pytest.raises(ValueError, match="would stand for both 'cam_a b' and 'cam_a.b'"):
        Discovery(HomeAssistantOptions(enabled=True), "dev1", "edge-agent/dev1",
                  [CameraEntities("cam", ("a b", "a.b"))], False, "m", "1")
