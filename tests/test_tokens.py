"""The run-time tokenizer (models/tokens.py) gives what transformers' AutoTokenizer gives."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.models.modeldir import BUNDLED_TOKENIZER, open_model_dir
from edge_agent.models.parse import parse_task
from edge_agent.models.prompts import prompt_for
from edge_agent.models.tokens import LeanTokenizer, Tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny-florence2"


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The lean tokenizer on tokenizer.json, and transformers' built from vocab.json + merges.txt only."""
    from transformers import AutoTokenizer

    src = tmp_path_factory.mktemp("slow")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(BUNDLED_TOKENIZER / name, src / name)
    ref = AutoTokenizer.from_pretrained(str(src), clean_up_tokenization_spaces=False)
    return LeanTokenizer(BUNDLED_TOKENIZER / "tokenizer.json"), ref


def test_ids_and_sizes_equal_transformers(both):
    lean, ref = both
    assert len(lean) == len(ref) == 51289
    for text in [prompt_for(t) for t in ("od", "ocr")] + ["<loc_0><loc_999> café ✓ 42  spaces", "<od></od>"]:
        assert lean(text)["input_ids"] == ref(text)["input_ids"], text
        assert lean(text, add_special_tokens=False)["input_ids"] == ref(text, add_special_tokens=False)["input_ids"]
    assert sorted(lean.all_special_tokens) == sorted(ref.all_special_tokens)


def test_both_offer_the_tokenizer_protocol(both):
    members = set(Tokenizer.__annotations__) | {n for n, v in vars(Tokenizer).items() if callable(v)
                                                and (not n.startswith("_") or n in ("__len__", "__call__"))}
    assert members == {"all_special_tokens", "backend_tokenizer", "__len__", "__call__", "decode",
                       "convert_ids_to_tokens", "convert_tokens_to_string"}
    for tok in both:
        assert all(hasattr(tok, m) for m in members), type(tok).__name__


def test_decode_and_tokens_equal_transformers(both):
    lean, ref = both
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, len(ref), 40).tolist() for _ in range(30)]
    seqs.append(ref("bottle<loc_1><loc_2><loc_30><loc_40>é 中文")["input_ids"])
    for ids in seqs:
        assert lean.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False)
        assert lean.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
    assert lean.convert_tokens_to_string(["Ġcaf", "Ã©"]) == ref.convert_tokens_to_string(["Ġcaf", "Ã©"])


def test_parser_gives_the_same_regions(both):
    lean, ref = both
    ids = ref("</s><s>milk<loc_10><loc_20><loc_300><loc_400>bread<loc_500><loc_1><loc_900><loc_90></s>",
              add_special_tokens=False)["input_ids"]
    probs = [0.9] * len(ids)
    a = parse_task("od", ids, probs, lean, image_size=(640, 480))
    b = parse_task("od", ids, probs, ref, image_size=(640, 480))
    assert a.labels == b.labels and len(a.labels) == 2
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_model_dirs_load_the_lean_tokenizer():
    assert isinstance(open_model_dir(TINY).load_tokenizer(), LeanTokenizer)


def test_engine_does_not_import_transformers():
    code = ("import sys; from models.engine import EngineOptions, Florence2Engine; import numpy as np\n"
            f"e = Florence2Engine(EngineOptions(model_dir={str(TINY)!r}, max_new_tokens=4))\n"
            "e.run([np.zeros((64, 64, 3), np.uint8)])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
