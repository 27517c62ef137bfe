"""Throughput benchmark: the agent's `sync` against `aws s3 sync` (and s5cmd / rclone when
installed) on the same loopback S3 server (moto), the same data, in the same run.

Reports seconds, MB/s, CPU seconds per GB and peak RSS of each tool's process tree.
Usage: python bench/run.py [--mb 256] [--files 64]
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


def make_tree(root: Path, total_mb: int, files: int) -> int:
    """One session: one large file (half the bytes) and `files` mid-size files."""
    session = root / "mouse1" / "2026-11-23_10-00"
    (session / "Images").mkdir(parents=True)
    half = total_mb * 1024**2 // 2
    (session / "continuous.ap.bin").write_bytes(os.urandom(half))
    each = half // files
    for index in range(files):
        (session / "Images" / f"r01c{index:03d}.tiff").write_bytes(os.urandom(each))
    stamp = time.time() - 3600
    for item in (session, *session.rglob("*")):
        os.utime(item, (stamp, stamp))
    return half + each * files


def measure(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run a command; return wall seconds, child CPU seconds and peak RSS (MiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {result.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of children is the largest child so far, in KiB.
    return {"seconds": seconds, "cpu_s": cpu, "peak_rss_mib": after.ru_maxrss / 1024}


def main() -> int:
    """Run every available tool once on the same data and print a table and JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--files", type=int, default=64)
    arguments = parser.parse_args()
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    os.environ.update(env)
    server = S3TestServer()
    server.start()
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    results: dict[str, Any] = {}
    try:
        source = work / "recordings"
        size = make_tree(source, arguments.mb, arguments.files)
        client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")
        tools: dict[str, list[str]] = {}
        for name in ("agent", "aws", "s5cmd", "rclone"):
            bucket = f"bench-{name}"
            client.create_bucket(Bucket=bucket)
            if name == "agent":
                config = work / "agent.toml"
                config.write_text(
                    f'[agent]\nstate_dir = "{work / "state"}"\n'
                    f'[destination]\nbucket = "{bucket}"\nendpoint_url = "{server.url}"\n'
                    f'region = "us-east-1"\n[upload]\nconcurrency = 8\n'
                    f'[[source]]\nname = "ephys"\npath = "{source}"\nquiet_period = "1s"\n'
                )
                tools[name] = [sys.executable, "-m", "agent", "sync", "--config", str(config)]
            elif name == "aws" and shutil.which("aws"):
                tools[name] = [
                    "aws",
                    "s3",
                    "sync",
                    "--only-show-errors",
                    "--endpoint-url",
                    server.url,
                    str(source),
                    f"s3://{bucket}/ephys",
                ]
            elif name == "s5cmd" and shutil.which("s5cmd"):
                tools[name] = [
                    "s5cmd",
                    "--endpoint-url",
                    server.url,
                    "sync",
                    f"{source}/",
                    f"s3://{bucket}/ephys/",
                ]
            elif name == "rclone" and shutil.which("rclone"):
                tools[name] = [
                    "rclone",
                    "sync",
                    str(source),
                    f":s3:{bucket}/ephys",
                    "--s3-provider",
                    "Other",
                    "--s3-endpoint",
                    server.url,
                    "--s3-env-auth",
                ]
        for name, command in tools.items():
            figures = measure(command, env)
            figures["mb_per_s"] = size / figures["seconds"] / 1e6
            figures["cpu_s_per_gb"] = figures["cpu_s"] / (size / 1e9)
            results[name] = figures
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{size / 1e6:.0f} MB in {arguments.files + 1} files, moto server on loopback")
    print(f"{'tool':<8} {'s':>7} {'MB/s':>8} {'CPU s/GB':>9} {'peak RSS MiB':>13}")
    for name, figures in results.items():
        print(
            f"{name:<8} {figures['seconds']:>7.2f} {figures['mb_per_s']:>8.1f} "
            f"{figures['cpu_s_per_gb']:>9.2f} {figures['peak_rss_mib']:>13.0f}"
        )
    print(json.dumps({"bytes": size, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
