"""detect_tiled with a fake model: batching per round, re-split of saturated tiles, seams."""
from dataclasses import dataclass

import numpy as np
import pytest

from edge_agent.tiling.plan import Tile
from edge_agent.tiling.regions import Regions
from edge_agent.tiling.runner import TilingOptions, detect_tiled


@dataclass(frozen=True)
class Out:  # duck-typed models.outputs.TaskOutput
    regions: Regions
    saturated: bool


class FakeModel:
    """Sees the scene's objects clipped to each tile, reading order, at most `budget` per tile."""

    def __init__(self, boxes, labels, budget=1000, texts=None, min_visible=4):
        self.boxes, self.labels, self.budget, self.texts = np.asarray(boxes, float), labels, budget, texts
        self.min_visible = min_visible
        self.calls = []

    def __call__(self, tiles):
        self.calls.append(list(tiles))
        return [self.one(t) for t in tiles]

    def visible(self, boxes, t: Tile):
        b = boxes.copy()
        b[:, [0, 2]] = b[:, [0, 2]].clip(t.x0, t.x1)
        b[:, [1, 3]] = b[:, [1, 3]].clip(t.y0, t.y1)
        vis = np.flatnonzero((b[:, 2] - b[:, 0] >= self.min_visible) & (b[:, 3] - b[:, 1] >= self.min_visible))
        vis = vis[np.lexsort((b[vis, 0], b[vis, 1]))]
        sat = len(vis) > self.budget
        vis = vis[: self.budget]
        return vis, b[vis] - [t.x0, t.y0, t.x0, t.y0], sat

    def one(self, t: Tile):
        vis, local, sat = self.visible(self.boxes, t)
        od = Regions(local, np.full(len(vis), 0.9), [self.labels[i] for i in vis])
        out = {"od": Out(od, sat)}
        if self.texts is not None:
            lines = self.boxes.copy()  # a 12-pixel text line near the bottom of each object
            lines[:, 1], lines[:, 3] = self.boxes[:, 3] - 14, self.boxes[:, 3] - 2
            vis, local, sat = self.visible(lines, t)
            quads = local[:, [0, 1, 2, 1, 2, 3, 0, 3]]
            out["ocr"] = Out(Regions.from_quads(quads, np.full(len(vis), 0.9), [self.texts[i] for i in vis]), sat)
        return out


def grid_scene(nx=20, ny=6, width=1920, height=1080):
    xs = np.linspace(10, width - 10, nx + 1)
    ys = np.linspace(10, height - 10, ny + 1)
    boxes = [[xs[i] + 3, ys[j] + 3, xs[i + 1] - 3, ys[j + 1] - 3] for j in range(ny) for i in range(nx)]
    return np.array(boxes), [("can", "box")[k % 2] for k in range(nx * ny)]


def best_iou(gt, pred):
    ix = np.minimum(gt[:, None, 2], pred[None, :, 2]) - np.maximum(gt[:, None, 0], pred[None, :, 0])
    iy = np.minimum(gt[:, None, 3], pred[None, :, 3]) - np.maximum(gt[:, None, 1], pred[None, :, 1])
    inter = ix.clip(0) * iy.clip(0)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return (inter / (area(gt)[:, None] + area(pred)[None, :] - inter)).max(1)


def test_tiles_merge_back_to_the_scene_without_duplicates():
    gt, labels = grid_scene()
    model = FakeModel(gt, labels)
    res = detect_tiled(1920, 1080, model, TilingOptions())
    assert len(model.calls) == 1 and len(model.calls[0]) == 6  # one batched round
    assert res.resplit == [] and len(res.tiles) == 6 and res.rounds == 1
    assert len(res.od) == len(gt)
    assert best_iou(gt, res.od.boxes).min() > 0.99


def test_saturated_tiles_are_split_and_rerun():
    gt, labels = grid_scene(nx=30, ny=8)
    model = FakeModel(gt, labels, budget=50)
    res = detect_tiled(1920, 1080, model, TilingOptions(max_depth=1))
    assert len(model.calls) == 2
    assert res.resplit and all(t.depth == 0 for t in res.resplit)
    assert len(model.calls[1]) == 4 * len(res.resplit)
    assert all(t.depth == 1 for t in model.calls[1])
    assert len(res.tiles) == 6 + len(model.calls[1])
    assert not res.saturated  # sub-tiles fit the budget
    assert len(res.od) == len(gt) and best_iou(gt, res.od.boxes).min() > 0.95


def test_max_depth_zero_keeps_the_saturated_output():
    gt, labels = grid_scene(nx=30, ny=8)
    model = FakeModel(gt, labels, budget=50)
    res = detect_tiled(1920, 1080, model, TilingOptions(max_depth=0))
    assert len(model.calls) == 1 and res.resplit == [] and len(res.saturated) == 6
    assert 0 < len(res.od) < len(gt)


