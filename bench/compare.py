"""Compare the agent with its peers (aws-cli, s5cmd, rclone) on one S3 server, one data set,
in one run: what `make bench` runs.

Each tool syncs the same local tree into a fresh bucket of its own (the agent with a fresh
state directory per bucket); the tools take turns in rotating order, `--repeat` times, and
the median is reported. Per tool:
- catch-up: wall seconds, client CPU seconds (user + system of the tool's whole process tree,
  from wait4) per GB, peak RSS (wait4's ru_maxrss) and the server's CPU meanwhile;
- no-op: the same sync run again at once;
- incremental: one new 100-file session among `--incremental-files` small files each tool
  uploaded before (that first upload is reported too, as small-file catch-up);
- for the agent alone, the idle CPU of `agentctl run` watching `--idle-files` empty files.

The server (moto, one Python process, by default) shares the machine's cores with the
client, so wall time says as much about the server as about the tool: client CPU per GB is
the primary figure, and wall is given as a ratio to the fastest peer in the same repeat.
Every upload is checked against the bucket's listing; a tool that fails or leaves files out
is reported as failed, with its log under `bench/results/logs/`.

Usage: python bench/compare.py [--scale 0.25] [--repeat 3] [--endpoint URL] [--idle 60]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3
from matplotlib.figure import Figure

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


def reference_plan(scale: float) -> list[tuple[str, int]]:
    """Given a scale, return the reference tree as (relative path, size) pairs: three
    sessions (two recordings; the images; the JSON metadata), counts and recording sizes
    scaled, file sizes of images and JSON kept."""
    plan: list[tuple[str, int]] = []
    recording = max(MIB, round(RECORDING_SIZE * scale / MIB) * MIB)
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


def new_session_plan(repeat: int) -> list[tuple[str, int]]:
    """Given the repeat number, return the new session the incremental figure adds."""
    return [
        (f"new/run{repeat:02d}/f{index:03d}.json", SMALL_SIZE) for index in range(NEW_SESSION_FILES)
    ]


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

    def run(self, tool: str, job: peers.Job, tree: Tree, phase: str, repeat: int) -> Run:
        """Run one tool's sync of the job, measured and checked."""
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
        result = checked(run, self.server, job.bucket, prefix, tree)
        state = "ok" if result.ok else f"FAILED ({result.error})"
        print(
            f"  {phase:<12} {tool:<7} r{repeat}: {result.wall_s:8.2f} s wall, "
            f"{result.cpu_s:7.2f} s CPU, {result.peak_rss_mib:6.0f} MiB: {state}",
            flush=True,
        )
        return result


def rotation(tools: Sequence[str], repeat: int) -> list[str]:
    """Given the tools and a repeat number, return the order of that repeat: each repeat
    starts one tool further along, so no tool always runs first (or last) after another."""
    shift = repeat % len(tools)
    return [*tools[shift:], *tools[:shift]]


def catch_up_phase(context: Context, tree: Tree, repeats: int) -> list[Run]:
    """Every tool syncs the reference tree into a fresh bucket, then again (the no-op),
    `repeats` times in rotating order. The server is emptied after every tool."""
    runs: list[Run] = []
    for repeat in range(repeats):
        for tool in rotation(context.tools, repeat):
            job = context.job(tool, tree, "catchup", repeat)
            context.server.create_bucket(job.bucket)
            runs.append(context.run(tool, job, tree, "catchup", repeat))
            runs.append(context.run(tool, job, tree, "noop", repeat))
            context.server.discard([job.bucket])
    return runs


def incremental_phase(context: Context, files: int, repeats: int) -> list[Run]:
    """Every tool uploads `files` small files into a bucket of its own (small-file
    catch-up); then, `repeats` times, a new 100-file session is written and every tool, in
    rotating order, syncs again."""
    root = context.work / "incremental"
    stamp = time.time() - HOUR
    tree = write_files(root, small_plan(files), stamp)
    runs: list[Run] = []
    jobs: dict[str, peers.Job] = {}
    for tool in context.tools:
        jobs[tool] = context.job(tool, tree, "incr", 0)
        context.server.create_bucket(jobs[tool].bucket)
        runs.append(context.run(tool, jobs[tool], tree, "smallfiles", 0))
    for repeat in range(repeats):
        new = write_files(root, new_session_plan(repeat), stamp)
        tree = Tree(root, tree.files + new.files, tree.bytes + new.bytes)
        for tool in rotation(context.tools, repeat):
            runs.append(context.run(tool, jobs[tool], tree, "incremental", repeat))
    context.server.discard([job.bucket for job in jobs.values()])
    return runs


