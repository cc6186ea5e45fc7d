"""A dense auxiliary loss for training Florence-2 from scratch: every image cell of the
encoder's output says what stands there.

Sequence-to-sequence detection gives the image side one weak signal per box: the decoder's
loss on a few `<loc_N>` tokens, back-propagated through cross-attention.  From random weights
that signal is too weak for the vision tower to learn shapes in the samples a CPU can train on
(docs/training.md sections 6 and 7: the boxes land roughly, the labels are right 21% of the
time).  Dense heads (FCOS, CenterNet) train a detector's features in far fewer images because
every feature cell gets a target.  This module adds such a head beside the model, for training
only:

    head = DenseHead(d_model, classes)        # a Linear: classes + 1 (background) + 4 box sides
    cls, box = dense_targets(samples, side, grid, classes)
    loss = head.loss(encoder_last_hidden_state, cls, box)

- **Where:** on the text encoder's output at the image tokens (positions 1..grid², row-major;
  position 0 is Florence-2's pooled token).  That is what the decoder cross-attends to, so the
  gradient keeps the encoder's output image-dependent (the collapse of section 6) and carries
  shape and extent into the vision tower.
- **Targets per cell:** the class of the smallest box (object or text line) that holds the
  cell's centre, else background; and for those cells the distances from the centre to the
  box's four sides over the image side (FCOS's l, t, r, b).  Text lines are one class, `text`.
- **Loss:** cross-entropy over the cells, plus L1 on the box sides of the foreground cells.
- **Not exported:** the head is not part of the Florence-2 model.  Checkpoints keep its weights
  (`state["dense_head"]`) so that `--resume` continues it; `checkpoint/` and the ONNX export
  hold the Florence-2 weights only.

Needs torch (the `[train]` extra).
"""
from __future__ import annotations

import numpy as np

TEXT_CLASS = "text"


def dense_classes(category_names) -> tuple[str, ...]:
    """Background is index 0; then the categories in sorted order, then `text`."""
    return ("background", *sorted(set(category_names) - {TEXT_CLASS}), TEXT_CLASS)


def _quad_box(quad) -> tuple[float, float, float, float]:
    xs, ys = quad[0::2], quad[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def dense_targets(samples, side: int, grid: int, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(cls int64 [B, grid²], box float32 [B, grid², 4]) for images resized to side × side.
    box is (l, t, r, b) / side for foreground cells, 0 elsewhere."""
    index = {name: i for i, name in enumerate(classes)}
    centres = (np.arange(grid, dtype=np.float64) + 0.5) * (side / grid)
    cx, cy = np.meshgrid(centres, centres)  # row-major: cell k = row * grid + col
    cx, cy = cx.ravel(), cy.ravel()
    cls = np.zeros((len(samples), grid * grid), dtype=np.int64)
    box = np.zeros((len(samples), grid * grid, 4), dtype=np.float32)
    for b, s in enumerate(samples):
        sx, sy = side / s.width, side / s.height
        boxes = [(index[label], bb) for label, bb in s.objects if label in index]
        boxes += [(index[TEXT_CLASS], _quad_box(quad)) for _, quad in s.lines]
        area = np.full(grid * grid, np.inf)
        for c, (x0, y0, x1, y1) in boxes:
            x0, x1, y0, y1 = x0 * sx, x1 * sx, y0 * sy, y1 * sy
            a = (x1 - x0) * (y1 - y0)
            inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1) & (a < area)
            area[inside] = a
            cls[b, inside] = c
            box[b, inside] = np.stack([cx[inside] - x0, cy[inside] - y0, x1 - cx[inside], y1 - cy[inside]], 1) / side
    return cls, box


def grid_side(n_image_tokens: int) -> int:
    """The cell grid of a square input: Florence-2 writes one pooled token, then grid² cells."""
    g = int(round((n_image_tokens - 1) ** 0.5))
    if g * g != n_image_tokens - 1:
        raise ValueError(f"{n_image_tokens} image tokens are not 1 + a square grid (is the input square?)")
    return g


def DenseHead(d_model: int, n_classes: int):
    """The head: one Linear from the encoder's width to n_classes logits + 4 box sides."""
    import torch

    class _Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(d_model, n_classes + 4)
            self.n_classes = n_classes

        def loss(self, hidden, cls, box):
            """hidden: the encoder's output [B, 1 + grid² + prompt, d]; cls, box: dense_targets."""
            cells = cls.shape[1]
            out = self.proj(hidden[:, 1:1 + cells])
            ce = torch.nn.functional.cross_entropy(out[..., :self.n_classes].flatten(0, 1), cls.flatten())
            fg = cls > 0
            if not bool(fg.any()):
                return ce
            l1 = torch.nn.functional.l1_loss(out[..., self.n_classes:][fg], box[fg])
            return ce + l1

    return _Head()
