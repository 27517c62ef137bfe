"""The daemon and a state database it cannot use (issue 12, item 6's remedies).

A damaged database is set aside (renamed, never deleted) and a new one rebuilt from the
sources: status is CRITICAL, naming the set-aside file, until every complete session is
uploaded again, and nothing S3 already holds is sent a second time. A state disk that fills
while the daemon runs pauses uploads with one CRITICAL event, keeps the process up (no
crash loop under systemd), and uploads resume by themselves once space returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Rig, start_daemon, stop_daemon, wait_for
from tests.s3server import S3TestServer
from tests.test_doctor import _cannot_mount
from tests.test_resume import assert_landed, finish_with_sync, make_session


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def status(rig: Rig) -> tuple[int, dict[str, Any]]:
    result = rig.agentctl("status", "--json")
    return result.returncode, json.loads(result.stdout)


def events(log: str, name: str) -> list[str]:
    return [line for line in log.splitlines() if name in line]


@pytest.mark.parametrize("how", ["truncated", "foreign"])
def test_a_damaged_database_is_set_aside_and_rebuilt_without_sending_again(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any, how: str
) -> None:
    rig = make_rig()
    _, data = make_session(rig)
    finish_with_sync(rig)
    path = rig.settings().state_db_path
    for leftover in path.parent.glob("state.db-*"):
        leftover.unlink()
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2] if how == "truncated" else b"not sqlite\n" * 500)
    damaged = digest(path)
    s3.reset()

    daemon = start_daemon(rig)
    try:
        # The moment of the rebuild: CRITICAL, naming where the damaged file went.
        assert wait_for(lambda: bool(list(path.parent.glob("state.db.damaged-*"))), 30)
        (moved,) = [
            p for p in path.parent.glob("state.db.damaged-*") if p.name[-4:] not in ("-wal", "-shm")
        ]
        assert digest(moved) == damaged, "the damaged file is kept as it was"
        # Until the session is found again and settled, then OK by itself.
        assert wait_for(lambda: status(rig)[0] == 0, 60), status(rig)
    finally:
        code, log = stop_daemon(daemon)
    assert code == 0, log
    assert len(events(log, "state_database_rebuilt")) == 1, log
    assert "critical" in events(log, "state_database_rebuilt")[0].lower()
    assert len(events(log, "state_rebuild_caught_up")) == 1, log
    assert s3.count("UploadPart") == 0 and s3.count("CreateMultipartUpload") == 0
    assert s3.count("PutObject") <= 1  # the manifest, revised; no data object sent again
    assert_landed(rig, client, data)


def test_status_is_critical_while_a_rebuild_has_sessions_to_settle(
    make_rig: Callable[..., Rig],
) -> None:
    """While the rebuilt database still has sessions to send (here held by a paused
    schedule window), status is CRITICAL and names where the damaged file went."""
    paused_all_day = "".join(
        f'[[upload.window]]\nstart = "{start}"\nend = "{end}"\npause = true\n'
        for start, end in (("00:00", "12:00"), ("12:00", "00:00"))
    )
    rig = make_rig(upload_extra=paused_all_day)
    make_session(rig)
    path = rig.settings().state_db_path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not sqlite\n" * 500)
    daemon = start_daemon(rig)
    try:
        assert wait_for(lambda: status(rig)[1].get("sessions", {}).get("ready") == 1, 30)
        code, report = status(rig)
    finally:
        stop_daemon(daemon)
    assert code == 2, report
    assert "set aside as" in report["summary"] and "damaged-" in report["summary"]
    assert report["state_db"]["rebuilt"]["moved_to"].startswith(str(path))


# Inside `unshare --mount`: the state dir on a small tmpfs, then the daemon. Its pid is the
# shell's (exec), so the test can enter its mount namespace with nsenter.
SMALL_DISK = """
set -eu
state="$1"; shift
mkdir -p "$state"
mount -t tmpfs -o size=16m tmpfs "$state"
exec "$@"
"""


def inside(pid: int, *command: str) -> subprocess.CompletedProcess[str]:
    """Run `command` in the mount namespace of process `pid`."""
    return subprocess.run(
        ["nsenter", "--target", str(pid), "--mount", *command],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_a_full_state_disk_pauses_uploads_and_they_resume_when_space_returns(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    reason = _cannot_mount()
    if reason is not None:
        pytest.skip(reason)
    if shutil.which("nsenter") is None:
        pytest.skip("nsenter is not installed")
    rig = make_rig(agent_extra='rescan_interval = "2s"')
    # Its log goes to a file: 3,000 file events would fill a pipe nobody reads meanwhile.
    log_path = rig.root / "daemon.log"
    log_file = log_path.open("w")
    daemon = subprocess.Popen(
        [
            *("unshare", "--mount", "--propagation", "private", "sh", "-c", SMALL_DISK, "sh"),
            *(str(rig.state_dir), sys.executable, "-m", "agent", "run"),
            *("--config", str(rig.config)),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=log_file,
        text=True,
    )
    log_file.close()
    filler = rig.state_dir / "filler"
    agentctl = (sys.executable, "-m", "agent")

    def inside_status() -> tuple[int, dict[str, Any]]:
        result = inside(daemon.pid, *agentctl, "status", "--json", "--config", str(rig.config))
        return result.returncode, json.loads(result.stdout or "{}")

    def on_tmpfs() -> bool:
        found = inside(daemon.pid, "stat", "-f", "-c", "%T", str(rig.state_dir))
        return found.stdout.strip() == "tmpfs"

    try:
        # The daemon runs in its own mount namespace, its state dir on the small tmpfs.
        assert wait_for(on_tmpfs, 30)
        assert wait_for(lambda: inside_status()[0] in (0, 1), 30), inside_status()
        # Fill the state disk (never more than its 16 MiB, whatever namespace this lands
        # in), then give the daemon a session with many files to record.
        inside(daemon.pid, "sh", "-c", f"dd if=/dev/zero of={filler} bs=4k count=4096 2>/dev/null")
        session = rig.session("mouse9/s1")
        for number in range(3000):
            (session / f"f{number:04d}.bin").write_bytes(b"x")
        stamp = time.time() - 60
        for item in (session, *session.iterdir()):
            os.utime(item, (stamp, stamp))
        assert wait_for(lambda: inside_status()[0] == 2, 60), inside_status()
        code, report = inside_status()
        assert "state disk full" in report["summary"], report
        time.sleep(3)
        assert daemon.poll() is None, "the daemon must wait for space, not exit"
        # Space returns: the daemon resumes by itself and uploads the session.
        inside(daemon.pid, "rm", "-f", str(filler))
        assert wait_for(lambda: inside_status()[1].get("sessions", {}).get("uploaded") == 1, 90), (
            inside_status()
        )
    finally:
        code, _ = stop_daemon(daemon)
        log = log_path.read_text()
    assert code == 0, log
    assert len(events(log, "state_disk_trouble")) == 1, log
    assert len(events(log, "state_disk_recovered")) == 1, log
    assert "Traceback" not in log, log
    keys = client.list_objects_v2(Bucket=rig.bucket, Prefix="rig-01/ephys/mouse9/s1/")
    assert keys["KeyCount"] == 1001 or keys.get("IsTruncated"), keys.get("KeyCount")
