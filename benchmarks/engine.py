"""Engine benchmark: ONNX Runtime fp32 and int8 against transformers' PyTorch fp32 `generate`.

    python benchmarks/engine.py            # full-size Florence-2-base architecture, random weights
    python benchmarks/engine.py --quick    # tiny architecture, a smoke run of the same code

Builds the model (`models.export.random_model`, seeded; exported once into --workdir and
quantized to int8 there), then runs each contender in its own process so that peak RSS is
its own: vision s/tile, text-encoder s/tile, first decoder step, decode ms/step at batch 1
and batch 6 (greedy, forced length: min_new_tokens = max_new_tokens), and one end-to-end
6-tile batch (vision + encoder + decode).  Prints a table, the ratios, and last
`speedup_vs_transformers: X.Xx` (end-to-end 6-tile batch, ORT int8 vs transformers fp32).
Not a test: run it by hand on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import shutil
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edge_agent.bench import peak_rss_mb  # noqa: E402  (VmHWM: a child's own peak, not its parent's)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="base", choices=("tiny", "base", "large"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiles", type=int, default=6, help="batch size of the end-to-end run and the batch decode")
    p.add_argument("--new-tokens", type=int, default=128, help="forced generated length")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for ORT and torch (0: all cores)")
    p.add_argument("--workdir", default="/tmp/edge-agent-bench", help="where the exported model is kept")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny architecture, 16 tokens: checks the script runs")
    p.add_argument("--child", choices=("prepare", "ort", "hf"), help=argparse.SUPPRESS)
    p.add_argument("--variant", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.arch, args.new_tokens = "tiny", 16
    return args


def model_dir(args) -> Path:
    return Path(args.workdir) / f"florence2-{args.arch}-seed{args.seed}"


def synthetic_tiles(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:768, 0:768]
    tiles = []
    for i in range(n):
        base = np.stack([(xx * (i + 1)) % 256, (yy * (i + 2)) % 256, (xx + yy + 40 * i) % 256], -1)
        tiles.append(np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8))
    return tiles


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


# -- children ----------------------------------------------------------------------------
def child_prepare(args) -> dict:
    out = model_dir(args)
    if not (out / "onnx" / "decoder_model_merged.onnx").is_file():
        from edge_agent.models.export import export_random

        export_random(args.arch, args.seed, out)
    if not (out / "tokenizer.json").is_file():  # a model prepared before the lean tokenizer
        from edge_agent.models.modeldir import BUNDLED_TOKENIZER

        shutil.copyfile(BUNDLED_TOKENIZER / "tokenizer.json", out / "tokenizer.json")
    if not (out / "onnx" / "decoder_step.onnx").is_file():  # a model prepared before the fast decoder
        from edge_agent.models.export import export_fast_decoder, random_model

        export_fast_decoder(random_model(args.arch, args.seed), out / "onnx")
    if not (out / "onnx" / "decoder_model_merged_int8.onnx").is_file():
        from edge_agent.models.quantize import quantize_dir

        quantize_dir(out, "int8")
    elif not (out / "onnx" / "decoder_step_int8.onnx").is_file():
        from edge_agent.models.quantize import quantize_dir
        from edge_agent.models.modeldir import FAST_PARTS

        quantize_dir(out, "int8", parts=FAST_PARTS)
    elif not _rows_int8(out / "onnx" / "decoder_step_int8.onnx"):  # quantized before session 11
        from edge_agent.models.quantize import quantize_dir

        quantize_dir(out, "int8")
    return {"dir": str(out)}


def _rows_int8(path: Path) -> bool:
    """Whether an int8 decoder has today's per-row int8 matmuls (models/rowquant.py)."""
    from edge_agent.models.onnxmeta import read_graph_meta

    return "MatMulIntegerToFloat" in read_graph_meta(path).op_types


def block_torch() -> None:
    """Make torch unimportable, as on an edge device (transformers' tokenizer would import it)."""
    import importlib.abc
    import importlib.util

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)")

    find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda n, p=None: None if n.split(".")[0] in ("torch", "torchvision") \
        else find_spec(n, p)
    sys.meta_path.insert(0, Block())


