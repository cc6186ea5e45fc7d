"""`edge-agent detect IMAGE`: one image through the same pipeline as the agent (tiles,
engine, merge), printed for people or as one JSON object."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from edge_agent.errors import ConfigError


def as_json(image: str, payload: dict, tasks, raw: dict[str, list[str]] | None) -> dict:
    out = {"image": image, "width": payload["frame"]["width"], "height": payload["frame"]["height"],
           "model": payload["model"]}
    if "od" in tasks:
        out["od"] = {"detections": payload["detections"]}
    if "ocr" in tasks:
        out["ocr"] = {"lines": payload["text"]}
    for t in tasks if raw is not None else ():
        out[t]["raw"] = raw[t]  # issue 2: each task object carries its own passes' texts
    out["tiles"] = payload["tiles"]
    out["timings"] = payload["timings"]
    return out


def print_human(image: str, payload: dict, tasks, raw: dict[str, list[str]] | None) -> None:
    m = payload["model"]
    click.echo(f"{image}: {payload['frame']['width']}x{payload['frame']['height']}, model {m['name']} ({m['variant']}), "
               f"{payload['tiles']['count']} tiles, {payload['timings'].get('total', 0):.2f} s")
    if "od" in tasks:
        click.echo(f"objects ({len(payload['detections'])}):")
        for d in payload["detections"]:
            click.echo(f"  {d['label']:<24} {d['box']}  {d['score']:.2f}")
    if "ocr" in tasks:
        click.echo(f"text ({len(payload['text'])}):")
        for t in payload["text"]:
            click.echo(f"  {t['text']!r:<32} {t['quad']}  {t['score']:.2f}")
    for t in tasks if raw is not None else ():
        for i, r in enumerate(raw[t]):
            click.echo(f"raw {t}[{i}]: {r}")


@click.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="TOML config file (default: $EDGE_AGENT_CONFIG, or $CONFIGURATION_DIRECTORY/edge-agent.toml).")
@click.option("--model", default=None, help="Florence-2 ONNX model directory (default: [model] dir, else the bundled demo model).")
@click.option("--variant", default=None, help="Model variant: a suffix (int8 or _int8, fp32, q4, ...), one per graph "
                   "(vision_encoder=fp32,int8) or auto.")
@click.option("--task", type=click.Choice(["both", "ocr", "od"]), default=None, help="What to run (default: [model] tasks, od and ocr).")
@click.option("--num-beams", type=click.IntRange(min=0), default=None, help="Beam width; 0: as generation_config.json says.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="Token budget per tile and task.")
@click.option("--no-tiling", is_flag=True, help="One pass over the whole image.")
@click.option("--json", "as_json_flag", is_flag=True, help="Print one JSON object.")
@click.option("--raw", is_flag=True, help="Also give each task's generated text of every model pass, in pass order.")
@click.option("--draw", type=click.Path(dir_okay=False), default=None, help="Write the image with boxes and text to this JPEG.")
@click.pass_context
def detect(ctx, image, config, as_json_flag, raw, draw, **_):
    """Detect objects and read text in IMAGE (tiled like the agent does)."""
    from edge_agent import embedded
    from edge_agent.capture import Frame
    from edge_agent.images import read_image
    from edge_agent.model import build_engine
    from edge_agent.pipeline import PipelineOptions, model_info, process_frame
    from edge_agent.settings import resolve

    rgb = read_image(image)
    if draw and not Path(draw).resolve().parent.is_dir():  # fail before the (slow) model run, not after
        raise ConfigError(f"--draw {draw}: cannot write the image there (directory missing)")
    settings = resolve(config, ctx.params)
    if settings.model_note:
        click.echo(embedded.WARNING, err=True)
    engine = build_engine(settings.model, state_dir=settings.state_dir)
    tasks = settings.model.tasks
    opts = PipelineOptions(tiling=settings.tiling, tasks=tasks, model=model_info(engine, settings.model_note))
    passes: dict[str, list[str]] = {t: [] for t in tasks}

    def observe(tiles, outputs):
        for out in outputs:
            for t in tasks:
                if t in out:
                    passes[t].append(out[t].raw)

    frame = Frame(Path(image).stem or "image", 0, time.time(), rgb)
    result, _ = process_frame(frame, engine, opts, observe=observe)
    payload = result.to_payload("local")
    if draw:
        write_drawing(draw, rgb, result, drawn_zones(settings, result.width, result.height), settings.model_note)
        click.echo(f"wrote {draw}", err=as_json_flag)  # stdout stays one JSON object with --json
    if as_json_flag:
        click.echo(json.dumps(as_json(image, payload, tasks, passes if raw else None), ensure_ascii=False))
    else:
        print_human(image, payload, tasks, passes if raw else None)


def drawn_zones(settings, width: int, height: int) -> list:
    """The first camera's [[zones]] of the config, for --draw (a zone that does not fit: exit 2)."""
    from edge_agent.cmd_zones import camera_zones

    return camera_zones(settings, None, width, height)[1] if settings.zones else []


def write_drawing(path: str, rgb, result, zones=(), note: str = "") -> None:
    from edge_agent.draw import picture, save

    save(path, lambda suffix: picture(rgb, result, suffix, zones=zones, note=note))  # an empty one says so
