"""The inotify watch limit, reached for real.

Each scenario runs a watcher in a child process inside a new user namespace, whose own watch
limit (/proc/sys/user/max_inotify_watches) can be lowered without root on the machine and
without touching the machine's sysctl: the kernel counts a namespace's watches against its
own limit as well as its parent's. The child reports what it saw as one JSON line.

Two ways to run out: the tree already needs more watches than allowed when the watcher
starts, and a new session directory that cannot be watched once the watcher runs (watchdog
meets that in its own thread and only logs it). Either way the source must say so once,
poll, and show "poll"; a session created afterwards must be heard within seconds, not at the
next rescan.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Rig, wait_for

REPOSITORY = Path(__file__).resolve().parent.parent
NAMESPACE_LIMIT = "/proc/sys/user/max_inotify_watches"
# Lower the namespace's limit, then become the watcher; the arguments are passed as
# positional parameters, so no path is ever quoted into the script.
IN_NAMESPACE = 'echo "$1" > ' + NAMESPACE_LIMIT + ' && shift && exec "$@"'
# Sessions are two levels down (mouse/session), as in the default session_depth.
MICE = 20
# How long a change may take to be heard: a few polls, far below any rescan interval.
PROMPTLY = 5.0

SCENARIO = r"""
import json, os, sys, threading, time
from pathlib import Path

import structlog

from agent.config import SourceSettings
from agent.watch import Watcher

source, when = Path(sys.argv[1]), sys.argv[2]
heard = {}
rescans = []
lock = threading.Lock()


def on_path(path):
    with lock:
        heard.setdefault(str(path), time.monotonic())


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()


def inotify_instances():
    # Each inotify instance is a descriptor on an anonymous inode of that name; the one
    # that listed the directory is closed by the time it is read.
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += "inotify" in os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            pass
    return count


def heard_after(path, since):
    with lock:
        at = heard.get(str(path))
    return None if at is None else round(at - since, 3)


watcher = Watcher(
    (SourceSettings(name="ephys", path=source, watch="inotify", poll_interval=0.2),),
    on_path,
    lambda: rescans.append(time.monotonic()),
)
report = {}
with structlog.testing.capture_logs() as logs:
    watcher.start()
    report["modes_at_start"] = dict(watcher.modes)
    if when == "later":
        # The one directory the running watcher cannot add a watch for.
        (source / "mouse0" / "unwatched").mkdir()
        wait_for(lambda: watcher.modes["ephys"] == "poll")
        report["rescans"] = len(rescans)
    # The limit was hit: what comes now must still be heard, within a few polls.
    since = time.monotonic()
    late = source / "mouse1" / "late-session"
    late.mkdir()
    (late / "data.bin").write_bytes(b"late")
    expected = [late, late / "data.bin"]
    if when == "later":
        expected.append(source / "mouse0" / "unwatched" / "data.bin")
        expected[-1].write_bytes(b"inside")
    wait_for(lambda: all(str(path) in heard for path in expected))
    report["heard_after"] = {str(path): heard_after(path, since) for path in expected}
    report["modes"] = dict(watcher.modes)
    report["healthy"] = watcher.healthy()
    report["inotify_instances"] = inotify_instances()
    watcher.stop()
