"""The per-row int8 graphs' activation range (models/rowquant.py), which the engine can change at load.

    activation_overrides(8)   # the values quantize_rows writes: x / max|x| -> [1, 255] around 128
    activation_overrides(7)   # [1, 127] around 64: no u8 x s8 pair saturates (models/cpu.py)
    bits = activation_bits(0) # 7 on a CPU whose u8 x s8 pairs saturate, else 8
    add_overrides(session_options, bits)   # before creating the ONNX Runtime session

Three constants, shared by every per-row matmul of a graph, set how its activations are quantized:
xq = QuantizeLinear(x / m, X_SCALE, X_ZERO_POINT), then MatMulIntegerToFloat(xq, Wq, A_SCALE, s_W,
X_ZERO_POINT).  The engine passes other values with ONNX Runtime's `SessionOptions.add_initializer`,
so the file and its weights stay the same on every CPU.  No onnx import: the engine runs without it.
"""
from __future__ import annotations

import numpy as np

X_SCALE, X_ZERO_POINT, A_SCALE = "rowq_inv127", "rowq_zp", "rowq_one"
BITS = (7, 8)  # the activation widths a graph can be loaded with


def activation_overrides(bits: int) -> dict[str, np.ndarray]:
    """The three constants' values for activations of `bits` bits (7 or 8).  s_W carries 1/127 of
    the activation's scale, so A_SCALE is 127 / (2 ** (bits - 1) - 1)."""
    if bits not in BITS:
        raise ValueError(f"activation bits must be 7 or 8, not {bits!r}")
    top = 2 ** (bits - 1) - 1  # 127 or 63
    return {X_SCALE: np.array(1 / top, np.float32), X_ZERO_POINT: np.array(top + 1, np.uint8),
            A_SCALE: np.array(127 / top, np.float32)}


def activation_bits(requested: int = 0) -> int:
    """`requested` (7 or 8; ValueError otherwise), or for 0 this CPU's choice: 7 where u8 x s8
    pairs saturate (models/cpu.py u8s8_saturates), else 8."""
    from edge_agent.models.cpu import u8s8_saturates

    if requested:
        activation_overrides(requested)  # raises ValueError for anything but 7 or 8
        return requested
    return 7 if u8s8_saturates() else 8


_VALUES: dict[int, dict] = {}  # bits -> {name: OrtValue}: ORT reads them in place, so they live as long as the process


def add_overrides(session_options, bits: int) -> None:
    """Make sessions created with onnxruntime `session_options` quantize per-row activations to
    `bits` bits (8: as the graphs are written, nothing to add)."""
    import onnxruntime as ort

    if bits == 8:
        return
    if bits not in _VALUES:
        _VALUES[bits] = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in activation_overrides(bits).items()}
    for name, value in _VALUES[bits].items():
        session_options.add_initializer(name, value)
