"""The figures of `make bench` that concern the agent alone, for which a one-shot peer has no
counterpart or which need the daemon (`agentctl run`) rather than one `agentctl sync`:

- idle: the CPU of the daemon watching many files with nothing to do;
- completion latency: sessions written while the daemon watches (inotify, a short quiet
  period), and how long after each one's last write it was judged complete and was uploaded,
  as the state database records it (this absorbed bench/latency.py, now a thin wrapper);
- a growing recording: two files appended to at a paced rate while the daemon uploads their
  stable leading parts (`upload_while_growing`); the time from the last write to the session
  uploaded, beside each peer's wall time when started on the same tree the moment the
  acquisition ends (a peer cannot start earlier: it would copy half-written files);
- flame graphs: `agentctl sync` under py-spy, the small-file and the large-file session of the
  reference tree apart, and the ten functions with the most own time in each.

bench/compare.py runs these after the comparison and puts them in the same report.
"""

from __future__ import annotations

import contextlib
import datetime
import html
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers
from harness import (
    KIB,
    MIB,
    Context,
    Run,
    Tree,
    checked,
    measure,
    process_cpu_seconds,
    process_peak_rss_mib,
    recording_size,
    wait_for_event,
    write_empty_files,
)

from agent.errors import StateError
from agent.state import SessionRecord, State

# Completion latency: each session is a few files written a little apart, like an
# instrument closing its last files, as bench/latency.py did.
LATENCY_FILES, LATENCY_FILE_SIZE, LATENCY_GAP = 3, 256 * KIB, 0.4
# The growing recording's part size at scale 1.0 (the agent's default); scaled with the
# recording so that a scaled run keeps the same number of parts per file, never below S3's
# minimum part.
GROWING_PART_SIZE, MIN_PART_SIZE = 64 * MIB, 5 * MIB
GROWING_SESSION = "mouse1/2026-11-23_13-00"
# The writer's granularity: one write of this much to each file in turn.
WRITE_CHUNK = MIB
# Issue 11's target for the growing recording: in S3 this long after the quiet period.
GROWING_TARGET_BEYOND_QUIET = 10.0
# bench/latency.py's goal: judged complete within the quiet period and this much.
COMPLETION_TARGET_BEYOND_QUIET = 1.0
TOP_FUNCTIONS = 10


# ----------------------------------------------------------------------------- the daemon


class DaemonError(Exception):
    """The daemon did not start, or ended while it was being measured."""


@dataclass(frozen=True)
class Daemon:
    """A running `agentctl run`: its process, its JSON log and how long it took to start."""

    process: subprocess.Popen[bytes]
    log: Path
    start_s: float


def state_database(job: peers.Job) -> Path:
    """The state database of the agent that runs the job (state_dir/state.db)."""
    return job.state_dir / "state.db"


@contextlib.contextmanager
def running_daemon(context: Context, job: peers.Job, config: str, name: str) -> Iterator[Daemon]:
    """Write the job's config, start `agentctl run` on it with its JSON log in the logs
    directory, and yield it once it has logged agent_started (raise DaemonError if it does
    not). On the way out, whatever happened, stop it: SIGTERM, then SIGKILL after 60 s."""
    job.state_dir.mkdir(parents=True, exist_ok=True)
    job.config.write_text(config)
    program = peers.find_program("agentctl", context.bin_dir) or "agentctl"
    log = context.logs / f"{name}-agent-r0.err"
    started = time.monotonic()
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [program, "run", "--config", str(job.config)],
            env=dict(os.environ, **context.server.endpoint.environment),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        if not wait_for_event(log, "agent_started", process, timeout=context.timeout):
            raise DaemonError(f"the daemon did not start (exit {process.poll()}); see {log}")
        yield Daemon(process, log, round(time.monotonic() - started, 2))
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def watching_config(job: peers.Job, context: Context, source: str, quiet: float, extra: str) -> str:
    """The config of a daemon that watches the job's tree with inotify (sessions two levels
    down) and judges a session complete after `quiet` seconds without a change."""
    lines = f'session_depth = 2\nquiet_period = {float(quiet)!r}\nwatch = "inotify"\n{extra}'
    return peers.config_text(job, context.server.endpoint, source, lines)


