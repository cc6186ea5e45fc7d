"""`edge-agent tiles IMAGE`: the tile plan for a camera's frame, printed and optionally drawn.

The picture an installer looks at when mounting a camera: are the shelf's products small
enough in each tile, do the overlaps hold a whole product?
"""
from __future__ import annotations

import json
import os

import click

from edge_agent.errors import ConfigError


def _read_image(path: str):
    import cv2

    image = cv2.imread(path, cv2.IMREAD_COLOR) if os.path.isfile(path) else None
    if image is None:
        raise ConfigError(f"cannot read image {path!r} (missing, unreadable or not an image)")
    return image


@click.command("tiles")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--tile-size", type=click.IntRange(min=16), default=768, show_default=True,
              help="Tile side in frame pixels.")
@click.option("--overlap", type=float, default=0.2, show_default=True,
              help="Overlap between tiles: a ratio of the tile (< 1) or whole pixels (>= 1).")
@click.option("--full-frame", is_flag=True, help="Also plan the down-scaled whole-frame pass.")
@click.option("--json", "as_json", is_flag=True, help='Print {"width", "height", "tiles": [[x0,y0,x1,y1], ...]}.')
@click.option("--draw", "draw_to", type=click.Path(dir_okay=False), help="Write the image with the plan drawn on it.")
def tiles(image, tile_size, overlap, full_frame, as_json, draw_to):
    """Print the tile plan for IMAGE (frame pixels) and optionally draw it."""
    from tiling.plan import overlap_pixels, plan_tiles

    frame = _read_image(image)
    height, width = frame.shape[:2]
    try:
        plan = plan_tiles(width, height, tile_size, overlap, full_frame)
        opx = overlap_pixels(overlap, tile_size)
    except ValueError as e:
        raise ConfigError(f"--overlap {overlap}: {e}") from None
    if draw_to:
        _write(draw_to, frame, plan)
    if as_json:
        click.echo(json.dumps({"width": width, "height": height, "tiles": [list(t.box) for t in plan]}))
    else:
        click.echo(f"{image}: {width}x{height}, {len(plan)} tile(s) of {min(tile_size, width)}x{min(tile_size, height)},"
                   f" overlap >= {opx} px")
        for k, t in enumerate(plan, 1):
            click.echo(f"{k:3d}  {t.x0},{t.y0} - {t.x1},{t.y1}  ({t.width}x{t.height})")


def _write(path: str, frame, plan) -> None:
    import cv2

    from edge_agent.draw import draw_tiles

    try:
        ok = cv2.imwrite(path, draw_tiles(frame, plan))
    except cv2.error:
        ok = False
    if not ok:
        raise ConfigError(f"cannot write image {path!r} (check the directory and the extension, e.g. .jpg or .png)")
