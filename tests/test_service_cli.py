"""`edge-agent service install|uninstall`, always under a temporary --prefix or with
--dry-run: these tests never write to the real /etc."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from source_build import build_lock

from edge_agent import cmd_service
from edge_agent.cli import cli



@pytest.fixture
def default_config() -> Path:
    try:
        return cmd_service.find_resource("config/edge-agent.toml")
    except Exception as exc:  # the agent core's file; the installer cannot work without it
        pytest.fail(f"default config missing: {exc}")


# ExecStart stand-in outside the paths the unit's sandbox hides: the checkout running these
# tests (and its venv) may itself live under /tmp or /root, where `install` rightly refuses.
STANDIN_EXEC = "/usr/bin/env"


def invoke(*args: str, euid: int | None = None, monkeypatch=None):
    if args[0] == "install" and "--exec" not in args:
        args = (*args, "--exec", STANDIN_EXEC)
    if euid is not None:
        monkeypatch.setattr(cmd_service.os, "geteuid", lambda: euid)
    return CliRunner().invoke(cli, ["service", *args], catch_exceptions=False)


def layout(prefix: Path) -> cmd_service.Layout:
    return cmd_service.Layout(prefix)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_under_a_prefix_writes_unit_config_credential_and_state(tmp_path, default_config):
    result = invoke("install", "--prefix", str(tmp_path))
    assert result.exit_code == 0, result.output
    lay = layout(tmp_path)
    unit = lay.unit.read_text()
    exe = STANDIN_EXEC
    assert f"ExecStart={exe} run --config /etc/edge-agent/edge-agent.toml" in unit
    assert "DynamicUser=yes" in unit
    assert lay.config.read_bytes() == default_config.read_bytes()
    assert lay.password.read_bytes() == b"" and mode(lay.password) == 0o600
    assert (lay.private_state / "models").is_dir() and mode(lay.private_state.parent) == 0o700
    assert os.readlink(lay.state) == "private/edge-agent"
    # the live-system step is printed, not run, under a prefix
    assert "# not the live system (--prefix): run these commands as root:" in result.output
    assert "systemctl daemon-reload" in result.output


def test_install_with_a_user(tmp_path, default_config):
    result = invoke("install", "--prefix", str(tmp_path), "--user", "edgeagent")
    assert result.exit_code == 0, result.output
    lay = layout(tmp_path)
    unit = lay.unit.read_text()
    assert "User=edgeagent\nGroup=edgeagent\n" in unit
    assert "DynamicUser=yes" not in unit
    assert (lay.state / "models").is_dir() and not lay.state.is_symlink()
    assert "useradd --system --no-create-home --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edgeagent" in result.output
    assert f"chown -R edgeagent:edgeagent {lay.state}" in result.output


def test_reinstall_keeps_an_edited_config_and_a_password(tmp_path, default_config):
    lay = layout(tmp_path)
    assert invoke("install", "--prefix", str(tmp_path)).exit_code == 0
    lay.config.write_text(lay.config.read_text() + "\n# edited\n")
    lay.password.write_text("s3cret\n")
    assert invoke("install", "--prefix", str(tmp_path)).exit_code == 0
    assert lay.config.read_text().endswith("# edited\n")
    assert lay.password.read_text() == "s3cret\n"


def test_dry_run_changes_nothing_and_its_commands_do_the_install(tmp_path, default_config):
    """The printed commands are exact: run through sh (minus the live-system ones) they
    produce the same files as the install itself."""
    printed_root, applied_root = tmp_path / "printed", tmp_path / "applied"
    printed_root.mkdir()
    result = invoke("install", "--prefix", str(printed_root), "--dry-run")
    assert result.exit_code == 0, result.output
    assert not any(printed_root.iterdir())
    lines = result.output.splitlines()
    script = "\n".join(lines[lines.index("# dry run: run these commands as root:") + 1:])
    assert "systemctl daemon-reload" in script
    script = "\n".join(l for l in script.splitlines()
                       if not l.startswith(("systemctl", "useradd", "chown", "# next")))
    subprocess.run(["sh", "-e", "-c", script], check=True)
    applied_root.mkdir()
    assert invoke("install", "--prefix", str(applied_root)).exit_code == 0
    for name in ("unit", "config", "password"):
        a, b = getattr(layout(printed_root), name), getattr(layout(applied_root), name)
        assert a.read_bytes() == b.read_bytes() and mode(a) == mode(b), name
    assert os.readlink(layout(printed_root).state) == "private/edge-agent"
    assert (layout(printed_root).private_state / "models").is_dir()


def test_not_root_prints_the_commands_and_touches_nothing(monkeypatch, default_config):
    """On the live root as a normal user: every step is printed, none is applied."""
    real_install_steps = cmd_service.install_steps

    def guarded(*args, **kwargs):
        steps = real_install_steps(*args, **kwargs)
        for step in steps:
            step.apply = lambda: pytest.fail("a step was applied as non-root")
        return steps

    monkeypatch.setattr(cmd_service, "install_steps", guarded)
    result = invoke("install", euid=1000, monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    assert "# not root: run these commands as root:" in result.output
    assert f"cat > /etc/systemd/system/edge-agent.service <<'EDGE_AGENT_EOF'" in result.output
    assert "[ -e /etc/edge-agent/mqtt_password ] || install -m 0600 /dev/null /etc/edge-agent/mqtt_password" in result.output
    assert "systemctl daemon-reload" in result.output


def test_uninstall_reverses_install_and_keeps_state(tmp_path, default_config):
    lay = layout(tmp_path)
    assert invoke("install", "--prefix", str(tmp_path)).exit_code == 0
    (lay.private_state / "spool.db").write_text("queued")
    result = invoke("uninstall", "--prefix", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert not lay.unit.exists() and not lay.etc.exists()
    assert (lay.state / "spool.db").read_text() == "queued"
    assert "systemctl disable --now edge-agent.service" in result.output


def test_uninstall_keeps_edited_config_and_password_unless_purge(tmp_path, default_config):
    lay = layout(tmp_path)
    assert invoke("install", "--prefix", str(tmp_path)).exit_code == 0
    lay.config.write_text("# mine\n")
    lay.password.write_text("s3cret")
    assert invoke("uninstall", "--prefix", str(tmp_path)).exit_code == 0
    assert lay.config.read_text() == "# mine\n" and lay.password.read_text() == "s3cret"
    assert invoke("uninstall", "--prefix", str(tmp_path), "--purge").exit_code == 0
    assert not lay.etc.exists() and not lay.state.exists() and not lay.state.is_symlink()
    assert not lay.private_state.exists()


def test_an_exec_the_sandbox_hides_is_refused(tmp_path):
    exe = tmp_path / "edge-agent"  # tmp_path is under /tmp: PrivateTmp=yes hides it
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    result = CliRunner().invoke(cli, ["service", "install", "--dry-run", "--exec", str(exe)])
    assert result.exit_code == 2
    assert f"--exec {exe}: under /tmp, which the unit's sandbox hides" in result.output


def test_bad_user_and_missing_exec_are_one_line_errors(tmp_path):
    r = CliRunner().invoke(cli, ["service", "install", "--dry-run", "--user", "Bad User"])
    assert r.exit_code == 2 and "--user 'Bad User': not a valid system user name" in r.output
    r = CliRunner().invoke(cli, ["service", "install", "--dry-run", "--exec", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not found or not executable" in r.output


def test_the_installers_empty_credential_does_not_shadow_password_file(tmp_path):
    """service install creates $CREDENTIALS_DIRECTORY/mqtt_password empty (LoadCredential=
    needs the file); settings must then fall through to [mqtt] password_file."""
    from edge_agent.settings import load_settings

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_bytes(b"")
    (tmp_path / "pw").write_text("from-file\n")
    cfg = tmp_path / "edge-agent.toml"
    cfg.write_text('[mqtt]\nbroker = "mqtt://127.0.0.1:1883"\nusername = "u"\npassword_file = "pw"\n')
    env = {"CREDENTIALS_DIRECTORY": str(creds), "STATE_DIRECTORY": str(tmp_path / "state")}
    s = load_settings(cfg, env=env)
    assert s.mqtt.password.reveal() == "from-file"
    (creds / "mqtt_password").write_text("from-credential\n")
    s = load_settings(cfg, env=env)
    assert s.mqtt.password.reveal() == "from-credential" and "systemd credential" in s.password_origin


@pytest.mark.slow
def test_install_works_from_a_non_editable_wheel(tmp_path):
    """pip install /path/to/clone (not -e): the unit and the default config come from the
    wheel's data files under <venv>/share/edge-agent/."""
    import sys
    import sysconfig

    root = Path(__file__).resolve().parents[1]
    with build_lock():  # tests/source_build.py
        subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=600)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # dependencies only
    wheel = next((tmp_path / "dist").glob("edge_agent-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "--no-deps", "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    done = subprocess.run([str(venv / "bin" / "edge-agent"), "service", "install", "--dry-run",
                           "--exec", "/usr/bin/env"], capture_output=True, text=True, cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"install -m 0644 {venv}/share/edge-agent/config/edge-agent.toml /etc/edge-agent/edge-agent.toml" in done.stdout
    assert "ExecStart=/usr/bin/env run --config /etc/edge-agent/edge-agent.toml" in done.stdout
