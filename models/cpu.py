"""What this processor offers int8 inference: the instruction set a benchmark names.

    int8_isa()      # "AMX + AVX-512 VNNI", "AVX-512 VNNI", "AVX-VNNI", "AVX2 (no VNNI)", "ARM dotprod", ...
    u8s8_saturates()  # True on x86 without VNNI or AMX: see below

ONNX Runtime's int8 kernels (MatMulInteger, ConvInteger, QLinear*) run several times faster
with a dot-product instruction: AVX-512 VNNI or AVX-VNNI on x86, SDOT/UDOT (`asimddp`) on
ARMv8.2+ (Raspberry Pi 5's Cortex-A76; a Pi 4's Cortex-A72 has none).  Weight-only MatMulNBits
computes in float and does not need them.  The answer comes from /proc/cpuinfo's flags
(x86) or Features (ARM); elsewhere it is the machine name.

Intel Xeons since Sapphire Rapids also have AMX tiles (`amx_int8`), which MLAS's u8s8 GEMM uses
when the kernel grants them: a base vision-tower-sized MatMulIntegerToFloat ran at 1.8-2.6 int8
TOPS on 2 vCPUs of one (benchmarks/frame-results.md, session 12), several times what VNNI gives,
so those machines are named apart: their int8 ratios do not carry over to a VNNI-only CPU.

**Saturation.**  On x86 without VNNI or AMX (AVX2, SSE4.1, AVX-512 without VNNI) MLAS multiplies
uint8 activations by int8 weights with VPMADDUBSW, which adds each pair of products into a
*saturating* int16: 255 x 127 + 255 x 127 = 64770 clips at 32767.  One MatMulIntegerToFloat with
every weight 127 and every activation 130 (zero point 128) gave 8160 where the exact sum is 16256
on an AVX2-only AMD EPYC (benchmarks/frame-results.md, session 14).  VNNI, AMX and ARM's kernels
(UDOT, and the NEON UMLAL widening path of a Pi 4) accumulate in int32 and are exact.
"""
from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The first processor's flags (x86) or Features (ARM), lower case."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.lower().split())
    return set()


def int8_isa(cpuinfo: str | None = None, machine: str | None = None) -> str:
    flags = cpu_flags(cpuinfo)
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64") or machine.startswith("arm") or "asimd" in flags:
        return "ARM dotprod" if "asimddp" in flags else "ARM (no dotprod)"
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "AMX + AVX-512 VNNI" if "amx_int8" in flags else "AVX-512 VNNI"
    if "avx_vnni" in flags:
        return "AVX-VNNI"
    if "avx2" in flags:
        return "AVX2 (no VNNI)"
    return machine or "unknown"


def u8s8_saturates(cpuinfo: str | None = None, machine: str | None = None) -> bool:
    """Whether ONNX Runtime's u8 x s8 matmuls can clip pairs of products on this CPU (x86 without
    VNNI or AMX; see the module's docstring)."""
    flags = cpu_flags(cpuinfo)
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    return not flags & {"avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8"}