def session_record(database: Path, session_id: str) -> SessionRecord | None:
    """The session's row in the daemon's state database; None if it has none yet, or the
    database could not be read this time (the daemon holds a write lock for a moment)."""
    with (
        contextlib.suppress(StateError, sqlite3.Error),
        State.open(database, create=False) as state,
    ):
        return state.sessions.get(session_id)
    return None


def wait_for_upload(
    database: Path, session_id: str, daemon: Daemon, timeout: float
) -> SessionRecord:
    """Poll the state database until the session is uploaded; return its row. Raise
    DaemonError if it fails, the daemon ends or the timeout passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = session_record(database, session_id)
        if record is not None and record.uploaded_at is not None:
            return record
        if record is not None and record.state == "failed":
            raise DaemonError(f"{session_id} failed: {record.error}")
        if daemon.process.poll() is not None:
            raise DaemonError(f"the daemon exited with {daemon.process.returncode}")
        time.sleep(0.05)
    raise DaemonError(f"{session_id} was not uploaded within {timeout:g} s")


def check_bucket(context: Context, bucket: str, prefix: str, tree: Tree) -> None:
    """Raise DaemonError unless the bucket holds every file of the tree under prefix, with
    its bytes (manifests not counted)."""
    objects, size = context.server.usage(bucket, prefix)
    if (objects, size) != (tree.files, tree.bytes):
        raise DaemonError(
            f"the bucket holds {objects} of {tree.files} files, {size} of {tree.bytes} bytes"
        )


def phase_failed(figures: dict[str, Any], error: DaemonError) -> dict[str, Any]:
    """Record a daemon failure in a phase's figures and say so."""
    figures["error"] = str(error)
    print(f"  FAILED: {error}", flush=True)
    return figures


# ----------------------------------------------------------------------------- idle


def idle_phase(context: Context, files: int, idle: float, settle: float) -> dict[str, Any]:
    """Start `agentctl run` over `files` empty files (nothing to upload: an hour's quiet
    period), wait until it has started and `settle` seconds more, and return its CPU use
    over `idle` seconds, its start-up time and its peak RSS."""
    root = context.work / "watched"
    write_empty_files(root, files)
    job = context.job("agent", Tree(root, files, 0), "idle", 0)
    context.server.create_bucket(job.bucket)
    config = peers.daemon_config(job, context.server.endpoint)
    figures: dict[str, Any] = {"files": files, "idle_s": idle, "log": "idle-agent-r0.err"}
    try:
        with running_daemon(context, job, config, "idle") as daemon:
            figures["start_s"] = daemon.start_s
            time.sleep(settle)
            before = process_cpu_seconds(daemon.process.pid)
            time.sleep(idle)
            used = process_cpu_seconds(daemon.process.pid) - before
            figures["cpu_s"] = round(used, 3)
            figures["cpu_percent_of_core"] = round(100 * used / idle, 3)
            figures["peak_rss_mib"] = round(process_peak_rss_mib(daemon.process.pid), 1)
            if daemon.process.poll() is not None:
                raise DaemonError(f"the daemon exited with {daemon.process.returncode}")
    except DaemonError as error:
        return phase_failed(figures, error)
    finally:
        context.server.discard([job.bucket])
    print(
        f"  idle         agent: {figures.get('cpu_percent_of_core')} % of a core over "
        f"{idle:g} s watching {files} files",
        flush=True,
    )
    return figures


# ----------------------------------------------------------------------------- completion


def write_session(session: Path, files: int, size: int, gap: float) -> float:
    """Write `files` files of `size` random bytes into a new session folder, `gap` seconds
    apart; return the wall-clock time just after the last one was closed."""
    session.mkdir(parents=True)
    for index in range(files):
        if index:
            time.sleep(gap)
        (session / f"part{index}.bin").write_bytes(os.urandom(size))
    return time.time()


