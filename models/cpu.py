"""What this processor offers int8 inference: the instruction set a benchmark names.

    int8_isa()      # "AMX + AVX-512 VNNI", "AVX-512 VNNI", "AVX-VNNI", "AVX2 (no VNNI)", "ARM dotprod", ...

ONNX Runtime's int8 kernels (MatMulInteger, ConvInteger, QLinear*) run several times faster
with a dot-product instruction: AVX-512 VNNI or AVX-VNNI on x86, SDOT/UDOT (`asimddp`) on
ARMv8.2+ (Raspberry Pi 5's Cortex-A76; a Pi 4's Cortex-A72 has none).  Weight-only MatMulNBits
computes in float and does not need them.  The answer comes from /proc/cpuinfo's flags
(x86) or Features (ARM); elsewhere it is the machine name.

Intel Xeons since Sapphire Rapids also have AMX tiles (`amx_int8`), which MLAS's u8s8 GEMM uses
when the kernel grants them: a base vision-tower-sized MatMulIntegerToFloat ran at 1.8-2.6 int8
TOPS on 2 vCPUs of one (benchmarks/frame-results.md, session 12), several times what VNNI gives,
so those machines are named apart: their int8 ratios do not carry over to a VNNI-only CPU.
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
