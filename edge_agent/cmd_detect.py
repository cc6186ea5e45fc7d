"""`edge-agent detect IMAGE`: one image through the same pipeline as the agent (tiles,
engine, merge), printed for people or as one JSON object."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from edge_agent.errors import ConfigError

TASK_CHOICES = {"od": ("od",), "ocr": ("ocr",), "both": ("od", "ocr")}


def read_image(path: str):
    """-> RGB uint8 array; ConfigError naming the file when it cannot be read."""
    import cv2

    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such image file")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConfigError(f"{path}: cannot read this image (not a JPEG/PNG/BMP/WebP/TIFF OpenCV can decode)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def detect_settings(model, variant, task, num_beams, max_new_tokens, no_tiling):
    """Config file (if any) -> env -> these flags; the bundled demo model when none is set."""
    import dataclasses

    from edge_agent import embedded
    from edge_agent.settings import config_path, load_settings

    overrides = {"model": {"dir": model, "variant": variant, "tasks": TASK_CHOICES[task] if task else None,
                           "num_beams": num_beams, "max_new_tokens": max_new_tokens},
                 "tiling": {"enabled": False if no_tiling else None}}
    settings = load_settings(config_path(None), overrides=overrides)
    note = ""
    if not settings.model.dir:
        settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, dir=str(embedded.tiny_model_dir())))
        note = embedded.NOTE
        click.echo(embedded.WARNING, err=True)
    return settings, note


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
@click.option("--model", default=None, help="Florence-2 ONNX model directory (default: [model] dir, else the bundled demo model).")
@click.option("--variant", default=None, help="Model variant suffix, e.g. _int8, '' for fp32.")
@click.option("--task", type=click.Choice(sorted(TASK_CHOICES)), default=None, help="What to run (default: [model] tasks, od and ocr).")
@click.option("--num-beams", type=click.IntRange(min=0), default=None, help="Beam width; 0: as generation_config.json says.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="Token budget per tile and task.")
@click.option("--no-tiling", is_flag=True, help="One pass over the whole image.")
@click.option("--json", "as_json_flag", is_flag=True, help="Print one JSON object.")
@click.option("--raw", is_flag=True, help="Also give each task's generated text of every model pass, in pass order.")
@click.option("--draw", type=click.Path(dir_okay=False), default=None, help="Write the image with boxes and text to this JPEG.")
def detect(image, model, variant, task, num_beams, max_new_tokens, no_tiling, as_json_flag, raw, draw):
    """Detect objects and read text in IMAGE (tiled like the agent does)."""
    from edge_agent.agent import build_engine
    from edge_agent.capture import Frame
    from edge_agent.pipeline import PipelineOptions, model_info, process_frame, tiling_options

    rgb = read_image(image)
    if draw and not Path(draw).resolve().parent.is_dir():  # fail before the (slow) model run, not after
        raise ConfigError(f"--draw {draw}: cannot write the image there (directory missing)")
    settings, note = detect_settings(model, variant, task, num_beams, max_new_tokens, no_tiling)
    engine = build_engine(settings)
    tasks = tuple(settings.model.tasks)
    opts = PipelineOptions(tiling=tiling_options(settings), tasks=tasks, model=model_info(engine, note))
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
        write_drawing(draw, rgb, result)
    if as_json_flag:
        click.echo(json.dumps(as_json(image, payload, tasks, passes if raw else None), ensure_ascii=False))
    else:
        print_human(image, payload, tasks, passes if raw else None)


def write_drawing(path: str, rgb, result) -> None:
    import cv2

    from edge_agent.draw import draw_regions

    img = draw_regions(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), result.detections, result.text)
    try:
        ok = cv2.imwrite(path, img)
    except cv2.error:
        ok = False
    if not ok:
        raise ConfigError(f"--draw {path}: cannot write the image there (directory missing, or not .jpg/.png)")
