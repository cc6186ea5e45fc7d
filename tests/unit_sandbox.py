"""Run a command under the seccomp part of systemd/edge-agent.service, without systemd.

    python tests/unit_sandbox.py UNIT_FILE -- COMMAND [ARGS...]

Emulated from the unit's directives, with libseccomp through ctypes:

- SystemCallFilter= (allow list, then `~` removals, groups expanded with
  `systemd-analyze syscall-filter`), denied calls failing with SystemCallErrorNumber=;
- RestrictAddressFamilies= (socket() of another family fails with EAFNOSUPPORT);
- MemoryDenyWriteExecute=yes (mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect
  adding PROT_EXEC, shmat with SHM_EXEC fail with EPERM), as systemd's seccomp-util does.

NOT emulated: namespaces (ProtectSystem=, PrivateUsers=, PrivateTmp= ...), DevicePolicy=,
capabilities.  This answers one question: does the agent work under the unit's syscall
rules?
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ = 4, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000


def scmp_act_errno(e: int) -> int:
    return 0x00050000 | (e & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names, groups, seen=None) -> set[str]:
    seen = set() if seen is None else seen
    out: set[str] = set()
    for n in names:
        if n.startswith("@"):
            if n not in seen:
                seen.add(n)
                out |= expand(groups[n], groups, seen)
        else:
            out.add(n)
    return out


def directives(unit: Path) -> dict[str, list[str]]:
    d: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            d.setdefault(m[1], []).append(m[2].strip())
    return d


def allowed_syscalls(d: dict[str, list[str]]) -> set[str]:
    groups = syscall_groups()
    allowed: set[str] = set()
    for value in d.get("SystemCallFilter", []):
        if value.startswith("~"):
            allowed -= expand(value[1:].split(), groups)
        else:
            allowed |= expand(value.split(), groups)
    return allowed | expand(["@default"], groups)  # systemd always allows @default


class Filter:
    def __init__(self, default_errno: int):
        self.lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_init.argtypes = [ctypes.c_uint32]
        self.lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                                    ctypes.POINTER(ArgCmp)]
        self.lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.ctx = self.lib.seccomp_init(scmp_act_errno(default_errno))
        if not self.ctx:
            raise OSError("seccomp_init failed")

    def nr(self, name: str) -> int | None:
        n = self.lib.seccomp_syscall_resolve_name(name.encode())
        return None if n == -1 else n  # -1: __NR_SCMP_ERROR, not a syscall here

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        n = self.nr(name)
        if n is None:
            return
        arr = (ArgCmp * max(len(cmps), 1))(*[ArgCmp(*c) for c in cmps])
        self.lib.seccomp_rule_add_array(self.ctx, action, n, len(cmps), arr)  # dup/unsupported: ignored

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        if rc != 0:
            raise OSError(-rc, "seccomp_load failed")


def build(unit: Path) -> Filter:
    d = directives(unit)
    err = getattr(errno, (d.get("SystemCallErrorNumber") or ["EPERM"])[-1])
    allowed = allowed_syscalls(d)
    conditional = set()
    families = None
    if d.get("RestrictAddressFamilies"):
        families = [getattr(socket, f) for f in " ".join(d["RestrictAddressFamilies"]).split()]
        conditional.add("socket")
    mdwe = (d.get("MemoryDenyWriteExecute") or ["no"])[-1] == "yes"
    if mdwe:
        conditional |= {"mmap", "mmap2", "mprotect", "pkey_mprotect", "shmat"}
    f = Filter(err)
    for name in sorted(allowed - conditional):
        f.rule(SCMP_ACT_ALLOW, name)
    if "socket" in allowed and families is not None:
        for fam in range(0, 46):
            action = SCMP_ACT_ALLOW if fam in families else scmp_act_errno(errno.EAFNOSUPPORT)
            f.rule(action, "socket", (0, SCMP_CMP_EQ, fam, 0))
    if mdwe:
        wx = PROT_WRITE | PROT_EXEC
        for name in ("mmap", "mmap2"):
            if name in allowed:
                for ok in (0, PROT_WRITE, PROT_EXEC):
                    f.rule(SCMP_ACT_ALLOW, name, (2, SCMP_CMP_MASKED_EQ, wx, ok))
        for name in ("mprotect", "pkey_mprotect"):
            if name in allowed:
                f.rule(SCMP_ACT_ALLOW, name, (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0))
        if "shmat" in allowed:
            f.rule(SCMP_ACT_ALLOW, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, 0))
    return f


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit(__doc__)
    build(Path(argv[0])).load()
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
