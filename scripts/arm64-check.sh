#!/usr/bin/env bash
# arm64 check: does the README's first command work on a Raspberry Pi OS-like userland?
#
# Builds a Debian bookworm arm64 userland (the base of Raspberry Pi OS 64-bit) with
# debootstrap and qemu-user-static, copies this repository's working tree into it, runs the
# README's first command there verbatim
#
#     python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/edge-agent run --once
#
# and checks that the last stdout line is a JSON result.  Prints one line at the end:
#     arm64-check OK: ...versions...      (exit 0)
#     arm64-check FAIL: where and why      (exit 1)
#
# Not part of CI: on a 2-core x86 VM debootstrap takes ~35 min, pip ~27 min, and the frame
# itself runs under qemu's TCG emulation (very slow).  Needs root (debootstrap, chroot, mounts).
#
# Environment:
#   ARM64_ROOT      the userland, kept and reused (default /var/tmp/edge-agent-arm64)
#   ARM64_MIRROR    Debian mirror (default http://deb.debian.org/debian)
#   ARM64_FRESH=1   delete the userland's copy of the repository and its venv first
#   EDGE_AGENT_*    passed into the chroot unchanged, so the frame can be made cheaper under
#                   emulation, e.g. EDGE_AGENT_MODEL_MAX_NEW_TOKENS=16 EDGE_AGENT_MODEL_NUM_BEAMS=1
#                   (they are printed, and the OK line names them).
set -uo pipefail

