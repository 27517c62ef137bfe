"""Completion latency on its own: how long after a session's last write does the running
daemon judge it complete, and how long until it is uploaded?

`make bench` (bench/compare.py) measures this too; this wrapper runs only that phase
(bench/agent_only.py's completion_phase) against a moto server of its own, for a quick look
while working on detection. The daemon watches with inotify and a quiet period of `--quiet`
seconds; `--sessions` sessions are written one after another (three files each, over about a
second), and each one's `completed_at` and `uploaded_at` are read from the state database.
The goal is completion within the quiet period + 1 s.

Usage: python bench/latency.py [--quiet 2] [--sessions 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agent_only
from harness import Context, Server


def main() -> int:
    """Measure, print a line and the figures as JSON; exit 1 if the phase failed (with the
    end of the daemon's log, which goes with the temporary directory)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quiet", type=float, default=2.0, help="the quiet period, seconds")
    parser.add_argument("--sessions", type=int, default=5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingest-latency-") as directory:
        work = Path(directory)
        logs = work / "logs"
        logs.mkdir()
        server = Server.start_moto(logs / "moto-server.err")
        try:
            context = Context(
                server, ["agent"], work, logs, Path(sys.executable).parent, 60.0, str(os.getpid())
            )
            figures = agent_only.completion_phase(context, arguments.sessions, arguments.quiet)
        finally:
            server.stop()
        if "error" in figures:
            tail = (logs / figures["log"]).read_text(errors="replace").splitlines()[-20:]
            print("\n".join(tail), file=sys.stderr)
            return 1
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
