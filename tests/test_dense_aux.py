"""The dense auxiliary loss of `models finetune --dense-aux` (models/dense_aux.py): per-cell
targets from the annotations, the head's loss, and a run that trains the head and resumes it."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_agent.models.cocodata import Sample  # noqa: E402
from edge_agent.models.dense_aux import DenseHead, dense_classes, dense_targets, grid_side  # noqa: E402
from edge_agent.models.errors import ModelSettingError  # noqa: E402
from edge_agent.models.finetune import FinetuneOptions, finetune  # noqa: E402
from edge_agent.models.synth import ShelfOptions, write_dataset  # noqa: E402

FAST = dict(random_config="tiny", image_size=64, batch_size=4, lr=1e-2, warmup=0.0, max_target_tokens=48,
            progress=False, threads=1, export=False, heldout=0.34, log_every=1)


def test_targets_mark_the_smallest_box_at_each_cell_centre():
    classes = dense_classes(["can", "box", "text"])
    assert classes == ("background", "box", "can", "text")
    # a 200x100 image resized to 64x64 (x / 3.125, y / 1.5625), a 4x4 grid: cell centres at 8, 24, 40, 56.
    # box: 0..32 x 0..64; can: 0..16 x 0..32; the price line: 48..64 x 32..64
    s = Sample(1, None, 200, 100,
               objects=(("box", (0.0, 0.0, 100.0, 100.0)), ("can", (0.0, 0.0, 50.0, 50.0))),
               lines=(("$2.99", (150.0, 50.0, 200.0, 50.0, 200.0, 100.0, 150.0, 100.0)),))
    cls, box = dense_targets([s], 64, 4, classes)
    grid = cls[0].reshape(4, 4)
    assert grid.tolist() == [[2, 1, 0, 0], [2, 1, 0, 0], [1, 1, 0, 3], [1, 1, 0, 3]]
    # cell (0, 0): centre (8, 8) in the can: l, t, r, b over the side
    assert box[0, 0] == pytest.approx(np.array([8, 8, 8, 24]) / 64)
    assert box[0, 15] == pytest.approx(np.array([8, 24, 8, 8]) / 64)
    assert not box[0, cls[0] == 0].any()


def test_grid_side_and_the_head_loss_falls():
    assert grid_side(145) == 12
    with pytest.raises(ValueError, match="square"):
        grid_side(150)
    torch.manual_seed(0)
    head = DenseHead(8, 3)
    hidden = torch.randn(2, 1 + 4 + 3, 8)
    cls = torch.tensor([[0, 1, 2, 0], [1, 1, 0, 2]])
    box = torch.rand(2, 4, 4) * (cls > 0)[..., None]
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        loss = head.loss(hidden, cls, box)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shelves")
    write_dataset(root, count=3, seed=0, options=ShelfOptions(width=192, height=192, blur=0.0))
    return root


def test_finetune_trains_the_dense_head_and_resumes_it(data, tmp_path):
    out = tmp_path / "r"
    finetune(FinetuneOptions(data=str(data), out=str(out), max_steps=4, checkpoint_every=2, dense_aux=1.0, **FAST),
             echo=lambda s: None)
    rows = [json.loads(x) for x in (out / "train-log.jsonl").read_text().splitlines()]
    aux = [r["dense_aux"] for r in rows if "dense_aux" in r]
    assert len(aux) == 4 and aux[-1] < aux[0], aux
    state = torch.load(out / "checkpoints" / "step-0000004" / "state.pt", weights_only=False)
    assert state["dense_head"]["proj.weight"].shape[0] == len(dense_classes(["box", "can", "bottle", "bag"])) + 4
    # the exported checkpoint is Florence-2 alone
    assert not any("dense" in k or k.startswith("proj.") for k in state["model"])
    finetune(FinetuneOptions(data=str(data), out=str(out), max_steps=6, checkpoint_every=2, dense_aux=0.5,
                             resume=True, **FAST), echo=lambda s: None)
    after = torch.load(out / "checkpoints" / "step-0000006" / "state.pt", weights_only=False)
    assert not torch.equal(after["dense_head"]["proj.weight"], state["dense_head"]["proj.weight"])
    with pytest.raises(ModelSettingError, match="dense_aux = 0.5, not 0.0"):
        finetune(FinetuneOptions(data=str(data), out=str(out), max_steps=8, resume=True, **FAST), echo=lambda s: None)
