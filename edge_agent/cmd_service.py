"""`edge-agent service install|uninstall`: put edge-agent under systemd.

install writes the unit (ExecStart = the edge-agent being run), the default config and
an empty MQTT credential file to /etc, makes the state directory, and reloads systemd.
As root it does so; otherwise, or with --dry-run, it prints the exact commands.
--prefix DIR writes the files under DIR instead of / (an image root, or a test); the
steps that change the live system (useradd, chown, systemctl) are then printed, not run.
"""
from __future__ import annotations

import filecmp
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click

from edge_agent.errors import ConfigError, RuntimeFailure

UNIT = "edge-agent.service"
REPO = Path(__file__).resolve().parents[1]
# Paths that the unit's sandbox hides from the service (ProtectHome=yes, PrivateTmp=yes).
HIDDEN = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")


# ---------------------------------------------------------------- where things go


@dataclass(frozen=True)
class Layout:
    prefix: Path

    def _p(self, path: str) -> Path:
        return self.prefix / path.lstrip("/")

    @property
    def unit(self) -> Path:
        return self._p(f"/etc/systemd/system/{UNIT}")

    @property
    def etc(self) -> Path:
        return self._p("/etc/edge-agent")

    @property
    def config(self) -> Path:
        return self.etc / "edge-agent.toml"

    @property
    def password(self) -> Path:
        return self.etc / "mqtt_password"

    @property
    def state(self) -> Path:
        return self._p("/var/lib/edge-agent")

    @property
    def private_state(self) -> Path:  # where DynamicUser= keeps it; /var/lib/edge-agent links here
        return self._p("/var/lib/private/edge-agent")

    @property
    def live(self) -> bool:
        return self.prefix == Path("/")


def find_resource(*relative: str) -> Path:
    """A file shipped with edge-agent: in the source tree (clone, editable install), or
    under <sys.prefix>/share/edge-agent (a wheel's data files)."""
    tried = []
    for base in (REPO, Path(sys.prefix) / "share" / "edge-agent"):
        for rel in relative:
            p = base / rel
            if p.is_file():
                return p
            tried.append(str(p))
    raise ConfigError(f"cannot find {relative[0]}; looked at {', '.join(tried)}")


def current_executable(override: str | None = None) -> Path:
    """The edge-agent command being run (so the unit starts the same install)."""
    candidates = [override] if override else [
        sys.argv[0] if Path(sys.argv[0]).name == "edge-agent" else None,
        str(Path(sys.executable).parent / "edge-agent"),
        shutil.which("edge-agent"),
    ]
    for c in filter(None, candidates):
        p = Path(c).absolute()
        if p.is_file() and os.access(p, os.X_OK):
            return p
    what = f"--exec {override}" if override else "the edge-agent executable"
    raise ConfigError(f"{what}: not found or not executable")


def check_visible(exe: Path) -> None:
    path = str(exe) + "/"
    for hidden in HIDDEN:
        if path.startswith(hidden):
            raise ConfigError(
                f"--exec {exe}: under {hidden.rstrip('/')}, which the unit's sandbox hides from the "
                "service; install edge-agent elsewhere (e.g. python3 -m venv /opt/edge-agent) "
                "or pass --exec with another path")


def render_unit(template: str, exe: Path, user: str | None) -> str:
    """The unit with ExecStart= pointing at `exe` and, with a user, User=/Group= for
    DynamicUser=."""
    quoted = f'"{exe}"' if re.search(r"\s", str(exe)) else str(exe)
    text, n = re.subn(r"(?m)^ExecStart=\S+", lambda _: f"ExecStart={quoted}", template)
    if n != 1:
        raise ConfigError(f"{UNIT} template: expected one ExecStart= line, found {n}")
    if user:
        text = re.sub(r"(?m)^DynamicUser=yes$", f"User={user}\nGroup={user}", text)
    return text


# ---------------------------------------------------------------- steps


@dataclass
class Step:
    """One action: the shell command that does it, and a Python apply().
    system=True: changes the live system (users, ownership, systemctl): runs only as root
    on prefix /; systemd=True: also needs a running systemd."""

    command: str
    apply: Callable[[], None] | None = None
    system: bool = False
    systemd: bool = False
    label: str = ""  # what it did, for the log line; default: the command


def q(p) -> str:
    return shlex.quote(str(p))


def mkdir(path: Path, mode: int) -> Step:
    def apply():
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)

    return Step(f"install -d -m {mode:04o} {q(path)}", apply)


def write_text(path: Path, text: str, mode: int) -> Step:
    def apply():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)

    body = text if text.endswith("\n") else text + "\n"
    return Step(f"install -d -m 0755 {q(path.parent)}\n"
                f"cat > {q(path)} <<'EDGE_AGENT_EOF'\n{body}EDGE_AGENT_EOF\n"
                f"chmod {mode:04o} {q(path)}", apply, label=f"wrote {path}")


def copy_if_absent(src: Path, dst: Path, mode: int) -> Step:
    def apply():
        if not dst.exists():
            shutil.copyfile(src, dst)
            dst.chmod(mode)

    return Step(f"[ -e {q(dst)} ] || install -m {mode:04o} {q(src)} {q(dst)}", apply)


def touch_if_absent(path: Path, mode: int) -> Step:
    def apply():
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            os.close(fd)
            path.chmod(mode)

    return Step(f"[ -e {q(path)} ] || install -m {mode:04o} /dev/null {q(path)}", apply)


def symlink(target: str, link: Path) -> Step:
    def apply():
        if not link.is_symlink() and not link.exists():
            link.symlink_to(target)

    return Step(f"[ -e {q(link)} ] || ln -s {q(target)} {q(link)}", apply)


