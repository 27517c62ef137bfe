"""The soak: the daemon under SIGKILLs, a faulty network and a rolled-back state database,
then a check that nothing was lost, corrupted, left open, read from outside its source or
changed in it.

    python -m tests.soak [--kills N] [--minutes M] [--seed S] [--workdir DIR]

What it does, in order:
1. Starts the test S3 server (`tests.s3server`, moto on loopback) and, in front of it, the
   fault-injecting proxy (`tests.chaos_proxy`): 500 InternalError, 503 ServiceUnavailable,
   503 SlowDown, connections reset mid-body, answers stalled for less or more than the
   agent's read timeout, about one request in ten, multipart requests two to four times as
   often (`FAULT_BOOST`). The agent only ever talks to the proxy.
2. Generates a tree (an instrument, `Instrument`): sessions of many small files and several
   multipart files (some exactly on part and threshold boundaries), a session whose names
   are hostile (spaces, unicode, URL characters, a name that is not UTF-8, symbolic links to
   a canary file and folder outside the source, an excluded file), a session directory that
   is not UTF-8 and one that is a symbolic link; one file grows through most of the run, and
   new sessions keep arriving.
3. Runs `python -m agent run` and SIGKILLs it at `--kills` moments drawn uniformly over the
   `--minutes` of faults, restarting it each time. After a third of the kills the state
   database is copied (the daemon is down, so the copy is what a disk holds after a power
   cut); after two thirds, that older copy is put back before the restart.
4. Switches faults off and waits until `agentctl status --json` says every session is
   uploaded (the minutes this takes are reported), then stops the daemon with SIGTERM.
5. Verifies: every file byte-identical at its key, every manifest right (files, keys, sizes,
   mtimes, CRC32C computed here with awscrt, ETags, refusals), nothing else in the bucket, no
   multipart upload left open, the canary in no object, no read of anything outside the
   source (inotify on the canary's folder: an open or read there is an event), the source
   tree exactly as the instrument left it, and `agentctl verify --download` clean.

Parts re-sent: UploadPart requests the server answered with success, per (key, part
number), beyond the first. Those explained by an answer the proxy held past the agent's
timeout (a retry is the right response to that) are counted apart; the rest, divided by the
kills, is the figure per kill.

Multipart uploads left open are a failure; to tell a leak that outlives restarts from one a
running daemon leaves until its next start-up, the soak then runs `agentctl sync` once (the
same start-up) and reports how many are still open.

The Markdown summary goes to stdout, the JSON to `soak-summary.json` in the work directory,
with the server's request log (`requests.jsonl`) and every injected fault (`faults.jsonl`),
seconds from the start, to follow an upload id through a failure. The exit code is 1 on any
verification failure. The daemon's logs stay in `logs/`; the data (source, outside, state) is
removed after a clean run unless `--keep` is given.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3
from awscrt import checksums as crt_checksums

from tests.chaos_proxy import FAULT_KINDS, ChaosProxy, FaultRates
from tests.s3server import S3TestServer

MIB = 1024**2
BUCKET = "soak-bucket"
PREFIX = "rig-soak"
SOURCE = "ephys"
PART_SIZE = 5 * MIB  # the smallest S3 allows: many parts per file
THRESHOLD = 6 * MIB
READ_TIMEOUT = 4.0  # the agent's; a long stall outlasts it, a short one does not
EXCLUDED_SUFFIX = ".tmp"  # in the agent's default exclude list
SYMLINK_REASON = "symbolic link: not followed"
FAULT_NAMES = {
    "internal_error": "500 InternalError",
    "service_unavailable": "503 ServiceUnavailable",
    "slow_down": "503 SlowDown",
    "reset_mid_body": "connection reset mid-body",
    "stall": f"stall < {READ_TIMEOUT:g} s read timeout",
    "long_stall": f"stall > {READ_TIMEOUT:g} s read timeout",
}
# How the total fault rate is shared among the kinds.
FAULT_SHARES = {
    "internal_error": 0.2,
    "service_unavailable": 0.1,
    "slow_down": 0.2,
    "reset_mid_body": 0.2,
    "stall": 0.2,
    "long_stall": 0.1,
}

# Multipart requests are few among many small PUTs, and are where resuming is tested: their
# fault rates are multiplied by these.
FAULT_BOOST = {
    "UploadPart": 4.0,
    "CreateMultipartUpload": 2.0,
    "CompleteMultipartUpload": 2.0,
    "ListParts": 2.0,
}


@dataclass
class SoakOptions:
    """What to run. The defaults are `make soak`'s few minutes."""

    kills: int = 10
    minutes: float = 3.0
    seed: int = 1
    workdir: Path | None = None
    fault_rate: float = 0.10
    bandwidth: str = "2MiB"
    arrival_seconds: float = 10.0
    converge_minutes: float | None = None
    keep: bool = False
    quiet: bool = False

    @property
    def converge_limit(self) -> float:
        """Seconds allowed for the convergence once faults are off."""
        if self.converge_minutes is not None:
            return self.converge_minutes * 60
        return max(4.0, self.minutes * 0.4) * 60


# --- the instrument ------------------------------------------------------------------------


@dataclass
class Entry:
    """What is at one path of the source: a file (size, SHA-256, CRC32C, mtime), a symbolic
    link (its target) or a directory."""

    kind: str
    size: int = 0
    sha256: str = ""
    crc32c: str = ""
    mtime_ns: int = 0
    target: str = ""


def crc32c_b64(value: int) -> str:
    """A CRC32C as S3 and the agent's manifests write it: 4 bytes big-endian, base64."""
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def shown(raw: bytes) -> str:
    """A name as the agent shows one that is not UTF-8: bytes as \\xNN escapes."""
    return raw.decode("utf-8", "backslashreplace")


