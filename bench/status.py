"""Status benchmark: how long `agentctl status` takes over a large state database.

Builds a state database through the agent's own schema (State.open) holding `--sessions`
sessions of `--files-per-session` files each (most uploaded, some ready, waiting and failed),
then times, best and median of `--repeat` runs:
- `status_report` alone (the queries and the verdict, in-process: the agent's own work);
- `agentctl status --json` as a process (Python start-up and imports included).

Usage: python bench/status.py [--sessions 2000] [--files-per-session 500] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.config import settings_from_mapping
from agent.report import status_report
from agent.state import State


def build(state: State, sessions: int, per_session: int, now: float) -> None:
    """Fill the database with realistic rows, fast (one transaction, executemany)."""
    states = ["uploaded"] * 90 + ["ready"] * 4 + ["waiting"] * 4 + ["failed"] * 2
    connection = state.database.connection
    session_rows = []
    file_rows = []
    for number in range(sessions):
        name = states[number % len(states)]
        session_id = f"ephys/mouse{number // 50}/s{number}"
        pending = per_session if name != "uploaded" else 0
        session_rows.append(
            (
                session_id,
                "ephys",
                session_id[6:],
                f"/data/{session_id}",
                name,
                per_session,
                per_session * 1000,
                f"rig/{session_id}",
                now - 86400 + number,
                now - 86400 + number,
                now - 3600 + number,
                now - 60 if name == "uploaded" else None,
                pending,
                pending * 1000,
                "boom" if name == "failed" else None,
            )
        )
        for index in range(per_session):
            done = name == "uploaded"
            file_rows.append(
                (
                    session_id,
                    f"f{index}.bin",
                    1000,
                    1,
                    index,
                    f"rig/{session_id}/f{index}",
                    "uploaded" if done else "pending",
                    now - 60 if done else None,
                )
            )
    with connection:
        connection.executemany(
            """insert into sessions (id, source, rel_path, path, state, files, bytes,
               key_prefix, detected_at, last_change_at, completed_at, uploaded_at,
               pending_files, pending_bytes, error) values
               (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            session_rows,
        )
        connection.executemany(
            """insert into files (session_id, rel_path, size, mtime_ns, inode, key, state,
               uploaded_at) values (?, ?, ?, ?, ?, ?, ?, ?)""",
            file_rows,
        )
    state.control.beat(pid=1, hostname="bench", started_at=now - 7200, now=now, status="bench")


def timed(action: object, repeat: int) -> list[float]:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        runs.append(time.perf_counter() - started)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--files-per-session", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=20)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "data").mkdir()
        config = root / "config.toml"
        config.write_text(
            f'[agent]\nname = "bench"\nstate_dir = "{root / "state"}"\n'
            '[destination]\nbucket = "bench"\n'
            f'[[source]]\nname = "ephys"\npath = "{root / "data"}"\n',
            encoding="utf-8",
        )
        settings = settings_from_mapping(
            {
                "agent": {"name": "bench", "state_dir": str(root / "state")},
                "destination": {"bucket": "bench"},
                "source": [{"name": "ephys", "path": str(root / "data")}],
            },
            str(config),
        )
        now = time.time()
        state = State.open(settings.state_db_path)
        started = time.perf_counter()
        build(state, arguments.sessions, arguments.files_per_session, now)
        built = time.perf_counter() - started
        report_runs = timed(lambda: status_report(settings, state), arguments.repeat)
        state.close()
        command = [sys.executable, "-m", "agent", "status", "--json", "--config", str(config)]
        process_runs = timed(
            lambda: subprocess.run(command, capture_output=True, check=False), arguments.repeat
        )
        result = {
            "sessions": arguments.sessions,
            "files": arguments.sessions * arguments.files_per_session,
            "build_s": round(built, 1),
            "status_report_ms": {
                "best": round(min(report_runs) * 1000, 2),
                "median": round(statistics.median(report_runs) * 1000, 2),
            },
            "agentctl_status_ms": {
                "best": round(min(process_runs) * 1000, 1),
                "median": round(statistics.median(process_runs) * 1000, 1),
            },
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
