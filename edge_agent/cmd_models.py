"""`edge-agent models ...`: export, quantize, verify, pull and list Florence-2 ONNX model
directories (onnx-community layout, see models/modeldir.py)."""
from __future__ import annotations

import click

from edge_agent.errors import ConfigError

VARIANT_HELP = ("Variant: one suffix for every graph (fp32, fp16, int8, uint8, quantized, q4, q4f16, bnb4; "
                "'int8' and '_int8' alike), one per part (vision_encoder=fp32,int8: fp32 vision, int8 "
                "elsewhere), or auto.")


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
@click.option("--from", "src", metavar="DIR|OWNER/NAME",
              help="A saved transformers Florence-2 checkpoint (Florence2ForConditionalGeneration): a folder, "
                   "or a Hub id such as florence-community/Florence-2-base-ft (downloaded; needs [pull]).")
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
    from edge_agent.models import export as exp

    if src:
        exp.export_from_checkpoint(src, out, tokenizer_dir)
    else:
        exp.export_random(random_config, seed, out, tokenizer_dir)
    from edge_agent.models.modeldir import verify

    _echo_lines(verify(out, "fp32"))
    click.echo(f"wrote {out}")


@models.command("quantize")
@click.argument("model_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(["int8", "q4", "fp16"]), required=True,
              help="int8: 8-bit weights and activations, int8 attention caches (_int8); q4: 4-bit MatMulNBits (_q4); "
                   "fp16: half floats (_fp16).")
def quantize(model_dir, dtype):
    """Write the DTYPE variant of DIR's fp32 graphs next to them."""
    _require("onnx", "export")
    from edge_agent.models.modeldir import graph_bytes
    from edge_agent.models.quantize import quantize_dir

    from edge_agent.embedded import calibration_tiles

    for path in quantize_dir(model_dir, dtype, calibration=calibration_tiles() if dtype == "int8" else None):
        click.echo(f"wrote {path} ({graph_bytes(path) / 1e6:.1f} MB)")


@models.command("optimize")
@click.argument("model_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--int8/--no-int8", default=None,
              help="Also write the int8 fast decoder (default: when DIR has an int8 variant).")
def optimize_cmd(model_dir, int8):
    """Build edge-agent's fast decoder from DIR's fp32 decoder_model_merged (a download).

    Writes onnx/decoder_cross_kv.onnx and onnx/decoder_step.onnx (numpy and onnx, no torch), after
    checking their first-step logits against the merged graph's, and their int8 versions.  Then
    rewrites the depthwise convolutions of DIR's int8 vision encoders in fp32, in place."""
    _require("onnx", "pull")
    from edge_agent.models.modeldir import graph_bytes, verify
    from edge_agent.models.optimize import optimize_dir

    written = optimize_dir(model_dir, int8)
    for path in written:
        click.echo(f"wrote {path} ({graph_bytes(path) / 1e6:.1f} MB)")
    for v in sorted({p.stem.split(part)[1] for p in written for part in ("decoder_step", "vision_encoder")
                     if p.stem.startswith(part)}):
        _echo_lines(verify(model_dir, v or "fp32"))


@models.command("verify")
@click.argument("model_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--variant", help=VARIANT_HELP + "  Default: every graph in DIR/onnx.")
def verify_cmd(model_dir, variant):
    """Check files, tensor names and shapes, that the tokenizer fits the embeddings, that every
    external-data file is whole, and that this onnxruntime loads each graph.

    Exit status 2 with one line naming the file on the first problem."""
    from edge_agent.models.modeldir import verify

    _echo_lines(verify(model_dir, variant))


@models.command("pull")
@click.argument("name")
@click.option("--variant", default=None, help=VARIANT_HELP + "  Default: the measured CPU default (docs/models.md).")
@click.option("--dest", type=click.Path(file_okay=False), help="Target directory (default ./<repository name>).")
@click.option("--optimize", is_flag=True,
              help="Then build edge-agent's fast decoder from the fp32 decoder_model_merged (models optimize).")
