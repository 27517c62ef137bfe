"""The curve behind the `concurrency` and `part_size` defaults: one `agentctl sync` of the
reference tree (bench/harness.py, `--scale`) per setting into a fresh bucket and state,
against moto's server on loopback (or `--endpoint`), repeated, medians reported.

Prints wall seconds, client CPU seconds and peak RSS per setting, and a Markdown table.

Usage: python bench/concurrency.py [--scale 0.25] [--repeat 2]
       [--concurrency 2,4,8,16] [--part-size 8MiB,16MiB,64MiB] [--endpoint URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers
from harness import Server, reference_plan, write_files


def sync_once(server: Server, tree: Path, work: Path, lines: str) -> dict[str, float]:
    """One `agentctl sync` of `tree` with `lines` added to `[upload]`; its figures."""
    bucket = "conc-" + uuid.uuid4().hex[:12]
    server.create_bucket(bucket)
    job = peers.Job(tree, bucket, "bench", work / bucket / "state", work / bucket / "agent.toml")
    job.config.parent.mkdir(parents=True)
    job.config.write_text(peers.agent_config(job, server.endpoint) + "[upload]\n" + lines)
    program = peers.find_program("agentctl", Path(sys.executable).parent) or "agentctl"
    started = time.monotonic()
    with (work / bucket / "agent.log").open("wb") as log:
        process = subprocess.Popen(
            [program, "sync", "--config", str(job.config)],
            env={**os.environ, **server.endpoint.environment},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"sync failed with {lines!r}")
    server.discard([bucket])
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,
    }


def main() -> int:
    """Run every setting; print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--concurrency", default="2,4,8,16")
    parser.add_argument("--part-size", default="8MiB,16MiB,64MiB")
    parser.add_argument("--endpoint")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingest-concurrency-") as temporary:
        work = Path(temporary)
        tree = write_files(work / "tree", reference_plan(arguments.scale), time.time() - 3600)
        server = (
            Server.external(arguments.endpoint)
            if arguments.endpoint
            else Server.start_moto(work / "moto.log")
        )
        settings = [(int(text), "16MiB") for text in arguments.concurrency.split(",")] + [
            (4, text) for text in arguments.part_size.split(",") if text != "16MiB"
        ]
        rows = []
        try:
            for concurrency, part in settings:
                lines = (
                    f'concurrency = {concurrency}\npart_size = "{part}"\n'
                    f'multipart_threshold = "{part}"\n'
                )
                runs = [sync_once(server, tree.root, work, lines) for _ in range(arguments.repeat)]
                row = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
                rows.append((concurrency, part, row))
                print(
                    f"concurrency {concurrency:>2} part {part:>6}: {row['wall_s']:6.2f} s wall, "
                    f"{row['cpu_s']:5.2f} s CPU, {row['rss_mib']:4.0f} MiB",
                    flush=True,
                )
        finally:
            server.stop()
    gigabytes = tree.bytes / 1e9
    print(f"\nReference tree at scale {arguments.scale}: {tree.files} files, {gigabytes:.2f} GB")
    print("| concurrency | part_size | wall s | client CPU s | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|")
    for concurrency, part, row in rows:
        print(
            f"| {concurrency} | {part} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} "
            f"| {row['rss_mib']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