def is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Instrument:
    """Writes the source tree and remembers exactly what it wrote, so the end can tell the
    tree unchanged and knows what S3 must hold. Paths are bytes: some names are not UTF-8."""

    def __init__(self, source: Path, outside: Path, rng: random.Random) -> None:
        self.source = source
        self.outside = outside
        self.rng = rng
        self.entries: dict[bytes, Entry] = {}
        # Session directories the agent must upload; the ones it must skip.
        self.sessions: list[bytes] = []
        self.skipped_sessions: list[bytes] = []
        self.canaries: dict[str, Entry] = {}
        self.growing: bytes = b""
        self.arrived = 0
        self._lock = threading.Lock()

    # --- writing ---

    def _full(self, rel: bytes) -> bytes:
        return os.fsencode(self.source) + b"/" + rel

    def _dirs(self, rel: bytes) -> None:
        parent = os.path.dirname(rel)
        if parent:
            os.makedirs(self._full(parent), exist_ok=True)
            parts = parent.split(b"/")
            with self._lock:
                for depth in range(1, len(parts) + 1):
                    self.entries.setdefault(b"/".join(parts[:depth]), Entry("dir"))

    def write(self, rel: bytes, data: bytes) -> None:
        """Write a whole file, as an instrument does, and note it."""
        self._dirs(rel)
        descriptor = os.open(self._full(rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
        finally:
            os.close(descriptor)
        entry = Entry(
            "file",
            len(data),
            hashlib.sha256(data).hexdigest(),
            crc32c_b64(crt_checksums.crc32c(data)),
            os.lstat(self._full(rel)).st_mtime_ns,
        )
        with self._lock:
            self.entries[rel] = entry

    def link(self, rel: bytes, target: Path) -> None:
        """A symbolic link in the source, pointing outside it."""
        self._dirs(rel)
        os.symlink(os.fsencode(target), self._full(rel))
        with self._lock:
            self.entries[rel] = Entry("link", target=str(target))

    def small_size(self) -> int:
        """Mostly a few KiB, some empty or tiny, a few up to a MiB."""
        draw = self.rng.random()
        if draw < 0.03:
            return 0
        if draw < 0.25:
            return self.rng.randint(1, 200)
        if draw < 0.85:
            return self.rng.randint(200, 32 * 1024)
        if draw < 0.97:
            return self.rng.randint(32 * 1024, 256 * 1024)
        return self.rng.randint(256 * 1024, MIB)

    def small_files(self, session: bytes, count: int) -> None:
        for index in range(count):
            folder = b"frames/" if index % 3 else b""
            self.write(
                session + b"/" + folder + b"f_%05d.dat" % index,
                self.rng.randbytes(self.small_size()),
            )

    # --- the tree ---

    def build(self) -> None:
        """The backlog the daemon finds at its first start, and the canaries."""
        self.outside.mkdir(parents=True, exist_ok=True)
        (self.outside / "secret-dir").mkdir(exist_ok=True)
        for path in (self.outside / "canary.bin", self.outside / "secret-dir" / "secret.bin"):
            data = b"CANARY: must never leave the machine\n" + self.rng.randbytes(64 * 1024)
            path.write_bytes(data)
            self.canaries[path.name] = Entry("file", len(data), hashlib.sha256(data).hexdigest())

        first = b"mouse01/2026-01-05_09-00"
        for name, size in (
            (b"continuous.ap.bin", 17 * MIB + 123),
            (b"exactly-threshold.bin", THRESHOLD),
            (b"two-whole-parts.bin", 2 * PART_SIZE),
            (b"just-below-threshold.bin", THRESHOLD - 1),
        ):
            self.write(first + b"/" + name, self.rng.randbytes(size))
        self.write(first + b"/empty.flag", b"")
        self.small_files(first, 150)
        self.sessions.append(first)

        second = b"mouse01/2026-01-05_14-30"
        self.write(second + b"/continuous.lf.bin", self.rng.randbytes(12 * MIB + 7))
        self.small_files(second, 200)
        self.sessions.append(second)

        hostile = "mouse 02 (ctrl)/séance été 🧪".encode()
        for text in (
            "a file with spaces.bin",
            "naïve résumé 日本語 🧪.dat",
            "100% done+plus&amp;#hash?.csv",
            "trailing space .txt",
            "o'brien [v2] (copy) {x}.bin",
            ".hidden-notes.txt",
            "sub dir/deeper level/ünïcödé.bin",
            "long-" + "x" * 180 + ".bin",
        ):
            self.write(hostile + b"/" + text.encode(), self.rng.randbytes(self.small_size() + 1))
        self.write(
            hostile + "/multipart with spaces ü.bin".encode(), self.rng.randbytes(7 * MIB + 1)
        )
        self.write(hostile + b"/bad\xff\xfe name.bin", b"a name that is not UTF-8")
        self.write(hostile + b"/scratch" + EXCLUDED_SUFFIX.encode(), b"excluded")
        self.link(hostile + b"/link-to-canary.bin", self.outside / "canary.bin")
        self.link(hostile + b"/linked-outside-dir", self.outside / "secret-dir")
        self.sessions.append(hostile)

        # Not sessions: a folder whose name is not UTF-8, and links to outside folders.
        bad = b"mouse 02 (ctrl)/s\xfe-not-utf8"
        self.write(bad + b"/inside.bin", b"in a session folder that cannot become a key")
        self.link(b"mouse 02 (ctrl)/linked-session", self.outside / "secret-dir")
        self.link(b"linked-subject", self.outside)
        self.skipped_sessions += [bad, b"mouse 02 (ctrl)/linked-session"]

        growing = b"mouse03/2026-01-05_16-00"
        self.write(growing + b"/settings.json", b'{"probe": "np2", "channels": 384}\n')
        self.growing = growing + b"/continuous.ap.bin"
        self.write(self.growing, b"")
        self.sessions.append(growing)

    def arrive(self) -> None:
        """A new session, written in place while the daemon runs."""
        self.arrived += 1
        session = b"mouse%02d/2026-01-06_%02d-%02d" % (
            4 + self.arrived % 7,
            self.arrived // 60,
            self.arrived % 60,
        )
        self.small_files(session, self.rng.randint(10, 40))
        if self.rng.random() < 0.35:
            self.write(
                session + b"/continuous.ap.bin",
                self.rng.randbytes(self.rng.randint(THRESHOLD, 32 * MIB)),
            )
        with self._lock:
            self.sessions.append(session)

    def run(self, seconds: float, arrival_seconds: float, stop: threading.Event) -> None:
        """The instrument during the run: the growing file is appended to every second for
        60 % of it, new sessions arrive every `arrival_seconds` for 80 % of it."""
        started = time.monotonic()
        grow_until = started + 0.6 * seconds
        arrive_until = started + 0.8 * seconds
        target = int(min(48, max(16, 12 + 1.5 * seconds / 60)) * MIB)
        ticks = max(1, int(0.6 * seconds))
        step = target // ticks + 1
        path = self._full(self.growing)
        digest = hashlib.sha256()
        crc = 0
        size = 0
        next_growth = started + 1.0
        next_arrival = started + arrival_seconds
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_growth and now < grow_until and size < target:
                chunk = self.rng.randbytes(min(step, target - size))
                with open(path, "ab") as handle:
                    handle.write(chunk)
                digest.update(chunk)
                crc = crt_checksums.crc32c(chunk, crc)
                size += len(chunk)
                entry = Entry(
                    "file",
                    size,
                    digest.hexdigest(),
                    crc32c_b64(crc),
                    os.lstat(path).st_mtime_ns,
                )
                with self._lock:
                    self.entries[self.growing] = entry
                next_growth += 1.0
            if now >= next_arrival and now < arrive_until:
                self.arrive()
                next_arrival += arrival_seconds
            if now >= grow_until and now >= arrive_until:
                return
            stop.wait(max(0.05, min(next_growth, next_arrival) - time.monotonic()))

    # --- what the agent must upload ---

    def expected(self) -> dict[str, dict[str, Entry]]:
        """Per session (its id below the source), the files S3 must hold, by path."""
        result: dict[str, dict[str, Entry]] = {}
        with self._lock:
            for session in self.sessions:
                files: dict[str, Entry] = {}
                for rel, entry in self.entries.items():
                    if entry.kind != "file" or not rel.startswith(session + b"/"):
                        continue
                    inner = rel[len(session) + 1 :]
                    if is_utf8(inner) and not inner.endswith(EXCLUDED_SUFFIX.encode()):
                        files[inner.decode()] = entry
                result[session.decode()] = files
        return result

    def refused(self, session: bytes) -> set[str]:
        """The paths the manifest of `session` must list as refused."""
        with self._lock:
            refused = set()
            for rel, entry in self.entries.items():
                if not rel.startswith(session + b"/"):
                    continue
                inner = rel[len(session) + 1 :]
                if entry.kind == "link" or (entry.kind == "file" and not is_utf8(inner)):
                    refused.add(shown(inner))
            return refused


def walk(root: Path) -> dict[bytes, Entry]:
    """Every entry below `root`, never following a link (what the source holds now)."""
    result: dict[bytes, Entry] = {}
    base = os.fsencode(root)
    pending = [b""]
    while pending:
        rel = pending.pop()
        with os.scandir(base + b"/" + rel if rel else base) as entries:
            for item in entries:
                path = rel + b"/" + item.name if rel else item.name
                info = item.stat(follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    result[path] = Entry("link", target=os.fsdecode(os.readlink(item.path)))
                elif stat.S_ISDIR(info.st_mode):
                    result[path] = Entry("dir")
                    pending.append(path)
                else:
                    digest = hashlib.sha256()
                    crc = 0
                    descriptor = os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW)
                    with os.fdopen(descriptor, "rb") as handle:
                        while block := handle.read(4 * MIB):
                            digest.update(block)
                            crc = crt_checksums.crc32c(block, crc)
                    result[path] = Entry(
                        "file",
                        info.st_size,
                        digest.hexdigest(),
                        crc32c_b64(crc),
                        info.st_mtime_ns,
                    )
    return result


# --- reads outside the source ----------------------------------------------------------------


class OutsideWatch:
    """inotify on the canary's folders: an open or a read of anything in them, by anyone, is
    an event. Nothing but the agent following a link from the source would touch them."""

    IN_ACCESS = 0x001
    IN_OPEN = 0x020
    IN_Q_OVERFLOW = 0x4000
    IN_ISDIR = 0x40000000
    IN_NONBLOCK = 0o4000
    IN_CLOEXEC = 0o2000000

    def __init__(self, folders: list[Path]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = int(self._libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC))
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.folders: dict[int, Path] = {}
        for folder in folders:
            watch = int(
                self._libc.inotify_add_watch(
                    self.fd, os.fsencode(folder), self.IN_ACCESS | self.IN_OPEN
                )
            )
            if watch < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
            self.folders[watch] = folder

    def events(self) -> list[str]:
        """The events so far, as `path: open|read`."""
        found: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return found
            offset = 0
            while offset < len(data):
                watch, mask, _, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
                offset += 16 + length
                if mask & self.IN_Q_OVERFLOW:
                    found.append("(inotify queue overflow: very many reads)")
                    continue
                where = self.folders.get(watch, Path("?")) / os.fsdecode(name)
                what = "open" if mask & self.IN_OPEN else "read"
                found.append(f"{where}: {what}{' (directory)' if mask & self.IN_ISDIR else ''}")

    def close(self) -> None:
        os.close(self.fd)


# --- the daemon --------------------------------------------------------------------------------


def agent_environment() -> dict[str, str]:
    """The daemon's environment: test credentials, logs as JSON lines on stderr (never a
    journal the soak happens to run under)."""
    environment = dict(os.environ)
    for variable in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        environment.pop(variable, None)
    environment.pop("AWS_PROFILE", None)
    environment.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return environment


class Daemon:
    """`python -m agent run` as systemd would run it, one log file per start."""

    def __init__(self, config: Path, logs: Path) -> None:
        self.config = config
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.started_at = 0.0

    def start(self) -> None:
        self.starts += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"daemon-{self.starts:03d}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=agent_environment(),
            )
        self.started_at = time.monotonic()

    def exited(self) -> int | None:
        """The exit code if the daemon ended on its own, else None."""
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def terminate(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait; the exit code, or None if it had to be killed."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log_tail(self, lines: int = 15) -> str:
        path = self.logs / f"daemon-{self.starts:03d}.log"
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def agentctl(
    config: Path, *arguments: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *arguments, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=agent_environment(),
        check=False,
    )


def write_config(workdir: Path, endpoint: str, source: Path, bandwidth: str) -> Path:
    """The agent's config: short quiet period and rescans so that much happens in minutes,
    small parts so that files have many, timeouts a long stall outlasts."""
    path = workdir / "config.toml"
    path.write_text(
        f"""
[agent]
name = "soak-rig"
state_dir = "{workdir / "state"}"
log_target = "json"
rescan_interval = "5s"
heartbeat_interval = "1s"
heartbeat_stale = "15s"

[destination]
bucket = "{BUCKET}"
prefix = "{PREFIX}"
endpoint_url = "{endpoint}"
region = "us-east-1"

[upload]
concurrency = 3
part_size = {PART_SIZE}
multipart_threshold = {THRESHOLD}
max_bandwidth = "{bandwidth}"
retries = 5
retry_delay = "0.2s"
failed_retry_delay = "2s"
connect_timeout = "2s"
read_timeout = "{READ_TIMEOUT:g}s"

[fleet]
interval = "10s"

[[source]]
name = "{SOURCE}"
path = "{source}"
session_depth = 2
quiet_period = "3s"
upload_while_growing = true
growing_part_size = {PART_SIZE}
""",
        encoding="utf-8",
    )
    return path


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Kill:
    """One SIGKILL: seconds into the run, the daemon's uptime, requests in flight at the
    proxy at that moment, and what was done to the state database before the restart."""

    at_s: float
    uptime_s: float
    in_flight: int
    database: str = ""


@dataclass
class SoakResult:
    """Everything the summary reports."""

    seed: int
    kills_planned: int
    minutes: float
    workdir: str
    kills: list[Kill] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    faults_by_operation: dict[str, dict[str, int]] = field(default_factory=dict)
    requests: int = 0
    database_copied_after_kill: int | None = None
    database_restored_after_kill: int | None = None
    sessions: int = 0
    files_expected: int = 0
    files_verified: int = 0
    multipart_files: int = 0
    lost: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    unexpected_objects: list[str] = field(default_factory=list)
    manifests_right: int = 0
    manifest_problems: list[str] = field(default_factory=list)
    open_uploads: list[str] = field(default_factory=list)
    open_uploads_after_restart: int | None = None
    uploads_forgotten_open: list[str] = field(default_factory=list)
    canary_uploaded: list[str] = field(default_factory=list)
    outside_reads: list[str] = field(default_factory=list)
    source_entries: int = 0
    source_changes: list[str] = field(default_factory=list)
    parts_sent: int = 0
    parts_resent: int = 0
    parts_resent_after_lost_answer: int = 0
    part_attempts_failed_at_server: int = 0
    converged: bool = False
    minutes_to_converge: float | None = None
    clean_stop_exit: int | None = None
    agent_verify_exit: int | None = None
    agent_verify_output: str = ""
    daemon_exits: list[str] = field(default_factory=list)
    log_events: dict[str, int] = field(default_factory=dict)
    wall_minutes: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def parts_resent_per_kill(self) -> float:
        kills = len(self.kills)
        return (self.parts_resent - self.parts_resent_after_lost_answer) / kills if kills else 0.0

    @property
    def passed(self) -> bool:
        return not self.problems


def fault_rates(total: float) -> FaultRates:
    return FaultRates(
        **{kind: total * share for kind, share in FAULT_SHARES.items()},
        stall_seconds=(0.3, READ_TIMEOUT - 1.5),
        long_stall_seconds=(READ_TIMEOUT + 1, READ_TIMEOUT + 3),
    )


class Soak:
    """One run: set up, chaos, convergence, verification. `run()` returns the result."""

    def __init__(self, options: SoakOptions) -> None:
        self.options = options
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix="agent-soak-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in ("source", "outside", "state", "logs", "state-copy"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        self.source = self.workdir / "source"
        self.outside = self.workdir / "outside"
        self.state = self.workdir / "state"
        self.source.mkdir()
        self.result = SoakResult(
            seed=options.seed,
            kills_planned=options.kills,
            minutes=options.minutes,
            workdir=str(self.workdir),
        )
        self.began = time.monotonic()
        self.orphans_aborted: set[str] = set()

    def say(self, text: str) -> None:
        if not self.options.quiet:
            elapsed = time.monotonic() - self.began
            print(f"[soak {elapsed:6.1f}s] {text}", file=sys.stderr, flush=True)

    def run(self) -> SoakResult:
        server = S3TestServer()
        server.start()
        proxy = ChaosProxy(
            server.port,
            fault_rates(self.options.fault_rate),
            seed=self.options.seed + 2,
            boost=FAULT_BOOST,
        )
        proxy.start()
        stop_instrument = threading.Event()
        daemon: Daemon | None = None
        instrument_thread: threading.Thread | None = None
        try:
            # The soak's own look at the bucket goes to the server directly, not through
            # the proxy, with the test credentials the daemon has too.
            client = boto3.client(
                "s3",
                endpoint_url=server.url,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            client.create_bucket(Bucket=BUCKET)
            instrument = Instrument(self.source, self.outside, random.Random(self.options.seed))
            instrument.build()
            before = walk(self.source)
            watch = OutsideWatch([self.outside, self.outside / "secret-dir"])
            config = write_config(self.workdir, proxy.url, self.source, self.options.bandwidth)
            checked = agentctl(config, "check-config")
            if checked.returncode != 0:
                raise RuntimeError(
                    f"the soak's config is refused: {checked.stdout}{checked.stderr}"
                )
            daemon = Daemon(config, self.workdir / "logs")
            self.say(f"work directory {self.workdir}; {len(before)} entries in the source")

            chaos = self.options.minutes * 60
            daemon.start()
            instrument_thread = threading.Thread(
                target=instrument.run,
                args=(chaos, self.options.arrival_seconds, stop_instrument),
                daemon=True,
            )
            instrument_thread.start()
            self.chaos(daemon, proxy, chaos)
            instrument_thread.join()
            proxy.enabled = False
            self.result.faults = proxy.counts()
            self.result.faults_by_operation = proxy.counts_by_operation()
            self.result.requests = sum(proxy.requests().values())
            self.say(f"faults off after {self.result.faults}; converging")
            self.converge(daemon, config, len(instrument.sessions))
            self.result.clean_stop_exit = daemon.terminate()
            if self.result.clean_stop_exit != 0:
                self.result.problems.append(
                    f"SIGTERM did not stop the daemon cleanly (exit {self.result.clean_stop_exit})"
                )
            self.say("verifying")
            self.result.outside_reads = watch.events()
            watch.close()
            self.check_source(instrument, before)
            self.check_bucket(client, instrument)
            self.check_parts(server, proxy)
            verify = agentctl(config, "verify", "--download")
            self.result.agent_verify_exit = verify.returncode
            self.result.agent_verify_output = (verify.stdout + verify.stderr)[-4000:]
            if verify.returncode != 0:
                self.result.problems.append(f"agentctl verify --download exit {verify.returncode}")
            self.check_logs()
            self.check_forgotten_uploads(server)
            self.write_story(server, proxy)
            if self.result.open_uploads:
                self.restart_once(config, client)
        finally:
            stop_instrument.set()
            if instrument_thread is not None:
                instrument_thread.join(30)
            if daemon is not None:
                daemon.kill()
            proxy.stop()
            server.stop()
        self.result.wall_minutes = (time.monotonic() - self.began) / 60
        self.collect_problems()
        (self.workdir / "soak-summary.json").write_text(
            json.dumps(summary_json(self.result), indent=1, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        if self.result.passed and not self.options.keep:
            for name in ("source", "outside", "state", "state-copy"):
                shutil.rmtree(self.workdir / name, ignore_errors=True)
        return self.result

    # --- chaos ---

    def chaos(self, daemon: Daemon, proxy: ChaosProxy, seconds: float) -> None:
        """SIGKILL the daemon at moments drawn uniformly over `seconds`, restarting it each
        time; copy the state database after a third of the kills, put the copy back after
        two thirds."""
        rng = random.Random(self.options.seed + 1)
        moments = sorted(rng.uniform(0, seconds) for _ in range(self.options.kills))
        kills = len(moments)
        copy_after = max(1, kills // 3) if kills >= 2 else None
        restore_after = max(2, (2 * kills) // 3) if kills >= 2 else None
        started = time.monotonic()
        for number, moment in enumerate([*moments, seconds], start=1):
            self.wait_watching(daemon, started + moment)
            if number > kills:
                break
            kill = Kill(
                at_s=round(time.monotonic() - started, 2),
                uptime_s=round(time.monotonic() - daemon.started_at, 2),
                in_flight=proxy.in_flight(),
            )
            daemon.kill()
            if number == copy_after:
                self.copy_database()
                kill.database = "copied"
                self.result.database_copied_after_kill = number
            if number == restore_after:
                self.restore_database()
                kill.database = "older copy restored"
                self.result.database_restored_after_kill = number
            self.result.kills.append(kill)
            database = f"; database {kill.database}" if kill.database else ""
            self.say(
                f"kill {number}/{kills} at {kill.at_s:.1f}s (uptime {kill.uptime_s:.1f}s, "
                f"{kill.in_flight} requests in flight){database}"
            )
            daemon.start()

    def wait_watching(self, daemon: Daemon, until: float) -> None:
        """Sleep until `until`, restarting the daemon if it ends on its own (a crash the soak
        did not cause, reported as a problem)."""
        while time.monotonic() < until:
            code = daemon.exited()
            if code is not None:
                self.result.daemon_exits.append(
                    f"start {daemon.starts} ended on its own with exit {code} after "
                    f"{time.monotonic() - daemon.started_at:.1f}s; last log lines:\n"
                    f"{daemon.log_tail()}"
                )
                self.say(f"the daemon ended on its own (exit {code}); restarting it")
                daemon.start()
            time.sleep(min(0.1, max(0.0, until - time.monotonic())))

    def copy_database(self) -> None:
        copy = self.workdir / "state-copy"
        copy.mkdir(exist_ok=True)
        for suffix in ("", "-wal"):
            path = self.state / f"state.db{suffix}"
            if path.exists():
                shutil.copy2(path, copy / path.name)

    def restore_database(self) -> None:
        """Put the older copy back: what a disk holds after a power cut lost recent writes."""
        for suffix in ("", "-wal", "-shm"):
            (self.state / f"state.db{suffix}").unlink(missing_ok=True)
        for path in (self.workdir / "state-copy").iterdir():
            shutil.copy2(path, self.state / path.name)

    def write_story(self, server: S3TestServer, proxy: ChaosProxy) -> None:
        """The server's request log and the proxy's faults as JSON lines, seconds from the
        start, to read a failure's story by upload id or key."""
        with (self.workdir / "requests.jsonl").open("w", encoding="utf-8") as out:
            for request in list(server.requests):
                record = {
                    "t": round(request.at - self.began, 3),
                    "op": request.operation,
                    "path": request.path.encode("latin-1").decode("utf-8", "replace"),
                    "upload_id": next(iter(request.query.get("uploadId", [])), None),
                    "part": request.part_number,
                    "status": request.status,
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        with (self.workdir / "faults.jsonl").open("w", encoding="utf-8") as out:
            for event in proxy.events():
                record = {**asdict(event), "at": round(event.at - self.began, 3)}
                record["path"] = event.path.encode("latin-1").decode("utf-8", "replace")
                out.write(json.dumps(record, ensure_ascii=False) + "\n")

    def restart_once(self, config: Path, client: Any) -> None:
        """Multipart uploads were left open: see whether one more start-up (`agentctl sync`,
        the daemon's own start-up, then nothing to send) aborts them, to tell a leak of a
        running daemon from one that outlives restarts."""
        synced = agentctl(config, "sync", "--json")
        left = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        self.result.open_uploads_after_restart = len(left)
        self.say(
            f"{len(self.result.open_uploads)} multipart upload(s) were left open; after one "
            f"more start-up (sync exit {synced.returncode}): {len(left)}"
        )

    # --- convergence ---

    def converge(self, daemon: Daemon, config: Path, sessions: int) -> None:
        """Wait, faults off, until every session is uploaded and nothing is pending."""
        started = time.monotonic()
        deadline = started + self.options.converge_limit
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.wait_watching(daemon, time.monotonic() + 2)
            answer = agentctl(config, "status", "--json", timeout=60)
            try:
                last = json.loads(answer.stdout)
            except ValueError:
                continue
            counts = last.get("sessions", {})
            if (
                counts.get("uploaded") == sessions
                and not any(counts.get(state) for state in ("waiting", "ready", "uploading"))
                and not counts.get("failed")
                and last.get("backlog", {}).get("files") == 0
            ):
                self.result.converged = True
                self.result.minutes_to_converge = round((time.monotonic() - started) / 60, 2)
                self.say(f"converged in {self.result.minutes_to_converge} min")
                return
        self.result.problems.append(
            f"did not converge within {self.options.converge_limit / 60:.1f} min of faults "
            f"off; last status: {json.dumps(last.get('sessions'))}, backlog "
            f"{json.dumps(last.get('backlog'))}, last error {last.get('last_error')!r}"
        )

    # --- verification ---

    def check_source(self, instrument: Instrument, before: dict[bytes, Entry]) -> None:
        """The source must be exactly what the instrument wrote: nothing changed, added or
        removed by the agent (and the backlog as it was before the daemon first ran)."""
        now = walk(self.source)
        self.result.source_entries = len(now)
        changes = self.result.source_changes
        for path, entry in instrument.entries.items():
            if path not in now:
                changes.append(f"missing: {shown(path)}")
            elif now[path] != entry:
                changes.append(f"changed: {shown(path)}: {now[path]} != {entry}")
        changes += [f"added: {shown(path)}" for path in now if path not in instrument.entries]
        for path, entry in before.items():
            if path != instrument.growing and now.get(path) != entry:
                changes.append(f"differs from before the run: {shown(path)}")

    def check_bucket(self, client: Any, instrument: Instrument) -> None:
        """Every file at its key, byte for byte; every manifest right; nothing else; no
        upload open; no canary."""
        objects: dict[str, dict[str, Any]] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for item in page.get("Contents", []):
                objects[item["Key"]] = item
        canaries = {entry.sha256 for entry in instrument.canaries.values()}
        canary_sizes = {entry.size for entry in instrument.canaries.values()}
        expected = instrument.expected()
        self.result.sessions = len(expected)
        known: set[str] = set()
        for session, files in expected.items():
            prefix = f"{PREFIX}/{SOURCE}/{session}"
            for name, entry in files.items():
                key = f"{prefix}/{name}"
                known.add(key)
                self.result.files_expected += 1
                self.result.multipart_files += entry.size >= THRESHOLD
                if key not in objects:
                    self.result.lost.append(key)
                    continue
                body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                if hashlib.sha256(body).hexdigest() != entry.sha256:
                    self.result.corrupt.append(f"{key} ({len(body)} bytes, {entry.size} expected)")
                else:
                    self.result.files_verified += 1
            manifest = f"{prefix}/ingest-manifest.json"
            known.add(manifest)
            self.check_manifest(
                client,
                objects=objects,
                key=manifest,
                session=session,
                files=files,
                instrument=instrument,
            )
        for key, item in objects.items():
            if key in known:
                continue
            if not key.startswith(f"{PREFIX}/.ingest-agent/"):
                self.result.unexpected_objects.append(key)
            if item["Size"] in canary_sizes:
                body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                if hashlib.sha256(body).hexdigest() in canaries:
                    self.result.canary_uploaded.append(key)
        for upload in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
            self.result.open_uploads.append(
                f"{upload['Key']} (upload id {upload['UploadId']}, initiated {upload['Initiated']})"
            )

    def check_manifest(
        self,
        client: Any,
        *,
        objects: dict[str, dict[str, Any]],
        key: str,
        session: str,
        files: dict[str, Entry],
        instrument: Instrument,
    ) -> None:
        problems = self.result.manifest_problems
        if key not in objects:
            problems.append(f"{key}: missing")
            return
        document = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        found: list[str] = []
        if document.get("session", {}).get("id") != f"{SOURCE}/{session}":
            found.append(f"session id {document.get('session', {}).get('id')!r}")
        entries = {item["path"]: item for item in document.get("files", [])}
        if set(entries) != set(files):
            found.append(
                f"files differ: missing {sorted(set(files) - set(entries))[:5]}, "
                f"extra {sorted(set(entries) - set(files))[:5]}"
            )
        for name, item in entries.items():
            entry = files.get(name)
            if entry is None:
                continue
            object_key = f"{PREFIX}/{SOURCE}/{session}/{name}"
            stored = objects.get(object_key, {})
            wrong = [
                what
                for what, good in (
                    ("key", item.get("key") == object_key),
                    ("size", item.get("size") == entry.size),
                    ("mtime", item.get("mtime_ns") == entry.mtime_ns),
                    (
                        "checksum",
                        item.get("checksum") == {"algorithm": "crc32c", "value": entry.crc32c},
                    ),
                    ("etag", item.get("etag") == str(stored.get("ETag", "")).strip('"')),
                )
                if not good
            ]
            if wrong:
                found.append(f"{name}: wrong {', '.join(wrong)}")
        totals = document.get("totals", {})
        if totals != {"files": len(files), "bytes": sum(entry.size for entry in files.values())}:
            found.append(f"totals {totals}")
        refused = {item["path"]: item["reason"] for item in document.get("refused", [])}
        must_refuse = instrument.refused(session.encode())
        if set(refused) != must_refuse:
            found.append(f"refused {sorted(refused)}, expected {sorted(must_refuse)}")
        links = {
            shown(rel[len(session.encode()) + 1 :])
            for rel, entry in instrument.entries.items()
            if entry.kind == "link" and rel.startswith(session.encode() + b"/")
        }
        found += [
            f"{path}: reason {refused[path]!r}"
            for path in links & set(refused)
            if refused[path] != SYMLINK_REASON
        ]
        if found:
            problems.append(f"{key}: " + "; ".join(found))
        else:
            self.result.manifests_right += 1

    def check_parts(self, server: S3TestServer, proxy: ChaosProxy) -> None:
        """Parts the server accepted more than once, and how many of those a lost answer
        (a long stall) explains."""
        accepted: Counter[tuple[str, int | None]] = Counter()
        for request in server.completed("UploadPart"):
            accepted[(request.path, request.part_number)] += 1
        lost: Counter[tuple[str, int | None]] = Counter(
            (answer.path, answer.part_number)
            for answer in proxy.lost_answers()
            if answer.operation == "UploadPart" and 200 <= answer.status < 300
        )
        self.result.parts_sent = len(accepted)
        for part, times in accepted.items():
            again = times - 1
            self.result.parts_resent += again
            self.result.parts_resent_after_lost_answer += min(again, lost[part])
        self.result.part_attempts_failed_at_server = sum(
            1
            for request in server.of("UploadPart")
            if request.status is None or not 200 <= request.status < 300
        )

    def check_logs(self) -> None:
        """Warnings and errors the daemon logged, by event; a crash or a dead uploader is a
        problem whatever else went right."""
        events: Counter[str] = Counter()
        for path in sorted((self.workdir / "logs").glob("daemon-*.log")):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    if line.startswith("Traceback"):
                        events["(traceback on stderr)"] += 1
                    continue
                if isinstance(record, dict) and record.get("event") == "orphan_upload_aborted":
                    self.orphans_aborted.add(str(record.get("upload_id")))
                if isinstance(record, dict) and record.get("level") in (
                    "warning",
                    "error",
                    "critical",
                ):
                    events[f"{record['level']} {record.get('event')}"] += 1
        self.result.log_events = dict(events.most_common())
        for name in ("critical daemon_crashed", "error uploader_died", "(traceback on stderr)"):
            if events.get(name):
                self.result.problems.append(f"the daemon logged {name!r} x{events[name]}")

    def check_forgotten_uploads(self, server: S3TestServer) -> None:
        """Uploads the daemon forgot while they were still open on the server: a Complete
        answered 412 (the conditional write found an object at the key), then no Complete
        or Abort of that upload but a later start-up's sweep of unknown uploads. A run whose
        last daemon lives on leaves them open at the end (a failure); one killed again
        hides them, so they are reported here as a finding."""
        refused: dict[str, str] = {}
        for request in server.of("CompleteMultipartUpload"):
            upload_id = next(iter(request.query.get("uploadId", [])), None)
            if upload_id is not None and request.status == 412:
                refused[upload_id] = request.path.encode("latin-1").decode("utf-8", "replace")
        self.result.uploads_forgotten_open = sorted(
            f"{path} (upload id {upload_id})"
            for upload_id, path in refused.items()
            if upload_id in self.orphans_aborted
        )

    def collect_problems(self) -> None:
        result = self.result
        checks = (
            (result.lost, "lost (not in S3)"),
            (result.corrupt, "corrupt (bytes differ)"),
            (result.unexpected_objects, "objects the source does not explain"),
            (result.manifest_problems, "manifest problems"),
            (result.open_uploads, "multipart uploads left open"),
            (result.canary_uploaded, "canary uploaded"),
            (result.outside_reads, "reads outside the source"),
            (result.source_changes, "source changes"),
            (result.daemon_exits, "daemon exits the soak did not cause"),
        )
        for items, what in checks:
            if items:
                result.problems.append(f"{len(items)} {what}, e.g. {items[0]}")


# --- the summary -------------------------------------------------------------------------------


def summary_json(result: SoakResult) -> dict[str, Any]:
    document = asdict(result)
    document["parts_resent_per_kill"] = round(result.parts_resent_per_kill, 2)
    document["passed"] = result.passed
    return document


def markdown(result: SoakResult) -> str:
    """The closing note's figures."""
    faults = result.faults
    fault_text = ", ".join(f"{FAULT_NAMES[kind]} {faults.get(kind, 0)}" for kind in FAULT_KINDS)
    in_flight = sum(1 for kill in result.kills if kill.in_flight)
    database = (
        f"copied after kill {result.database_copied_after_kill}, restored after kill "
        f"{result.database_restored_after_kill}"
        if result.database_restored_after_kill
        else "not rolled back (needs 2 kills)"
    )
    converge = (
        f"{result.minutes_to_converge:.2f}" if result.minutes_to_converge is not None else "never"
    )
    rows = [
        ("kills (SIGKILL)", f"{len(result.kills)} ({in_flight} with requests in flight)"),
        ("state database", database),
        (
            "faults injected",
            f"{sum(faults.values())} of {result.requests} requests: {fault_text}",
        ),
        (
            "files verified byte-identical",
            f"{result.files_verified} of {result.files_expected} "
            f"({result.multipart_files} multipart) in {result.sessions} sessions",
        ),
        ("manifests right", f"{result.manifests_right} of {result.sessions}"),
        (
            "parts re-sent",
            f"{result.parts_resent} of {result.parts_sent} parts: "
            f"{result.parts_resent_after_lost_answer} after a lost answer, "
            f"{result.parts_resent - result.parts_resent_after_lost_answer} otherwise = "
            f"{result.parts_resent_per_kill:.2f} per kill "
            f"({result.part_attempts_failed_at_server} part attempts cut short at the server)",
        ),
        ("minutes to converge (faults off → all uploaded)", converge),
        ("lost / corrupt", f"{len(result.lost)} / {len(result.corrupt)}"),
        (
            "multipart uploads left open",
            f"{len(result.open_uploads)}"
            + (
                f" ({result.open_uploads_after_restart} after one more start-up)"
                if result.open_uploads_after_restart is not None
                else ""
            ),
        ),
        (
            "canary uploaded / reads outside the source",
            f"{len(result.canary_uploaded)} / {len(result.outside_reads)}",
        ),
        (
            "source unchanged",
            f"{'yes' if not result.source_changes else 'NO'} ({result.source_entries} entries)",
        ),
        ("agentctl verify --download", f"exit {result.agent_verify_exit}"),
        ("daemon exits not caused by the soak", str(len(result.daemon_exits))),
        ("clean stop (SIGTERM) exit", str(result.clean_stop_exit)),
        ("wall time", f"{result.wall_minutes:.1f} min"),
    ]
    lines = [
        f"## Soak: {'PASS' if result.passed else 'FAIL'} (seed {result.seed}, "
        f"{result.minutes:g} min of faults, {len(result.kills)} kills)",
        "",
        "| figure | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
    ]
    if result.log_events:
        top = ", ".join(f"{name} x{count}" for name, count in list(result.log_events.items())[:8])
        lines += [f"Daemon warnings and errors (most frequent): {top}.", ""]
    if result.uploads_forgotten_open:
        lines += [
            "Finding: multipart uploads left open after a Complete answered 412, aborted only "
            "by a later start-up's sweep:",
            *[f"- {upload}" for upload in result.uploads_forgotten_open],
            "",
        ]
    if result.problems:
        lines += ["Problems:", *[f"- {problem}" for problem in result.problems], ""]
    lines.append(f"Details: {Path(result.workdir) / 'soak-summary.json'}")
    return "\n".join(lines)


def parse_arguments(argv: list[str] | None) -> SoakOptions:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    defaults = SoakOptions()
    parser.add_argument("--kills", type=int, default=defaults.kills, help="SIGKILLs (default 10)")
    parser.add_argument(
        "--minutes", type=float, default=defaults.minutes, help="minutes of faults (default 3)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=defaults.fault_rate,
        help="share of requests given a fault while faults are on (default 0.10)",
    )
    parser.add_argument(
        "--bandwidth", default=defaults.bandwidth, help="the agent's max_bandwidth (default 2MiB)"
    )
    parser.add_argument(
        "--converge-minutes",
        type=float,
        help="time allowed to converge with faults off (default max(4, 0.4 x minutes))",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data of a clean run")
    arguments = parser.parse_args(argv)
    return SoakOptions(
        kills=arguments.kills,
        minutes=arguments.minutes,
        seed=arguments.seed,
        workdir=arguments.workdir,
        fault_rate=arguments.fault_rate,
        bandwidth=arguments.bandwidth,
        converge_minutes=arguments.converge_minutes,
        keep=arguments.keep,
    )


def run_soak(options: SoakOptions) -> SoakResult:
    """Run one soak (what `main` and the CI subset call)."""
    return Soak(options).run()


def main(argv: list[str] | None = None) -> int:
    result = run_soak(parse_arguments(argv))
    print(markdown(result))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