def pull_cmd(name, variant, dest, optimize):
    """Download NAME (base, large or owner/repo) from onnx-community on the Hugging Face Hub.

    Prints each graph's size and the total, then downloads with huggingface_hub's progress bars."""
    from edge_agent.models.pull import pull

    path = pull(name, variant, dest, optimize=optimize, echo=click.echo)
    if optimize:
        click.echo(f"built the fast decoder in {path}/onnx (decoder_cross_kv, decoder_step)")
    click.echo(f"downloaded {path}; use it with --model {path} (or model.dir in the config)")


@models.command("list")
@click.argument("model_dir", metavar="DIR", type=click.Path(file_okay=False))
def list_cmd(model_dir):
    """Each part's graph files with their sizes, the complete variants, and what auto picks."""
    _echo_lines(list_lines(model_dir))


def list_lines(model_dir) -> list[str]:
    from pathlib import Path

    from edge_agent.models.modeldir import (complete_combinations, complete_variants, graph_bytes, graph_problem, open_model_dir,
                                 part_file, part_suffixes, read_json)
    from edge_agent.models.variants import PARTS, label

    path = Path(model_dir).expanduser()
    read_json(path / "config.json")  # a folder that is not a model directory: one line, exit 2
    lines = []
    for part in PARTS:
        lines.append(f"{part}:")
        for s in part_suffixes(path, part):
            f = part_file(path, part, s)
            problem = graph_problem(f)
            note = f"  NOT USABLE: {problem}" if problem else ""
            lines.append(f"  {label(s):10s} {graph_bytes(f) / 1e6:9.1f} MB  {f.name}{note}")
        if not part_suffixes(path, part):
            lines.append("  (none)")
    complete = complete_variants(path)
    lines.append(f"complete variants (one suffix for every part): {', '.join(label(s) for s in complete) or 'none'}")
    lines.append(f"complete combinations (any usable graph per part): {complete_combinations(path)}")
    md = open_model_dir(path, None)
    size = sum(graph_bytes(md.onnx_path(p)) for p in PARTS)
    lines.append(f"auto picks: {md.label} ({size / 1e6:.1f} MB)")
    return lines


# ----------------------------------------------------------------------------- issue 16: train and score

def _options(cls, **kwargs):
    """An options dataclass from flags; its ValueError becomes one config line (exit 2)."""
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _tasks(value: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in value.split(",") if t.strip())