report["limit_logs"] = [
    {key: str(value) for key, value in entry.items()}
    for entry in logs
    if entry["event"] == "inotify_limit_reached"
]
print("REPORT " + json.dumps(report), flush=True)
"""


@pytest.fixture(scope="module")
def namespaces() -> None:
    """Skip unless a user namespace with its own, lowered watch limit can be made here."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(
        ["unshare", "-U", "-r", "sh", "-c", IN_NAMESPACE, "sh", "8", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(
            "cannot lower the watch limit in a new user namespace (unshare -U -r, then "
            f"{NAMESPACE_LIMIT}): {probe.stderr.strip() or probe.returncode}"
        )


def make_tree(source: Path) -> int:
    """Mice folders under `source`; return the watches the whole tree needs (one each,
    and the root's)."""
    for number in range(MICE):
        (source / f"mouse{number}").mkdir(parents=True)
    return MICE + 1


def run_scenario(source: Path, when: str, limit: int) -> dict[str, Any]:
    """Run SCENARIO in a new user namespace whose watch limit is `limit`; its report."""
    watcher = [sys.executable, "-c", SCENARIO, str(source), when]
    result = subprocess.run(
        ["unshare", "-U", "-r", "sh", "-c", IN_NAMESPACE, "sh", str(limit), *watcher],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPOSITORY,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and len(lines) == 1, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(lines[0].removeprefix("REPORT "))
    return report


def assert_said_once(report: dict[str, Any], path: Path) -> None:
    """One error for the source, naming the directory and the sysctl to raise."""
    assert len(report["limit_logs"]) == 1, report
    (said,) = report["limit_logs"]
    assert said["log_level"] == "error"
    assert said["source"] == "ephys"
    assert said["path"] == str(path)
    assert "fs.inotify.max_user_watches" in said["hint"]
    assert "polling every 0.2s" in said["hint"]


def assert_heard_promptly(report: dict[str, Any]) -> None:
    """Every path changed after the limit was hit was heard, within a few polls."""
    late: dict[str, float | None] = report["heard_after"]
    assert all(after is not None and after < PROMPTLY for after in late.values()), late
    assert report["modes"] == {"ephys": "poll"}
    assert report["healthy"] is True
    # The inotify instance is closed, its watches given back to the other sources.
    assert report["inotify_instances"] == 0


def test_a_tree_larger_than_the_limit_is_polled_from_the_start(
    namespaces: None, tmp_path: Path
) -> None:
    source = tmp_path / "recordings"
    needed = make_tree(source)
    report = run_scenario(source, "start", limit=needed // 2)
    assert report["modes_at_start"] == {"ephys": "poll"}
    assert len(report["limit_logs"]) == 1, report
    (said,) = report["limit_logs"]
    assert said["log_level"] == "error"
    assert said["source"] == "ephys"
    assert "fs.inotify.max_user_watches" in said["hint"]
    assert_heard_promptly(report)


def test_a_new_directory_beyond_the_limit_switches_the_source_to_polling(
    namespaces: None, tmp_path: Path
) -> None:
    """The tree fits exactly; the first new directory does not. watchdog only logs that,
    in its own thread, so the files written inside it would wait for the next rescan."""
    source = tmp_path / "recordings"
    needed = make_tree(source)
    report = run_scenario(source, "later", limit=needed)
    assert report["modes_at_start"] == {"ephys": "inotify"}
    assert_said_once(report, source / "mouse0" / "unwatched")
    # What changed between the failed watch and the polling's first listing: a rescan.
    assert report["rescans"] >= 1
    assert_heard_promptly(report)


def session_state(rig: Rig, session_id: str) -> str | None:
    """A session's state as `agentctl sessions` shows it, or None while it is unknown."""
    result = rig.agentctl("sessions", "--json")
    if result.returncode != 0:
        return None
    states = {row["id"]: row["state"] for row in json.loads(result.stdout)}
    return None if session_id not in states else str(states[session_id])


def watch_mode(rig: Rig) -> str | None:
    """How `agentctl status --json` says the rig's one source is watched."""
    report = json.loads(rig.agentctl("status", "--json").stdout)
    mode: str | None = report["sources"][0]["watch"]
    return mode


def test_the_daemon_uploads_a_session_whose_directory_cannot_be_watched(
    namespaces: None, make_rig: Callable[..., Rig]
) -> None:
    """The daemon end to end: a session directory created once the watches are all taken,
    its file written a moment later (as an instrument does), uploads within seconds while
    the next rescan is an hour away."""
    rig = make_rig(
        quiet_period="1s",
        source_extra='watch = "inotify"\npoll_interval = "0.5s"',
        agent_extra='rescan_interval = "1h"',
    )
    needed = make_tree(rig.source)
    agent = [sys.executable, "-m", "agent", "run", "--config", str(rig.config)]
    daemon = subprocess.Popen(
        ["unshare", "-U", "-r", "sh", "-c", IN_NAMESPACE, "sh", str(needed), *agent],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPOSITORY,
    )
    assert daemon.stderr is not None
    stderr = daemon.stderr
    lines: list[str] = []
    # Read as it comes: the test acts on what the daemon said, while it runs.
    reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")))
    reader.start()

    def events(name: str) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in list(lines) if line.startswith("{")]
        return [event for event in found if event["event"] == name]

    session_id = "ephys/mouse0/2026-12-04_10-00"
    try:
        # Every directory is watched, and the limit is spent to the last watch.
        assert wait_for(lambda: bool(events("agent_started")), timeout=30), "".join(lines)
        assert [event["mode"] for event in events("watching")] == ["inotify"], "".join(lines)
        session = rig.session("mouse0/2026-12-04_10-00")
        time.sleep(1)
        (session / "data.bin").write_bytes(b"recorded after the limit was reached")
        assert wait_for(lambda: session_state(rig, session_id) == "uploaded", timeout=20)
        # status shows the source as polled (the daemon publishes it with its heartbeat).
        assert wait_for(lambda: watch_mode(rig) == "poll", timeout=10), watch_mode(rig)
    finally:
        daemon.terminate()
        code = daemon.wait(timeout=30)
        reader.join(timeout=5)
    log = "".join(lines)
    assert code == 0, log
    (said,) = events("inotify_limit_reached")
    assert said["level"] == "error"
    assert said["path"] == str(session)
    assert "fs.inotify.max_user_watches" in said["hint"]
    assert [event["mode"] for event in events("watching")] == ["inotify", "poll"], log
