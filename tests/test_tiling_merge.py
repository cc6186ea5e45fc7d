"""merge_boxes: cases, edge awareness, scale paths, and agreement with SAHI 0.12.8's numpy postprocess."""
import numpy as np
import pytest

from edge_agent.tiling import merge as M
from edge_agent.tiling.merge import greedy_groups, merge_boxes, rank_order
from edge_agent.tiling.regions import Regions


def suppress(boxes, scores, metric, threshold, groups=None):
    """Greedy NMS as merge_boxes(method="nms") runs it: the kept indices, best first."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return greedy_groups(boxes, rank_order(boxes, scores, None), metric, threshold, groups)[0]


def R(boxes, scores, labels=None, cut=None):
    labels = labels or ["a"] * len(scores)
    return Regions(np.array(boxes, float), scores, labels, cut=cut)


@pytest.mark.parametrize("method", ["nms", "nmm"])
def test_empty(method):
    out = merge_boxes(Regions.empty(), method)
    assert len(out) == 0 and out.boxes.shape == (0, 4)


@pytest.mark.parametrize("method", ["nms", "nmm"])
def test_identical_boxes_collapse(method):
    out = merge_boxes(R([[0, 0, 10, 10]] * 3, [0.2, 0.9, 0.5]), method)
    assert len(out) == 1 and out.scores.tolist() == [0.9]


def test_nested_box_ios_vs_iou():
    r = R([[0, 0, 100, 100], [10, 10, 30, 30]], [0.9, 0.8])
    assert len(merge_boxes(r, "nms", "ios")) == 1  # inside the larger box: IoS 1
    assert len(merge_boxes(r, "nms", "iou")) == 2  # IoU 0.04


def test_chain_of_overlaps_is_greedy():
    # a-b and b-c overlap (IoU 0.6), a-c do not: NMS keeps a and c
    r = R([[0, 0, 10, 10], [2.5, 0, 12.5, 10], [5, 0, 15, 10]], [0.9, 0.8, 0.7])
    out = merge_boxes(r, "nms", "iou", 0.5)
    assert out.boxes[:, 0].tolist() == [0, 5]
    out = merge_boxes(r, "nmm", "iou", 0.5)
    assert len(out) == 2 and out.boxes[0].tolist() == [0, 0, 10, 10]  # whole winner keeps its box
    # when nothing is whole the group's union is kept: a+b -> [0, 12.5], which then matches c
    out = merge_boxes(R(r.boxes, r.scores, cut=[True] * 3), "nmm", "iou", 0.5)
    assert out.boxes.tolist() == [[0, 0, 15, 10]]


def test_several_classes_class_aware_and_agnostic():
    r = R([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]], [0.9, 0.8, 0.7], ["can", "box", "can"])
    out = merge_boxes(r, "nms")
    assert sorted(out.labels) == ["box", "can"]
    assert merge_boxes(r, "nms", class_agnostic=True).labels == ("can",)


def test_equal_scores_break_ties_by_coordinates_then_order():
    r = R([[5, 0, 15, 10], [0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.5, 0.5])
    assert rank_order(r.boxes, r.scores).tolist() == [1, 2, 0]
    out = merge_boxes(r, "nms", "iou", 0.4)  # IoU of the two distinct boxes: 1/3
    assert out.boxes.tolist() == [[0, 0, 10, 10], [5, 0, 15, 10]]
    # input order does not change the result
    out2 = merge_boxes(r.take([2, 0, 1]), "nms", "iou", 0.4)
    assert out2.boxes.tolist() == out.boxes.tolist()


def test_cut_box_loses_to_whole_box_whatever_the_score():
    whole = [100, 100, 200, 180]
    cut_part = [150, 100, 200, 180]
    r = R([cut_part, whole], [0.99, 0.4], cut=[True, False])
    for method in ("nms", "nmm"):
        out = merge_boxes(r, method)
        assert out.boxes.tolist() == [whole] and out.cut.tolist() == [False]
    assert merge_boxes(r, "nmm").scores.tolist() == [0.99]
    # without edge awareness the score decides, and nmm unions
    assert merge_boxes(r, "nms", edge_aware=False).boxes.tolist() == [cut_part]
    assert merge_boxes(r, "nmm", edge_aware=False).boxes.tolist() == [whole]


def test_nmm_rebuilds_object_from_two_cut_parts():
    left, right = [500, 10, 768, 60], [614, 10, 800, 60]  # an object wider than the overlap
    out = merge_boxes(R([left, right], [0.6, 0.7], cut=[True, True]), "nmm")
    assert out.boxes.tolist() == [[500, 10, 800, 60]] and out.scores.tolist() == [0.7]


def test_zero_area_boxes_are_kept_and_match_nothing():
    out = merge_boxes(R([[0, 0, 0, 10], [0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.5, 0.4]), "nms")
    assert len(out) == 2


def test_bad_arguments():
    r = R([[0, 0, 1, 1]], [1.0])
    with pytest.raises(ValueError, match="method"):
        merge_boxes(r, "soft")
    with pytest.raises(ValueError, match="metric"):
        merge_boxes(r, metric="giou")
    with pytest.raises(ValueError, match="threshold"):
        merge_boxes(r, threshold=0)
    with pytest.raises(ValueError, match="finite"):
        merge_boxes(R([[0, 0, np.nan, 1], [0, 0, 1, 1]], [1, 1]))


def random_boxes(rng, n, spread=None, size=60, integer=False):
    spread = spread or max(200, int(np.sqrt(n) * 40))
    xy = rng.uniform(0, spread, (n, 2))
    wh = rng.uniform(1, size, (n, 2))
    b = np.concatenate([xy, xy + wh], 1)
    if integer:
        b = np.round(b)
    return b


def brute_force(boxes, order, metric, thr, groups):
    """The textbook greedy loop, pair by pair."""
    n = len(boxes)
    owner = np.full(n, -1)
    keep = []
    for a in order:
        if owner[a] >= 0:
            continue
        owner[a] = a
        keep.append(a)
        for b in order:
            if owner[b] >= 0 or (groups is not None and groups[a] != groups[b]):
                continue
            inter, denom = M._overlap(boxes[[a]], boxes[[b]], metric)
            if inter[0] > 0 and inter[0] / denom[0] >= thr:
                owner[b] = a
    return keep, owner


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_including_cut_ranking(seed):
    rng = np.random.default_rng(seed)
    n = 300
    b = random_boxes(rng, n, spread=400, integer=seed % 2 == 0)
    scores = np.round(rng.uniform(0, 1, n), 1)
    cut = rng.uniform(size=n) < 0.3
    groups = rng.integers(0, 3, n) if seed % 3 else None
    metric = ("iou", "ios")[seed % 2]
    order = rank_order(b, scores, cut)
    keep, owner = greedy_groups(b, order, metric, 0.4, groups)
    keep_ref, owner_ref = brute_force(b, order, metric, 0.4, groups)
    assert keep.tolist() == keep_ref
    assert owner.tolist() == owner_ref.tolist()


def test_piled_up_boxes_use_survivor_loop(monkeypatch):
    rng = np.random.default_rng(1)
    b = np.tile([100.0, 100, 200, 200], (400, 1)) + rng.normal(0, 3, (400, 4))
    b = np.vstack([b, random_boxes(rng, 100, spread=2000, size=40) + 500])
    scores = rng.uniform(size=len(b))
    order = rank_order(b, scores)
    ref = greedy_groups(b, order, "iou", 0.5)
    monkeypatch.setattr(M, "_MAX_PAIRS", 1000)
    assert M.match_pairs(b, "iou", 0.5) is None
    keep, owner = greedy_groups(b, order, "iou", 0.5)
    assert keep.tolist() == ref[0].tolist() and owner.tolist() == ref[1].tolist()


def test_long_chain_falls_back_to_sequential_settling(monkeypatch):
    # 200 boxes in a line, each overlapping the next: each pass settles ~2
    x = np.arange(200) * 6.0
    b = np.column_stack([x, np.zeros(200), x + 10, np.full(200, 10.0)])
    scores = np.linspace(1, 0.5, 200)
    monkeypatch.setattr(M, "_MAX_PASSES", 5)
    keep = suppress(b, scores, "iou", 0.2)
    assert keep.tolist() == list(range(0, 200, 2))


def test_large_input_with_huge_boxes():
    rng = np.random.default_rng(3)
    b = random_boxes(rng, 10000, spread=3000, size=60)
    b[:5] = [[0, 0, 3000, 3000]] * 5  # a few huge boxes among small ones
    scores = rng.uniform(size=len(b))
    keep = suppress(b, scores, "iou", 0.5)
    assert 0 < len(keep) < len(b)
    assert len(M.match_pairs(b, "iou", 0.5)[0]) < 100_000


# --- peer agreement: SAHI 0.12.8 numpy backend (torchvision cannot sit beside torch 2.13 here)

sahi_combine = pytest.importorskip("sahi.postprocess.combine")


@pytest.fixture(scope="module", autouse=True)
def sahi_numpy_backend():
    from sahi.postprocess.backends import set_postprocess_backend
    set_postprocess_backend("numpy")


CASES = [(n, metric, thr, seed) for seed, (n, metric, thr) in enumerate(
    [(40, "iou", 0.5), (300, "ios", 0.5), (300, "iou", 0.3), (1000, "ios", 0.7), (2500, "iou", 0.5),
     (2500, "ios", 0.5), (300, "ios", 1.0), (600, "iou", 0.1)])]


def preds(seed, n, integer=False):
    rng = np.random.default_rng(100 + seed)
    b = random_boxes(rng, n, integer=integer)
    scores = rng.uniform(size=n) if not integer else rng.choice([0.3, 0.6, 0.9], n)
    classes = rng.integers(0, 4, n)
    return b, scores, classes, np.column_stack([b, scores, classes])


@pytest.mark.parametrize("n,metric,thr,seed", CASES)
@pytest.mark.parametrize("integer", [False, True])
def test_nms_agrees_with_sahi(n, metric, thr, seed, integer):
    b, s, c, p = preds(seed, n, integer)
    ref = sahi_combine.nms(p, metric.upper(), thr)
    assert suppress(b, s, metric, thr).tolist() == ref  # same order too
    ref = sahi_combine.batched_nms(p, metric.upper(), thr)
    assert sorted(suppress(b, s, metric, thr, groups=c).tolist()) == sorted(ref)


@pytest.mark.parametrize("n,metric,thr,seed", CASES)
@pytest.mark.parametrize("integer", [False, True])
def test_greedy_nmm_groups_agree_with_sahi(n, metric, thr, seed, integer):
    b, s, c, p = preds(seed, n, integer)
    for groups, ref in ((None, sahi_combine.greedy_nmm(p, metric.upper(), thr)),
                        (c, sahi_combine.batched_greedy_nmm(p, metric.upper(), thr))):
        keep, owner = greedy_groups(b, rank_order(b, s), metric, thr, groups)
        mine = {int(k): sorted(np.flatnonzero((owner == k) & (np.arange(n) != k)).tolist()) for k in keep}
        assert mine == {k: sorted(v) for k, v in ref.items()}


def test_nmm_union_agrees_with_sahi_greedy_nmm_postprocess():
    """Without edge awareness merge_boxes(nmm) is SAHI's score-ranked greedy NMM with unions."""
    from sahi.postprocess.combine import GreedyNMMPostprocess
    from sahi.prediction import ObjectPrediction

    rng = np.random.default_rng(7)
    objs = random_boxes(rng, 60, spread=1500, size=80)
    b = np.repeat(objs, 3, 0) + rng.normal(0, 1.5, (180, 4))
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 2)
    b = np.round(b)
    s = rng.uniform(0.3, 1, len(b))
    labels = [("can", "box")[i % 2] for i in range(60) for _ in range(3)]
    ours = merge_boxes(Regions(b, s, labels, cut=rng.uniform(size=len(b)) < 0.5), "nmm", "ios", 0.5, edge_aware=False)
    ops = [ObjectPrediction(bbox=bb.tolist(), category_id=labels[i] == "box", category_name=labels[i],
                            score=float(s[i]), shift_amount=[0, 0], full_shape=[2000, 2000]) for i, bb in enumerate(b)]
    theirs = GreedyNMMPostprocess(0.5, "IOS", class_agnostic=False)(ops)
    got = sorted(map(tuple, np.round(ours.boxes, 3).tolist()))
    want = sorted(tuple(round(v, 3) for v in o.bbox.to_xyxy()) for o in theirs)
    assert got == want