def completion_phase(context: Context, sessions: int, quiet: float) -> dict[str, Any]:
    """Start the daemon (inotify, quiet period `quiet`), write `sessions` sessions one after
    another, each once the one before is uploaded, and return per session how long after its
    last write the daemon judged it complete and had it uploaded (completed_at and
    uploaded_at of its row), with their medians and maxima."""
    root = context.work / "latency"
    root.mkdir(parents=True, exist_ok=True)
    job = context.job("agent", Tree(root, 0, 0), "latency", 0)
    context.server.create_bucket(job.bucket)
    source = "lat"
    figures: dict[str, Any] = {
        "quiet_period_s": quiet,
        "sessions": sessions,
        "files_per_session": LATENCY_FILES,
        "file_bytes": LATENCY_FILE_SIZE,
        "log": "latency-agent-r0.err",
    }
    rows: list[dict[str, float]] = []
    try:
        config = watching_config(job, context, source, quiet, "")
        with running_daemon(context, job, config, "latency") as daemon:
            for number in range(sessions):
                relative = f"mouse1/session{number:02d}"
                last_write = write_session(
                    root / relative, LATENCY_FILES, LATENCY_FILE_SIZE, LATENCY_GAP
                )
                record = wait_for_upload(
                    state_database(job), f"{source}/{relative}", daemon, quiet + context.timeout
                )
                assert record.completed_at is not None and record.uploaded_at is not None
                rows.append(
                    {
                        "completed_after_s": round(record.completed_at - last_write, 3),
                        "uploaded_after_s": round(record.uploaded_at - last_write, 3),
                    }
                )
        files = sessions * LATENCY_FILES
        check_bucket(
            context, job.bucket, f"{source}/", Tree(root, files, files * LATENCY_FILE_SIZE)
        )
    except DaemonError as error:
        figures["per_session"] = rows
        return phase_failed(figures, error)
    finally:
        context.server.discard([job.bucket])
    figures.update(latency_summary(rows, quiet))
    print(
        f"  latency      agent: complete {figures['completed_after_median_s']} s (median), "
        f"{figures['completed_after_max_s']} s (max), uploaded "
        f"{figures['uploaded_after_median_s']} s (median), {figures['uploaded_after_max_s']} s "
        f"(max) after the last write; quiet period {quiet:g} s",
        flush=True,
    )
    return figures


def latency_summary(rows: Sequence[Mapping[str, float]], quiet: float) -> dict[str, Any]:
    """Given per-session rows, return them with the median and maximum of each figure, and
    each less the quiet period (what the agent adds to the wait it is configured for)."""
    summary: dict[str, Any] = {"per_session": list(rows)}
    for figure in ("completed_after_s", "uploaded_after_s"):
        values = [row[figure] for row in rows]
        stem = figure.removesuffix("_s")
        summary[f"{stem}_median_s"] = round(statistics.median(values), 3)
        summary[f"{stem}_max_s"] = round(max(values), 3)
        summary[f"{stem}_beyond_quiet_median_s"] = round(statistics.median(values) - quiet, 3)
        summary[f"{stem}_beyond_quiet_max_s"] = round(max(values) - quiet, 3)
    return summary


# ----------------------------------------------------------------------------- growing


def growing_part_size(scale: float) -> int:
    """The early uploads' part size for a scale: the agent's default at 1.0, scaled with the
    recording (so every scale sends the same share of a file before it ends), at least 5 MiB."""
    return max(MIN_PART_SIZE, round(GROWING_PART_SIZE * scale / MIB) * MIB)


