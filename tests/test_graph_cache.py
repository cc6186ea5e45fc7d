"""The graph cache (models/graphcache.py): ONNX Runtime's optimized vision tower kept on disk.

Its gain is measured on base in benchmarks/frame-results.md (session 17); here: a second load
comes from the cache and sees exactly what a load without it sees, a damaged or stale entry is
replaced, a cache that cannot be written is only a warning, and the agent keeps it under its
state dir unless `[model] graph_cache = false`."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx_community  # noqa: E402
from fixtures.make_tiny_model import DEFAULT_OUT as TINY  # noqa: E402
from test_run_stdout import edge_agent, json_lines, make_video  # noqa: E402

from edge_agent.models.convint import uint8_conv_weights  # noqa: E402
from edge_agent.models.engine import EngineOptions, Florence2Engine  # noqa: E402
from edge_agent.models.graphcache import GraphCache  # noqa: E402


def tile():
    return np.random.default_rng(7).integers(0, 255, (300, 420, 3), dtype=np.uint8)


def engine(model=TINY, variant="_int8", **kw):
    return Florence2Engine(EngineOptions(model_dir=model, variant=variant, num_beams=1, max_new_tokens=8, **kw))


def entries(d: Path) -> list[Path]:
    return sorted(d.glob("*.onnx"))


@pytest.mark.parametrize("variant", ["", "_int8"])
def test_a_second_load_comes_from_the_cache_and_sees_the_same(tmp_path, variant):
    plain = engine(variant=variant).image_features([tile()])
    first = engine(variant=variant, graph_cache_dir=str(tmp_path))
    assert first.graph_cache_stats == {"hits": 0, "writes": 1}
    (entry,) = entries(tmp_path)
    assert entry.name.startswith(f"vision_encoder{variant}-")
    assert not list(tmp_path.glob(".*"))  # no staging file left behind
    killed = tmp_path / f".{entry.name}.99999999.tmp"  # what a process killed while writing leaves
    killed.write_bytes(b"partial")
    entry.unlink()
    engine(variant=variant, graph_cache_dir=str(tmp_path))
    assert entries(tmp_path) == [entry] and not killed.exists()
    second = engine(variant=variant, graph_cache_dir=str(tmp_path))
    assert second.graph_cache_stats == {"hits": 1, "writes": 0}
    assert entries(tmp_path) == [entry]
    for eng in (first, second):
        assert np.array_equal(eng.image_features([tile()]), plain)


def test_each_frame_of_load_per_stage_reloads_from_the_cache(tmp_path):
    eng = engine(graph_cache_dir=str(tmp_path), load_per_stage=True)
    assert eng.graph_cache_stats == {"hits": 0, "writes": 1}
    for _ in range(2):
        eng.run([tile()], ("od",))
    assert eng.graph_cache_stats == {"hits": 2, "writes": 1}


def test_a_damaged_entry_is_replaced(tmp_path, caplog):
    engine(graph_cache_dir=str(tmp_path))
    (entry,) = entries(tmp_path)
    whole = entry.read_bytes()
    entry.write_bytes(whole[:len(whole) // 2])
    with caplog.at_level(logging.WARNING, logger="edge_agent.models.engine"):
        eng = engine(graph_cache_dir=str(tmp_path))
    assert eng.graph_cache_stats == {"hits": 0, "writes": 1}
    assert f"{entry} cannot be loaded" in caplog.text
    assert entry.read_bytes() == whole
    assert np.array_equal(eng.image_features([tile()]), engine().image_features([tile()]))


def test_a_changed_model_file_gets_a_new_entry_and_the_old_one_goes(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(TINY, model)
    cache = tmp_path / "cache"
    engine(model, graph_cache_dir=str(cache))
    (old,) = entries(cache)
    vision = model / "onnx" / "vision_encoder_int8.onnx"
    st = vision.stat()
    os.utime(vision, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as a new download would
    eng = engine(model, graph_cache_dir=str(cache))
    assert eng.graph_cache_stats == {"hits": 0, "writes": 1}
    (new,) = entries(cache)
    assert new != old
    # another copy of the model elsewhere has entries of its own, which leave this one alone
    engine(TINY, graph_cache_dir=str(cache))
    assert new in entries(cache) and len(entries(cache)) == 2


def test_a_cache_that_cannot_be_written_is_only_a_warning(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="edge_agent.models.graphcache"):
        eng = engine(graph_cache_dir=str(blocker / "cache"))
    assert eng.graph_cache_stats == {"hits": 0, "writes": 0}
    assert "cannot create it" in caplog.text
    assert np.array_equal(eng.image_features([tile()]), engine().image_features([tile()]))


def test_the_key_follows_what_the_optimized_graph_depends_on(tmp_path):
    source = TINY / "onnx" / "vision_encoder_int8.onnx"
    cache = GraphCache(tmp_path, "1.0")
    assert cache.key(source, {"row_bits": 8}) == cache.key(source, {"row_bits": 8})
    assert cache.key(source, {"row_bits": 8}) != cache.key(source, {"row_bits": 7})
    assert cache.key(source, {"row_bits": 8}) != GraphCache(tmp_path, "1.1").key(source, {"row_bits": 8})


@pytest.mark.parametrize("enabled", [True, False])
def test_the_agent_keeps_it_under_its_state_dir(tmp_path, enabled):
    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\ninterval = 0\nstate_dir = "{state}"\n'
                   f'[model]\ndir = "{TINY}"\nvariant = "int8"\nmax_new_tokens = 8\n'
                   f'graph_cache = {"true" if enabled else "false"}\n[mqtt]\nbroker = ""\n')
    p = edge_agent("run", "--config", str(cfg), "--source", str(make_video(tmp_path / "v.avi", 1)), "--once")
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(json_lines(p.stdout)) == 1
    cached = entries(state / "graph-cache")
    assert [e.name.split("-")[0] for e in cached] == (["vision_encoder_int8"] if enabled else [])
    shown = edge_agent("config", "show", "--config", str(cfg))
    assert f"graph_cache = {'true' if enabled else 'false'}" in shown.stdout, shown.stdout


def test_an_entry_whose_writing_failed_is_not_tried_again_in_the_process(tmp_path):
    cache = GraphCache(tmp_path / "cache", "1.0")
    path, hit = cache.entry(TINY / "onnx" / "vision_encoder.onnx", {})
    assert not hit
    staged = cache.staging(path)
    staged.write_bytes(b"partial")
    cache.give_up(path, staged)
    assert not staged.exists()
    assert cache.staging(path) is None
    assert GraphCache(tmp_path / "cache", "1.0").staging(path) is not None  # another process tries again


def test_a_downloads_convinteger_weights_are_still_loaded_as_uint8_from_the_cache(tmp_path_factory):
    """ONNX Runtime writes the graph's own initializers into its optimized copy, not the uint8
    ones models/convint.py hands it, so the engine hands them again when it loads the copy: the
    same weights are found there (else onnx-community's int8 tower would run ConvInteger's slow
    int8-weight kernel, bit for bit the same, several times slower)."""
    model = onnx_community.build(tmp_path_factory.mktemp("oc-gc") / "Florence-2-tiny", suffixes=("_int8",))
    cache = tmp_path_factory.mktemp("cache")
    plain = engine(model).image_features([tile()])
    engine(model, graph_cache_dir=str(cache))
    (entry,) = entries(cache)
    source = uint8_conv_weights(model / "onnx" / "vision_encoder_int8.onnx")
    cached = uint8_conv_weights(entry)
    assert source and sorted(cached) == sorted(source)
    assert all(np.array_equal(cached[k], source[k]) for k in source)
    again = engine(model, graph_cache_dir=str(cache))
    assert again.graph_cache_stats == {"hits": 1, "writes": 0}
    assert np.array_equal(again.image_features([tile()]), plain)


def test_only_the_most_recently_used_entries_stay(tmp_path):
    from edge_agent.models.graphcache import MAX_ENTRIES

    cache = GraphCache(tmp_path / "cache", "1.0")
    paths = []
    for i in range(MAX_ENTRIES):  # a full cache
        source = tmp_path / f"m{i}" / "vision_encoder.onnx"
        source.parent.mkdir()
        source.write_bytes(b"graph")
        path, _ = cache.entry(source, {})
        staged = cache.staging(path)
        staged.write_bytes(b"optimized")
        os.utime(staged, ns=(10**18 + i * 10**9,) * 2)  # written in this order, a second apart, long ago
        cache.commit(path, staged)
        paths.append(path)
        if i == 0:
            first = path
    cache.used(first)  # the oldest, used again since: it stays, the next oldest goes
    source = tmp_path / "late" / "vision_encoder.onnx"
    source.parent.mkdir()
    source.write_bytes(b"graph")
    path, _ = cache.entry(source, {})
    staged = cache.staging(path)
    staged.write_bytes(b"optimized")
    cache.commit(path, staged)
    left = set(entries(tmp_path / "cache"))
    assert left == {first, *paths[2:], path}  # paths[1], the least recently used, went