ROOT=${ARM64_ROOT:-/var/tmp/edge-agent-arm64}
MIRROR=${ARM64_MIRROR:-http://deb.debian.org/debian}
REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST=/root/edge-agent          # inside the chroot
START=$(date +%s)

say() { printf '[arm64-check %s +%ss] %s\n' "$(date -u +%H:%M:%S)" "$(( $(date +%s) - START ))" "$*"; }
fail() { say "$*"; echo "arm64-check FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, chroot and bind mounts)"

# -- 1. host tools -------------------------------------------------------------------------
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null \
        || fail "apt-get install ${need[*]} failed"
fi
QEMU_VERSION=$(qemu-aarch64-static --version | head -1)

# -- 2. binfmt_misc: the kernel runs aarch64 ELF files through qemu -------------------------
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || fail "cannot mount binfmt_misc"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || fail "binfmt_misc has no qemu-aarch64 entry (update-binfmts --enable qemu-aarch64)"

# -- 3. mounts, undone on exit ----------------------------------------------------------------
MOUNTED=()
cleanup() {
    local i
    for (( i=${#MOUNTED[@]}-1; i>=0; i-- )); do umount -l "${MOUNTED[$i]}" 2>/dev/null; done
}
trap cleanup EXIT
bind() {  # bind SRC DST [--rbind]: a bind mount (recursive with --rbind), undone on exit
    mountpoint -q "$2" 2>/dev/null && return 0
    mount "${3:---bind}" "$1" "$2" && MOUNTED+=("$2")
}

# -- 4. the userland -------------------------------------------------------------------------
if [ ! -e "$ROOT/.stage2-done" ]; then
    if [ ! -e "$ROOT/debootstrap/debootstrap" ] || [ ! -e "$ROOT/.stage1-done" ]; then
        if grep -q " $ROOT/" /proc/mounts; then  # never delete through a bind mount of /dev or /proc
            fail "something is still mounted under $ROOT (grep $ROOT /proc/mounts); unmount it first"
        fi
        rm -rf "$ROOT"; mkdir -p "$ROOT"
        say "debootstrap stage 1: bookworm arm64 minbase into $ROOT from $MIRROR"
        debootstrap --arch=arm64 --foreign --variant=minbase \
            --include=python3,python3-venv,ca-certificates bookworm "$ROOT" "$MIRROR" \
            || fail "debootstrap stage 1 failed"
        touch "$ROOT/.stage1-done"
    fi
    cp /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"
    say "debootstrap stage 2 (under qemu; the slow part)"
    chroot "$ROOT" /debootstrap/debootstrap --second-stage || fail "debootstrap stage 2 failed (see $ROOT/debootstrap/debootstrap.log)"
    touch "$ROOT/.stage2-done"
    say "userland ready"
else
    say "reusing the userland in $ROOT"
fi
echo "deb $MIRROR bookworm main" > "$ROOT/etc/apt/sources.list"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
# Behind a TLS-intercepting proxy the host trusts extra CAs (/usr/local/share/ca-certificates):
# trust them in the chroot too (appended to its bundle here; update-ca-certificates under qemu
# takes minutes), and point pip and Python's ssl at that bundle.
for crt in /usr/local/share/ca-certificates/*.crt; do
    [ -f "$crt" ] || continue
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    if ! cmp -s "$crt" "$ROOT/usr/local/share/ca-certificates/$(basename "$crt")"; then
        cp "$crt" "$ROOT/usr/local/share/ca-certificates/"
        cat "$crt" >> "$ROOT/etc/ssl/certs/ca-certificates.crt"
    fi
done

# qemu-user shows the host's /proc/cpuinfo (x86) to the guest; the cpuinfo library inside
# onnxruntime then crashed on import.  Give the guest a plausible aarch64 one (Cortex-A76, as
# on a Raspberry Pi 5), one entry per host CPU.
CPUINFO="$ROOT/.cpuinfo-aarch64"
: > "$CPUINFO"
for (( i=0; i<$(nproc); i++ )); do
    cat >> "$CPUINFO" <<EOF
processor	: $i
BogoMIPS	: 108.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x4
CPU part	: 0xd0b
CPU revision	: 1

EOF
done

mkdir -p "$ROOT/proc" "$ROOT/sys" "$ROOT/dev"
bind /proc "$ROOT/proc" --rbind || fail "cannot bind /proc"
bind "$CPUINFO" "$ROOT/proc/cpuinfo" || fail "cannot bind the aarch64 cpuinfo over /proc/cpuinfo"
bind /sys "$ROOT/sys" --rbind || fail "cannot bind /sys"
bind /dev "$ROOT/dev" --rbind || fail "cannot bind /dev"

ARCH=$(chroot "$ROOT" uname -m)
[ "$ARCH" = aarch64 ] || fail "the chroot reports $ARCH, not aarch64"
PYVER=$(chroot "$ROOT" python3 -c 'import platform; print(platform.python_version(), platform.machine())')
DEBVER=$(cat "$ROOT/etc/debian_version")
say "chroot: Debian $DEBVER, Python $PYVER, $QEMU_VERSION"

# -- 5. the repository: its working tree, as a fresh clone would have it ---------------------
[ "${ARM64_FRESH:-0}" = 1 ] && rm -rf "$ROOT$DEST"
mkdir -p "$ROOT$DEST"
# the copy mirrors the working tree: everything but a kept .venv is replaced
find "$ROOT$DEST" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
# tracked and untracked-but-not-ignored files; a kept .venv survives (pip then only updates)
( cd "$REPO" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - ) \
    | tar -xf - -C "$ROOT$DEST" || fail "cannot copy the repository into the chroot"
REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD 2>/dev/null || REV="$REV+dirty"

# -- 6. the README's first command -----------------------------------------------------------
OVERRIDES=$(env | grep '^EDGE_AGENT_' | sort | tr '\n' ' ')
say "running the README's first command in $DEST (repository $REV); overrides: ${OVERRIDES:-none}"
mapfile -t PASS < <(env | grep -E '^(EDGE_AGENT_|https?_proxy=|HTTPS?_PROXY=|no_proxy=|NO_PROXY=)')
BUNDLE=/etc/ssl/certs/ca-certificates.crt
OUT="$ROOT/.run-stdout"; ERR="$ROOT/.run-stderr"
T0=$(date +%s)
chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off PIP_CERT=$BUNDLE SSL_CERT_FILE=$BUNDLE \
    REQUESTS_CA_BUNDLE=$BUNDLE "${PASS[@]}" \
    /bin/sh -c "cd $DEST && python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/edge-agent run --once" \
    > "$OUT" 2> "$ERR"
RC=$?
T1=$(date +%s)
say "exit status $RC after $(( T1 - T0 )) s; stderr tail:"
tail -n 15 "$ERR" | sed 's/^/    /'

VERSIONS=$(chroot "$ROOT" "$DEST/.venv/bin/python" -c '
import importlib.metadata as m
names = ["edge-agent", "onnxruntime", "numpy", "opencv-python-headless", "opencv-python", "tokenizers", "paho-mqtt", "pillow"]
out = []
for n in names:
    try:
        out.append(f"{n} {m.version(n)}")
    except m.PackageNotFoundError:
        pass
print(", ".join(out))' 2>/dev/null || echo "versions unavailable")
say "installed: $VERSIONS"

[ "$RC" = 0 ] || fail "the README's first command exited $RC on arm64 after $(( T1 - T0 )) s (Debian $DEBVER, Python $PYVER; $VERSIONS); stderr: $ERR"
LAST=$(grep -v '^\s*$' "$OUT" | tail -n 1)
CHECK=$(printf '%s' "$LAST" | python3 -c '
import json, sys
try:
    r = json.loads(sys.stdin.read())
except ValueError as e:
    print(f"not JSON: {e}"); sys.exit(1)
missing = [k for k in ("schema_version", "camera_id", "seq", "detections", "text") if k not in r]
if missing:
    print("JSON without " + ", ".join(missing)); sys.exit(1)
print("camera %s seq %s, %d detections, %d text lines, %d tiles" % (r["camera_id"], r["seq"], len(r["detections"]), len(r["text"]), r.get("tiles", {}).get("count", 0)))
') || fail "the result line is $CHECK: ${LAST:0:200}"

echo "arm64-check OK: $(date -u +%Y-%m-%dT%H:%MZ), Debian $DEBVER arm64 under $QEMU_VERSION, Python $PYVER, $VERSIONS; repository $REV; result: $CHECK; command $(( T1 - T0 )) s; overrides: ${OVERRIDES:-none}"
