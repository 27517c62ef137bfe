"""Detection-latency benchmark: how long after a session's last write does the running
daemon judge it complete, and how long until it is uploaded?

Starts `agentctl run` (inotify, quiet period `--quiet`) against a loopback S3 server, then
writes `--sessions` sessions one after another (three files each, over about a second) and
reads each session's `completed_at` and `uploaded_at` from the state database. The goal is
completion within quiet period + 1 s.

Usage: python bench/latency.py [--quiet 2] [--sessions 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from agent.state import State
from tests.s3server import S3TestServer


def wait_until(predicate: Any, timeout: float) -> Any:
    """Poll until `predicate()` returns something truthy; return it (None on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return None


def main() -> int:
    """Measure and print per-session latencies and their summary as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiet", type=float, default=2.0)
    parser.add_argument("--sessions", type=int, default=5)
    arguments = parser.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    work = Path(tempfile.mkdtemp(prefix="ingest-latency-"))
    source = work / "recordings"
    source.mkdir()
    server = S3TestServer()
    server.start()
    daemon: subprocess.Popen[bytes] | None = None
    rows: list[dict[str, float]] = []
    try:
        boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(
            Bucket="latency"
        )
        config = work / "agent.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{work / "state"}"\nrescan_interval = "1h"\n'
            f'[destination]\nbucket = "latency"\nendpoint_url = "{server.url}"\n'
            f'[[source]]\nname = "ephys"\npath = "{source}"\nquiet_period = {arguments.quiet}\n'
            'watch = "inotify"\n'
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        database = work / "state" / "state.db"
        if not wait_until(database.exists, 30):
            raise RuntimeError("the daemon did not start")
        time.sleep(1.0)
        for number in range(arguments.sessions):
            session = source / "mouse1" / f"session{number:02d}"
            session.mkdir(parents=True)
            for index in range(3):
                if index:
                    time.sleep(0.4)
                (session / f"part{index}.bin").write_bytes(os.urandom(256 * 1024))
            last_write = time.time()
            session_id = f"ephys/mouse1/session{number:02d}"

            def uploaded(session_id: str = session_id) -> Any:
                state = State.open(database, create=False)
                try:
                    record = state.sessions.get(session_id)
                finally:
                    state.close()
                return record if record and record.uploaded_at else None

            record = wait_until(uploaded, arguments.quiet + 60)
            if record is None:
                raise RuntimeError(f"{session_id} was not uploaded")
            rows.append(
                {
                    "completed_after_s": round(record.completed_at - last_write, 3),
                    "uploaded_after_s": round(record.uploaded_at - last_write, 3),
                }
            )
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    completed = [row["completed_after_s"] for row in rows]
    summary = {
        "quiet_period_s": arguments.quiet,
        "sessions": rows,
        "completed_after_median_s": round(statistics.median(completed), 3),
        "completed_after_max_s": round(max(completed), 3),
        "overhead_max_s": round(max(completed) - arguments.quiet, 3),
        "within_quiet_plus_1s": max(completed) <= arguments.quiet + 1.0,
    }
    print(
        f"quiet period {arguments.quiet:g} s: complete {summary['completed_after_median_s']} s "
        f"(median), {summary['completed_after_max_s']} s (max) after the last write; "
        f"overhead at most {summary['overhead_max_s']} s"
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
