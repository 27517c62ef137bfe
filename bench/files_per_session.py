"""Files per session: client CPU per file must not grow with the session's size.

One session of N small files (`--sizes`, default 1,000 / 10,000 / 100,000), uploaded by one
`agentctl sync` against a loopback moto server, each size into a fresh bucket and state; then
(`--spread`) the same number of files spread over sessions of 100. Reports wall seconds,
files/s, client CPU seconds (the agentctl process, user+sys), CPU milliseconds per file, peak
RSS, and the ratio of each size's CPU per file to the smallest's (the target: within 1.25).
The server runs in this process, so its CPU is not counted as the client's. Needs GNU
time (/usr/bin/time, Debian's `time` package) for the peak RSS.

With `--peer s5cmd` (the issue's yardstick for files/s), `s5cmd sync` uploads the same tree
into a bucket of its own right after the agent, measured the same way, and the table gains
its rows and the agent's files/s as a ratio to it.

Usage: python bench/files_per_session.py [--sizes 1000,10000,100000] [--file-size 4096]
       [--spread] [--concurrency 8] [--profile DIR]   (py-spy flame graph per run)
       [--peer s5cmd]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.s3server import S3TestServer

PER_SESSION_WHEN_SPREAD = 100


def make_tree(root: Path, files: int, size: int, per_session: int) -> None:
    """`files` files of `size` random bytes, `per_session` to a session, all an hour old."""
    payload = os.urandom(size)
    stamp = time.time() - 3600
    for index in range(files):
        session = root / "plate1" / f"s{index // per_session:05d}"
        if index % per_session == 0:
            session.mkdir(parents=True)
        path = session / f"img{index:06d}.tif"
        path.write_bytes(payload)
        os.utime(path, (stamp, stamp))
    for session in (root / "plate1").iterdir():
        os.utime(session, (stamp, stamp))


def run_sync(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run one sync; wall seconds, client CPU seconds and peak RSS (MiB) of its process.

    The peak RSS comes from GNU time as the launcher: a child's ru_maxrss starts at its
    parent's, and this process holds the server and its objects."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "MAXRSS_KIB %M", *command],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"sync failed ({result.returncode}): {result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peaks = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("MAXRSS")]
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": int(peaks[-1]) / 1024}


def measure(
    server: S3TestServer,
    work: Path,
    files: int,
    *,
    file_size: int,
    per_session: int,
    concurrency: int,
    profile: Path | None,
    peer: str | None = None,
) -> list[dict[str, Any]]:
    """Upload one tree of `files` files with the agent (and `peer`); return their figures."""
    name = f"n{files}-per{per_session}"
    source = work / name / "data"
    make_tree(source, files, file_size, per_session)
    bucket = f"bench-{name}".lower()
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    config = work / name / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{work / name / "state"}"\nlog_level = "warning"\n'
        f'[destination]\nbucket = "{bucket}"\nendpoint_url = "{server.url}"\n'
        f'region = "us-east-1"\n[upload]\nconcurrency = {concurrency}\n'
        f'[[source]]\nname = "cells"\npath = "{source}"\nsession_depth = 2\n'
        f'quiet_period = "1s"\ncheck_open_files = false\n',
        encoding="utf-8",
    )
    command = [sys.executable, "-m", "agent", "sync", "--json", "--config", str(config)]
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        svg = profile / f"{name}.svg"
        command = [spy, "record", "--subprocesses", "-o", str(svg), "--", *command]
    runs = [("agent", command)]
    if peer is not None:
        found = shutil.which(peer) or str(Path(sys.executable).parent / peer)
        peer_bucket = f"{bucket}-{peer}"
        boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(
            Bucket=peer_bucket
        )
        runs.append(
            (
                peer,
                [found, "--endpoint-url", server.url, "sync", f"{source}/", f"s3://{peer_bucket}/"],
            )
        )
    rows = []
    for tool, argv in runs:
        figures: dict[str, Any] = run_sync(argv, dict(os.environ))
        figures.update(
            tool=tool,
            files=files,
            per_session=per_session,
            files_per_s=files / figures["wall_s"],
            cpu_ms_per_file=1000 * figures["cpu_s"] / files,
        )
        rows.append(figures)
    shutil.rmtree(source, ignore_errors=True)
    return rows


def main() -> int:
    """Run every size (and, with --spread, the spread variant); print a table and JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--file-size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--spread", action="store_true")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--peer", choices=["s5cmd"], default=None)
    arguments = parser.parse_args()
    for variable, value in (
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(variable, value)
    sizes = [int(text) for text in arguments.sizes.split(",")]
    server = S3TestServer()
    server.start()
    work = Path(tempfile.mkdtemp(prefix="ingest-files-bench-"))
    rows: list[dict[str, Any]] = []
    try:
        layouts = [max(sizes)] + ([PER_SESSION_WHEN_SPREAD] if arguments.spread else [])
        for per_session in layouts:
            for files in sizes:
                rows.extend(
                    measure(
                        server,
                        work,
                        files,
                        file_size=arguments.file_size,
                        per_session=min(per_session, files),
                        concurrency=arguments.concurrency,
                        profile=arguments.profile,
                        peer=arguments.peer,
                    )
                )
                server.reset()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    base: dict[tuple[str, bool], float] = {}
    print(
        f"{arguments.file_size}-byte files, concurrency {arguments.concurrency}, moto on loopback"
    )
    print(
        f"{'tool':>6} {'files':>7} {'per session':>11} {'wall s':>7} {'files/s':>8} "
        f"{'CPU s':>7} {'CPU ms/file':>11} {'vs smallest':>11} {'RSS MiB':>8} {'agent/peer':>10}"
    )
    agent_rate: dict[tuple[int, int], float] = {}
    for row in rows:
        # Each tool and layout (one session, or spread) against its own smallest run.
        spread = bool(row["per_session"] < row["files"])
        reference = base.setdefault((row["tool"], spread), row["cpu_ms_per_file"])
        row["vs_smallest"] = row["cpu_ms_per_file"] / reference
        ratio = ""
        if row["tool"] == "agent":
            agent_rate[(row["files"], row["per_session"])] = row["files_per_s"]
        else:
            row["agent_files_per_s_ratio"] = (
                agent_rate[(row["files"], row["per_session"])] / row["files_per_s"]
            )
            ratio = f"{row['agent_files_per_s_ratio']:.2f}"
        print(
            f"{row['tool']:>6} {row['files']:>7} {row['per_session']:>11} {row['wall_s']:>7.1f} "
            f"{row['files_per_s']:>8.0f} {row['cpu_s']:>7.1f} {row['cpu_ms_per_file']:>11.2f} "
            f"{row['vs_smallest']:>11.2f} {row['peak_rss_mib']:>8.0f} {ratio:>10}"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
