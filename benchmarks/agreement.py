"""How closely a quantized variant follows fp32: free-running and teacher-forced token agreement.

    python benchmarks/agreement.py MODEL_DIR [--variants int8,q4] [--image IMG ...] [--tile 768] [--tokens 256]
    python benchmarks/agreement.py /tmp/run/model --variants int8,q4 --image shelf384.jpg   # a trained model
    python benchmarks/agreement.py MODEL_DIR --variants int8:8,int8:7   # the int8 decoders' activations at 8 and 7 bits

Each image (default: the sample shelf, tests/fixtures/sample/shelf.jpg) is cut into tiles of --tile
pixels (tiling.plan.plan_tiles, at most --max-tiles in all), and each tile runs `<OD>` and
`<OCR_WITH_REGION>` greedy, as the agent runs them.

- **Free-running:** each variant generates on its own; the share of positions where its token
  equals fp32's, and the mean common prefix.  One early difference shifts everything after it,
  so this understates how close the variants are.
- **Teacher-forced:** fp32's own sequence is fed to every variant (and to fp32), one token at a
  time, and at each position the raw logits' argmax is compared with fp32's argmax at the same
  prefix.  This is the next-token agreement: a difference here is the variant's own, not an
  echo of an earlier one.  Also printed: how often fp32's top-1 is within the variant's top-5,
  and the mean margin of fp32's top-1 over its top-2 where the two disagree (small margins are
  near ties, which any rounding flips).

- **Errors against fp32** (relative L2, teacher-forced): the image features, the text encoder's
  hidden states, the logits at each position, and the logits of the variant's decoder alone (fed
  fp32's encoder states).  Unlike token agreement these mean something
  on random weights too; they show where a variant's rounding (or an int8 kernel's clipping,
  models/cpu.py) enters.

Random weights make logits near ties everywhere, so their agreement is low whatever the
quantizer; only a model that sees gives a meaningful number.  Not a test; no timings.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from edge_agent.models.cpu import int8_isa  # noqa: E402
from edge_agent.models.engine import EngineOptions, Florence2Engine  # noqa: E402
from edge_agent.tiling.plan import plan_tiles  # noqa: E402
from frame import agreement as free_agreement  # noqa: E402  (the frame benchmark's free-running agreement)

TASKS = ("od", "ocr")
DEFAULT_IMAGE = ROOT / "tests" / "fixtures" / "sample" / "shelf.jpg"


def load_tiles(image: Path, side: int, max_tiles: int) -> list[np.ndarray]:
    import cv2

    bgr = cv2.imread(str(image))
    if bgr is None:
        raise SystemExit(f"{image}: not an image")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    tiles = plan_tiles(rgb.shape[1], rgb.shape[0], side, 0.2)[:max_tiles]
    return [rgb[t.y0:t.y1, t.x0:t.x1] for t in tiles]


def engine_for(model: str, variant: str, tokens: int) -> Florence2Engine:
    """`variant`, or `variant:BITS` with the per-row decoders' activations at BITS (7 or 8;
    EngineOptions.row_activation_bits; without it: chosen by this CPU)."""
    name, _, bits = variant.partition(":")
    return Florence2Engine(EngineOptions(model_dir=model, variant=name, num_beams=1, max_new_tokens=tokens,
                                         row_activation_bits=int(bits or 0)))


def free_running(engine: Florence2Engine, tiles) -> list[list[int]]:
    out = engine.run(tiles, TASKS)
    return [list(o[t].token_ids) for o in out for t in TASKS]


def forced_logits(engine: Florence2Engine, tiles, sequences: list[list[int]], stages: dict | None = None,
                  encoded: tuple | None = None) -> list[np.ndarray]:
    """Per (tile, task) row: the logits [len(seq) - 1, V] at each prefix of the given sequence.
    `stages`, if given, receives the image features and the encoder's hidden states; `encoded`
    (hidden, mask), if given, replaces this engine's vision and encoder (its decoder alone)."""
    if encoded is None:
        feats = engine.image_features(list(tiles))
        hidden, mask = engine.encode(feats, TASKS)
        if stages is not None:
            stages.update(features=np.array(feats, np.float32), hidden=np.array(hidden, np.float32), mask=mask)
    else:
        hidden, mask = encoded
    out = []
    for r, ids in enumerate(sequences):
        logits, cache = engine.runner.first(np.asarray(ids[:1], np.int64), hidden[r:r + 1], mask[r:r + 1], len(ids))
        rows = [np.array(logits[0], np.float32)]
        for tok in ids[1:-1]:
            rows.append(np.array(engine.runner.step(np.asarray([tok], np.int64), cache)[0], np.float32))
        out.append(np.stack(rows))
    return out


