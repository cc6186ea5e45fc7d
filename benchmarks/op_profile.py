"""Where a graph's time goes, by operator type: ONNX Runtime's profiler over repeated runs.

    python benchmarks/op_profile.py MODEL_DIR --part step --rows 6 --past 256
    python benchmarks/op_profile.py MODEL_DIR --part vision
    python benchmarks/op_profile.py MODEL_DIR --part step --variant _int8 --threads 1
    python benchmarks/op_profile.py --part gemm      # this CPU's int8 and fp32 matmul ceilings

--part step: `decoder_step{variant}.onnx` (edge-agent's fast decoder) with its caches bound as
the engine binds them (models/runners.py BufferedRunner: each present.* output written into its
past/cross input's buffer, so GroupQueryAttention appends in place instead of copying the cache),
random inputs, `--rows` rows, `--past` past tokens, cross-attention over `--encoder` positions.
--part vision: `vision_encoder{variant}.onnx` on one random tile at the graph's side.
Graphs load as the engine loads them; `--as-written` leaves out what it changes at load (the
per-row decoders' activation bits; int8 ConvInteger weights passed as uint8), to measure it.

--part gemm: this CPU's ceilings, no model needed: one large int8 matmul (DynamicQuantizeMatMul,
as the int8 vision tower's linear layers run) and one fp32 MatMul, 2304 x 1024 x 4096, and one
row through 64 MB of int8 weights (the rate at which a decode step's matmuls can read theirs).

Prints ms per run (profiler on, so a little above an unprofiled run), the kernels' share, and the
operator types by time; for matmuls and convolutions also their multiply-accumulates (from the
shapes the profiler records) and the rate they ran at.  An operator near --part gemm's ceiling is
bound by compute; one far below it waits on memory or on its own overhead.  Not a test; run it on
an idle machine (benchmarks/frame-results.md, sessions 12 and 13, has its numbers for the base
model).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

TYPES = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64}
# operator type -> index of the input whose last axis a matmul reduces over (A [..., M, K])
MATMUL_A = {"MatMul": 0, "FusedMatMul": 0, "MatMulInteger": 0, "MatMulIntegerToFloat": 0, "DynamicQuantizeMatMul": 0,
            "MatMulNBits": 0, "QLinearMatMul": 0}
# operator type -> index of the weight input [C_out, C_in / group, *kernel] of a convolution
CONV_W = {"Conv": 1, "FusedConv": 1, "NchwcConv": 1, "ConvInteger": 1, "QLinearConv": 3}
GEMM_SHAPE = (2304, 1024, 4096)  # M, K, N of --part gemm: a base vision tower's MLP chunk
STREAM_SHAPE = (1, 4096, 16384)  # one row over 64 MB of int8 weights: more than a CPU's caches hold


def node_macs(op: str, inputs: list, outputs: list) -> int:
    """Multiply-accumulates of one matmul or convolution node from its input and output shapes (as
    ONNX Runtime's profiler records them): output elements x the length each one reduces over (a
    matmul's K; a convolution's C_in / group x kernel elements).  0 for other operators, and where
    a shape is missing."""
    if not outputs or not outputs[0]:
        return 0
    out = int(np.prod(outputs[0]))
    if op in MATMUL_A and len(inputs) > MATMUL_A[op] and inputs[MATMUL_A[op]]:
        return out * int(inputs[MATMUL_A[op]][-1])
    if op in CONV_W and len(inputs) > CONV_W[op] and len(inputs[CONV_W[op]]) >= 3:
        return out * int(np.prod(inputs[CONV_W[op]][1:]))
    return 0


def _shapes(args: dict, key: str) -> list:
    """The profiler's [{"float": [dims]}, ...] as [[dims], ...]."""
    return [list(d.values())[0] if d else [] for d in args.get(key, [])]