def remove(path: Path, recursive: bool = False) -> Step:
    def apply():
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif recursive and path.is_dir():
            shutil.rmtree(path)

    return Step(f"rm -{'r' if recursive else ''}f {q(path)}", apply)


def rmdir_if_empty(path: Path) -> Step:
    def apply():
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()

    return Step(f"rmdir --ignore-fail-on-non-empty {q(path)} 2>/dev/null || true", apply)


def run(command: list[str], check: bool = True) -> Step:
    def apply():
        done = subprocess.run(command, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RuntimeFailure(f"{shlex.join(command)}: exit {done.returncode}: {done.stderr.strip()}")

    return Step(shlex.join(command), apply, system=True, systemd=command[0] == "systemctl")


def user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


# ---------------------------------------------------------------- plans


def install_steps(lay: Layout, unit_text: str, config_src: Path, user: str | None) -> list[Step]:
    steps = [
        mkdir(lay.etc, 0o755),
        copy_if_absent(config_src, lay.config, 0o644),
        touch_if_absent(lay.password, 0o600),
        write_text(lay.unit, unit_text, 0o644),
    ]
    if user:
        if not (lay.live and user_exists(user)):
            steps.append(run(["useradd", "--system", "--no-create-home", "--home-dir", "/var/lib/edge-agent",
                              "--shell", "/usr/sbin/nologin", user]))
        steps += [mkdir(lay.state / "models", 0o750),
                  run(["chown", "-R", f"{user}:{user}", str(lay.state)])]
    else:  # DynamicUser=: systemd owns /var/lib/private/edge-agent and chowns it at start
        steps += [mkdir(lay.private_state.parent, 0o700), mkdir(lay.private_state / "models", 0o755),
                  symlink("private/edge-agent", lay.state)]
    steps.append(run(["systemctl", "daemon-reload"]))
    return steps


def uninstall_steps(lay: Layout, default_config: Path | None, purge: bool) -> list[Step]:
    steps = [run(["systemctl", "disable", "--now", UNIT], check=False), remove(lay.unit),
             run(["systemctl", "daemon-reload"])]
    if purge:
        steps += [remove(lay.etc, recursive=True), remove(lay.state, recursive=True),
                  remove(lay.private_state, recursive=True)]
        return steps
    if default_config and lay.config.is_file() and filecmp.cmp(lay.config, default_config, shallow=False):
        steps.append(remove(lay.config))
    if lay.password.is_file() and lay.password.stat().st_size == 0:
        steps.append(remove(lay.password))
    steps.append(rmdir_if_empty(lay.etc))
    return steps


def execute(steps: list[Step], lay: Layout, dry_run: bool) -> None:
    """Apply the steps we may apply; print the others as the exact commands to run."""
    is_root = os.geteuid() == 0
    may_write = not dry_run and (is_root or (not lay.live and os.access(lay.prefix, os.W_OK)))
    may_system = not dry_run and is_root and lay.live
    has_systemd = systemd_running()
    printed = []
    for step in steps:
        allowed = (may_system and (has_systemd or not step.systemd)) if step.system else may_write
        if allowed and step.apply is not None:
            step.apply()
            click.echo(f"done: {step.label or step.command}")
        else:
            printed.append(step.command)
    if printed:
        why = ("dry run" if dry_run else
               "not root" if not may_write else
               "not the live system (--prefix)" if not lay.live else
               "systemd is not running here")
        click.echo(f"# {why}: run these commands as root:")
        for command in printed:
            click.echo(command)


# ---------------------------------------------------------------- commands


@click.group()
def service():
    """Install or remove edge-agent as a systemd service."""


@service.command()
@click.option("--user", "user", metavar="NAME", help="Run as this (system) user instead of DynamicUser=.")
@click.option("--prefix", default="/", show_default=True, type=click.Path(file_okay=False),
              help="Root to install under (an image root, or a test directory).")
@click.option("--exec", "exec_path", metavar="PATH", help="edge-agent executable for ExecStart (default: this one).")
@click.option("--dry-run", is_flag=True, help="Print the commands, change nothing.")
def install(user, prefix, exec_path, dry_run):
    """Write the unit, /etc/edge-agent/edge-agent.toml, the MQTT credential file and the
    state directory; reload systemd.  Prints the commands instead when not root."""
    if user and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        raise ConfigError(f"--user {user!r}: not a valid system user name")
    exe = current_executable(exec_path)
    check_visible(exe)
    lay = Layout(Path(prefix).absolute())
    unit_text = render_unit(find_resource(f"systemd/{UNIT}").read_text(), exe, user)
    execute(install_steps(lay, unit_text, find_resource("config/edge-agent.toml"), user), lay, dry_run)
    click.echo(f"# next: put the MQTT password (if any) in /etc/edge-agent/mqtt_password, edit "
               f"/etc/edge-agent/edge-agent.toml, then: systemctl enable --now {UNIT}")


@service.command()
@click.option("--prefix", default="/", show_default=True, type=click.Path(file_okay=False))
@click.option("--purge", is_flag=True, help="Also delete /etc/edge-agent and the state directory (spool, models).")
@click.option("--dry-run", is_flag=True, help="Print the commands, change nothing.")
def uninstall(prefix, purge, dry_run):
    """Stop and remove the service.  Keeps an edited config, a non-empty MQTT credential
    and the state directory unless --purge."""
    lay = Layout(Path(prefix).absolute())
    try:
        default_config = find_resource("config/edge-agent.toml")
    except ConfigError:
        default_config = None
    execute(uninstall_steps(lay, default_config, purge), lay, dry_run)
    if not purge:
        click.echo(f"# kept: {lay.state} (spool, models) and any edited files in {lay.etc}; --purge removes them")
