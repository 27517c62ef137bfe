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
- for the agent alone (bench/agent_only.py): the idle CPU of `agentctl run` watching
  `--idle-files` empty files; its completion latency (`--latency-sessions` sessions written
  while it watches: last write to complete and to uploaded); a growing recording (two files
  written at `--growing-rate` MB/s with `upload_while_growing`: last write to uploaded,
  beside each peer started on the finished tree); and with `--profile` (the default) flame
  graphs of `agentctl sync` on the small and the large files (py-spy).

The server (moto, one Python process, by default) shares the machine's cores with the
client, so wall time says as much about the server as about the tool: client CPU per GB is
the primary figure, and wall is given as a ratio to the fastest peer in the same repeat.
Every upload is checked against the bucket's listing (an incremental run on the session it
added); a tool that fails or leaves files out is reported as failed, with its log under
`bench/results/logs/`.

Usage: python bench/compare.py [--scale 0.25] [--repeat 3] [--endpoint URL] [--idle 60]
       [--incremental-files 20000] [--idle-files 100000] [--latency-sessions 5]
       [--quiet 2] [--growing-rate 50] [--no-profile] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agent_only
import peers
from harness import (
    GB,
    HOUR,
    NEW_SESSION_FILES,
    Context,
    Run,
    Server,
    Tree,
    new_session_dir,
    new_session_plan,
    reference_plan,
    small_plan,
    write_files,
)


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
            added = (new_session_dir(repeat), new)
            runs.append(context.run(tool, jobs[tool], tree, "incremental", repeat, added=added))
    context.server.discard([job.bucket for job in jobs.values()])
    return runs


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


def targets(
    summary: Mapping[str, Any],
    idle: Mapping[str, Any] | None,
    more: Sequence[tuple[str, float | None, float]] = (),
) -> list[dict[str, Any]]:
    """Given the summary, the idle figures and more (text, measured, limit) rows (from
    agent_only), return the targets this run measures, each with the measured value and
    whether it is met (at most the limit; None when a figure is missing)."""
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
    rows += more
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
        f"{meta['total_s']:.0f} s"
        + (
            " (" + ", ".join(f"{name} {s:.0f} s" for name, s in meta["phases_s"].items()) + ")."
            if meta.get("phases_s")
            else "."
        ),
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
    lines += agent_only.markdown(results)
    lines += ["", "## Targets measured here", "", "| target | measured | met |"]
    lines.append("|---|---:|---|")
    for row in results["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
        lines.append(f"| {row['target']} | {_cell(row['measured'], 3)} | {met} |")
    lines += ["", f"Not measured here: {meta['not_measured']}."]
    failures = [run for run in results["runs"] if run["error"]]
    lines += ["", "## Failed runs", "", f"{len(failures)} failed."]
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
    # The sizes, whatever --scale: --scale shrinks the reference tree only. Scaled
    # down with it (5,000 files at 0.25), the incremental measured what a peer pays for a
    # small bucket, which flatters every tool whose cost grows with what was uploaded before.
    parser.add_argument("--incremental-files", type=int, default=20_000, help="not scaled")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds; 0 skips it")
    parser.add_argument("--idle-files", type=int, default=100_000, help="not scaled")
    parser.add_argument("--tools", default=",".join(peers.TOOLS), help="comma-separated")
    parser.add_argument("--latency-sessions", type=int, default=5, help="0 skips it")
    parser.add_argument("--quiet", type=float, default=2.0, help="latency, growing: seconds")
    parser.add_argument("--growing-rate", type=float, default=50.0, help="MB/s; 0 skips it")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="flame graphs of agentctl sync (py-spy)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
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


@contextlib.contextmanager
def timed(phases: dict[str, float], name: str) -> Iterator[None]:
    """Record how long the body took under `name` in phases (seconds), for the report: what
    each part of `make bench` costs tells what can be turned off to save time."""
    started = time.monotonic()
    try:
        yield
    finally:
        phases[name] = round(time.monotonic() - started, 1)


def agent_phases(
    context: Context,
    arguments: argparse.Namespace,
    tree: Tree,
    idle_files: int,
    phases: dict[str, float],
) -> tuple[dict[str, Any], list[Run]]:
    """Run the phases of the agent alone (bench/agent_only.py) that the options leave on:
    idle, completion latency, the growing recording (with its peer runs) and the flame
    graphs. Return their figures by name, and the peer runs."""
    figures: dict[str, Any] = {}
    runs: list[Run] = []
    if arguments.idle > 0:
        print(f"idle daemon over {arguments.idle:g} s:", flush=True)
        with timed(phases, "idle"):
            figures["idle"] = agent_only.idle_phase(context, idle_files, arguments.idle, settle=5.0)
    if arguments.latency_sessions > 0:
        print(f"completion latency over {arguments.latency_sessions} sessions:", flush=True)
        with timed(phases, "latency"):
            figures["latency"] = agent_only.completion_phase(
                context, arguments.latency_sessions, arguments.quiet
            )
    if arguments.growing_rate > 0:
        print(f"a growing recording at {arguments.growing_rate:g} MB/s:", flush=True)
        with timed(phases, "growing"):
            figures["growing"], runs = agent_only.growing_phase(
                context, arguments.scale, arguments.growing_rate, arguments.quiet
            )
    if arguments.profile:
        print("flame graphs (py-spy) of agentctl sync:", flush=True)
        with timed(phases, "profile"):
            figures["profile"] = agent_only.profile_phase(context, tree, arguments.out)
    return figures, runs


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
    small = max(NEW_SESSION_FILES, arguments.incremental_files)
    idle_files = max(1000, arguments.idle_files)
    phases: dict[str, float] = {}
    alone: dict[str, Any] = {}
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
            with timed(phases, "catch-up"):
                runs = catch_up_phase(context, tree, arguments.repeat)
            print(f"incremental among {small:,} small files:", flush=True)
            with timed(phases, "incremental"):
                runs += incremental_phase(context, small, arguments.repeat)
            if "agent" in tools:
                alone, more_runs = agent_phases(context, arguments, tree, idle_files, phases)
                runs += more_runs
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
                "files per session (bench/files_per_session.py; bench/scale.py covers start-up "
                "over many files)"
            ),
            "phases_s": phases,
            "total_s": round(time.monotonic() - started, 1),
        },
        "summary": summary,
        "ratios": ratios(summary),
        "idle": alone.get("idle"),
        "latency": alone.get("latency"),
        "growing": alone.get("growing"),
        "profile": alone.get("profile"),
        "targets": targets(
            summary,
            alone.get("idle"),
            agent_only.target_rows(alone.get("latency"), alone.get("growing")),
        ),
        "runs": [asdict(run) for run in runs],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (out / "results.md").write_text(report)
    charts(results, out)
    agent_only.chart(results, out)
    print()
    print(report)
    failed = any(not run.ok for run in runs) or agent_only.failed(results)
    return 1 if failed or "error" in (results["idle"] or {}) else 0


if __name__ == "__main__":
    sys.exit(main())