@models.command("finetune")
@click.argument("data", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints/, checkpoint/ (final, native), model/ (ONNX fp32 + int8), logs.")
@click.option("--from", "src", help="A saved Florence-2 checkpoint folder, or a Hugging Face id (downloads when online).")
@click.option("--random-config", type=click.Choice(["tiny", "small", "base", "large"]),
              help="Train from scratch: random weights with the real architecture at this size.")
@click.option("--tasks", default="od,ocr", show_default=True, help="Tasks to train: od, ocr or both.")
@click.option("--image-size", type=int, default=768, show_default=True, help="Model input side in pixels (multiple of 32).")
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps (overrides --epochs).")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Peak learning rate (linear warm-up, then cosine).")
@click.option("--warmup", type=float, default=0.05, show_default=True, help="Share of the steps spent warming up.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lora", "mode", flag_value="lora", help="Train LoRA adapters on q_proj/v_proj (peft), merged at the end.")
@click.option("--full", "mode", flag_value="full", default=True, help="Train every weight (default).")
@click.option("--lora-rank", type=int, default=8, show_default=True)
@click.option("--heldout", type=float, default=0.1, show_default=True, help="Share of the images held out for scoring.")
@click.option("--max-target-tokens", type=int, default=1024, show_default=True)
@click.option("--checkpoint-every", type=int, default=200, show_default=True, help="Steps between checkpoints.")
@click.option("--log-every", type=int, default=10, show_default=True, help="Steps between lines of OUT/train-log.jsonl.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=0, help="torch threads (0: torch's default).")
@click.option("--no-export", is_flag=True, help="Skip the export, int8, verify and held-out scoring at the end.")
@click.option("--eval-max-new-tokens", type=int, default=1024, show_default=True)
@click.option("--loc-init", type=click.Choice(["sinusoidal", "random"]), default="random", show_default=True,
              help="--random-config only: initial <loc_N> embeddings (sinusoidal: neighbouring bins alike).")
@click.option("--encoder-lr-scale", type=float, default=1.0, show_default=True,
              help="Learning rate of the vision tower and text encoder, as a share of --lr (0.1: see docs/training.md).")
@click.option("--dense-aux", type=float, default=0.0, show_default=True,
              help="Weight of a dense auxiliary loss on the encoder's image cells (class + box per cell; "
                   "for training from scratch, docs/training.md). 0: off.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def finetune_cmd(data, out, src, random_config, tasks, image_size, epochs, max_steps, lr, warmup, batch_size, mode,
                 lora_rank, heldout, max_target_tokens, checkpoint_every, log_every, resume, seed, threads, no_export,
                 eval_max_new_tokens, loc_init, encoder_lr_scale, dense_aux, no_progress):
    """Fine-tune Florence-2 on COCO data DATA (a JSON file, or a folder with annotations.json).

    <OD> learns the annotations' categories; <OCR_WITH_REGION> the annotations with a `text`
    field.  At the end the model is exported, quantized to int8, verified, and scored on the
    held-out images."""
    _require("torch", "train")
    from edge_agent.models.finetune import FinetuneOptions, finetune

    opts = _options(FinetuneOptions, data=data, out=out, source=src, random_config=random_config,
                    tasks=_tasks(tasks), image_size=image_size, epochs=epochs, max_steps=max_steps, lr=lr,
                    warmup=warmup, batch_size=batch_size, mode=mode, lora_rank=lora_rank, heldout=heldout,
                    max_target_tokens=max_target_tokens, checkpoint_every=checkpoint_every, log_every=log_every,
                    resume=resume,
                    seed=seed, threads=threads, export=not no_export, eval_max_new_tokens=eval_max_new_tokens,
                    loc_init=loc_init, encoder_lr_scale=encoder_lr_scale, dense_aux=dense_aux,
                    progress=not no_progress)
    finetune(opts, echo=click.echo)


@models.command("evaluate")
@click.argument("model_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.argument("data", type=click.Path())
@click.option("--variant", "variants", multiple=True, help=VARIANT_HELP + "  Repeatable; default: every variant present.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["untiled", "tiled"]),
              help="Repeatable; default: both.")
@click.option("--tasks", default="od,ocr", show_default=True)
@click.option("--tile-size", type=int, help="Tile side for the tiled mode (default: the model's input side).")
@click.option("--max-new-tokens", type=int, default=1024, show_default=True)
@click.option("--num-beams", type=int, help="Default: generation_config.json's.")
@click.option("--images", "limit", type=int, help="Score only the first N images.")
@click.option("--split", "split_file", type=click.Path(dir_okay=False),
              help="A finetune run's split.json: score its held-out images only.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row instead of text.")
def evaluate_cmd(model_dir, data, variants, modes, tasks, tile_size, max_new_tokens, num_beams, limit, split_file,
                 as_json):
    """Score DIR on COCO data DATA: <OD> mAP@0.5 and mAP@0.5:0.95 (pycocotools), OCR line
    accuracy (exact text at IoU >= 0.5), for every variant, untiled and tiled."""
    import json
    from pathlib import Path

    _require("pycocotools", "train")
    from edge_agent.models.cocodata import load_dataset
    from edge_agent.models.evaluate import EvalOptions, evaluate_model

    opts = _options(EvalOptions, variants=tuple(variants) or None, modes=tuple(modes) or ("untiled", "tiled"),
                    tasks=_tasks(tasks), tile_size=tile_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
    dataset = load_dataset(data)
    if split_file:
        try:
            held = json.loads(Path(split_file).read_text(encoding="utf-8"))["heldout"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{split_file}: not a finetune split.json ({type(exc).__name__})") from None
        dataset = dataset.subset(held)
    if limit:
        dataset.samples = dataset.samples[:limit]
    if not dataset.samples:
        raise ConfigError(f"{data}: no images to score")
    click.echo(f"scoring {model_dir} on {len(dataset.samples)} images of {dataset.file}")
    evaluate_model(model_dir, dataset, opts,
                   on_row=lambda row: click.echo(json.dumps(row.as_dict()) if as_json else row.line()))