def rel_error(ref: np.ndarray, var: np.ndarray) -> float:
    """Relative L2 error of var against ref."""
    return float(np.linalg.norm((var - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-30))


def logits_error(ref: list[np.ndarray], var: list[np.ndarray]) -> float:
    """Mean over positions of the logits' relative L2 error."""
    return float(np.mean([rel_error(r[i], v[i]) for r, v in zip(ref, var) for i in range(len(r))]))


def stage_errors(ref_stages: dict, stages: dict) -> dict:
    """Relative L2 errors against fp32: the image features, the encoder's hidden states (unmasked
    positions)."""
    keep = ref_stages["mask"].astype(bool)
    return {"features": rel_error(ref_stages["features"], stages["features"]),
            "hidden": rel_error(ref_stages["hidden"][keep], stages["hidden"][keep])}


def forced_agreement(ref: list[np.ndarray], var: list[np.ndarray]) -> dict:
    top1 = np.concatenate([r.argmax(1) for r in ref])
    got = np.concatenate([v.argmax(1) for v in var])
    top5 = np.concatenate([np.argsort(-v, axis=1)[:, :5] for v in var])
    ref_all = np.concatenate(ref)
    two = np.sort(ref_all, axis=1)[:, -2:]
    margin = two[:, 1] - two[:, 0]
    differ = top1 != got
    return {"positions": int(len(top1)), "top1": float((~differ).mean()),
            "in_top5": float((top5 == top1[:, None]).any(1).mean()),
            "margin_where_differ": float(margin[differ].mean()) if differ.any() else 0.0,
            "margin_median": float(np.median(margin))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--variants", default="int8,q4")
    ap.add_argument("--image", action="append", help="repeatable (default: the sample shelf)")
    ap.add_argument("--tile", type=int, default=0, help="tile side (default: the model's input side)")
    ap.add_argument("--max-tiles", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256, help="max new tokens per sequence")
    a = ap.parse_args(argv)
    fp32 = engine_for(a.model, "fp32", a.tokens)
    side = a.tile or int(fp32.pre_cfg.size[0])
    images = a.image or [str(DEFAULT_IMAGE)]
    tiles = [t for im in images for t in load_tiles(Path(im), side, a.max_tiles)][:a.max_tiles]
    print(f"model {a.model}, {len(tiles)} tiles of {side} from {len(images)} image(s), tasks {','.join(TASKS)}, greedy, "
          f"up to {a.tokens} tokens")
    ref_seqs = free_running(fp32, tiles)
    ref_stages: dict = {}
    ref_logits = forced_logits(fp32, tiles, ref_seqs, ref_stages)
    own = np.mean(np.concatenate([r.argmax(1) == np.asarray(s[1:]) for r, s in zip(ref_logits, ref_seqs)]))
    print(f"fp32: {sum(len(s) for s in ref_seqs)} tokens in {len(ref_seqs)} sequences; its teacher-forced argmax "
          f"is its own next token at {100 * own:.1f}% of positions (the rest: tokens that generation's "
          f"processors chose); median top-1 margin {forced_agreement(ref_logits, ref_logits)['margin_median']:.2f}")
    print(f"int8 instructions: {int8_isa()}; a variant:BITS row sets the int8 decoders' activation bits "
          "(row_activation_bits), without it the CPU chooses")
    print("| variant | free-running tokens equal | common prefix | teacher-forced top-1 | fp32's top-1 in top-5 "
          "| fp32 margin where they differ | error vs fp32: image features / encoder / logits / logits of its "
          "decoder alone (relative L2) |")
    print("|---|---|---|---|---|---|---|")
    encoded = (ref_stages["hidden"], ref_stages["mask"])
    for name in [v for v in a.variants.split(",") if v]:
        eng = engine_for(a.model, name, a.tokens)
        tok, prefix = free_agreement(free_running(eng, tiles), ref_seqs)
        stages: dict = {}
        var_logits = forced_logits(eng, tiles, ref_seqs, stages)
        f = forced_agreement(ref_logits, var_logits)
        e = stage_errors(ref_stages, stages)
        alone = logits_error(ref_logits, forced_logits(eng, tiles, ref_seqs, encoded=encoded))
        print(f"| {name} (activations {eng.row_bits}-bit) | {100 * tok:.1f}% | {100 * prefix:.1f}% "
              f"| {100 * f['top1']:.1f}% of {f['positions']} | {100 * f['in_top5']:.1f}% "
              f"| {f['margin_where_differ']:.2f} | {100 * e['features']:.2f}% / {100 * e['hidden']:.2f}% "
              f"/ {100 * logits_error(ref_logits, var_logits):.2f}% / {100 * alone:.2f}% |")
        del eng
    return 0


if __name__ == "__main__":
    sys.exit(main())
