"""systemd/edge-agent.service: `systemd-analyze verify` is clean and the offline
exposure score of `systemd-analyze security` is <= 2.0, for the shipped unit and for
the units `edge-agent service install` renders."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.cmd_service import render_unit

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "edge-agent.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed here: the unit's verify and exposure checks did not run")
MAX_EXPOSURE = 2.0


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            out.setdefault(m[1], []).append(m[2])
    return out


def stand_in() -> Path:
    """An executable that exists, for ExecStart= when /usr/local/bin/edge-agent is absent."""
    real = Path("/usr/local/bin/edge-agent")
    if real.exists():
        return real
    return Path(shutil.which("edge-agent") or Path(sys.executable).parent / "edge-agent")


def staged(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge-agent.service"  # the name matters to systemd-analyze
    path.write_text(text)
    return path


def exposure(unit: Path) -> float:
    done = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+)", done.stdout + done.stderr)
    assert m, done.stdout[-2000:] + done.stderr
    print(f"systemd-analyze security --offline=yes {unit.name}: overall exposure {m[1]}")
    return float(m[1])


def verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)


def test_unit_has_what_the_service_needs():
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] and d["Restart"] == ["on-failure"]
    assert d["RestartSec"] and d["StartLimitIntervalSec"] and d["StartLimitBurst"] and d["TimeoutStopSec"]
    assert d["DynamicUser"] == ["yes"] and d["SupplementaryGroups"] == ["video"]
    assert d["StateDirectory"] == ["edge-agent"] and d["ConfigurationDirectory"] == ["edge-agent"]
    assert d["LoadCredential"] == ["mqtt_password:/etc/edge-agent/mqtt_password"]
    assert d["ExecStart"] == ["/usr/local/bin/edge-agent run --config /etc/edge-agent/edge-agent.toml"]
    # the camera: V4L2 devices allowed, no private /dev
    assert "char-video4linux rw" in d["DeviceAllow"]
    assert d.get("PrivateDevices", ["no"]) == ["no"]
    # the network: IP and the notify socket allowed, no private network, no IP deny list
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert d.get("PrivateNetwork", ["no"]) == ["no"] and "IPAddressDeny" not in d


@needs_analyze
def test_systemd_analyze_verify_passes_with_a_stand_in_exec(tmp_path):
    text = render_unit(UNIT.read_text(), stand_in(), None)
    done = verify(staged(tmp_path, text))
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


@needs_analyze
def test_verify_reports_a_missing_exec(tmp_path):
    """The check above would catch a broken ExecStart: the shipped path, absent here, fails."""
    if Path("/usr/local/bin/edge-agent").exists():
        pytest.skip("/usr/local/bin/edge-agent exists on this machine")
    done = verify(staged(tmp_path, UNIT.read_text()))
    assert "is not executable" in done.stderr


@needs_analyze
def test_exposure_of_the_shipped_unit_is_at_most_2(tmp_path):
    assert exposure(staged(tmp_path, UNIT.read_text())) <= MAX_EXPOSURE


@needs_analyze
@pytest.mark.parametrize("user", [None, "edgeagent"])
def test_installed_units_verify_and_score_at_most_2(tmp_path, user):
    text = render_unit(UNIT.read_text(), stand_in(), user)
    unit = staged(tmp_path, text)
    assert exposure(unit) <= MAX_EXPOSURE
    done = verify(unit)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