def idle_phase(context: Context, files: int, idle: float, settle: float) -> dict[str, Any]:
    """Start `agentctl run` over `files` empty files (nothing to upload: an hour's quiet
    period), wait until it has started and `settle` seconds more, and return its CPU use
    over `idle` seconds, its start-up time and its peak RSS."""
    root = context.work / "watched"
    write_empty_files(root, files)
    tree = Tree(root, files, 0)
    job = context.job("agent", tree, "idle", 0)
    context.server.create_bucket(job.bucket)
    job.state_dir.mkdir(parents=True, exist_ok=True)
    job.config.write_text(peers.daemon_config(job, context.server.endpoint))
    program = peers.find_program("agentctl", context.bin_dir) or "agentctl"
    log = context.logs / "idle-agent-r0.err"
    started = time.monotonic()
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [program, "run", "--config", str(job.config)],
            env=dict(os.environ, **context.server.endpoint.environment),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    figures: dict[str, Any] = {"files": files, "idle_s": idle, "log": str(log.name)}
    try:
        if not wait_for_event(log, "agent_started", process, timeout=context.timeout):
            figures["error"] = f"the daemon did not start (exit {process.poll()}); see {log}"
            return figures
        figures["start_s"] = round(time.monotonic() - started, 2)
        time.sleep(settle)
        before = process_cpu_seconds(process.pid)
        time.sleep(idle)
        used = process_cpu_seconds(process.pid) - before
        figures["cpu_s"] = round(used, 3)
        figures["cpu_percent_of_core"] = round(100 * used / idle, 3)
        figures["peak_rss_mib"] = round(process_peak_rss_mib(process.pid), 1)
        if process.poll() is not None:
            figures["error"] = f"the daemon exited with {process.returncode} while measured"
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        context.server.discard([job.bucket])
    print(
        f"  idle         agent: {figures.get('cpu_percent_of_core')} % of a core over "
        f"{idle:g} s watching {files} files",
        flush=True,
    )
    return figures


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


# ----------------------------------------------------------------------------- summaries


def median_of(runs: Sequence[Run], field: str) -> float | None:
    """The median of one field over the successful runs (None if none succeeded)."""
    values = [getattr(run, field) for run in runs if run.ok]
    values = [value for value in values if value is not None]
    return round(statistics.median(values), 3) if values else None


def select(runs: Sequence[Run], tool: str, phase: str) -> list[Run]:
    """The runs of one tool in one phase."""
    return [run for run in runs if run.tool == tool and run.phase == phase]


def wall_vs_fastest_peer(runs: Sequence[Run], tool: str) -> float | None:
    """The median over repeats of the tool's catch-up wall divided by the fastest peer's (the
    fastest other peer, for a peer) in the same repeat."""
    ratios: list[float] = []
    for run in select(runs, tool, "catchup"):
        if not run.ok:
            continue
        others = [
            other.wall_s
            for other in runs
            if other.phase == "catchup"
            and other.repeat == run.repeat
            and other.ok
            and other.tool in peers.PEERS
            and other.tool != tool
        ]
        if others:
            ratios.append(run.wall_s / min(others))
    return round(statistics.median(ratios), 3) if ratios else None


def summarize(runs: Sequence[Run], tools: Sequence[str], tree: Tree, small: int) -> dict[str, Any]:
    """Given every run, return per tool the medians of each figure."""
    summary: dict[str, Any] = {}
    for tool in tools:
        catch_up = select(runs, tool, "catchup")
        cpu = median_of(catch_up, "cpu_s")
        wall = median_of(catch_up, "wall_s")
        small_runs = select(runs, tool, "smallfiles")
        small_wall = median_of(small_runs, "wall_s")
        small_cpu = median_of(small_runs, "cpu_s")
        summary[tool] = {
            "catch_up_wall_s": wall,
            "catch_up_cpu_s": cpu,
            "cpu_s_per_gb": None if cpu is None else round(cpu / (tree.bytes / GB), 3),
            "mb_per_s": None if wall is None else round(tree.bytes / wall / 1e6, 1),
            "wall_vs_fastest_peer": wall_vs_fastest_peer(runs, tool),
            "peak_rss_mib": median_of(catch_up, "peak_rss_mib"),
            "server_cpu_s": median_of(catch_up, "server_cpu_s"),
            "noop_wall_s": median_of(select(runs, tool, "noop"), "wall_s"),
            "noop_cpu_s": median_of(select(runs, tool, "noop"), "cpu_s"),
            "incremental_wall_s": median_of(select(runs, tool, "incremental"), "wall_s"),
            "incremental_cpu_s": median_of(select(runs, tool, "incremental"), "cpu_s"),
            "small_files_per_s": None if not small_wall else round(small / small_wall, 1),
            "small_cpu_ms_per_file": (
                None if small_cpu is None else round(small_cpu / small * 1e3, 3)
            ),
            "failed_runs": sum(1 for run in runs if run.tool == tool and not run.ok),
        }
    return summary


