"""`edge-agent run`: the agent (capture -> tiles -> engine -> merge -> MQTT or stdout)."""
from __future__ import annotations

import os
import sys

import click

from edge_agent.errors import ModelError, RuntimeFailure


def run_overrides(camera, source, camera_id, interval, state_dir, model, variant, broker, device_id,
                  no_tiling, log_level) -> dict:
    """Flags -> settings overrides (section -> key -> value; None: not given)."""
    src = str(camera) if camera is not None else source
    return {
        "camera": {"source": src, "id": camera_id},
        "agent": {"interval": interval, "state_dir": state_dir, "device_id": device_id, "log_level": log_level},
        "model": {"dir": model, "variant": variant},
        "mqtt": {"broker": broker},
        "tiling": {"enabled": False if no_tiling else None},
    }


def resolve_settings(config, overrides: dict, env=None):
    """Load config -> env -> flags, then the embedded defaults.  -> (settings, model note)."""
    from edge_agent import embedded
    from edge_agent.settings import ENV_PREFIX, config_path, load_settings

    env = os.environ if env is None else env
    path = config_path(config, env)
    if path is None and overrides["camera"]["source"] is None and not env.get(ENV_PREFIX + "CAMERA_SOURCE"):
        overrides = {**overrides, "camera": {**overrides["camera"], "source": str(embedded.sample_video())}}
    settings = load_settings(path, env, overrides)
    note = ""
    if not settings.model.dir:
        if path is not None:
            raise ModelError(f"{path}: [model] dir is not set (or pass --model DIR)")
        import dataclasses

        model = dataclasses.replace(settings.model, dir=str(embedded.tiny_model_dir()))
        settings = dataclasses.replace(settings, model=model)
        note = embedded.NOTE
    return settings, note


@click.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="TOML config file (default: $EDGE_AGENT_CONFIG, or $CONFIGURATION_DIRECTORY/edge-agent.toml).")
@click.option("--camera", type=click.IntRange(min=0), default=None, help="Camera device index (V4L2).")
@click.option("--source", default=None, help="Video file, image directory or glob, or rtsp/http URL.")
@click.option("--camera-id", default=None, help="Camera name in topics and results (default: cam<N> or the file stem).")
@click.option("--interval", type=click.FloatRange(min=0), default=None, help="Seconds between processed frames per camera.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="Stop capturing after N frames, drain the spool, exit.")
@click.option("--once", is_flag=True, help="Same as --max-frames 1.")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to wait for unacknowledged results before exiting; the rest stay spooled.")
@click.option("--state-dir", default=None, help="Spool and runtime state directory.")
@click.option("--model", default=None, help="Florence-2 ONNX model directory.")
@click.option("--variant", default=None, help="Model variant suffix, e.g. _int8, _fp16, '' for fp32.")
@click.option("--broker", default=None, help="mqtt://host[:port] or mqtts://host[:port]; none: JSON lines on stdout.")
@click.option("--device-id", default=None, help="Device id in topics and results (default: host name).")
@click.option("--no-tiling", is_flag=True, help="One pass over the whole frame.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
def run(config, camera, source, camera_id, interval, max_frames, once, drain_timeout, state_dir, model, variant,
        broker, device_id, no_tiling, log_level):
    """Run the agent: capture, tile, detect and read text, publish to MQTT (or stdout)."""
    from edge_agent import embedded, logs
    from edge_agent.agent import Agent, RunLimits

    if camera is not None and source is not None:
        raise click.UsageError("give --camera or --source, not both")
    overrides = run_overrides(camera, source, camera_id, interval, state_dir, model, variant, broker, device_id,
                              no_tiling, log_level)
    settings, note = resolve_settings(config, overrides)
    logs.setup_logging(settings.agent.log_level)
    if note:
        click.echo(embedded.WARNING, err=True)
    limits = RunLimits(max_frames=1 if once else (max_frames or 0), drain_timeout=drain_timeout, model_note=note)
    from models.modeldir import open_model_dir

    open_model_dir(settings.model.dir, settings.model.variant)  # cheap: a bad model dir is exit 2 before any start
    try:
        code = Agent(settings, limits).run()
    except click.ClickException:
        raise
    except Exception as e:
        logs.get("agent").exception("agent failed")
        raise RuntimeFailure(f"{type(e).__name__}: {e}") from e
    sys.exit(code)
