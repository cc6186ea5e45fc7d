"""`edge-agent bench`: the dense-frame measurement of benchmarks/frame.py on this device, this model.

A 1920x1080 frame (a synthetic shelf, or --image), N tiles at 768, <OD> with --tokens new tokens
forced per tile plus <OCR_WITH_REGION> with half as many, greedy; the engine runs it exactly as
`edge-agent run` does.  Progress goes to stderr; the stage table to stdout.
"""
from __future__ import annotations

import json
import os
import sys

import click

from edge_agent.errors import ConfigError

VARIANT_HELP = "Model variant: fp32, int8, fp16, uint8, quantized, q4, q4f16 (default: best for the provider)."


def _progress(msg: str) -> None:
    click.echo(f"bench: {msg}", err=True)


def _frame(image: str | None, work):
    from edge_agent.bench import synthetic_shelf

    if not image:
        return synthetic_shelf(work.width, work.height)
    try:
        import cv2
    except ImportError:
        raise ConfigError("--image needs OpenCV (pip install opencv-python-headless)") from None
    bgr = cv2.imread(image, cv2.IMREAD_COLOR) if os.path.isfile(image) else None
    if bgr is None:
        raise ConfigError(f"cannot read image {image!r} (missing, unreadable or not an image)")
    bgr = cv2.resize(bgr, (work.width, work.height), interpolation=cv2.INTER_AREA)
    return bgr[:, :, ::-1].copy()


@click.command("bench")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False),
              help="Florence-2 ONNX model directory (onnx-community layout).")
@click.option("--variant", default=None, help=VARIANT_HELP)
@click.option("--tiles", type=click.IntRange(min=1), default=None, help="Tiles per frame [6; --quick: 2].")
@click.option("--tokens", type=click.IntRange(min=2), default=None,
              help="<OD> new tokens forced per tile; <OCR_WITH_REGION> gets half [512; --quick: 32].")
@click.option("--tile-size", type=click.IntRange(min=16), default=768, show_default=True,
              help="Tile side in frame pixels (the engine resizes every tile to the model's input).")
@click.option("--image", type=click.Path(dir_okay=False), help="Use this picture (scaled to 1920x1080).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="ONNX Runtime intra-op threads (0: all cores).")
@click.option("--provider", "providers", multiple=True, default=("cpu",), show_default=True,
              help="Execution provider (repeatable, in order of preference).")
@click.option("--decode", "decode_probe", is_flag=True, help="Also time the <OD> rows' decode alone.")
@click.option("--quick", is_flag=True, help="2 tiles, 32 + 16 tokens: a fast check.")
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as one JSON object.")
def bench(model_dir, variant, tiles, tokens, tile_size, image, threads, providers, decode_probe, quick, as_json):
    """Time one dense frame through the engine: stage timings and peak memory."""
    from dataclasses import replace

    from edge_agent.bench import DENSE_1080P, QUICK, format_table, measure_decode, measure_engine, warm_up
    from models.engine import EngineOptions, Florence2Engine

    work = QUICK if quick else DENSE_1080P
    work = replace(work, tiles=tiles or work.tiles, tile_size=tile_size,
                   od_tokens=tokens or work.od_tokens, ocr_tokens=max(1, (tokens or work.od_tokens) // 2))
    frame = _frame(image, work)
    from models.modeldir import open_model_dir

    open_model_dir(model_dir, variant)  # cheap: a bad --model is one error line, before any progress output
    _progress(f"loading {model_dir} ...")
    engine = Florence2Engine(EngineOptions(model_dir=model_dir, variant=variant, providers=tuple(providers),
                                           num_beams=1, max_new_tokens=work.od_tokens, intra_op_threads=threads))
    _progress(f"{engine.info['name']} {engine.info['variant']} on {', '.join(engine.info['providers'])}; "
              f"{work.describe()}")
    _progress("warm-up ...")
    warm_up(engine, frame)
    res = measure_engine(engine, frame, work, progress=_progress, keep_od_rows=True)
    od_rows = res.pop("od_rows")
    if decode_probe:
        res["decode_od_ms_step"] = measure_decode(engine, od_rows, work, progress=_progress)
    res.pop("token_ids")
    res.pop("od_boxes")
    if as_json:
        click.echo(json.dumps({"model": engine.info, "workload": work.describe(), **res}))
        return
    click.echo(f"model: {engine.info['dir']} ({engine.info['variant']}, {', '.join(engine.info['providers'])})")
    click.echo(f"workload: {work.describe()}")
    extra = (("decode_od_ms_step", f"decode b{work.tiles} od", "{:.1f}"),) if decode_probe else ()
    click.echo(format_table({f"edge-agent {engine.info['variant']}": res}, extra))
    click.echo(f"frame_s: {res['frame_s']:.2f}")
    sys.stdout.flush()

