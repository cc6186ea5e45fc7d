"""`edge-agent models ...`: export, quantize, verify, pull and list Florence-2 ONNX model
directories (onnx-community layout, see models/modeldir.py)."""
from __future__ import annotations

import click

from edge_agent.errors import ConfigError

VARIANT_HELP = "Variant suffix: fp32, fp16, int8, uint8, quantized, q4, q4f16."


def _require(module: str, extra: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed: pip install 'edge-agent[{extra}]'") from None


def _echo_lines(lines) -> None:
    for line in lines:
        click.echo(line)


@click.group("models")
def models():
    """Build, convert, check and download Florence-2 ONNX model directories."""
    from edge_agent.logs import setup_logging

    setup_logging("info")


@models.command("export")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--from", "src", type=click.Path(file_okay=False),
              help="A saved transformers Florence-2 checkpoint (Florence2ForConditionalGeneration).")
@click.option("--random-config", type=click.Choice(["tiny", "base", "large"]),
              help="Random weights with the real architecture (for tests and benchmarks; output is noise).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random-config.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(file_okay=False),
              help="Take the tokenizer files from this directory.")
def export(out, src, random_config, seed, tokenizer_dir):
    """Write OUT in onnx-community's layout (fp32), from a checkpoint or a random config."""
    if bool(src) == bool(random_config):
        raise ConfigError("export: give exactly one of --from DIR or --random-config tiny|base|large")
    _require("torch", "export")
    _require("onnx", "export")
    from models import export as exp

    if src:
        exp.export_from_checkpoint(src, out, tokenizer_dir)
    else:
        exp.export_random(random_config, seed, out, tokenizer_dir)
    from models.modeldir import verify

    _echo_lines(verify(out, "fp32"))
    click.echo(f"wrote {out}")


@models.command("quantize")
@click.argument("model_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(["int8", "q4", "fp16"]), required=True,
              help="int8: dynamic int8 (_int8); q4: 4-bit MatMulNBits (_q4); fp16: half floats (_fp16).")
def quantize(model_dir, dtype):
    """Write the DTYPE variant of DIR's fp32 graphs next to them."""
    _require("onnx", "export")
    from models.modeldir import graph_bytes
    from models.quantize import quantize_dir

    for path in quantize_dir(model_dir, dtype):
        click.echo(f"wrote {path} ({graph_bytes(path) / 1e6:.1f} MB)")


@models.command("verify")
@click.argument("model_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--variant", help=VARIANT_HELP + "  Default: every variant present.")
def verify_cmd(model_dir, variant):
    """Check files, tensor names and shapes, and that the tokenizer fits the embeddings.

    Exit status 2 with one line naming the file on the first mismatch."""
    from models.modeldir import verify

    _echo_lines(verify(model_dir, variant))


@models.command("pull")
@click.argument("name")
@click.option("--variant", default="int8", show_default=True, help=VARIANT_HELP)
@click.option("--dest", type=click.Path(file_okay=False), help="Target directory (default ./<repository name>).")
def pull_cmd(name, variant, dest):
    """Download NAME (base, large or owner/repo) from onnx-community on the Hugging Face Hub."""
    from models.pull import pull

    path = pull(name, variant, dest)
    click.echo(f"downloaded {path}; use it with --model {path} (or model.dir in the config)")


@models.command("list")
@click.argument("model_dir", metavar="DIR", type=click.Path(file_okay=False))
def list_cmd(model_dir):
    """List the complete variants in DIR with their sizes; * marks the CPU default."""
    from models.modeldir import PARTS, graph_bytes, open_model_dir

    md = open_model_dir(model_dir)
    for v in md.available_variants():
        size = sum(graph_bytes(md.path / "onnx" / f"{p}{v}.onnx") for p in PARTS)
        mark = "*" if v == md.variant else " "
        click.echo(f"{mark} {v.lstrip('_') or 'fp32':10s} {size / 1e6:9.1f} MB")
