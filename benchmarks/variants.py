"""Which variant mix to download: time and peak memory of each mix of onnx-community-style graphs.

    python benchmarks/variants.py                       # prepare (once) and measure the default mixes
    python benchmarks/variants.py --mixes int8,vision_encoder=fp32,int8 --tiles 1 --tokens 64,32
    python benchmarks/variants.py --optimize --mixes int8   # the download after `edge-agent models optimize`

Model: Florence-2 base architecture with random weights (seed 0), exported once by
`models export --random-config base`, then only its four onnx-community parts are kept and
their variants are built as onnx-community builds them (tests/onnx_community.py: onnxruntime's
quantizers with transformers.js scripts/quantize.py's settings): `_int8` (ConvInteger vision),
`_q4` for every part, `_fp16` for the vision encoder.  Every mix runs in its own process
(its peak RSS is its own): load, a warm-up, then the frame workload (edge_agent.bench) with
`--tiles` tiles of the dense-1080p frame and forced token counts.  The load average is printed
before and after: this machine is shared, so compare ratios within one run, not across runs.

`--optimize` measures the folder as a user has it after `edge-agent models optimize` (the fast
decoder built from the fp32 merged decoder, the quantized vision encoders' depthwise convolutions in
fp32; models/optimize.py): a sibling folder, workdir/community-optimized, built once.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

DEFAULT_MIXES = ("fp32,int8,vision_encoder=fp32,int8,vision_encoder=q4,int8,vision_encoder=fp16,int8,q4,"
                 "vision_encoder=fp32,q4")
BUILD = {"_int8": None, "_q4": None, "_fp16": ("vision_encoder",)}  # suffix -> parts (None: all four)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/edge-agent-variants")
    p.add_argument("--mixes", default=None,
                   help="';'-separated mixes (models/variants.py spelling); default: " + DEFAULT_MIXES.replace(",v", ";v"))
    p.add_argument("--tiles", type=int, default=1)
    p.add_argument("--tokens", default="64,32", help="forced <OD>,<OCR_WITH_REGION> new tokens")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--optimize", action="store_true", help="measure the folder after `models optimize`")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def mixes(args) -> list[str]:
    if args.mixes:
        return [m for m in args.mixes.split(";") if m]
    return ["fp32", "int8", "vision_encoder=fp32,int8", "vision_encoder=q4,int8", "vision_encoder=fp16,int8", "q4",
            "vision_encoder=fp32,q4"]


def prepare(workdir: Path) -> Path:
    """workdir/community: the four parts of a random base export and their variants (built once)."""
    import onnx_community

    export = workdir / "export"
    if not (export / "onnx" / "decoder_model_merged.onnx").is_file():
        from edge_agent.models.export import export_random

        export_random("base", 0, export, None)
    out = workdir / "community"
    onnx_community.copy_fp32(out, export)
    import onnx

    for suffix, parts in BUILD.items():
        for part in parts or onnx_community.PARTS:
            dst = out / "onnx" / f"{part}{suffix}.onnx"
            if dst.is_file():
                continue
            src = out / "onnx" / f"{part}.onnx"
            print(f"building {dst.name} ...", file=sys.stderr, flush=True)
            model = onnx_community.quantize(onnx.load(str(src)), onnx_community.MODES[suffix])
            tmp = dst.with_suffix(".tmp")
            onnx.save(model, str(tmp))
            tmp.rename(dst)
    return out


def optimized(community: Path) -> Path:
    """community-optimized beside `community`: its files (hard links; external data copied), then
    `models optimize` (built once)."""
    from frame import _sibling  # benchmarks/frame.py

    from edge_agent.models.optimize import optimize_dir

    out = community.parent / "community-optimized"
    if not (out / "onnx" / "decoder_step.onnx").is_file():
        _sibling(community, out, lambda name: False)
        print("models optimize ...", file=sys.stderr, flush=True)
        optimize_dir(out)
    return out


def folder(args) -> Path:
    return Path(args.workdir) / ("community-optimized" if args.optimize else "community")


def child(args) -> dict:
    sys.modules["torch"] = None  # as on the device
    from edge_agent.bench import FrameWorkload, StageClock, measure_engine, peak_rss_mb, warm_up
    from frame import load_frame  # benchmarks/frame.py: the shelf sample at 1920x1080
    from edge_agent.models.engine import EngineOptions, Florence2Engine

    od, ocr = (int(x) for x in args.tokens.split(","))
    work = FrameWorkload(tiles=args.tiles, od_tokens=od, ocr_tokens=ocr)
    clock = StageClock()
    t = time.perf_counter()
    eng = Florence2Engine(EngineOptions(model_dir=folder(args), variant=args.child, num_beams=1,
                                        max_new_tokens=max(od, ocr), intra_op_threads=args.threads, progress=clock))
    load_s = time.perf_counter() - t
    frame = load_frame(work)
    warm_up(eng, frame)
    res = measure_engine(eng, clock, frame, work, progress=lambda m: None)
    res.pop("outputs", None)
    res.update(load_s=load_s, peak_rss_mb=peak_rss_mb(), mix=eng.info["variant"])
    return {k: v for k, v in res.items() if isinstance(v, (int, float, str))}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return
    workdir = Path(args.workdir)
    d = prepare(workdir)
    if args.optimize:
        d = optimized(d)
    from edge_agent.models.modeldir import graph_bytes, open_model_dir

    print(f"model: {d} (Florence-2 base architecture, random weights); {args.tiles} tile(s), tokens {args.tokens}")
    print(f"load average before: {os.getloadavg()}")
    rows = []
    for mix in mixes(args):
        md = open_model_dir(d, mix)
        decoder = md.fast_decoder_paths() or (md.onnx_path("decoder_model_merged"),)  # what the engine loads
        size = sum(graph_bytes(p) for p in [md.onnx_path(p) for p in ("vision_encoder", "embed_tokens", "encoder_model")]
                   + list(decoder))
        cmd = [sys.executable, __file__, "--workdir", str(workdir), "--tiles", str(args.tiles), "--tokens", args.tokens,
               "--threads", str(args.threads), "--child", mix] + (["--optimize"] if args.optimize else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{mix}: failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            continue
        res = json.loads(line[7:])
        res["files_mb"] = size / 1e6
        rows.append(res)
        print(f"{res['mix']:34s} files {res['files_mb']:7.1f} MB  peak {res['peak_rss_mb']:7.1f} MB  "
              f"frame {res['frame_s']:6.2f} s (vision {res['vision_s']:5.2f}, encoder {res['encoder_s']:5.2f}, "
              f"decode {res['decode_s']:5.2f})  load {res['load_s']:5.2f} s  [loadavg {os.getloadavg()[0]:.1f}]",
              flush=True)
    print(f"load average after: {os.getloadavg()}")
    if rows:
        ref = next((r for r in rows if r["mix"] == "fp32"), rows[0])
        print(f"\n| mix | graphs on disk | peak RSS | frame | vs {ref['mix']} |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['mix']} | {r['files_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB | {r['frame_s']:.2f} s | "
                  f"{r['frame_s'] / ref['frame_s']:.2f}x |")


if __name__ == "__main__":
    main()
