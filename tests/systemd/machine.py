"""A real systemd to test the unit against: a Debian bookworm root (debootstrap, built once and
cached outside the repository), copied per run and booted with systemd-nspawn, then driven
with `nsenter -t <its PID 1> -a ...`. The container shares the host's network, so an S3
server on the host's 127.0.0.1 is reachable from inside; it never shares the host's /tmp
(systemd's boot-time clean-up would empty it)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("AGENT_SYSTEMD_TEST_CACHE", "/var/cache/ingest-agent-test"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "python3-systemd",
    "ca-certificates",
)
# Written last into a finished root: a root without it (or with another package list) is
# never used.
COMPLETE = ".ingest-agent-test-root"
# A clean environment for commands inside: nothing of the host's (PIP_*, AWS_*, ...) leaks in.
INSIDE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "cat",
    "SYSTEMD_COLORS": "0",
}


def cannot_run() -> str | None:
    """Why this machine cannot boot a test container, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, debootstrap)"
    missing = [
        tool for tool in ("systemd-nspawn", "debootstrap", "nsenter") if not shutil.which(tool)
    ]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install systemd-container debootstrap"
    return None


def root_image(log: Path) -> Path:
    """The cached bookworm root, built first if needed (about a minute, from the Debian
    mirror). It is built into a temporary folder and renamed when complete, so a half-built
    root is never reused."""
    root = CACHE / SUITE
    wanted = ",".join(PACKAGES)
    marker = root / COMPLETE
    if marker.is_file() and marker.read_text().strip() == wanted:
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f"{SUITE}.building-", dir=CACHE))
    building.chmod(0o755)  # it becomes the container's "/"; mkdtemp made it 0700
    try:
        with log.open("ab") as out:
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={wanted}",
                    SUITE,
                    building,
                    MIRROR,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=1200,
            )
        (building / COMPLETE).write_text(wanted + "\n")
        if root.exists():
            shutil.rmtree(root)
        building.rename(root)
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return root


def project_files(source: Path) -> list[str]:
    """The project's files as git knows them (tracked, and new ones not ignored)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source,
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in listing.decode().split("\0") if name and (source / name).is_file()]


def build_wheelhouse(source: Path, wheelhouse: Path) -> None:
    """Wheels of the project and of every dependency, made on the host (its Python is 3.11 as
    bookworm's). systemd-python's wheel is removed: inside, pip must take Debian's
    python3-systemd as satisfying it, or the offline install fails."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    subprocess.run(
        [*pip, "wheel", "-q", "-w", str(wheelhouse), str(source)],
        check=True,
        timeout=900,
    )
    for wheel in wheelhouse.glob("systemd_python-*.whl"):
        wheel.unlink()


class Machine:
    """One booted copy of the root, deleted when closed."""

    def __init__(self, directory: Path, console_log: Path) -> None:
        self.directory = directory
        self.console_log = console_log
        self._console = console_log.open("ab")
        self.nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "--directory",
                str(directory),
                "--boot",
                "--register=no",
                "--keep-unit",
                "--console=pipe",
                f"--machine=agent-test-{os.getpid()}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
        )
        self.pid1 = 0

    def wait_booted(self, timeout: float = 90.0) -> None:
        """Find the container's systemd (nspawn's child) and wait for boot to finish."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited early; see {self.console_log}")
            if not self.pid1:
                self.pid1 = _child_of(self.nspawn.pid) or 0
            if self.pid1:
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.5)
        jobs = self.run("systemctl", "list-jobs", check=False).stdout if self.pid1 else ""
        raise TimeoutError(
            f"the container did not finish booting in {timeout:.0f} s; pending jobs:\n{jobs}"
        )

    def run(
        self,
        *command: str,
        check: bool = True,
        timeout: float = 120.0,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside (all namespaces of the container's PID 1), as root, with a
        clean environment."""
        assert self.pid1, "not booted"
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "env", "-i"]
            + [f"{name}={value}" for name, value in INSIDE_ENV.items()]
            + list(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} -> exit {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def path(self, inside: str) -> Path:
        """The host path of a path inside the container's root."""
        return self.directory / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside, from the host (root-owned)."""
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """`systemctl show` properties of a unit."""
        output = self.run("systemctl", "show", unit, "-p", ",".join(properties)).stdout
        return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)

    def journal(self, *arguments: str) -> list[dict[str, Any]]:
        """Journal entries as dicts (`journalctl -o json ...`)."""
        output = self.run("journalctl", "--no-pager", "-o", "json", *arguments).stdout
        return [json.loads(line) for line in output.splitlines() if line.startswith("{")]

    def poweroff(self, timeout: float = 60.0) -> None:
        """Shut the container down; kill our nspawn only if it does not end on its own."""
        if self.nspawn.poll() is None and self.pid1:
            self.run("systemctl", "poweroff", "--no-block", check=False, timeout=30)
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.nspawn.poll() is None:
                self.nspawn.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.nspawn.wait(timeout if sig is None else 15)
                break
        self._console.close()


def _child_of(parent: int) -> int | None:
    """A child process of `parent`, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent:
            return int(entry.name)
    return None


@contextlib.contextmanager
def booted(log_dir: Path, source: Path, wheelhouse: Path) -> Iterator[Machine]:
    """A fresh copy of the cached root with the project in /root/src and the wheelhouse in
    /root/wheelhouse, booted; powered off and deleted afterwards."""
    root = root_image(log_dir / "debootstrap.log")
    runs = CACHE / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    copy = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    copy.chmod(0o755)
    machine: Machine | None = None
    try:
        subprocess.run(
            ["cp", "-a", "--reflink=auto", f"{root}/.", str(copy)], check=True, timeout=600
        )
        for name in project_files(source):
            target = copy / "root" / "src" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target)
        shutil.copytree(wheelhouse, copy / "root" / "wheelhouse")
        machine = Machine(copy, log_dir / "console.log")
        machine.wait_booted()
        yield machine
    finally:
        if machine is not None:
            machine.poweroff()
        shutil.rmtree(copy, ignore_errors=True)