def step_feeds(session, rows: int, past: int, encoder: int, rng) -> tuple[dict, dict]:
    """Random inputs for decoder_step, and the present.* output -> input name it is written into."""
    feeds = {}
    for i in session.get_inputs():
        dtype, shape = TYPES[i.type], i.shape
        if i.name == "inputs_embeds":
            a = rng.standard_normal((rows, 1, shape[2]))
        elif i.name == "encoder_attention_mask":
            a = np.ones((rows, encoder))
        elif i.name == "seqlens_k":
            a = np.full(rows, past)
        elif i.name == "total_sequence_length":
            a = np.array(past + 1)
        elif i.name.startswith("past_key_values."):  # the buffer, sized for twice the past
            a = rng.standard_normal((rows, shape[1], 2 * past + 2, shape[3])) * (20 if dtype == np.int8 else 1)
        elif i.name.startswith("cross.") and i.name.endswith("_scale"):
            a = np.full((rows, shape[1], 1, shape[3]), 0.05)
        elif i.name.startswith("cross."):
            a = rng.standard_normal((rows, shape[1], encoder + 1, shape[3])) * (20 if dtype == np.int8 else 1)
        else:
            raise SystemExit(f"decoder_step: unexpected input {i.name} {i.shape} {i.type}")
        if dtype == np.int8:
            a = np.clip(np.rint(a), -127, 127)
        feeds[i.name] = np.ascontiguousarray(a.astype(dtype))
    shared = {}
    for o in session.get_outputs():
        if o.name.startswith("present."):
            _, layer, kind, kv = o.name.split(".")
            shared[o.name] = f"past_key_values.{layer}.decoder.{kv}" if kind == "decoder" else f"cross.{layer}.{kv}"
    return feeds, shared


