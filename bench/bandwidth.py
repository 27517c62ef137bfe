"""Bandwidth-cap benchmark: does `max_bandwidth` hold over a sustained upload?

Uploads about `--seconds` times `--rate` bytes (one large multipart file and a set of small
files, sent concurrently) with `max_bandwidth = --rate` to a loopback S3 server, and
measures at the server the bytes of request bodies it received and when. Reports the rate
over the whole upload (first request to last byte) and over every full 5 s window after the
first, and the deviation from the cap.

Usage: python bench/bandwidth.py [--rate 4000000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> int:
    """Run one capped upload and print the measured rates and JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=4_000_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    arguments = parser.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    total = int(arguments.rate * arguments.seconds)
    work = Path(tempfile.mkdtemp(prefix="ingest-bandwidth-"))
    server = S3TestServer()
    server.start()
    try:
        session = work / "recordings" / "mouse1" / "s1"
        (session / "Images").mkdir(parents=True)
        (session / "continuous.ap.bin").write_bytes(os.urandom(total // 2))
        for index in range(40):
            (session / "Images" / f"tile{index:02d}.tif").write_bytes(os.urandom(total // 80))
        old = time.time() - 3600
        for item in (session, *session.rglob("*")):
            os.utime(item, (old, old))
        boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(
            Bucket="capped"
        )
        config = work / "agent.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{work / "state"}"\n'
            f'[destination]\nbucket = "capped"\nendpoint_url = "{server.url}"\n'
            f"[upload]\nconcurrency = 4\nmax_bandwidth = {arguments.rate}\n"
            'part_size = "8MiB"\nmultipart_threshold = "8MiB"\n'
            f'[[source]]\nname = "ephys"\npath = "{work / "recordings"}"\n'
            'quiet_period = "1s"\n'
        )
        result = subprocess.run(
            [sys.executable, "-m", "agent", "sync", "--json", "--config", str(config)],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-2000:])
        started = min(request.at for request in server.requests)
        received = sorted(server.received)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    finished = received[-1][0]
    sent = sum(size for _moment, size in received)
    overall = sent / (finished - started)
    windows: list[float] = []
    edge = started + 5.0
    while edge + 5.0 <= finished:
        inside = sum(size for moment, size in received if edge <= moment < edge + 5.0)
        windows.append(inside / 5.0)
        edge += 5.0
    report: dict[str, Any] = {
        "cap_bytes_per_s": arguments.rate,
        "bytes": sent,
        "seconds": round(finished - started, 2),
        "overall_bytes_per_s": round(overall),
        "overall_deviation_percent": round(100 * (overall / arguments.rate - 1), 2),
        "window_5s_bytes_per_s": [round(rate) for rate in windows],
        "worst_5s_deviation_percent": round(
            max((abs(rate / arguments.rate - 1) for rate in windows), default=0.0) * 100, 2
        ),
    }
    print(
        f"cap {arguments.rate / 1e6:.1f} MB/s: {sent / 1e6:.1f} MB in {report['seconds']} s = "
        f"{overall / 1e6:.3f} MB/s ({report['overall_deviation_percent']:+.2f} %); "
        f"worst 5 s window {report['worst_5s_deviation_percent']:.1f} % off"
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
