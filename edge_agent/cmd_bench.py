"""`edge-agent bench`: the dense-frame measurement of benchmarks/frame.py on this device, this model.

A 1920x1080 frame (a synthetic shelf, or --image), N tiles at 768, <OD> with --tokens new tokens
forced per tile plus <OCR_WITH_REGION> with half as many, greedy, through `engine.run`, the call
`edge-agent run` makes.  Model and tiling settings resolve as for `run` (settings.resolve).
Progress goes to stderr; the stage table to stdout.
"""
from __future__ import annotations

import json
import os
import sys

import click

from edge_agent.errors import ConfigError

VARIANT_HELP = ("Model variant: a suffix (int8 or _int8, fp32, q4, ...), one per graph (vision_encoder=fp32,int8) "
                "or auto (default).")


def _progress(msg: str) -> None:
    click.echo(f"bench: {msg}", err=True)


def _frame(image: str | None, work):
    from edge_agent.bench import synthetic_shelf

    if not image:
        return synthetic_shelf(work.width, work.height)
    import cv2

    from edge_agent.images import read_image

    return cv2.resize(read_image(image), (work.width, work.height), interpolation=cv2.INTER_AREA)


@click.command("bench")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="TOML config file (default: $EDGE_AGENT_CONFIG, or $CONFIGURATION_DIRECTORY/edge-agent.toml).")
@click.option("--model", type=click.Path(file_okay=False),
              help="Florence-2 ONNX model directory (default: [model] dir, else the bundled demo model).")
@click.option("--variant", default=None, help=VARIANT_HELP)
@click.option("--tiles", type=click.IntRange(min=1), default=None, help="Tiles per frame [6; --quick: 2].")
@click.option("--tokens", type=click.IntRange(min=2), default=None,
              help="<OD> new tokens forced per tile; <OCR_WITH_REGION> gets half [512; --quick: 32].")
@click.option("--tile-size", type=click.IntRange(min=16), default=None,
              help="Tile side in frame pixels (the engine resizes every tile to the model's input) [[tiling] tile_size].")
@click.option("--image", type=click.Path(dir_okay=False), help="Use this picture (scaled to 1920x1080).")
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="ONNX Runtime intra-op threads (0: all cores) [[model] threads].")
@click.option("--provider", "providers", multiple=True,
              help="Execution provider (repeatable, in order of preference) [[model] providers].")
@click.option("--decode", "decode_probe", is_flag=True, help="Also time the <OD> rows' decode alone.")
@click.option("--quick", is_flag=True, help="2 tiles, 32 + 16 tokens: a fast check.")
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as one JSON object.")
@click.pass_context
def bench(ctx, config, tiles, tokens, image, decode_probe, quick, as_json, **_):
    """Time one dense frame through the engine: stage timings and peak memory."""
    from dataclasses import replace

    from edge_agent import embedded
    from edge_agent.bench import DENSE_1080P, QUICK, StageClock, format_table, measure_decode, measure_engine, warm_up
    from edge_agent.model import build_engine
    from edge_agent.settings import resolve

    settings = resolve(config, ctx.params)
    model_dir = settings.model.dir
    work = QUICK if quick else DENSE_1080P
    work = replace(work, tiles=tiles or work.tiles, tile_size=settings.tiling.tile_size,
                   od_tokens=tokens or work.od_tokens, ocr_tokens=max(1, (tokens or work.od_tokens) // 2))
    frame = _frame(image, work)
    from edge_agent.models.modeldir import open_model_dir

    open_model_dir(model_dir, settings.model.variant)  # cheap: a bad --model is one error line, before any progress output
    if settings.model_note:
        click.echo(embedded.WARNING, err=True)
    _progress(f"loading {model_dir} ...")
    clock = StageClock(_progress)  # the engine's progress hook: stage timings and progress lines
    engine = build_engine(settings.model, state_dir=settings.state_dir, num_beams=1, max_new_tokens=work.od_tokens, progress=clock)
    _progress(f"{engine.info['name']} {engine.info['variant']} on {', '.join(engine.info['providers'])}; "
              f"{work.describe()}")
    _progress("warm-up ...")
    warm_up(engine, frame)
    res = measure_engine(engine, clock, frame, work, progress=_progress)
    if decode_probe:
        res["decode_od_ms_step"] = measure_decode(engine, clock, frame, work, progress=_progress)
    res.pop("token_ids")
    res.pop("od_boxes")
    from edge_agent.models.cpu import int8_isa

    if as_json:
        click.echo(json.dumps({"model": engine.info, "workload": work.describe(), "int8_isa": int8_isa(),
                               "row_activation_bits": engine.row_bits, **res}))
        return
    click.echo(f"model: {engine.info['dir']} ({engine.info['variant']}, {', '.join(engine.info['providers'])})")
    click.echo(f"workload: {work.describe()}")
    click.echo(f"cpu: {os.cpu_count()} logical cores, int8 instructions: {int8_isa()}; int8 decoders' activations: "
               f"{engine.row_bits}-bit")
    extra = (("decode_od_ms_step", f"decode b{work.tiles} od", "{:.1f}"),) if decode_probe else ()
    click.echo(format_table({f"edge-agent {engine.info['variant']}": res}, extra))
    click.echo(f"frame_s: {res['frame_s']:.2f}")
    sys.stdout.flush()

