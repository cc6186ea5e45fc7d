"""Generation settings (generation_config.json honoured as transformers does) and the numpy
logits processors against transformers' own processors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.models.errors import ModelDirError, ModelSettingError
from edge_agent.models.generation import GenerationSettings, NgramIndex, banned_ngram_tokens, process_scores

TINY = Path(__file__).resolve().parent / "fixtures" / "tiny-florence2"


def test_florence2_published_settings_from_fixture():
    s = GenerationSettings.from_dir(TINY)
    assert (s.decoder_start_token_id, s.forced_bos_token_id, s.forced_eos_token_ids) == (2, 0, (2,))
    assert (s.no_repeat_ngram_size, s.num_beams, s.early_stopping, s.eos_token_ids) == (3, 3, True, (2,))
    assert s.max_new_tokens == 1024 and s.max_length == 1025


def test_overrides_and_none_passthrough():
    s = GenerationSettings.from_dir(TINY, num_beams=None, max_new_tokens=7)
    assert (s.num_beams, s.max_new_tokens) == (3, 7)
    assert GenerationSettings.from_dir(TINY, num_beams=1).num_beams == 1
    with pytest.raises(ModelSettingError, match="num_beams"):
        GenerationSettings.from_dir(TINY, num_beams=0)
    with pytest.raises(ModelSettingError, match="bogus"):
        GenerationSettings.from_dir(TINY, bogus=1)


def test_falls_back_to_config_text_config(tmp_path):
    cfg = {"text_config": {"decoder_start_token_id": 2, "eos_token_id": 2, "num_beams": 4,
                           "no_repeat_ngram_size": 2, "forced_bos_token_id": 0}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    s = GenerationSettings.from_dir(tmp_path)
    assert (s.num_beams, s.no_repeat_ngram_size, s.forced_bos_token_id, s.forced_eos_token_ids) == (4, 2, 0, ())


def test_bad_generation_config_names_the_file(tmp_path):
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="generation_config.json"):
        GenerationSettings.from_dir(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"num_beams": "three"}))
    with pytest.raises(ModelDirError, match="generation_config.json"):
        GenerationSettings.from_dir(tmp_path)


def test_no_repeat_ngram_matches_transformers():
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    rng = np.random.default_rng(0)
    for n in (2, 3, 4):
        ids = rng.integers(0, 6, (5, 30))
        scores = rng.standard_normal((5, 8)).astype(np.float32)
        ref = NoRepeatNGramLogitsProcessor(n)(torch.from_numpy(ids), torch.from_numpy(scores)).numpy()
        s = GenerationSettings(no_repeat_ngram_size=n)
        np.testing.assert_array_equal(process_scores(scores, ids, s), ref)
    assert list(banned_ngram_tokens(np.array([2, 5, 7, 5]), 2)) == [7]


def test_ngram_index_bans_what_the_scan_bans():
    """The greedy decode's incremental index against banned_ngram_tokens' scan of the whole
    sequence, as rows grow one token a step and leave the batch."""
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 4):
        seqs = rng.integers(0, 5, (6, 2))  # a start of 2 tokens, shorter than n for n > 2
        index = NgramIndex(seqs, n)
        for step in range(40):
            for r in range(len(seqs)):
                assert sorted(index.banned(r, seqs[r])) == sorted(banned_ngram_tokens(seqs[r], n).tolist())
            scores = rng.standard_normal((len(seqs), 7)).astype(np.float32)
            s = GenerationSettings(no_repeat_ngram_size=n)
            np.testing.assert_array_equal(process_scores(scores, seqs, s, ngrams=index),
                                          process_scores(scores, seqs, s))
            seqs = np.concatenate([seqs, rng.integers(0, 5, (len(seqs), 1))], axis=1)
            index.add(seqs)
            if step in (10, 25):  # rows leave the batch
                keep = np.flatnonzero(rng.random(len(seqs)) < 0.7)
                seqs = seqs[keep]
                index.select(keep)


def test_forced_and_min_length_processors():
    s = GenerationSettings(forced_bos_token_id=0, forced_eos_token_ids=(2,), max_new_tokens=4, min_new_tokens=2)
    scores = np.zeros((1, 6), np.float32)
    first = process_scores(scores, np.array([[2]]), s)
    assert first[0, 0] == 0 and np.isneginf(first[0, 1:]).all()
    early = process_scores(scores, np.array([[2, 0]]), s)
    assert np.isneginf(early[0, 2]) and early[0, 3] == 0  # EOS banned before min_new_tokens
    last = process_scores(scores, np.array([[2, 0, 3, 4]]), s)  # cur_len == max_length - 1
    assert last[0, 2] == 0 and np.isneginf(np.delete(last[0], 2)).all()


def test_engine_rejects_budget_beyond_decoder_positions():
    from edge_agent.models.engine import EngineOptions, Florence2Engine

    with pytest.raises(ModelSettingError, match="max_position_embeddings"):
        Florence2Engine(EngineOptions(model_dir=TINY, max_new_tokens=5000))


def test_unknown_provider_is_config_error_and_missing_ones_are_skipped():
    from edge_agent.models.engine import resolve_providers

    assert resolve_providers(("cuda", "cpu"))[-1] == "CPUExecutionProvider"
    with pytest.raises(ModelSettingError, match="gpu-please"):
        resolve_providers(("gpu-please",))


def test_beam_topk_over_rows_is_the_flat_topk():
    """Beam search's candidates (models/generate.py _topk_rows): the k largest of a [K, V] array's
    flat values, largest first and lowest index first among equals, -inf rows included, as the
    flat argpartition it replaces gives them (the same values; the same indices where no ties)."""
    from edge_agent.models.generate import _topk, _topk_rows

    rng = np.random.default_rng(0)
    for t in range(600):
        rows, vocab, k = int(rng.integers(1, 5)), int(rng.integers(1, 40)), int(rng.integers(1, 9))
        a = rng.standard_normal((rows, vocab)).astype(np.float32)
        if t % 3 == 0:
            a[rng.random((rows, vocab)) < 0.7] = -np.inf  # banned tokens, forced steps
        if t % 5 == 0:
            a = np.round(a)  # ties
        flat = a.reshape(-1).copy()
        idx, vals = _topk_rows(a.copy(), k)
        want = np.lexsort((np.arange(len(flat)), -flat))[:min(k, len(flat))]
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_array_equal(vals, flat[want])
        np.testing.assert_array_equal(flat[_topk(flat, k)], vals)
        if len(np.unique(flat)) == len(flat):
            np.testing.assert_array_equal(_topk(flat, k), idx)