def child_ort(args) -> dict:
    block_torch()
    from edge_agent.models.engine import EngineOptions, Florence2Engine
    from edge_agent.models.generate import generate
    from edge_agent.models.preprocess import preprocess

    n = args.new_tokens
    eng = Florence2Engine(EngineOptions(model_dir=model_dir(args), variant=args.variant, num_beams=1,
                                        max_new_tokens=n, intra_op_threads=args.threads))
    forced = eng.settings.with_overrides(min_new_tokens=n, num_beams=1)
    tiles = synthetic_tiles(args.tiles)
    pixels = preprocess(tiles, eng.pre_cfg)
    warm = eng.image_features(pixels[:1])  # warm-up: session initialisation, allocator
    generate(eng.runner, *eng.encode(warm, ("od",)), forced.with_overrides(max_new_tokens=2, min_new_tokens=2))
    feats, t_vis = timed(eng.image_features, pixels)
    (hidden, mask), t_enc = timed(eng.encode, feats, ("od",))
    res = {"vision_s_tile": t_vis / len(tiles), "encoder_s_tile": t_enc / len(tiles)}
    for b in (1, len(tiles)):
        _, t_first = timed(eng.runner.first, np.full(b, 2, np.int64), hidden[:b], mask[:b])
        seqs, t_gen = timed(generate, eng.runner, hidden[:b], mask[:b], forced)
        assert all(len(s.ids) == n + 1 for s in seqs)
        res[f"first_step_ms_b{b}"] = 1000 * t_first
        res[f"decode_ms_step_b{b}"] = 1000 * (t_gen - t_first) / (n - 1)
        if b == len(tiles):
            res["e2e_s"] = t_vis + t_enc + t_gen
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def child_hf(args) -> dict:
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    from edge_agent.models.export import random_model
    from edge_agent.models.generation import GenerationSettings
    from edge_agent.models.modeldir import open_model_dir
    from edge_agent.models.preprocess import PreprocessConfig, preprocess
    from edge_agent.models.prompts import prompt_for

    if args.threads:
        torch.set_num_threads(args.threads)
    n, mdir = args.new_tokens, model_dir(args)
    model = random_model(args.arch, args.seed)
    tok = open_model_dir(mdir, "").load_tokenizer()
    kw = GenerationSettings.from_dir(mdir, num_beams=1, max_new_tokens=n, min_new_tokens=n).to_transformers()
    tiles = synthetic_tiles(args.tiles)
    px = torch.from_numpy(preprocess(tiles, PreprocessConfig.from_dir(mdir)))
    ids = torch.tensor([tok(prompt_for("od"))["input_ids"]] * len(tiles))
    input_ids = torch.cat([torch.full((len(tiles), 577), model.config.image_token_id), ids], 1)
    lm = model.model.language_model
    with torch.inference_mode():
        model.get_image_features(px[:1])  # warm-up
        feats, t_vis = timed(lambda: model.get_image_features(px).pooler_output)
        embeds = torch.cat([feats, lm.encoder.embed_tokens(ids)], 1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        hidden, t_enc = timed(lambda: lm.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state)
        res = {"vision_s_tile": t_vis / len(tiles), "encoder_s_tile": t_enc / len(tiles)}
        for b in (1, len(tiles)):
            enc = BaseModelOutput(last_hidden_state=hidden[:b])
            one = dict(kw, max_new_tokens=1, min_new_tokens=None, forced_eos_token_id=None)
            _, t_first = timed(model.generate, encoder_outputs=enc, attention_mask=mask[:b], **one)
            out, t_gen = timed(model.generate, encoder_outputs=BaseModelOutput(last_hidden_state=hidden[:b]),
                               attention_mask=mask[:b], **kw)
            assert out.shape[1] == n + 1, out.shape
            res[f"first_step_ms_b{b}"] = 1000 * t_first
            res[f"decode_ms_step_b{b}"] = 1000 * (t_gen - t_first) / (n - 1)
        out, t_e2e = timed(model.generate, input_ids=input_ids, pixel_values=px, **kw)
        assert out.shape[1] == n + 1, out.shape
        res["e2e_s"] = t_e2e
    res["peak_rss_mb"] = peak_rss_mb()
    return res


# -- parent ------------------------------------------------------------------------------
def run_child(args, mode: str, variant: str = "") -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--variant", variant, "--arch", args.arch,
           "--seed", str(args.seed), "--tiles", str(args.tiles), "--new-tokens", str(args.new_tokens),
           "--threads", str(args.threads), "--workdir", args.workdir]
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"benchmark child {mode} {variant} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    from edge_agent.models.cpu import int8_isa

    return (f"{cpu} ({int8_isa()}), {os.cpu_count()} logical cores, Python {platform.python_version()}, "
            f"onnxruntime {onnxruntime.__version__}")


