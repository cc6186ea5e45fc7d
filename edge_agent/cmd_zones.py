"""`edge-agent zones IMAGE --config FILE --draw OUT.jpg`: a camera's zones on one of its frames.

What an installer looks at when mounting a camera: does each shelf's polygon hold its
products, and the price tags under them (edge_agent/zones.py has the membership rule)?
A zone that does not fit the image (fewer than 3 points, crossing itself, outside the
frame) is one line naming it, exit status 2.
"""
from __future__ import annotations

import json

import click

from edge_agent.errors import ConfigError


def camera_zones(settings, camera: str | None, width: int, height: int):
    """(camera id, [Zone]) of `camera` (default: the first configured camera) on a
    width x height frame; ConfigError naming the file and the zone when one does not fit."""
    from edge_agent.zones import frame_zones

    ids = [c.id for c in settings.cameras]
    cam = camera or (ids[0] if ids else "")
    if camera and camera not in ids and not any(z.camera == camera for z in settings.zones):
        raise ConfigError(f"--camera {camera}: no such camera in {settings.path or 'the configuration'} (cameras: {', '.join(ids)})")
    try:
        return cam, frame_zones(settings.zones, cam, width, height)
    except ValueError as e:
        raise ConfigError(f"{settings.path or 'configuration'}: {e}") from None


@click.command("zones")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Config file with the [[zones]] (default: $EDGE_AGENT_CONFIG).")
@click.option("--camera", default=None, help="Camera id whose zones to show (default: the first camera).")
@click.option("--json", "as_json", is_flag=True, help='Print {"camera", "width", "height", "zones": [...]}.')
@click.option("--draw", "draw_to", type=click.Path(dir_okay=False), help="Write the image with the zones drawn on it.")
def zones(image, config_file, camera, as_json, draw_to):
    """Show the configured zones of a camera on IMAGE (frame pixels) and optionally draw them."""
    from edge_agent.images import read_image
    from edge_agent.settings import config_path, resolve

    path = config_path(config_file)
    if path is None:
        raise ConfigError("no config file: give --config FILE (the one with the [[zones]])")
    settings = resolve(path)
    rgb = read_image(image)
    height, width = rgb.shape[:2]
    cam, found = camera_zones(settings, camera, width, height)
    if draw_to:
        from edge_agent.draw import draw_zones, encode, save

        save(draw_to, lambda suffix: encode(draw_zones(rgb, found), suffix))
    rows = [{"name": z.name, "points": [[round(float(x), 1), round(float(y), 1)] for x, y in z.polygon],
             "labels": list(z.labels), "min_count": z.min_count} for z in found]
    if as_json:
        click.echo(json.dumps({"camera": cam, "width": width, "height": height, "zones": rows}))
        return
    click.echo(f"{image}: {width}x{height}, camera {cam}, {len(rows)} zone(s) from {path}")
    for r in rows:
        extra = (f", labels {', '.join(r['labels'])}" if r["labels"] else "") + (f", min_count {r['min_count']}" if r["min_count"] else "")
        click.echo(f"  {r['name']}: {' '.join(f'{x:g},{y:g}' for x, y in r['points'])}{extra}")
    if draw_to:
        click.echo(f"drawn: {draw_to}")
