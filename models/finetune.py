"""Fine-tune (or train from scratch) a native Florence-2 on COCO shelf data, then export,
quantize, verify and score it with the project's own code.

    result = finetune(FinetuneOptions(data="data/", out="run/", random_config="small", image_size=384))

OUT after a run:
    checkpoints/step-NNNNNNN/   state.pt (model, optimizer, scheduler, RNG, step) + meta.json,
                                written in a temporary folder and renamed: a crash leaves the
                                previous checkpoint whole; the newest two are kept
    split.json                  the train / held-out image ids (seeded)
    train-log.jsonl             one line per logged step: step, epoch, loss, lr, samples/s;
                                and one per checkpoint with the held-out loss
    checkpoint/                 the final native checkpoint (save_pretrained; LoRA merged),
                                readable by `models export --from`
    model/                      onnx-community layout, fp32 + int8, verified

Each (image, task) pair is one training example: `<OD>` when the image has objects,
`<OCR_WITH_REGION>` when it has text lines.  The encoder input is the reference's:
image tokens, then `<s>` + the task's expanded prompt + `</s>`; the labels are the target
tokens of models/targets.py, which the model shifts right behind its decoder start token.

Needs torch and transformers (the `[train]` extra); peft only for LoRA.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edge_agent.models.cocodata import Dataset, Sample, load_dataset, split
from edge_agent.models.errors import ModelError, ModelSettingError
from edge_agent.models.targets import fit_pieces, ocr_pieces, od_pieces

log = logging.getLogger(__name__)

TASK_TOKEN = {"od": "<OD>", "ocr": "<OCR_WITH_REGION>"}
KEEP_CHECKPOINTS = 2
LORA_TARGETS = ("q_proj", "v_proj")


@dataclass(frozen=True)
class FinetuneOptions:
    data: str
    out: str
    source: str | None = None  # a native checkpoint folder, or a hub id (downloads when online)
    random_config: str | None = None  # tiny | small | base | large (models/export.py ARCHS)
    tasks: tuple[str, ...] = ("od", "ocr")
    image_size: int = 768
    epochs: float = 1.0
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    lr: float = 1e-4
    warmup: float = 0.05  # share of the steps with a linear warm-up, then cosine decay to 0
    weight_decay: float = 0.01
    batch_size: int = 8
    mode: str = "full"  # full | lora
    lora_rank: int = 8
    heldout: float = 0.1  # share of the images held out
    max_target_tokens: int = 1024  # longer targets keep their first instances (reading order)
    checkpoint_every: int = 200  # steps
    log_every: int = 10  # steps
    heldout_batches: int = 8  # held-out loss over at most this many batches
    resume: bool = False
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0: torch's default
    export: bool = True  # export, quantize int8, verify and score at the end
    eval_max_new_tokens: int = 1024
    eval_beams: int | None = None  # None: generation_config.json's
    progress: bool = True  # a tqdm bar on stderr
    # Initial embeddings of the 1000 <loc_N> tokens of a --random-config model: "sinusoidal"
    # gives neighbouring bins similar rows (the tied lm_head then scores near misses close to
    # the target), "random" keeps the architecture's own initialisation.  Checkpoints keep theirs.
    # Not the default: no measured gain yet (docs/training.md).
    loc_init: str = "random"
    # Learning rate of the image side (vision tower, image projection, text encoder) as a
    # share of --lr.  From scratch at 1.0 the encoder collapses within 50 steps (its output
    # stops depending on the image; docs/training.md section 6); 0.1 kept it seeing.
    encoder_lr_scale: float = 1.0
    # Weight of the dense auxiliary loss (models/dense_aux.py): every image cell of the encoder's
    # output classifies what stands there and regresses its box.  0 turns it off.
    dense_aux: float = 0.0

    def __post_init__(self):
        if bool(self.source) == bool(self.random_config):
            raise ValueError("give exactly one of --from CHECKPOINT and --random-config SIZE")
        if not self.tasks or any(t not in TASK_TOKEN for t in self.tasks):
            raise ValueError(f"tasks must be od and/or ocr, got {','.join(self.tasks)!r}")
        if self.image_size % 32 or not 64 <= self.image_size <= 2048:
            raise ValueError(f"image size must be a multiple of 32 within 64..2048, got {self.image_size}")
        checks = {"epochs": self.epochs > 0, "lr": self.lr > 0, "warmup": 0 <= self.warmup < 1,
                  "batch size": self.batch_size >= 1, "mode": self.mode in ("full", "lora"),
                  "lora rank": self.lora_rank >= 1, "heldout": 0 <= self.heldout < 1,
                  "max target tokens": 8 <= self.max_target_tokens <= 4096,
                  "checkpoint every": self.checkpoint_every >= 1, "log every": self.log_every >= 1,
                  "max steps": self.max_steps is None or self.max_steps >= 1, "threads": self.threads >= 0,
                  "weight decay": self.weight_decay >= 0,
                  "loc init": self.loc_init in ("sinusoidal", "random"),
                  "encoder lr scale": 0 < self.encoder_lr_scale <= 1, "dense aux": self.dense_aux >= 0}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}: {getattr(self, name.replace(' ', '_'))!r}")


@dataclass
class FinetuneResult:
    steps: int
    first_loss: float | None
    last_loss: float | None
    heldout_loss: float | None
    checkpoint: Path | None = None
    model_dir: Path | None = None
    verify_lines: list[str] = field(default_factory=list)
    rows: list = field(default_factory=list)  # models.evaluate.EvalRow per variant


# ----------------------------------------------------------------------------- model

def _require(module: str, extra: str = "train"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(f"{module} is not installed: pip install 'edge-agent[{extra}]'") from None


def load_model(opts: FinetuneOptions):
    """(model, tokenizer folder): a random model of the real architecture or a checkpoint."""
    _require("torch")
    from edge_agent.models.export import DEFAULT_TOKENIZER_DIR, is_hub_id, load_checkpoint, random_model

    if opts.random_config:
        model = random_model(opts.random_config, opts.seed, text_std=0.0)
        if opts.loc_init == "sinusoidal":
            smooth_loc_embeddings(model, DEFAULT_TOKENIZER_DIR)
        return model, DEFAULT_TOKENIZER_DIR
    if not is_hub_id(opts.source) and not Path(opts.source).expanduser().is_dir():
        raise ModelSettingError(f"--from {opts.source}: not a checkpoint folder nor a hub id (owner/name)")
    model, src = load_checkpoint(opts.source)
    return model, (src if (src / "tokenizer.json").is_file() else DEFAULT_TOKENIZER_DIR)


def smooth_loc_embeddings(model, tok_dir) -> int:
    """Set the `<loc_0>`..`<loc_999>` embedding rows to the transformer's sinusoidal position
    code of the bin number, scaled to the embedding's own standard deviation.  The lm_head is
    tied to these rows, so a decoder state close to bin N's row also scores N±1 high: the
    loss on a near miss pulls towards the target instead of being one of 1000 unrelated classes.
    Returns the number of rows set."""
    import torch

    from edge_agent.models.tokens import LeanTokenizer

    tok = LeanTokenizer(Path(tok_dir) / "tokenizer.json")
    ids = [tok.backend_tokenizer.token_to_id(f"<loc_{n}>") for n in range(1000)]
    emb = model.get_input_embeddings().weight
    d = emb.shape[1]
    pos = torch.arange(1000, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    code = torch.zeros(1000, d)
    code[:, 0::2] = torch.sin(pos * freq)
    code[:, 1::2] = torch.cos(pos * freq[: d // 2])
    with torch.no_grad():
        emb[torch.tensor(ids)] = code * (float(emb.std()) / float(code.std()))
    return len(ids)


def image_token_count(model, side: int) -> int:
    import torch

    with torch.no_grad():
        feats = model.get_image_features(torch.zeros(1, 3, side, side))
    feats = getattr(feats, "pooler_output", feats)
    return int(feats.shape[1])


def apply_lora(model, rank: int):
    peft = _require("peft")
    cfg = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules=list(LORA_TARGETS))
    return peft.get_peft_model(model, cfg)


# ----------------------------------------------------------------------------- data

@dataclass(frozen=True)
class Example:
    sample: int  # index into Trainer.samples
    task: str
    labels: tuple[int, ...]


def build_examples(samples: list[Sample], tasks, tokenizer, max_tokens: int) -> tuple[list[Example], int]:
    """(examples, instances dropped for the token budget)."""
    out, dropped = [], 0
    for i, s in enumerate(samples):
        size = (s.width, s.height)
        for task in tasks:
            pieces = od_pieces(s.objects, size) if task == "od" else ocr_pieces(s.lines, size)
            if not pieces:
                continue
            text, used = fit_pieces(pieces, tokenizer, max_tokens)
            dropped += len(pieces) - used
            out.append(Example(i, task, tuple(tokenizer(text)["input_ids"])))
    return out, dropped


class Batcher:
    """Examples -> the tensors Florence2ForConditionalGeneration.forward takes."""

    def __init__(self, samples: list[Sample], tokenizer, side: int, n_image_tokens: int, image_token_id: int,
                 pad_id: int = 1):
        from edge_agent.models.preprocess import PreprocessConfig
        from edge_agent.models.prompts import prompt_for

        self.samples, self.pad = samples, pad_id
        self.cfg = PreprocessConfig(size=(side, side))
        self.prompt = {t: [image_token_id] * n_image_tokens + tokenizer(prompt_for(t))["input_ids"] for t in TASK_TOKEN}

    def __call__(self, examples: list[Example]) -> dict:
        import torch

        from edge_agent.models.preprocess import preprocess

        pixels = preprocess([self.samples[e.sample].load() for e in examples], self.cfg)
        n_in = max(len(self.prompt[e.task]) for e in examples)
        n_out = max(len(e.labels) for e in examples)
        ids = np.full((len(examples), n_in), self.pad, dtype=np.int64)
        mask = np.zeros((len(examples), n_in), dtype=np.int64)
        labels = np.full((len(examples), n_out), -100, dtype=np.int64)
        for k, e in enumerate(examples):
            p = self.prompt[e.task]
            ids[k, :len(p)], mask[k, :len(p)] = p, 1
            labels[k, :len(e.labels)] = e.labels
        return {"pixel_values": torch.from_numpy(pixels), "input_ids": torch.from_numpy(ids),
                "attention_mask": torch.from_numpy(mask), "labels": torch.from_numpy(labels)}


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_dirs(out: Path) -> list[Path]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
                  and (p / "state.pt").is_file() and (p / "meta.json").is_file())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out: Path, step: int, state: dict, meta: dict) -> Path:
    """Write checkpoints/step-N atomically: into a temporary folder beside it, fsynced, renamed."""
    import torch

    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(out)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


RESUME_KEYS = ("data", "source", "random_config", "tasks", "image_size", "mode", "lora_rank", "heldout", "seed",
               "batch_size", "max_target_tokens")


def _meta(opts: FinetuneOptions, step: int, total: int) -> dict:
    return {"step": step, "total_steps": total,
            "options": {k: getattr(opts, k) for k in RESUME_KEYS + ("lr", "encoder_lr_scale", "dense_aux")}}


def _check_resume(opts: FinetuneOptions, meta: dict, where: Path) -> None:
    saved = meta.get("options", {})
    for k in RESUME_KEYS:
        now = list(getattr(opts, k)) if isinstance(getattr(opts, k), tuple) else getattr(opts, k)
        if k == "data":
            now, was = str(Path(now).resolve()), str(Path(saved.get(k, "")).resolve())
        else:
            was = saved.get(k)
        if now != was:
            raise ModelSettingError(f"--resume: {where} was trained with {k} = {was!r}, not {now!r}")
    # --lr and --encoder-lr-scale may change, as --max-steps may; the parameter groups may not
    was_scale = float(saved.get("encoder_lr_scale", 1.0))
    if (was_scale == 1.0) != (opts.encoder_lr_scale == 1.0):
        raise ModelSettingError(f"--resume: {where} was trained with encoder_lr_scale = {was_scale!r}, not "
                                f"{opts.encoder_lr_scale!r} (1.0 and other values need different optimizer groups)")
    was_aux = float(saved.get("dense_aux", 0.0))
    if (was_aux > 0) != (opts.dense_aux > 0):
        raise ModelSettingError(f"--resume: {where} was trained with dense_aux = {was_aux!r}, not {opts.dense_aux!r} "
                                f"(the dense head is either trained from the start or not at all)")


def _set_peak_lrs(optimizer, scheduler, opts: FinetuneOptions) -> None:
    """After a resume: the options' peak learning rates, not the checkpoint's, scheduled at its step."""
    peaks = [opts.lr, opts.lr * opts.encoder_lr_scale][:len(optimizer.param_groups)]
    scheduler.base_lrs = peaks
    for group, peak, f in zip(optimizer.param_groups, peaks, scheduler.lr_lambdas):
        group["initial_lr"] = peak
        group["lr"] = peak * f(scheduler.last_epoch)


# ----------------------------------------------------------------------------- training

def is_image_side(name: str) -> bool:
    """The parameters that turn the image into the encoder's output: the vision tower, the
    image projection and position embeddings, and the text encoder (not the decoder, not the
    shared token embeddings)."""
    if "decoder" in name or "shared" in name or "embed_tokens" in name or "lm_head" in name:
        return False
    return any(k in name for k in ("vision", "image_", "visual_", "encoder."))


def param_groups(model, lr: float, encoder_scale: float, extra=()) -> list[dict]:
    """One AdamW group at lr, and the image side (is_image_side) at lr * encoder_scale.
    `extra` parameters (the dense head) train at lr."""
    fast, slow = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (slow if encoder_scale != 1.0 and is_image_side(name) else fast).append(p)
    fast += list(extra)
    groups = [{"params": fast}]
    if slow:
        groups.append({"params": slow, "lr": lr * encoder_scale})
    return groups


def lr_lambda(warmup_steps: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine to 0 (transformers' get_cosine_schedule_with_warmup)."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
    return f


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def heldout_loss(model, batcher: Batcher, examples: list[Example], batch_size: int, max_batches: int) -> float | None:
    import torch

    if not examples:
        return None
    model.eval()
    total = n = 0.0
    with torch.no_grad():
        for b in range(0, min(len(examples), batch_size * max_batches), batch_size):
            chunk = examples[b:b + batch_size]
            total += float(model(**batcher(chunk)).loss) * len(chunk)
            n += len(chunk)
    model.train()
    return total / n


SPREAD_WARN = 0.05


def encoder_spread(model, batcher: Batcher, examples: list[Example], n: int = 4) -> float | None:
    """How much the encoder's output depends on the image: the mean absolute difference between
    the encoder outputs of up to `n` held-out images (same task, so the same prompt), over the
    mean absolute output.  A healthy model keeps it well above 0.1 (a random one is about 0.5);
    near 0 the encoder has collapsed to one output for every image and the decoder can only
    learn a prior (typical labels and bins), which no amount of further training undoes."""
    import torch

    task = examples[0].task if examples else None
    chunk = [e for e in examples if e.task == task][:n]
    if len(chunk) < 2:
        return None
    model.eval()
    with torch.no_grad():
        h = model(**batcher(chunk)).encoder_last_hidden_state
    model.train()
    diffs = [(h[i] - h[j]).abs().mean() for i in range(len(chunk)) for j in range(i + 1, len(chunk))]
    return float(torch.stack(diffs).mean() / h.abs().mean().clamp_min(1e-12))


class _Log:
    def __init__(self, path: Path):
        self.path = path

    def write(self, **row) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def finetune(opts: FinetuneOptions, echo: Callable[[str], None] = print) -> FinetuneResult:
    torch = _require("torch")
    out = Path(opts.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"{out}: cannot create: {exc.strerror}") from None
    if opts.threads:
        torch.set_num_threads(opts.threads)
    ckpts = checkpoint_dirs(out)
    if ckpts and not opts.resume:
        raise ModelSettingError(f"{out}: holds checkpoints already; pass --resume to continue, or another --out")
    dataset = load_dataset(opts.data)
    from edge_agent.models.tokens import LeanTokenizer

    torch.manual_seed(opts.seed)
    model, tok_dir = load_model(opts)
    tokenizer = LeanTokenizer(Path(tok_dir) / "tokenizer.json")
    train_ids, held_ids = split(dataset.samples, opts.heldout, opts.seed)
    (out / "split.json").write_text(json.dumps({"train": train_ids, "heldout": held_ids}) + "\n", encoding="utf-8")
    train_set, held_set = dataset.subset(train_ids), dataset.subset(held_ids)
    examples, dropped = build_examples(train_set.samples, opts.tasks, tokenizer, opts.max_target_tokens)
    held_examples, _ = build_examples(held_set.samples, opts.tasks, tokenizer, opts.max_target_tokens)
    if not examples:
        raise ModelSettingError(f"{dataset.file}: no training examples for tasks {','.join(opts.tasks)} "
                                f"(no objects / text lines in the {len(train_ids)} training images)")
    if dropped:
        log.warning("%d instances left out of targets longer than %d tokens", dropped, opts.max_target_tokens)
    n_img = image_token_count(model, opts.image_size)
    image_token_id = int(model.config.image_token_id)
    train_batch = Batcher(train_set.samples, tokenizer, opts.image_size, n_img, image_token_id)
    held_batch = Batcher(held_set.samples, tokenizer, opts.image_size, n_img, image_token_id)

    if opts.mode == "lora":
        model = apply_lora(model, opts.lora_rank)
    head = grid = None
    head_params = []
    if opts.dense_aux:
        from edge_agent.models.dense_aux import DenseHead, dense_classes, dense_targets, grid_side

        classes = dense_classes(dataset.categories.values())
        grid = grid_side(n_img)
        head = DenseHead(int(model.config.text_config.d_model), len(classes))
        head_params = list(head.parameters())
    params = [p for p in model.parameters() if p.requires_grad] + head_params
    optimizer = torch.optim.AdamW(param_groups(model, opts.lr, opts.encoder_lr_scale, head_params),
                                  lr=opts.lr, weight_decay=opts.weight_decay)
    spe = math.ceil(len(examples) / opts.batch_size)
    total = opts.max_steps or max(1, math.ceil(opts.epochs * spe))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(int(opts.warmup * total), total))
    step = 0
    if opts.resume and ckpts:
        meta = json.loads((ckpts[-1] / "meta.json").read_text(encoding="utf-8"))
        _check_resume(opts, meta, ckpts[-1])
        state = torch.load(ckpts[-1] / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        if head is not None:
            head.load_state_dict(state["dense_head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_peak_lrs(optimizer, scheduler, opts)
        torch.set_rng_state(state["rng"])
        step = int(state["step"])
        echo(f"resumed from {ckpts[-1]} at step {step}/{total}")
    elif opts.resume:
        echo(f"--resume: no checkpoint in {out / 'checkpoints'}; starting at step 0")
    trainable = sum(p.numel() for p in params)
    echo(f"training {trainable:,} parameters ({opts.mode}) on {len(examples)} examples from "
         f"{len(train_ids)} images ({len(held_ids)} held out), {opts.image_size}x{opts.image_size}, "
         f"batch {opts.batch_size}, {total} steps")

    logger = _Log(out / "train-log.jsonl")
    first_loss = last_loss = held = None
    model.train()
    bar = _bar(total, step, opts.progress)
    ema, t_last = None, time.perf_counter()

    def checkpoint(at: int):
        nonlocal held
        held = heldout_loss(model, held_batch, held_examples, opts.batch_size, opts.heldout_batches)
        spread = encoder_spread(model, held_batch, held_examples)
        if spread is not None and spread < SPREAD_WARN:
            log.warning("step %d: the encoder output barely depends on the image (spread %.4f < %.2f): the model "
                        "is learning a prior, not the images; restart with a lower --lr", at, spread, SPREAD_WARN)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "step": at}
        if head is not None:
            state["dense_head"] = head.state_dict()
        path = save_checkpoint(out, at, state, _meta(opts, at, total))
        logger.write(step=at, heldout_loss=held, encoder_spread=spread, checkpoint=path.name)
        return path

    try:
        while step < total:
            epoch, pos = divmod(step, spe)
            order = epoch_order(len(examples), opts.seed, epoch)
            chunk = [examples[i] for i in order[pos * opts.batch_size:(pos + 1) * opts.batch_size]]
            output = model(**train_batch(chunk))
            loss = total_loss = output.loss
            aux = None
            if head is not None:
                cls, box = dense_targets([train_set.samples[e.sample] for e in chunk], opts.image_size, grid, classes)
                aux = head.loss(output.encoder_last_hidden_state, torch.from_numpy(cls), torch.from_numpy(box))
                total_loss = loss + opts.dense_aux * aux
            optimizer.zero_grad(set_to_none=True)
            total_loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            value = loss.item()
            first_loss = value if first_loss is None else first_loss
            last_loss = value
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            now = time.perf_counter()
            sps = len(chunk) / max(1e-9, now - t_last)
            t_last = now
            if bar is not None:
                bar.set_postfix(loss=f"{ema:.3f}", samples_s=f"{sps:.2f}", refresh=False)
                bar.update(1)
            if step % opts.log_every == 0 or step == total:
                row = {"dense_aux": round(aux.item(), 4)} if aux is not None else {}
                logger.write(step=step, epoch=round(step / spe, 4), loss=value, loss_ema=ema,
                             lr=scheduler.get_last_lr()[0], samples_per_s=round(sps, 3), **row)
            if step % opts.checkpoint_every == 0 or step == total:
                checkpoint(step)
                t_last = time.perf_counter()  # samples/s counts training only
    finally:
        if bar is not None:
            bar.close()
    echo(f"step {step}: train loss {first_loss if first_loss is not None else float('nan'):.4f} -> "
         f"{last_loss if last_loss is not None else float('nan'):.4f}, held-out loss "
         f"{'n/a' if held is None else f'{held:.4f}'}")
    result = FinetuneResult(step, first_loss, last_loss, held)
    final = model.merge_and_unload() if opts.mode == "lora" else model
    result.checkpoint = save_native(final.eval(), out / "checkpoint", tok_dir, opts.image_size)
    echo(f"wrote {result.checkpoint}")
    if opts.export:
        _export_and_score(final, out, tok_dir, opts, held_set, result, echo)
    return result


def _bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0)


def save_native(model, path: Path, tok_dir, side: int) -> Path:
    """save_pretrained + tokenizer, preprocessor and generation configs (what `export --from` reads)."""
    from edge_agent.models.export import GENERATION_CONFIG, copy_tokenizer, sized_preprocessor_config, write_json

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    write_json(tmp / "preprocessor_config.json", sized_preprocessor_config(side))
    write_json(tmp / "generation_config.json", GENERATION_CONFIG)
    copy_tokenizer(Path(tok_dir), tmp)
    if path.exists():
        shutil.rmtree(path)
    os.rename(tmp, path)
    return path


def export_trained(model, model_dir: Path, tok_dir, side: int) -> Path:
    """fp32 export at the trained input side, then the int8 variant (models/export.py, models/quantize.py)."""
    from edge_agent.models.export import GENERATION_CONFIG, export_model, sized_preprocessor_config
    from edge_agent.models.quantize import quantize_dir

    if model_dir.exists():
        shutil.rmtree(model_dir)
    export_model(model, model_dir, tok_dir, GENERATION_CONFIG, sized_preprocessor_config(side), side=side)
    quantize_dir(model_dir, "int8")
    return model_dir


def _export_and_score(model, out: Path, tok_dir, opts: FinetuneOptions, held_set: Dataset,
                      result: FinetuneResult, echo) -> None:
    from edge_agent.models.evaluate import EvalOptions, evaluate_model
    from edge_agent.models.modeldir import verify

    result.model_dir = export_trained(model, out / "model", tok_dir, opts.image_size)
    result.verify_lines = verify(result.model_dir)
    for line in result.verify_lines:
        echo(line)
    if not held_set.samples:
        echo("no held-out images: metrics skipped")
        return
    echo(f"held-out metrics ({len(held_set.samples)} images):")
    eopts = EvalOptions(modes=("untiled",), tasks=opts.tasks, max_new_tokens=opts.eval_max_new_tokens,
                        num_beams=opts.eval_beams)
    result.rows = evaluate_model(result.model_dir, held_set, eopts, on_row=lambda row: echo("  " + row.line()))
    with open(out / "heldout-metrics.json", "w", encoding="utf-8") as f:
        json.dump([r.as_dict() for r in result.rows], f, indent=1)