@pytest.mark.parametrize("seed", range(4))
def test_match_pairs_equal_the_dense_pair_set(seed):
    rng = np.random.default_rng(50 + seed)
    b = random_boxes(rng, 400, spread=600, size=80, integer=seed % 2 == 1)
    b[:3] = [[0, 0, 700, 700], [10, 10, 10, 50], [300, 0, 310, 700]]  # huge, zero-area, tall
    groups = rng.integers(0, 2, len(b)) if seed >= 2 else None
    metric = ("iou", "ios")[seed % 2]
    i, j = M.match_pairs(b, metric, 0.3, groups)
    got = set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist()))
    assert len(got) == len(i)
    a, c = np.triu_indices(len(b), 1)
    inter, denom = M._overlap(b[a], b[c], metric)
    ok = inter > 0
    ok[ok] = inter[ok] / denom[ok] >= 0.3
    if groups is not None:
        ok &= groups[a] == groups[c]
    assert got == set(zip(a[ok].tolist(), c[ok].tolist()))


@pytest.mark.parametrize("seed", range(3))
def test_rank_order_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    n = 500
    b = np.round(random_boxes(rng, n, spread=100, size=20))
    scores = rng.choice([0.2, 0.5, 0.9], n)
    cut = rng.uniform(size=n) < 0.4
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    key = lambda i: (cut[i], -area[i] if cut[i] else 0.0, -scores[i], *b[i], i)
    assert rank_order(b, scores, cut).tolist() == sorted(range(n), key=key)
    assert rank_order(b, scores).tolist() == sorted(range(n), key=lambda i: (-scores[i], *b[i], i))