def acquire(paths: Sequence[Path], size: int, rate: float) -> tuple[float, float]:
    """Append to every path in turn, WRITE_CHUNK at a time, until each holds `size` bytes,
    paced to `rate` bytes per second in all, as an instrument streams a recording; close them.
    Return the wall-clock time of the end (last write, files closed) and the seconds taken.

    The bytes come from one random pool at shifting offsets: urandom at this rate would take
    a good part of a core from the agent on a small machine."""
    pool = memoryview(os.urandom(16 * MIB))
    descriptors = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for path in paths]
    started = time.monotonic()
    written = 0
    try:
        for offset in range(0, size, WRITE_CHUNK):
            length = min(WRITE_CHUNK, size - offset)
            for number, descriptor in enumerate(descriptors):
                start = (offset // WRITE_CHUNK * 7919 + number * 104729) % (len(pool) - length)
                chunk = pool[start : start + length]
                while chunk:
                    chunk = chunk[os.write(descriptor, chunk) :]
                written += length
                ahead = started + written / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        for descriptor in descriptors:
            os.close(descriptor)
    return time.time(), time.monotonic() - started


def sent_figures(log: Path, session_id: str, last_write: float) -> dict[str, int]:
    """From the daemon's JSON log, what went up when: the bytes of the growing passes that
    ended before the last write (each pass logs growing_parts_sent once, at its end, so a pass
    still running then counts as after), of every growing pass, and of the upload that
    followed completion (session_uploaded)."""
    figures = {"sent_while_growing_bytes": 0, "sent_early_bytes": 0, "sent_after_bytes": 0}
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            event = json.loads(line)
            if event.get("session") != session_id:
                continue
            if event["event"] == "session_uploaded":
                figures["sent_after_bytes"] += int(event["bytes_sent"])
            elif event["event"] == "growing_parts_sent":
                sent = int(event["bytes_sent"])
                figures["sent_early_bytes"] += sent
                if datetime.datetime.fromisoformat(event["timestamp"]).timestamp() <= last_write:
                    figures["sent_while_growing_bytes"] += sent
    return figures


def growing_phase(
    context: Context, scale: float, rate_mb_s: float, quiet: float
) -> tuple[dict[str, Any], list[Run]]:
    """Start the daemon with `upload_while_growing` (part size scaled, quiet period `quiet`),
    record two files of a new session at `rate_mb_s` MB/s in all, and measure the time from
    the last write to the session uploaded. Then every peer syncs the finished tree into a
    fresh bucket: its wall time is its "last write to in S3", as if started the moment the
    acquisition ended. Return the figures and the peers' runs."""
    size = recording_size(scale)
    part = growing_part_size(scale)
    root = context.work / "growing"
    session = root / GROWING_SESSION
    root.mkdir(parents=True, exist_ok=True)
    tree = Tree(root, 2, 2 * size)
    job = context.job("agent", tree, "growing", 0)
    context.server.create_bucket(job.bucket)
    source = peers.AGENT_SOURCE
    figures: dict[str, Any] = {
        "files": 2,
        "file_bytes": size,
        "rate_mb_s": rate_mb_s,
        "part_size": part,
        "quiet_period_s": quiet,
        "log": "growing-agent-r0.err",
    }
    extra = f'upload_while_growing = true\ngrowing_part_size = "{part // MIB}MiB"\n'
    try:
        with running_daemon(
            context, job, watching_config(job, context, source, quiet, extra), "growing"
        ) as daemon:
            session.mkdir(parents=True)
            paths = [session / f"continuous{number}.ap.bin" for number in range(2)]
            last_write, took = acquire(paths, size, rate_mb_s * 1e6)
            record = wait_for_upload(
                state_database(job),
                f"{source}/{GROWING_SESSION}",
                daemon,
                quiet + context.timeout,
            )
            assert record.completed_at is not None and record.uploaded_at is not None
        check_bucket(context, job.bucket, f"{source}/", tree)
    except DaemonError as error:
        return phase_failed(figures, error), []
    finally:
        context.server.discard([job.bucket])
    figures.update(
        sent_figures(context.logs / figures["log"], f"{source}/{GROWING_SESSION}", last_write)
    )
    figures.update(
        acquisition_s=round(took, 2),
        completed_after_s=round(record.completed_at - last_write, 3),
        uploaded_after_s=round(record.uploaded_at - last_write, 3),
        uploaded_beyond_quiet_s=round(record.uploaded_at - last_write - quiet, 3),
    )
    print(
        f"  growing      agent: uploaded {figures['uploaded_after_s']} s after the last write "
        f"(quiet period {quiet:g} s; growing passes sent {figures['sent_early_bytes'] / MIB:.0f} "
        f"MiB of {2 * size / MIB:.0f} MiB)",
        flush=True,
    )
    runs: list[Run] = []
    for tool in context.tools:
        if tool == "agent":
            continue
        peer_job = context.job(tool, tree, "growing", 0)
        context.server.create_bucket(peer_job.bucket)
        runs.append(context.run(tool, peer_job, tree, "growing", 0))
        context.server.discard([peer_job.bucket])
    figures["peers_s"] = {run.tool: run.wall_s if run.ok else None for run in runs}
    finished = {tool: wall for tool, wall in figures["peers_s"].items() if wall is not None}
    if finished:
        fastest = min(finished, key=finished.__getitem__)
        figures["fastest_peer"] = fastest
        figures["agent_vs_fastest_peer"] = round(figures["uploaded_after_s"] / finished[fastest], 3)
    return figures, runs


# ----------------------------------------------------------------------------- flame graphs


# py-spy writes inferno's SVG: per frame a <title> "function (file:line) (N samples, P%)" and
# a <rect> whose y is its depth and whose fg:x and fg:w are its first sample and its width
# in samples. Own time is a frame's width less its children's (frames one row further from
# the root that start within it). Frames narrower than inferno's minimum width are left out
# of the SVG, so their few samples count as their parent's own.
_FRAME = re.compile(r"<g><title>(?P<title>[^<]*)</title><rect (?P<attributes>[^>]*?)/?>")
_ATTRIBUTE = re.compile(r'([\w:]+)="([^"]*)"')
_SAMPLES = re.compile(r" \([\d,]+ samples?, [\d.]+%\)$")
_TITLE = re.compile(r'(<text id="title"[^>]*>)[^<]*(</text>)')


def retitle(svg: str, title: str) -> str:
    """Given py-spy's SVG, return it with `title` in place of the command line it shows
    there, which names this machine's paths and a temporary config: meaningless in the
    committed results."""
    return _TITLE.sub(lambda match: match[1] + html.escape(title) + match[2], svg, count=1)


def own_time(svg: str) -> tuple[int, list[tuple[str, int]]]:
    """Given py-spy's flame graph SVG, return the number of samples and every function with
    its own samples (in no frame below it), most first."""
    frames: list[tuple[float, int, int, str]] = []
    for match in _FRAME.finditer(svg):
        attributes = dict(_ATTRIBUTE.findall(match["attributes"]))
        if "fg:w" in attributes and "y" in attributes:
            name = _SAMPLES.sub("", html.unescape(match["title"]))
            frames.append(
                (float(attributes["y"]), int(attributes["fg:x"]), int(attributes["fg:w"]), name)
            )
    if not frames:
        return 0, []
    root = max(frames, key=lambda frame: frame[2])
    # Rows ordered from the root outwards, whichever way up the graph is drawn.
    rows = sorted({frame[0] for frame in frames}, key=lambda y: abs(y - root[0]))
    depth = {y: index for index, y in enumerate(rows)}
    by_depth: list[list[tuple[int, int, str]]] = [[] for _ in rows]
    for y, x, width, name in frames:
        by_depth[depth[y]].append((x, width, name))
    own: Counter[str] = Counter()
    for level, row in enumerate(by_depth):
        row.sort()
        children = by_depth[level + 1] if level + 1 < len(by_depth) else []
        starts = [x for x, _, _ in row]
        inner = [0] * len(row)
        for x, width, _ in children:
            parent = bisect_right(starts, x) - 1
            if parent >= 0:
                inner[parent] += width
        if level == 0:
            continue  # the root ("all") is no function
        for (_, width, name), below in zip(row, inner, strict=True):
            own[name] += width - below
    return root[2], own.most_common()


def profile_phase(context: Context, reference: Tree, out: Path) -> dict[str, Any]:
    """Run `agentctl sync` under `py-spy record` on the reference tree's JSON session (the
    small-file case) and on its recordings (the large-file case), each into a fresh bucket
    with fresh state; write flame-small.svg and flame-large.svg to `out` and return per case
    the wall time (under py-spy), the samples and the top functions by own time."""
    spy = peers.find_program("py-spy", context.bin_dir)
    if spy is None:
        return {"error": "py-spy is not installed (it is in the bench extra)"}
    cases = (
        ("small", "behaviour1", "the JSON session: 4 KiB files"),
        ("large", "mouse1", "the recordings session"),
    )
    figures: dict[str, Any] = {}
    for case, folder, what in cases:
        root = reference.root / folder
        sizes = [path.stat().st_size for path in root.rglob("*") if path.is_file()]
        tree = Tree(root, len(sizes), sum(sizes))
        job = context.job("agent", tree, f"profile{case}", 0)
        context.server.create_bucket(job.bucket)
        svg = out / f"flame-{case}.svg"
        svg.unlink(missing_ok=True)
        config = peers.config_text(
            job,
            context.server.endpoint,
            peers.AGENT_SOURCE,
            'session_depth = 1\nquiet_period = "1m"\n',
        )
        argv: tuple[str, ...] = (spy, "record", "--function", "--format", "flamegraph")
        argv += ("-o", str(svg), "--")
        argv += (sys.executable, "-m", "agent", "sync", "--config", str(job.config))
        invocation = peers.Invocation(
            argv, dict(os.environ, **context.server.endpoint.environment), {job.config: config}
        )
        run = measure(
            invocation,
            tool="agent",
            phase=f"profile-{case}",
            repeat=0,
            logs=context.logs,
            server=context.server,
            timeout=context.timeout,
        )
        run = checked(run, context.server, job.bucket, f"{peers.AGENT_SOURCE}/", tree)
        context.server.discard([job.bucket])
        result: dict[str, Any] = {
            "what": what,
            "files": tree.files,
            "bytes": tree.bytes,
            "wall_s": run.wall_s,
            "svg": svg.name,
            "log": run.log,
        }
        if not run.ok or not svg.exists():
            result["error"] = run.error or f"py-spy wrote no {svg.name}"
        else:
            text = retitle(
                svg.read_text(errors="replace"),
                f"agentctl sync, {what}: {tree.files:,} files, {tree.bytes / MIB:,.0f} MiB "
                "(py-spy record --function)",
            )
            svg.write_text(text)
            samples, functions = own_time(text)
            result["samples"] = samples
            result["top_own"] = [
                {
                    "function": name,
                    "own_samples": count,
                    "own_percent": round(100 * count / samples, 1),
                }
                for name, count in functions[:TOP_FUNCTIONS]
                if count > 0
            ]
        figures[case] = result
        state = (
            f"FAILED ({result['error']})" if "error" in result else f"{result['samples']} samples"
        )
        print(
            f"  profile      {case:<6} {run.wall_s:8.2f} s wall under py-spy: {state}", flush=True
        )
    return figures


# ----------------------------------------------------------------------------- reporting


def target_rows(
    latency: Mapping[str, Any] | None, growing: Mapping[str, Any] | None
) -> list[tuple[str, float | None, float]]:
    """The targets these phases measure, as (text, measured, limit): met when measured is at
    most the limit. Only for the phases that ran."""
    rows: list[tuple[str, float | None, float]] = []
    if latency is not None:
        rows.append(
            (
                "session complete ≤ quiet period + 1 s after the last write (max, s beyond the "
                "quiet period; bench/latency.py's goal)",
                latency.get("completed_after_beyond_quiet_max_s"),
                COMPLETION_TARGET_BEYOND_QUIET,
            )
        )
    if growing is not None:
        rows.append(
            (
                "growing recording uploaded ≤ quiet period + 10 s after the last write (s "
                "beyond the quiet period)",
                growing.get("uploaded_beyond_quiet_s"),
                GROWING_TARGET_BEYOND_QUIET,
            )
        )
    return rows


def failed(results: Mapping[str, Any]) -> bool:
    """Whether a phase of these failed (py-spy not installed is no failure: the flame graphs
    are left out and the report says why)."""
    latency, growing = results.get("latency") or {}, results.get("growing") or {}
    cases = [case for case in (results.get("profile") or {}).values() if isinstance(case, dict)]
    return "error" in latency or "error" in growing or any("error" in case for case in cases)


def _charted(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The phases latency.png draws: completion latency and the growing recording, if they
    ran and did not fail."""
    phases = (results.get("latency"), results.get("growing"))
    return [phase for phase in phases if phase is not None and "error" not in phase]


def _number(value: Any, digits: int = 2) -> str:
    return "failed" if value is None else f"{value:,.{digits}f}"


def markdown(results: Mapping[str, Any]) -> list[str]:
    """The report's sections for these phases (those that ran), as Markdown lines."""
    lines: list[str] = []
    latency = results.get("latency")
    if latency is not None:
        lines += ["", "## Completion latency (the daemon)", ""]
        lines += _latency_lines(latency)
    growing = results.get("growing")
    if growing is not None:
        lines += ["", "## A growing recording", ""]
        lines += _growing_lines(growing)
    if _charted(results):
        lines += ["", "![completion latency and the growing recording](latency.png)"]
    profile = results.get("profile")
    if profile is not None:
        lines += ["", "## Where the agent's CPU goes (py-spy)", ""]
        lines += _profile_lines(profile)
    return lines


def _latency_lines(latency: Mapping[str, Any]) -> list[str]:
    quiet = latency["quiet_period_s"]
    lines = [
        f"`agentctl run` (inotify, quiet period {quiet:g} s) while {latency['sessions']} sessions "
        f"are written one after another, each {latency['files_per_session']} files of "
        f"{latency['file_bytes'] // KIB} KiB {LATENCY_GAP:g} s apart; seconds from a session's "
        "last write to its `completed_at` and `uploaded_at` in the state database.",
        "",
    ]
    if "error" in latency:
        return [*lines, f"Failed: {latency['error']} (`logs/{latency['log']}`)."]
    lines += [
        "| from the last write to | median s | max s | median beyond the quiet period s"
        " | max beyond the quiet period s |",
        "|---|---:|---:|---:|---:|",
    ]
    for stem, label in (("completed_after", "complete"), ("uploaded_after", "uploaded")):
        lines.append(
            f"| {label} | {_number(latency[f'{stem}_median_s'])}"
            f" | {_number(latency[f'{stem}_max_s'])}"
            f" | {_number(latency[f'{stem}_beyond_quiet_median_s'])}"
            f" | {_number(latency[f'{stem}_beyond_quiet_max_s'])} |"
        )
    return lines


def _growing_lines(growing: Mapping[str, Any]) -> list[str]:
    quiet = growing["quiet_period_s"]
    size = growing["file_bytes"]
    lines = [
        f"{growing['files']} x {size / MIB:,.0f} MiB written at {growing['rate_mb_s']:g} MB/s in "
        f"all while `agentctl run` watches with `upload_while_growing = true` "
        f"(`growing_part_size` {growing['part_size'] // MIB} MiB, scaled with the recording) "
        f"and a quiet period of {quiet:g} s; then each peer syncs the finished tree into a "
        "fresh bucket, as if started the moment the acquisition ended.",
        "",
    ]
    if "error" in growing:
        return [*lines, f"Failed: {growing['error']} (`logs/{growing['log']}`)."]
    total = growing["files"] * size
    lines += [
        f"Acquisition took {growing['acquisition_s']:.1f} s. Of {total / MIB:,.0f} MiB, the "
        f"agent's growing passes sent {growing['sent_early_bytes'] / MIB:,.0f} MiB "
        f"({growing['sent_while_growing_bytes'] / MIB:,.0f} MiB by passes that ended before "
        "the last write); it judged the session complete "
        f"{growing['completed_after_s']:.2f} s after the last write, and its upload then sent "
        f"{growing['sent_after_bytes'] / MIB:,.0f} MiB.",
        "",
        "| tool | last write → in S3 s | beyond the quiet period s |",
        "|---|---:|---:|",
        f"| agent (daemon, quiet period {quiet:g} s) | {_number(growing['uploaded_after_s'])}"
        f" | {_number(growing['uploaded_beyond_quiet_s'])} |",
    ]
    for tool, wall in growing.get("peers_s", {}).items():
        lines.append(f"| {tool} (started at the last write) | {_number(wall)} | n/a |")
    if "fastest_peer" in growing:
        lines += [
            "",
            f"Agent ÷ fastest peer ({growing['fastest_peer']}): "
            f"{growing['agent_vs_fastest_peer']:.2f}, the agent's quiet period included.",
        ]
    return lines


def _profile_lines(profile: Mapping[str, Any]) -> list[str]:
    if "error" in profile:
        return [f"Not profiled: {profile['error']}."]
    lines = [
        "`agentctl sync` of one session into a fresh bucket under `py-spy record --function` "
        "(100 samples a second of every thread py-spy does not judge idle; own time read from "
        "the flame graph). py-spy's idle test is a heuristic: a thread waiting in a socket read "
        "or on a condition can count as busy, so `SocketIO.readinto` and `Condition.wait` are "
        "mostly waits for the server and for other threads, not CPU. A one-shot sync also pays "
        "its imports (`_call_with_frames_removed`, `_compile_bytecode`)."
    ]
    for case, figures in profile.items():
        lines += [
            "",
            f"**{case.capitalize()} files** ({figures['what']}, {figures['files']:,} files, "
            f"{figures['bytes'] / MIB:,.0f} MiB, {figures['wall_s']:.1f} s under py-spy): "
            f"[{figures['svg']}]({figures['svg']})"
            + (f"; failed: {figures['error']}" if "error" in figures else "."),
        ]
        if "error" in figures:
            continue
        lines += [
            "",
            f"| function (top {TOP_FUNCTIONS} by own time) | own samples | % of "
            f"{figures['samples']:,} samples |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| `{row['function']}` | {row['own_samples']:,} | {row['own_percent']:.1f} |"
            for row in figures["top_own"]
        ]
    return lines


def chart(results: Mapping[str, Any], out: Path) -> Path | None:
    """Draw latency.png: the completion latency per session and the growing recording per
    tool, each against the quiet period. None (no file) if neither phase ran."""
    latency = results.get("latency")
    growing = results.get("growing")
    panels = _charted(results)
    if not panels:
        return None
    figure = Figure(figsize=(5.5 * len(panels), 4))
    grid = figure.subplots(1, len(panels), squeeze=False)[0]
    index = 0
    if latency is not None and "error" not in latency:
        axes = grid[index]
        index += 1
        rows = latency["per_session"]
        numbers = range(1, len(rows) + 1)
        axes.bar(
            [n - 0.2 for n in numbers],
            [r["completed_after_s"] for r in rows],
            0.4,
            label="complete",
            color="#1f77b4",
        )
        axes.bar(
            [n + 0.2 for n in numbers],
            [r["uploaded_after_s"] for r in rows],
            0.4,
            label="uploaded",
            color="#d62728",
        )
        axes.axhline(latency["quiet_period_s"], color="black", linestyle="--", label="quiet period")
        axes.set_xlabel("session")
        axes.set_xticks(list(numbers))
        axes.set_ylabel("seconds after the last write")
        axes.set_title("Completion latency (daemon, inotify)")
        highest = max(max(r["completed_after_s"], r["uploaded_after_s"]) for r in rows)
        axes.set_ylim(0, 1.3 * highest)
        axes.legend(fontsize=8, loc="upper center", ncols=3)
    if growing is not None and "error" not in growing:
        axes = grid[index]
        quiet = growing["quiet_period_s"]
        tools = ["agent", *growing.get("peers_s", {})]
        values = [growing["uploaded_after_s"], *growing.get("peers_s", {}).values()]
        colours = ["#d62728" if tool == "agent" else "#7f7f7f" for tool in tools]
        bars = axes.bar(tools, [value or 0.0 for value in values], color=colours)
        axes.bar_label(bars, labels=["failed" if v is None else f"{v:.1f}" for v in values])
        axes.axhline(quiet, color="black", linestyle="--", label="quiet period")
        axes.axhline(
            quiet + GROWING_TARGET_BEYOND_QUIET,
            color="#2ca02c",
            linestyle=":",
            label="target: quiet period + 10 s",
        )
        axes.set_ylabel("seconds from the last write to in S3")
        axes.set_title(
            f"Growing recording, {growing['files']} x {growing['file_bytes'] / MIB:.0f} MiB "
            f"at {growing['rate_mb_s']:g} MB/s"
        )
        axes.legend(fontsize=8)
    figure.tight_layout()
    path = out / "latency.png"
    figure.savefig(path, dpi=110)
    return path
