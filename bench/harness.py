"""What every part of `make bench` shares: the generated data sets, the S3 server (moto on
loopback, or one the user runs), and measuring one run of one tool (wall, CPU and peak RSS of
its whole process tree, through a small launcher) checked against the bucket's listing.

bench/compare.py (the comparison with the peers) and bench/agent_only.py (the figures of the
agent alone: idle, completion latency, a growing recording, flame graphs) both build on it;
it lives apart so that neither has to import the other.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers

HERE = Path(__file__).resolve().parent
KIB = 1024
MIB = 1024 * KIB
GB = 1e9
# The reference tree at scale 1.0 (about 1.36 GB).
IMAGES, IMAGE_SIZE = 1000, 256 * KIB
RECORDINGS, RECORDING_SIZE = 2, 512 * MIB
JSONS, JSON_SIZE = 5000, 4 * KIB
SMALL_SIZE = 4 * KIB
FILES_PER_SESSION = 1000
NEW_SESSION_FILES = 100
HOUR = 3600.0


# ----------------------------------------------------------------------------- data sets


@dataclass(frozen=True)
class Tree:
    """A generated local tree: where it is, how many files and bytes it holds."""

    root: Path
    files: int
    bytes: int


def recording_size(scale: float) -> int:
    """One recording's size at a scale: 512 MiB at 1.0, in whole MiB, at least one."""
    return max(MIB, round(RECORDING_SIZE * scale / MIB) * MIB)


def reference_plan(scale: float) -> list[tuple[str, int]]:
    """Given a scale, return the reference tree as (relative path, size) pairs: three
    sessions (two recordings; the images; the JSON metadata), counts and recording sizes
    scaled, file sizes of images and JSON kept."""
    plan: list[tuple[str, int]] = []
    recording = recording_size(scale)
    for number in range(RECORDINGS):
        plan.append((f"mouse1/2026-11-23_10-00/continuous{number}.ap.bin", recording))
    for index in range(max(1, round(IMAGES * scale))):
        name = f"r{index // 100:02d}c{index % 100:02d}.tiff"
        plan.append((f"plate1/2026-11-23_11-00/{name}", IMAGE_SIZE))
    for index in range(max(1, round(JSONS * scale))):
        plan.append((f"behaviour1/2026-11-23_12-00/trial{index:05d}.json", JSON_SIZE))
    return plan


def small_plan(files: int) -> list[tuple[str, int]]:
    """Given a count, return that many small files in sessions of FILES_PER_SESSION."""
    plan = []
    for index in range(files):
        session = index // FILES_PER_SESSION
        name = f"f{index % FILES_PER_SESSION:05d}.json"
        plan.append((f"subject{session // 10:02d}/session{session:03d}/{name}", SMALL_SIZE))
    return plan


def new_session_dir(repeat: int) -> str:
    """Given the repeat number, return the directory (relative, with a trailing slash) of the
    new session the incremental figure adds."""
    return f"new/run{repeat:02d}/"


def new_session_plan(repeat: int) -> list[tuple[str, int]]:
    """Given the repeat number, return the new session the incremental figure adds."""
    directory = new_session_dir(repeat)
    return [(f"{directory}f{index:03d}.json", SMALL_SIZE) for index in range(NEW_SESSION_FILES)]


def write_files(root: Path, plan: Sequence[tuple[str, int]], stamp: float) -> Tree:
    """Write random bytes for every (path, size) of the plan under root, stamp files and
    their directories with `stamp` (so quiet periods are already over), return the tree."""
    total = 0
    directories: set[Path] = set()
    for relative, size in plan:
        path = root / relative
        if path.parent not in directories:
            path.parent.mkdir(parents=True, exist_ok=True)
            directories.add(path.parent)
        with path.open("wb") as stream:
            left = size
            while left:
                chunk = min(left, 8 * MIB)
                stream.write(os.urandom(chunk))
                left -= chunk
        os.utime(path, (stamp, stamp))
        total += size
    for directory in directories:
        os.utime(directory, (stamp, stamp))
        os.utime(directory.parent, (stamp, stamp))
    return Tree(root, len(plan), total)