RATIO_FIGURES = (
    ("cpu_s_per_gb", "client CPU per GB"),
    ("catch_up_wall_s", "catch-up wall"),
    ("peak_rss_mib", "peak RSS"),
    ("noop_wall_s", "no-op re-run wall"),
    ("incremental_wall_s", "incremental wall"),
    ("incremental_cpu_s", "incremental CPU"),
    ("small_cpu_ms_per_file", "small-file CPU per file"),
)


def ratios(summary: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Given the summary, return agent ÷ peer for every figure and every peer present."""
    if "agent" not in summary:
        return {}
    table: dict[str, dict[str, float | None]] = {}
    for figure, _ in RATIO_FIGURES:
        row: dict[str, float | None] = {}
        for peer in peers.PEERS:
            if peer not in summary:
                continue
            mine, theirs = summary["agent"][figure], summary[peer][figure]
            row[peer] = round(mine / theirs, 3) if mine is not None and theirs else None
        table[figure] = row
    return table


def targets(summary: Mapping[str, Any], idle: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Given the summary, return issue 11's targets that this run measures, each with the
    measured value and whether it is met (None when a figure is missing)."""
    agent = summary.get("agent", {})
    aws = summary.get("aws", {})

    def ratio(figure: str) -> float | None:
        mine, theirs = agent.get(figure), aws.get(figure)
        return round(mine / theirs, 3) if mine is not None and theirs else None

    rows = [
        ("client CPU per GB ≤ 0.5x aws-cli's", ratio("cpu_s_per_gb"), 0.5),
        ("catch-up wall ≤ 0.9x the fastest peer", agent.get("wall_vs_fastest_peer"), 0.9),
        ("no-op re-run ≤ 1 s", agent.get("noop_wall_s"), 1.0),
        ("incremental ≤ 0.2x aws-cli's", ratio("incremental_wall_s"), 0.2),
    ]
    if idle is not None:
        rows.append(("idle daemon ≤ 0.2 % of a core", idle.get("cpu_percent_of_core"), 0.2))
    return [
        {"target": text, "measured": value, "met": None if value is None else value <= limit}
        for text, value, limit in rows
    ]


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "failed"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(results: Mapping[str, Any]) -> str:
    """Given the results, return the Markdown report: setup, the main table, the ratios,
    the targets and every failure."""
    meta = results["meta"]
    summary = results["summary"]
    tree = meta["tree"]
    lines = [
        f"# `make bench`: the agent and its peers, {meta['date']}",
        "",
        f"Command: `{meta['command']}`; {meta['repeat']} repeats, medians; run time "
        f"{meta['total_s']:.0f} s.",
        f"Machine: {meta['machine']}. Server: {meta['server']}. **The server shares the "
        f"machine's {meta['cpus']} cores with the client**, so wall time measures the server "
        "as much as the tool: client CPU per GB is the primary figure, and wall is read as a "
        "ratio to the fastest peer in the same repeat.",
        f"Reference tree (scale {meta['scale']:g}): {tree['files']:,} files, "
        f"{tree['bytes'] / GB:.2f} GB ({tree['description']}). Incremental: one new "
        f"{NEW_SESSION_FILES}-file session among {meta['incremental_files']:,} small files "
        "already uploaded.",
        "Versions: " + ", ".join(f"{tool} {text}" for tool, text in meta["versions"].items()) + ".",
        "",
        "| tool | client CPU s/GB | catch-up wall s | wall ÷ fastest peer | MB/s | peak RSS MiB"
        " | server CPU s | no-op wall s | incremental wall s | incremental CPU s"
        " | small files/s | CPU ms/small file |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tool, figures in summary.items():
        lines.append(
            f"| {tool} | {_cell(figures['cpu_s_per_gb'])} | {_cell(figures['catch_up_wall_s'])}"
            f" | {_cell(figures['wall_vs_fastest_peer'])} | {_cell(figures['mb_per_s'], 1)}"
            f" | {_cell(figures['peak_rss_mib'], 0)} | {_cell(figures['server_cpu_s'], 1)}"
            f" | {_cell(figures['noop_wall_s'])} | {_cell(figures['incremental_wall_s'])}"
            f" | {_cell(figures['incremental_cpu_s'])} | {_cell(figures['small_files_per_s'], 0)}"
            f" | {_cell(figures['small_cpu_ms_per_file'])} |"
        )
    table = results["ratios"]
    if table:
        columns = list(next(iter(table.values())))
        lines += [
            "",
            "Agent ÷ peer (below 1: the agent uses less, or is faster):",
            "",
            "| figure | " + " | ".join(columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        for figure, label in RATIO_FIGURES:
            cells = " | ".join(_cell(table[figure].get(peer)) for peer in columns)
            lines.append(f"| {label} | {cells} |")
    idle = results.get("idle")
    if idle is not None:
        lines += ["", _idle_line(idle)]
    lines += ["", "Targets of issue 11 measured here:", "", "| target | measured | met |"]
    lines.append("|---|---:|---|")
    for row in results["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
        lines.append(f"| {row['target']} | {_cell(row['measured'], 3)} | {met} |")
    lines += ["", f"Not measured here: {meta['not_measured']}."]
    failures = [run for run in results["runs"] if run["error"]]
    lines += ["", f"Failed runs: {len(failures)}."]
    lines += [
        f"- {run['phase']} {run['tool']} r{run['repeat']}: {run['error']} (`{run['log']}`)"
        for run in failures
    ]
    return "\n".join(lines) + "\n"


def _idle_line(idle: Mapping[str, Any]) -> str:
    if "error" in idle:
        return f"Idle daemon: {idle['error']}."
    return (
        f"Idle daemon (`agentctl run`, {idle['files']:,} files watched, default rescan and "
        f"heartbeat): {idle['cpu_percent_of_core']} % of a core over {idle['idle_s']:g} s "
        f"({idle['cpu_s']} s CPU), ready {idle['start_s']} s after start, peak RSS "
        f"{idle['peak_rss_mib']:.0f} MiB."
    )


def _bar_label(value: float | None) -> str:
    return "failed" if value is None else f"{value:.1f}"


def charts(results: Mapping[str, Any], out: Path) -> list[Path]:
    """Draw client CPU per GB and the wall times per tool as PNGs; return their paths."""
    summary = results["summary"]
    tools = list(summary)
    colours = ["#d62728" if tool == "agent" else "#7f7f7f" for tool in tools]
    note = f"{results['meta']['server']}, sharing {results['meta']['cpus']} cores with the client"
    paths = []

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    values = [summary[tool]["cpu_s_per_gb"] for tool in tools]
    bars = axes.bar(tools, [value or 0.0 for value in values], color=colours)
    axes.bar_label(bars, labels=[_bar_label(value) for value in values])
    axes.set_ylabel("client CPU seconds per GB (user + sys)")
    axes.set_title(f"Catch-up, {results['meta']['tree']['bytes'] / GB:.2f} GB: lower is better")
    figure.text(0.01, 0.01, note, fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    paths.append(out / "cpu_per_gb.png")
    figure.savefig(paths[-1], dpi=110)

    panels = (
        ("catch_up_wall_s", "catch-up"),
        ("noop_wall_s", "no-op re-run"),
        ("incremental_wall_s", "new 100-file session"),
    )
    figure = Figure(figsize=(11, 4))
    grid = figure.subplots(1, len(panels))
    for axes, (field, title) in zip(grid, panels, strict=True):
        values = [summary[tool][field] for tool in tools]
        bars = axes.bar(tools, [value or 0.0 for value in values], color=colours)
        axes.bar_label(bars, labels=[_bar_label(value) for value in values])
        axes.set_title(title)
        axes.set_ylabel("wall seconds (median)")
    figure.text(0.01, 0.01, note, fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    paths.append(out / "wall.png")
    figure.savefig(paths[-1], dpi=110)
    return paths


# ----------------------------------------------------------------------------- main


def versions(tools: Sequence[str], bin_dir: Path) -> dict[str, str]:
    """The first line each tool prints for its version."""
    found: dict[str, str] = {}
    for tool in tools:
        program = peers.find_program(peers.program_of(tool), bin_dir)
        if program is None:
            continue
        result = subprocess.run(
            peers.version_argv(tool, program),
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        text = (result.stdout or result.stderr).strip().splitlines()
        found[tool] = text[0] if text else "?"
    return found


def machine() -> str:
    """The CPU model and core count, and the kernel."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} x {model}, Linux {platform.release()}, {socket.gethostname()}"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=0.25, help="1.0 is the 1.36 GB tree")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--endpoint", help="an S3 server to use instead of starting moto")
    parser.add_argument("--incremental-files", type=int, default=20_000, help="scaled too")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds; 0 skips it")
    parser.add_argument("--idle-files", type=int, default=100_000, help="scaled too")
    parser.add_argument("--tools", default=",".join(peers.TOOLS), help="comma-separated")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--work", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    return parser.parse_args(argv)


@contextlib.contextmanager
def working_directory(given: Path | None) -> Iterator[Path]:
    """The directory the trees and state live in: the given one, or a temporary one removed
    afterwards."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="ingest-compare-") as work:
        yield Path(work)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every phase, write results.md, results.json and the charts; print the table.
    Exit 1 if any run failed (the report is written anyway)."""
    arguments = parse(argv)
    started = time.monotonic()
    tools = [tool for tool in arguments.tools.split(",") if tool]
    unknown = sorted(set(tools) - set(peers.TOOLS))
    if unknown:
        print(f"unknown tools: {', '.join(unknown)}", file=sys.stderr)
        return 2
    bin_dir = Path(sys.executable).parent
    missing = [t for t in tools if peers.find_program(peers.program_of(t), bin_dir) is None]
    if missing:
        print(f"not installed: {', '.join(missing)} (make bench installs them)", file=sys.stderr)
        return 2
    out = arguments.out
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.iterdir():
        old.unlink()
    scale = arguments.scale
    small = max(NEW_SESSION_FILES, round(arguments.incremental_files * scale))
    idle_files = max(1000, round(arguments.idle_files * scale))
    with working_directory(arguments.work) as work:
        if arguments.endpoint:
            server = Server.external(arguments.endpoint)
        else:
            server = Server.start_moto(logs / "moto-server.err")
        try:
            context = Context(
                server, tools, work, logs, bin_dir, arguments.timeout, f"{os.getpid() % 10**6}"
            )
            print(f"generating the reference tree at scale {scale:g} in {work}", flush=True)
            tree = write_files(work / "reference", reference_plan(scale), time.time() - HOUR)
            print(f"  {tree.files:,} files, {tree.bytes / GB:.3f} GB", flush=True)
            print(f"catch-up and no-op, {arguments.repeat} repeats:", flush=True)
            runs = catch_up_phase(context, tree, arguments.repeat)
            print(f"incremental among {small:,} small files:", flush=True)
            runs += incremental_phase(context, small, arguments.repeat)
            idle = None
            if arguments.idle > 0 and "agent" in tools:
                print(f"idle daemon over {arguments.idle:g} s:", flush=True)
                idle = idle_phase(context, idle_files, arguments.idle, settle=5.0)
        finally:
            server.stop()
    summary = summarize(runs, tools, tree, small)
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["python bench/compare.py", *(argv or sys.argv[1:])]).strip(),
            "machine": machine(),
            "cpus": os.cpu_count(),
            "server": server.name,
            "scale": scale,
            "repeat": arguments.repeat,
            "tree": {
                "files": tree.files,
                "bytes": tree.bytes,
                "description": "2 recordings, images of 256 KiB, JSON of 4 KiB, 3 sessions",
            },
            "incremental_files": small,
            "versions": versions(tools, bin_dir),
            "not_measured": (
                "the agent's completion latency (bench/latency.py), a growing recording, "
                "files per session (bench/scale.py covers start-up over many files)"
            ),
            "total_s": round(time.monotonic() - started, 1),
        },
        "summary": summary,
        "ratios": ratios(summary),
        "idle": idle,
        "targets": targets(summary, idle),
        "runs": [asdict(run) for run in runs],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (out / "results.md").write_text(report)
    charts(results, out)
    print()
    print(report)
    return 1 if any(not run.ok for run in runs) or (idle or {}).get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
