"""Tile plan properties (hypothesis) and tile <-> frame transforms."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edge_agent.tiling.plan import Tile, mark_cut, overlap_pixels, plan_tiles, split_tile, tile_size_for_density
from edge_agent.tiling.regions import Regions

frames = st.tuples(st.integers(1, 5000), st.integers(1, 3000))
sizes = st.integers(64, 1024)
overlaps = st.one_of(st.floats(0, 0.6), st.integers(1, 60))


def coverage(tiles, w, h):
    grid = np.zeros((h, w), np.int32)
    for t in tiles:
        grid[t.y0:t.y1, t.x0:t.x1] += 1
    return grid


def axis_overlaps(starts_ends):
    spans = sorted(set(starts_ends))
    return [a_end - b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])]


@settings(max_examples=150, deadline=None)
@given(frames, sizes, overlaps)
def test_every_pixel_covered_and_tiles_inside(frame, size, overlap):
    w, h = frame
    tiles = plan_tiles(w, h, size, overlap)
    assert all(0 <= t.x0 < t.x1 <= w and 0 <= t.y0 < t.y1 <= h for t in tiles)
    assert coverage(tiles, w, h).min() >= 1


@settings(max_examples=150, deadline=None)
@given(frames, sizes, overlaps)
def test_full_size_tiles_and_requested_overlap(frame, size, overlap):
    w, h = frame
    tiles = plan_tiles(w, h, size, overlap)
    want = overlap_pixels(overlap, size)
    for t in tiles:
        assert t.width == min(size, w) and t.height == min(size, h)
    for overlaps_ in (axis_overlaps([(t.x0, t.x1) for t in tiles]), axis_overlaps([(t.y0, t.y1) for t in tiles])):
        assert all(o >= want for o in overlaps_)


@settings(max_examples=100, deadline=None)
@given(frames, sizes, overlaps)
def test_plan_is_deterministic_row_major(frame, size, overlap):
    w, h = frame
    tiles = plan_tiles(w, h, size, overlap)
    assert tiles == plan_tiles(w, h, size, overlap)
    assert [(t.y0, t.x0) for t in tiles] == sorted((t.y0, t.x0) for t in tiles)
    assert len(set(tiles)) == len(tiles)


def test_small_frame_gives_one_tile_and_full_frame_option():
    assert plan_tiles(500, 300) == [Tile(0, 0, 500, 300)]
    assert plan_tiles(500, 300, full_frame=True) == [Tile(0, 0, 500, 300)]
    tiles = plan_tiles(1920, 1080, full_frame=True)
    assert tiles[-1] == Tile(0, 0, 1920, 1080) and len(tiles) == 7


def test_known_plan_1080p():
    boxes = [t.box for t in plan_tiles(1920, 1080, 768, 0.2)]
    assert boxes == [(0, 0, 768, 768), (576, 0, 1344, 768), (1152, 0, 1920, 768),
                     (0, 312, 768, 1080), (576, 312, 1344, 1080), (1152, 312, 1920, 1080)]


@pytest.mark.parametrize("bad", [-0.1, 768, 900, float("nan"), 2.5, 1.5])
def test_bad_overlap(bad):
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(1920, 1080, 768, bad)


@settings(max_examples=100, deadline=None)
@given(st.integers(64, 2000), st.integers(64, 2000), overlaps)
def test_split_tile_covers_parent_with_overlap(w, h, overlap):
    parent = Tile(10, 20, 10 + w, 20 + h, depth=1)
    subs = split_tile(parent, overlap)
    assert len(subs) == 4 and all(s.depth == 2 for s in subs)
    assert all(parent.x0 <= s.x0 < s.x1 <= parent.x1 and parent.y0 <= s.y0 < s.y1 <= parent.y1 for s in subs)
    assert all(s.width < w and s.height < h for s in subs)
    grid = coverage([Tile(s.x0 - 10, s.y0 - 20, s.x1 - 10, s.y1 - 20) for s in subs], w, h)
    assert grid.min() >= 1
    ox = subs[0].x1 - subs[1].x0
    want = overlap * subs[0].width if overlap < 1 else overlap
    assert ox >= min(want, w) - 1


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 3000), st.integers(0, 3000), st.lists(st.floats(-1e4, 1e4), min_size=8, max_size=8))
def test_transforms_round_trip(x0, y0, q):
    tile = Tile(x0, y0, x0 + 768, y0 + 768)
    r = Regions.from_quads([q], [0.5], ["t"])
    back = tile.to_frame(r).shifted(-x0, -y0)
    np.testing.assert_allclose(back.quads, r.quads, atol=1e-6)
    np.testing.assert_allclose(back.boxes, r.boxes, atol=1e-6)
    np.testing.assert_allclose(tile.to_frame(r).boxes, r.boxes + [x0, y0, x0, y0])


def test_mark_cut_only_interior_edges():
    frame_w, frame_h = 1920, 1080
    tile = Tile(576, 312, 1344, 1080)  # bottom edge is the frame's
    boxes = [[576, 400, 650, 500],   # left edge: interior -> cut
             [600, 312, 650, 400],   # top edge: interior -> cut
             [1300, 400, 1344, 500],  # right edge: interior -> cut
             [700, 1000, 800, 1080],  # bottom edge: frame border -> whole
             [700, 500, 800, 600]]    # inside -> whole
    r = Regions(boxes, np.ones(5), ["a"] * 5)
    assert mark_cut(r, tile, frame_w, frame_h).cut.tolist() == [True, True, True, False, False]
    corner = Tile(0, 0, 768, 768)
    r2 = Regions([[0, 0, 50, 50], [700, 0, 767, 50]], [1, 1], ["a", "a"])
    assert mark_cut(r2, corner, frame_w, frame_h).cut.tolist() == [False, True]
    assert len(mark_cut(Regions.empty(), tile, frame_w, frame_h)) == 0


def test_density_hint_shrinks_tiles():
    assert tile_size_for_density(0) == 768
    assert tile_size_for_density(50) == 768
    dense = tile_size_for_density(400)
    assert 256 <= dense < 768 and dense % 32 == 0
    assert tile_size_for_density(400) >= tile_size_for_density(800)


def test_mark_cut_margin_per_region():
    tile = Tile(0, 0, 768, 768)
    r = Regions([[600, 100, 750, 112], [600, 200, 750, 260]], [1, 1], ["a", "b"])
    assert mark_cut(r, tile, 1920, 1080, margin=[20, 4]).cut.tolist() == [True, False]