def test_tiling_off_is_one_pass_over_the_frame():
    gt, labels = grid_scene(nx=30, ny=8)
    model = FakeModel(gt, labels, budget=100)
    res = detect_tiled(1920, 1080, model, TilingOptions(enabled=False))
    assert model.calls == [[Tile(0, 0, 1920, 1080)]] and res.resplit == []
    assert len(res.od) == 100


def test_small_frame_one_tile_which_may_be_split():
    gt, labels = grid_scene(nx=12, ny=6, width=640, height=480)
    model = FakeModel(gt, labels, budget=40)
    res = detect_tiled(640, 480, model, TilingOptions())
    assert model.calls[0] == [Tile(0, 0, 640, 480)]
    assert res.resplit == [Tile(0, 0, 640, 480)] and len(model.calls[1]) == 4
    assert len(res.od) == len(gt)


def test_full_frame_pass_is_not_split():
    gt, labels = grid_scene(nx=30, ny=8)
    model = FakeModel(gt, labels, budget=80)
    res = detect_tiled(1920, 1080, model, TilingOptions(full_frame=True))
    assert Tile(0, 0, 1920, 1080) in model.calls[0]
    assert Tile(0, 0, 1920, 1080) not in res.resplit and Tile(0, 0, 1920, 1080) in res.saturated


def test_object_on_a_seam_comes_back_as_one_close_to_the_original():
    obj = np.array([[700.0, 300, 820, 420]])  # across the x=768 edge of tile 0, whole in tile 1
    big = np.array([[400.0, 500, 1000, 700]])  # wider than the overlap: cut in every tile
    model = FakeModel(np.vstack([obj, big]), ["box", "shelf"])
    res = detect_tiled(1920, 1080, model, TilingOptions())
    assert sorted(res.od.labels) == ["box", "shelf"]
    np.testing.assert_allclose(res.od.boxes[list(res.od.labels).index("box")], obj[0])
    np.testing.assert_allclose(res.od.boxes[list(res.od.labels).index("shelf")], big[0])


def test_ocr_lines_merged_after_resplit():
    gt, labels = grid_scene(nx=30, ny=8)
    texts = [f"item {k}" for k in range(len(gt))]
    model = FakeModel(gt, labels, budget=50, texts=texts)
    res = detect_tiled(1920, 1080, model, TilingOptions())
    assert res.ocr.is_ocr and sorted(res.ocr.labels) == sorted(texts)


def test_density_hint_plans_smaller_tiles():
    gt, labels = grid_scene()
    model = FakeModel(gt, labels)
    res = detect_tiled(1920, 1080, model, TilingOptions(), density=600.0)
    assert len(model.calls[0]) > 6 and all(t.width < 768 for t in model.calls[0])
    assert res.density(1920, 1080) == pytest.approx(len(res.od) / (1920 * 1080 / 1e6))


def test_infer_must_answer_every_tile():
    with pytest.raises(RuntimeError, match="results for 6 tiles"):
        detect_tiled(1920, 1080, lambda tiles: [], TilingOptions())


@pytest.mark.parametrize("kw", [{"tile_size": 8}, {"overlap": 1.5e3}, {"method": "soft"}, {"metric": "giou"},
                                {"threshold": 0}, {"max_depth": -1}, {"text_threshold": 2}])
def test_options_validation_names_the_key(kw):
    key = next(iter(kw))
    with pytest.raises(ValueError, match=f"tiling.{key}"):
        TilingOptions(**kw)


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(st.floats(0, 1900), st.floats(0, 1060), st.floats(8, 460), st.floats(8, 460))
def test_any_object_up_to_3x_the_overlap_comes_back_once(x, y, w, h):
    """Wherever one object lies (on seams, corners, frame edges) it comes back as one box close to it.

    Up to 3x the overlap (154 px) two parts cut by one seam always share IoS >= 0.5; larger
    objects need the full-frame pass (next test)."""
    box = np.array([[x, y, min(x + w, 1920), min(y + h, 1080)]])
    model = FakeModel(box, ["box"])
    res = detect_tiled(1920, 1080, model, TilingOptions())
    assert len(res.od) == 1
    assert best_iou(box, res.od.boxes)[0] > 0.99


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 1900), st.floats(0, 1060), st.floats(8, 1920), st.floats(8, 1080))
def test_any_object_even_larger_than_a_tile_comes_back_once_with_the_full_frame_pass(x, y, w, h):
    box = np.array([[x, y, min(x + w, 1920), min(y + h, 1080)]])
    res = detect_tiled(1920, 1080, FakeModel(box, ["box"]), TilingOptions(full_frame=True))
    assert len(res.od) == 1
    assert best_iou(box, res.od.boxes)[0] > 0.99