def profile(path, make_feeds, runs: int, threads: int, as_written: bool = False) -> tuple[
        float, collections.Counter, collections.Counter, collections.Counter]:
    """path: an .onnx file, or a serialized model (bytes).  make_feeds(session) -> (feeds, shared):
    shared maps an output to the input whose buffer it writes.  -> seconds per run, and per run by
    operator type: microseconds, nodes, multiply-accumulates (node_macs).  The graph is loaded as
    the engine loads it (below) unless `as_written`."""
    import onnxruntime as ort

    from edge_agent.models.convint import add_conv_overrides
    from edge_agent.models.rowscale import activation_bits, add_overrides

    so = ort.SessionOptions()
    if not as_written:
        add_overrides(so, activation_bits())  # per-row int8 graphs as the engine loads them on this CPU
        if not isinstance(path, bytes):
            add_conv_overrides(so, path)  # int8 ConvInteger weights passed as uint8 (models/convint.py)
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.gettempdir(), "edge_agent_op_profile")
    if threads:
        so.intra_op_num_threads = threads
    session = ort.InferenceSession(path if isinstance(path, bytes) else str(path), so, providers=["CPUExecutionProvider"])
    feeds, shared = make_feeds(session)
    io = session.io_binding()
    values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items()}
    for name, value in values.items():
        io.bind_ortvalue_input(name, value)
    for o in session.get_outputs():
        if o.name in shared:
            io.bind_ortvalue_output(o.name, values[shared[o.name]])
        else:
            io.bind_output(o.name, "cpu")
    warm = 3
    for _ in range(warm):
        session.run_with_iobinding(io)
    t = time.perf_counter()
    for _ in range(runs):
        session.run_with_iobinding(io)
    per_run = (time.perf_counter() - t) / runs
    trace = Path(session.end_profiling())
    total, count, macs = collections.Counter(), collections.Counter(), collections.Counter()
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            args = event["args"]
            total[args["op_name"]] += event["dur"] / (runs + warm)
            count[args["op_name"]] += 1
            macs[args["op_name"]] += node_macs(args["op_name"], _shapes(args, "input_type_shape"),
                                               _shapes(args, "output_type_shape"))
    trace.unlink(missing_ok=True)
    per = runs + warm
    return (per_run, total, collections.Counter({op: n // per for op, n in count.items()}),
            collections.Counter({op: n // per for op, n in macs.items() if n}))


def gemm_model(kind: str, m: int, k: int, n: int) -> bytes:
    """One [m, k] x [k, n] matmul with random weights: "int8" as DynamicQuantizeMatMul (int8 weights,
    the activation quantized per call, as the int8 vision tower's linear layers run), "fp32" as MatMul."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "int8":
        inits = [numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "w"),
                 numpy_helper.from_array(np.full(n, 0.01, np.float32), "w_scale")]
        node = helper.make_node("DynamicQuantizeMatMul", ["x", "w", "w_scale"], ["y"], domain="com.microsoft")
    else:
        inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")]
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], f"gemm_{kind}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model.SerializeToString()


def report(name: str, per_run: float, total, count, macs, top: int) -> None:
    kernels = sum(total.values()) / 1000
    print(f"{name}: {1000 * per_run:.2f} ms per run (profiled), {kernels:.2f} ms in kernels")
    for op, us in total.most_common(top):
        rate = f"  {macs[op] / 1e9:7.2f} GMAC at {macs[op] / us / 1e3:6.1f} GMAC/s" if macs[op] and us else ""
        print(f"  {op:28s} {us / 1000:8.3f} ms  {100 * us / 1000 / kernels:5.1f}%  x{count[op]}{rate}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", nargs="?", help="a model folder (not needed for --part gemm)")
    ap.add_argument("--part", choices=("step", "vision", "gemm"), default="step")
    ap.add_argument("--variant", default="_int8", help="graph suffix: _int8 (default), '' for fp32, _q4, ...")
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--past", type=int, default=256)
    ap.add_argument("--encoder", type=int, default=590, help="encoder positions (577 image tokens + a prompt)")
    ap.add_argument("--runs", type=int, default=0, help="default: 100 for step, 3 for vision, 10 for gemm")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--as-written", action="store_true",
                    help="load the graph as the file has it, without what the engine changes at load (the per-row "
                         "decoders' activation bits, models/rowscale.py; ConvInteger weights as uint8, models/convint.py)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    if args.part == "gemm":
        for kind, (m, k, n), runs in (("int8", GEMM_SHAPE, 10), ("fp32", GEMM_SHAPE, 10), ("int8", STREAM_SHAPE, 50)):
            x = rng.standard_normal((m, k)).astype(np.float32)
            per_run, total, count, macs = profile(gemm_model(kind, m, k, n), lambda s: ({"x": x}, {}),
                                                  args.runs or runs, args.threads)
            report(f"{kind} matmul {m} x {k} x {n}", per_run, total, count, macs, args.top)
        # the last matmul, one row through STREAM_SHAPE: its weights per second
        print(f"  int8 weights streamed at {k * n / (sum(total.values()) * 1e3):.1f} GB/s: what a decode step's "
              "matmuls can read per second (a step reads all its weights once)")
        return
    if not args.model_dir:
        ap.error(f"--part {args.part} needs MODEL_DIR")
    onnx_dir = Path(args.model_dir).expanduser() / "onnx"
    if args.part == "step":
        path = onnx_dir / f"decoder_step{args.variant}.onnx"

        def make_feeds(session):
            return step_feeds(session, args.rows, args.past, args.encoder, rng)
        what = f"{args.rows} rows, {args.past} past, {args.encoder} encoder positions"
        runs = args.runs or 100
    else:
        path = onnx_dir / f"vision_encoder{args.variant}.onnx"

        def make_feeds(session):
            side = session.get_inputs()[0].shape[2]
            side = side if isinstance(side, int) else 768
            return {session.get_inputs()[0].name: rng.random((1, 3, side, side), np.float32)}, {}
        what = "one tile"
        runs = args.runs or 3
    if not path.is_file():
        raise SystemExit(f"{path}: file missing")
    what += ", as written" if args.as_written else ""
    report(f"{path.name}, {what}", *profile(path, make_feeds, runs, args.threads, args.as_written), args.top)


if __name__ == "__main__":
    main()
