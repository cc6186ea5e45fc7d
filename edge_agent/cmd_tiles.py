"""`edge-agent tiles IMAGE`: the tile plan for a camera's frame, printed and optionally drawn.

The picture an installer looks at when mounting a camera: are the shelf's products small
enough in each tile, do the overlaps hold a whole product?
"""
from __future__ import annotations

import json

import click

from edge_agent.errors import ConfigError


@click.command("tiles")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--tile-size", type=click.IntRange(min=16), default=768, show_default=True,
              help="Tile side in frame pixels.")
@click.option("--overlap", type=float, default=0.2, show_default=True,
              help="Overlap between tiles: a ratio of the tile (< 1) or whole pixels (>= 1).")
@click.option("--full-frame", is_flag=True, help="Also plan the down-scaled whole-frame pass.")
@click.option("--json", "as_json", is_flag=True, help='Print {"width", "height", "tiles": [[x0,y0,x1,y1], ...]}.')
@click.option("--draw", "draw_to", type=click.Path(dir_okay=False), help="Write the image with the plan drawn on it.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Also draw this config's [[zones]] (first camera; default: $EDGE_AGENT_CONFIG).")
def tiles(image, tile_size, overlap, full_frame, as_json, draw_to, config_file):
    """Print the tile plan for IMAGE (frame pixels) and optionally draw it."""
    from edge_agent.images import read_image
    from edge_agent.tiling.plan import overlap_pixels, plan_tiles

    frame = read_image(image)
    height, width = frame.shape[:2]
    try:
        plan = plan_tiles(width, height, tile_size, overlap, full_frame)
        opx = overlap_pixels(overlap, tile_size)
    except ValueError as e:
        raise ConfigError(f"--overlap {overlap}: {e}") from None
    if draw_to:
        _write(draw_to, frame, plan, _zones(config_file, width, height))
        click.echo(f"wrote {draw_to}", err=as_json)  # stdout stays one JSON object with --json
    if as_json:
        click.echo(json.dumps({"width": width, "height": height, "tiles": [list(t.box) for t in plan]}))
    else:
        click.echo(f"{image}: {width}x{height}, {len(plan)} tile(s) of {min(tile_size, width)}x{min(tile_size, height)},"
                   f" overlap >= {opx} px")
        for k, t in enumerate(plan, 1):
            click.echo(f"{k:3d}  {t.x0},{t.y0} - {t.x1},{t.y1}  ({t.width}x{t.height})")


def _zones(config_file, width: int, height: int) -> list:
    from edge_agent.cmd_detect import drawn_zones
    from edge_agent.settings import config_path, resolve

    return drawn_zones(resolve(config_file), width, height) if config_path(config_file) else []


def _write(path: str, frame, plan, zones=()) -> None:
    from edge_agent.draw import draw_tiles, draw_zones, encode, save

    save(path, lambda suffix: encode(draw_tiles(draw_zones(frame, zones) if zones else frame, plan), suffix))
