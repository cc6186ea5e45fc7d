"""`edge-agent run`: the agent (capture -> tiles -> engine -> merge -> MQTT or stdout)."""
from __future__ import annotations

import logging
import sys

import click


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
@click.option("--variant", default=None, help="Model variant: a suffix (int8 or _int8, fp32, q4, ...), one per graph "
                   "(vision_encoder=fp32,int8) or auto.")
@click.option("--broker", default=None, help="mqtt://host[:port] or mqtts://host[:port]; none: JSON lines on stdout.")
@click.option("--device-id", default=None, help="Device id in topics and results (default: host name).")
@click.option("--no-tiling", is_flag=True, help="One pass over the whole frame.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.pass_context
def run(ctx, config, camera, source, max_frames, once, drain_timeout, **_):
    """Run the agent: capture, tile, detect and read text, publish to MQTT (or stdout)."""
    from edge_agent import embedded, logs
    from edge_agent.agent import Agent, RunLimits
    from edge_agent.errors import RuntimeFailure
    from edge_agent.settings import resolve

    if camera is not None and source is not None:
        raise click.UsageError("give --camera or --source, not both")
    settings = resolve(config, ctx.params)
    logs.setup_logging(settings.agent.log_level)
    if settings.model_note:
        click.echo(embedded.WARNING, err=True)
    limits = RunLimits(max_frames=1 if once else (max_frames or 0), drain_timeout=drain_timeout,
                       model_note=settings.model_note)
    from edge_agent.models.modeldir import open_model_dir

    open_model_dir(settings.model.dir, settings.model.variant)  # cheap: a bad model dir is exit 2 before any start
    try:
        code = Agent(settings, limits).run()
    except Exception as e:
        from edge_agent.cli import exit_status

        if exit_status(e) is not None:
            raise
        logging.getLogger(__name__).exception("agent failed")
        raise RuntimeFailure(f"{type(e).__name__}: {e}") from e
    sys.exit(code)