COLUMNS = [("vision_s_tile", "vision s/tile", "{:.3f}"), ("encoder_s_tile", "encoder s/tile", "{:.3f}"),
           ("decode_ms_step_b1", "decode ms/step b1", "{:.1f}"), ("decode_ms_step_b6", "decode ms/step b{B}", "{:.1f}"),
           ("first_step_ms_b6", "first step ms b{B}", "{:.1f}"), ("e2e_s", "e2e {B} tiles s", "{:.2f}"),
           ("peak_rss_mb", "peak RSS MB", "{:.0f}")]


def print_table(rows: dict, tiles: int) -> None:
    names = [label.format(B=tiles) for _, label, _ in COLUMNS]
    print(f"{'':<18}" + "".join(f"{n:>20}" for n in names))
    for who, r in rows.items():
        cells = "".join(f"{fmt.format(r[key.replace('b6', f'b{tiles}')]):>20}" for key, _, fmt in COLUMNS)
        print(f"{who:<18}" + cells)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        fn = {"prepare": child_prepare, "ort": child_ort, "hf": child_hf}[args.child]
        print(json.dumps(fn(args)))
        return
    print(f"machine: {machine()}")
    t = time.perf_counter()
    run_child(args, "prepare")
    print(f"model: Florence-2 {args.arch} architecture, random weights (seed {args.seed}), {model_dir(args)} "
          f"(prepared in {time.perf_counter() - t:.0f} s)")
    print(f"workload: {args.tiles} tiles 768x768, task od, greedy, {args.new_tokens} new tokens forced "
          f"(min_new_tokens = max_new_tokens), threads {args.threads or 'default'}")
    rows = {"ort fp32": run_child(args, "ort", ""), "ort int8": run_child(args, "ort", "_int8")}
    if not args.skip_transformers:
        rows["transformers fp32"] = run_child(args, "hf")
    print_table(rows, args.tiles)
    if "transformers fp32" not in rows:
        return
    hf = rows["transformers fp32"]
    b = args.tiles
    for who in ("ort fp32", "ort int8"):
        r = rows[who]
        print(f"transformers / {who}: vision {hf['vision_s_tile'] / r['vision_s_tile']:.2f}x, "
              f"encoder {hf['encoder_s_tile'] / r['encoder_s_tile']:.2f}x, "
              f"decode b1 {hf['decode_ms_step_b1'] / r['decode_ms_step_b1']:.2f}x, "
              f"decode b{b} {hf[f'decode_ms_step_b{b}'] / r[f'decode_ms_step_b{b}']:.2f}x, "
              f"e2e {hf['e2e_s'] / r['e2e_s']:.2f}x, peak RSS {r['peak_rss_mb'] / hf['peak_rss_mb']:.2f} of transformers'")
    print(f"speedup_fp32_vs_transformers: {hf['e2e_s'] / rows['ort fp32']['e2e_s']:.1f}x")
    print(f"speedup_vs_transformers: {hf['e2e_s'] / rows['ort int8']['e2e_s']:.1f}x")


if __name__ == "__main__":
    main()
