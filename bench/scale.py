"""Scale benchmark: the daemon's start-up reconcile over a tree of many (empty) files.

Generates `--files` empty files in sessions of `--per-session` files (subject/session
layout), starts `agentctl run` against a loopback S3 server with a quiet period of an hour
(so nothing uploads and only detection is measured), and reports:
- seconds from process start to the end of the start-up reconcile (`reconcile_finished`),
  with an empty state database (first start) and again with it filled (restart);
- the daemon's peak RSS (VmHWM) after each start;
- the CPU the daemon uses afterwards, in two windows of `--idle` seconds: right after
  start-up (inotify watches are still being set up) and then idle.

Usage: python bench/scale.py [--files 1000000] [--per-session 1000] [--tree DIR]
A given --tree is kept (and reused when it already holds the files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.s3server import S3TestServer


def make_tree(root: Path, files: int, per_session: int) -> int:
    """Create `files` empty files, `per_session` per session, 100 sessions per subject.
    Return the number of sessions. Reuses a tree left by an earlier run."""
    sessions = max(1, files // per_session)
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == f"{files}/{per_session}":
        return sessions
    old = time.time() - 7 * 86400
    for number in range(sessions):
        session = root / f"subject{number // 100:04d}" / f"session{number % 100:03d}"
        session.mkdir(parents=True, exist_ok=True)
        for index in range(per_session):
            descriptor = os.open(session / f"tile{index:05d}.tif", os.O_CREAT | os.O_WRONLY, 0o644)
            os.close(descriptor)
        os.utime(session, (old, old))
    marker.write_text(f"{files}/{per_session}")
    return sessions


def _status_value(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def run_daemon(config: Path, idle: float) -> dict[str, Any]:
    """Start the daemon, wait for its start-up reconcile, measure, stop it."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    figures: dict[str, Any] = {}
    try:
        for line in process.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "reconcile_finished":
                figures["reconcile_s"] = round(time.monotonic() - started, 2)
                figures["reconcile_own_s"] = event["seconds"]
                figures["sessions"] = event["sessions"]
                figures["files"] = event["files"]
            if event.get("event") == "agent_started":
                figures["ready_s"] = round(time.monotonic() - started, 2)
                break
        else:
            raise RuntimeError(f"daemon exited early with {process.wait()}")
        figures["peak_rss_mib_after_start"] = round(_status_value(process.pid, "VmHWM") / 1024, 1)
        cpu_before = _cpu_seconds(process.pid)
        time.sleep(idle)
        used = _cpu_seconds(process.pid) - cpu_before
        figures["after_start_cpu_percent"] = round(100 * used / idle, 2)
        # A second window: the watcher has finished setting up its watches by now.
        cpu_before = _cpu_seconds(process.pid)
        time.sleep(idle)
        used = _cpu_seconds(process.pid) - cpu_before
        figures["idle_cpu_percent"] = round(100 * used / idle, 2)
        figures["peak_rss_mib"] = round(_status_value(process.pid, "VmHWM") / 1024, 1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
    return figures


def main() -> int:
    """Generate (or reuse) the tree, start the daemon twice, print figures and JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--per-session", type=int, default=1000)
    parser.add_argument("--tree", type=Path, default=None)
    parser.add_argument("--idle", type=float, default=10.0)
    arguments = parser.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    work = Path(tempfile.mkdtemp(prefix="ingest-scale-"))
    tree = arguments.tree or work / "recordings"
    tree.mkdir(parents=True, exist_ok=True)
    generated = time.monotonic()
    make_tree(tree, arguments.files, arguments.per_session)
    generated = time.monotonic() - generated
    server = S3TestServer()
    server.start()
    results: dict[str, Any] = {"files": arguments.files, "tree_seconds": round(generated, 1)}
    try:
        boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(
            Bucket="scale"
        )
        config = work / "agent.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{work / "state"}"\nrescan_interval = "1h"\n'
            f'[destination]\nbucket = "scale"\nprefix = "bench"\nendpoint_url = "{server.url}"\n'
            '[[source]]\nname = "scope"\n'
            f'path = "{tree}"\nlayout = "{{subject}}/{{session}}"\nquiet_period = "1h"\n'
            'min_age = "1h"\n'
        )
        results["first_start"] = run_daemon(config, arguments.idle)
        results["restart"] = run_daemon(config, arguments.idle)
        results["state_db_mib"] = round((work / "state" / "state.db").stat().st_size / 2**20, 1)
    finally:
        server.stop()
        if arguments.tree is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "state", ignore_errors=True)
    for name in ("first_start", "restart"):
        figures = results[name]
        print(
            f"{name:<12} reconcile {figures['reconcile_s']:>6.1f} s "
            f"({figures['sessions']} sessions, {figures['files']} files), "
            f"peak RSS {figures['peak_rss_mib']:.0f} MiB, CPU after start "
            f"{figures['after_start_cpu_percent']}%, idle {figures['idle_cpu_percent']}%"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
