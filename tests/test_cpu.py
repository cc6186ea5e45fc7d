"""models/cpu.py names the int8 instruction set from /proc/cpuinfo, as benchmarks print it."""
from edge_agent.models.cpu import cpu_flags, int8_isa, u8s8_saturates

EPYC_VNNI = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n"
EPYC_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
ALDER = "flags\t\t: avx2 avx_vnni\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8\n"
PI5 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"
PI4 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"


def test_names_each_kind_of_cpu():
    assert int8_isa(EPYC_VNNI, "x86_64") == "AVX-512 VNNI"
    assert int8_isa(EPYC_AVX2, "x86_64") == "AVX2 (no VNNI)"
    assert int8_isa(ALDER, "x86_64") == "AVX-VNNI"
    assert int8_isa(SAPPHIRE, "x86_64") == "AMX + AVX-512 VNNI"
    assert int8_isa(PI5, "aarch64") == "ARM dotprod"
    assert int8_isa(PI4, "aarch64") == "ARM (no dotprod)"
    assert int8_isa("", "riscv64") == "riscv64"
    assert "asimddp" in cpu_flags(PI5) and "avx2" in cpu_flags(EPYC_AVX2)


def test_this_machine_has_an_answer():
    assert int8_isa()


def test_only_x86_without_vnni_or_amx_saturates_u8s8_pairs():
    assert u8s8_saturates(EPYC_AVX2, "x86_64")
    assert u8s8_saturates("flags\t\t: sse4_1 avx512f avx512bw\n", "x86_64")  # Skylake-SP: VPMADDUBSW too
    for flags in (EPYC_VNNI, ALDER, SAPPHIRE):
        assert not u8s8_saturates(flags, "x86_64")
    for flags in (PI4, PI5):  # UMLAL and UDOT accumulate in 32 bits
        assert not u8s8_saturates(flags, "aarch64")