def write_empty_files(root: Path, files: int) -> None:
    """Create `files` empty files in sessions of FILES_PER_SESSION (subject/session), as
    bench/scale.py does, for the daemon to watch."""
    old = time.time() - 7 * 24 * HOUR
    for number in range(max(1, -(-files // FILES_PER_SESSION))):
        session = root / f"subject{number // 100:04d}" / f"session{number % 100:03d}"
        session.mkdir(parents=True, exist_ok=True)
        count = min(FILES_PER_SESSION, files - number * FILES_PER_SESSION)
        for index in range(count):
            os.close(os.open(session / f"tile{index:05d}.tif", os.O_CREAT | os.O_WRONLY, 0o644))
        os.utime(session, (old, old))


# ----------------------------------------------------------------------------- the server


class Server:
    """The S3 server every tool talks to: moto started here on loopback, or one the user runs
    (`--endpoint`, credentials from the environment)."""

    def __init__(self, endpoint: peers.Endpoint, process: subprocess.Popen[bytes] | None):
        self.endpoint = endpoint
        self.process = process
        # None (an external server) leaves boto3 to its usual chain: the environment.
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint.url,
            region_name=endpoint.region,
            aws_access_key_id=endpoint.environment.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=endpoint.environment.get("AWS_SECRET_ACCESS_KEY"),
        )

    @classmethod
    def start_moto(cls, log: Path) -> Server:
        """Start moto's server in its own process on 127.0.0.1; return it once it answers."""
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, str(HERE / "peers.py"), "serve-moto"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        if not line.isdigit():
            process.kill()
            process.wait()
            raise RuntimeError(f"moto did not start; see {log}")
        endpoint = peers.Endpoint(
            f"http://127.0.0.1:{line}",
            "us-east-1",
            {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"},
        )
        return cls(endpoint, process)

    @classmethod
    def external(cls, url: str) -> Server:
        """Use a server the user runs; credentials come from the environment."""
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        return cls(peers.Endpoint(url, region, {}), None)

    @property
    def name(self) -> str:
        """How the report names the server."""
        if self.process is not None:
            return "moto server (Python, one process) on 127.0.0.1"
        return self.endpoint.url

    def cpu_seconds(self) -> float | None:
        """The server's CPU seconds so far (moto only; None for an external server)."""
        if self.process is None:
            return None
        return process_cpu_seconds(self.process.pid)

    def create_bucket(self, bucket: str) -> None:
        """Create an empty bucket."""
        self.client.create_bucket(Bucket=bucket)

    def usage(self, bucket: str, prefix: str) -> tuple[int, int]:
        """Return the objects and bytes under prefix, leaving out the agent's manifests."""
        objects = size = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/ingest-manifest.json"):
                    continue
                objects += 1
                size += item["Size"]
        return objects, size

    def discard(self, buckets: Sequence[str]) -> None:
        """Free what the buckets hold: moto is reset; on an external server every object,
        unfinished upload and bucket is deleted."""
        if self.process is not None:
            request = urllib.request.Request(f"{self.endpoint.url}/moto-api/reset", method="POST")
            with urllib.request.urlopen(request, timeout=60):
                pass
            return
        for bucket in buckets:
            with contextlib.suppress(self.client.exceptions.NoSuchBucket):
                self._delete_bucket(bucket)

    def _delete_bucket(self, bucket: str) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for page in pages:
            if page.get("Contents"):
                self.client.delete_objects(
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": item["Key"]} for item in page["Contents"]]},
                )
        uploads = self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for upload in uploads:
            self.client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        self.client.delete_bucket(Bucket=bucket)

    def stop(self) -> None:
        """Stop moto (nothing for an external server)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process and its reaped children, from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def process_peak_rss_mib(pid: int) -> float:
    """A live process's peak resident set (VmHWM) in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / KIB
    return 0.0


# ----------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Run:
    """One measured run of one tool."""

    tool: str
    phase: str
    repeat: int
    wall_s: float
    cpu_s: float
    user_s: float
    system_s: float
    peak_rss_mib: float
    server_cpu_s: float | None
    exit_code: int
    log: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the tool succeeded and the bucket holds what it should."""
        return self.error is None


# A child's ru_maxrss starts at its parent's peak: exec records the old address space's high
# water mark. Spawned from this process (boto3 and matplotlib loaded, over 100 MiB), every
# tool would show at least that. So a small launcher (python -S, stdlib only, about 10 MiB)
# spawns the tool, waits for it with wait4 and writes its figures: wall, exit code, user and
# system CPU of the tool and every child it reaped, and their largest peak RSS in KiB.
LAUNCHER = """
import os, sys, time
started = time.monotonic()
try:
    pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
except OSError as error:
    sys.stderr.write(f"cannot start {sys.argv[2]}: {error}\\n")
    sys.exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.monotonic() - started
with open(sys.argv[1], "w") as figures:
    code = os.waitstatus_to_exitcode(status)
    figures.write(f"{wall} {code} {usage.ru_utime} {usage.ru_stime} {usage.ru_maxrss}")
"""


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def measure(
    invocation: peers.Invocation,
    *,
    tool: str,
    phase: str,
    repeat: int,
    logs: Path,
    server: Server,
    timeout: float,
) -> Run:
    """Run one invocation through the launcher with its output in logs/, and return the
    tool's wall time, CPU (its own and that of every child it reaped) and peak RSS (the
    largest among them). A non-zero exit or a timeout is recorded, not raised."""
    for path, text in invocation.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    stem = f"{phase}-{tool}-r{repeat}"
    out, err, figures = (logs / f"{stem}.{suffix}" for suffix in ("out", "err", "rusage"))
    figures.unlink(missing_ok=True)
    server_before = server.cpu_seconds()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-S", "-c", LAUNCHER, str(figures), *invocation.argv],
            env=dict(invocation.environment),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        # The launcher and the tool share a new process group: a timeout kills both.
        timer = threading.Timer(timeout, _kill_group, (process.pid,))
        timer.start()
        try:
            launcher_exit = process.wait()
        finally:
            timer.cancel()
    server_after = server.cpu_seconds()
    if launcher_exit == 0 and figures.exists():
        fields = figures.read_text().split()
        wall, exit_code = float(fields[0]), int(fields[1])
        user, system, peak_kib = float(fields[2]), float(fields[3]), int(fields[4])
    else:
        wall, exit_code, user, system, peak_kib = timeout, launcher_exit, 0.0, 0.0, 0
    error = None
    if exit_code != 0:
        tail = err.read_text(errors="replace").strip().splitlines()[-3:]
        error = f"exit {exit_code}" + (f": {' | '.join(tail)}" if tail else "")
        if launcher_exit == -signal.SIGKILL:
            error = f"killed after the {timeout:g} s timeout"
    return Run(
        tool=tool,
        phase=phase,
        repeat=repeat,
        wall_s=round(wall, 3),
        cpu_s=round(user + system, 3),
        user_s=round(user, 3),
        system_s=round(system, 3),
        peak_rss_mib=round(peak_kib / KIB, 1),
        server_cpu_s=(
            None
            if server_before is None or server_after is None
            else round(server_after - server_before, 2)
        ),
        exit_code=exit_code,
        log=str(err.relative_to(logs.parent)),
        error=error,
    )


def checked(run: Run, server: Server, bucket: str, prefix: str, tree: Tree) -> Run:
    """Given a run that exited 0, return it marked failed unless the bucket holds every file
    of the tree with its bytes (the agent's manifests are not counted)."""
    if not run.ok:
        return run
    objects, size = server.usage(bucket, prefix)
    if (objects, size) == (tree.files, tree.bytes):
        return run
    missing = f"bucket holds {objects} of {tree.files} files, {size} of {tree.bytes} bytes"
    return Run(**{**asdict(run), "error": f"incomplete upload: {missing}"})


@dataclass
class Context:
    """What every phase needs: the server, the tools, where to work and log, limits."""

    server: Server
    tools: list[str]
    work: Path
    logs: Path
    bin_dir: Path
    timeout: float
    stamp: str

    def job(self, tool: str, tree: Tree, phase: str, repeat: int) -> peers.Job:
        """A fresh bucket name and agent state directory for one tool's run."""
        bucket = f"bench-{self.stamp}-{phase}-{tool}-{repeat}"
        state = self.work / "state" / bucket
        return peers.Job(tree.root, bucket, "", state, state.with_suffix(".toml"))

    def run(
        self,
        tool: str,
        job: peers.Job,
        tree: Tree,
        phase: str,
        repeat: int,
        *,
        added: tuple[str, Tree] | None = None,
    ) -> Run:
        """Run one tool's sync of the job, measured and checked: the bucket must hold the
        whole tree, or, given `added` (a directory of the tree with a trailing slash, and
        what it holds), everything in that directory. An incremental run is checked on what
        it added: listing 20,000 objects after each one cost moto more than the runs."""
        environment = dict(os.environ)
        invocation = peers.invocation(tool, job, self.server.endpoint, self.bin_dir, environment)
        run = measure(
            invocation,
            tool=tool,
            phase=phase,
            repeat=repeat,
            logs=self.logs,
            server=self.server,
            timeout=self.timeout,
        )
        prefix = f"{job.prefix}/{peers.AGENT_SOURCE}/" if job.prefix else f"{peers.AGENT_SOURCE}/"
        if added is not None:
            prefix, tree = prefix + added[0], added[1]
        result = checked(run, self.server, job.bucket, prefix, tree)
        state = "ok" if result.ok else f"FAILED ({result.error})"
        print(
            f"  {phase:<12} {tool:<7} r{repeat}: {result.wall_s:8.2f} s wall, "
            f"{result.cpu_s:7.2f} s CPU, {result.peak_rss_mib:6.0f} MiB: {state}",
            flush=True,
        )
        return result


def wait_for_event(log: Path, event: str, process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll a JSON-lines log until it names `event`; False if the process ends first or the
    timeout passes."""
    needle = f'"event": "{event}"'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.25)
    return False
