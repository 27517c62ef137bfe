"""A damaged, foreign or full state database: every command names the file and what to do,
exits with its documented code, prints no traceback, and leaves the file as it found it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Rig
from tests.test_doctor import _cannot_mount
from tests.test_sync import age, sync, write_session


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damage(rig: Rig, how: str) -> Path:
    """A state database with sessions in it, then truncated or overwritten."""
    age(write_session(rig, "mouse1/s1", {"a.bin": b"a" * 100}), 60)
    assert sync(rig)["sessions_uploaded"] == 1
    path = rig.settings().state_db_path
    for leftover in path.parent.glob("state.db-*"):
        leftover.unlink()  # a clean copy: only the main file, as a backup would hold it
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"these are not the bytes of a database\n" * 200)
    return path


@pytest.mark.parametrize("how", ["truncated", "foreign"])
def test_every_command_names_a_damaged_database_and_changes_nothing(
    make_rig: Callable[..., Rig], how: str
) -> None:
    rig = make_rig()
    path = damage(rig, how)
    before = digest(path)
    for command, code in (
        (("sessions",), 1),
        (("sessions", "--json"), 1),
        (("verify",), 1),
        (("sync",), 1),
        (("retry", "ephys/mouse1/s1"), 1),
    ):
        result = rig.agentctl(*command)
        assert result.returncode == code, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (command, result.stderr)
        assert str(path) in result.stderr, (command, result.stderr)
        assert "move the file aside" in result.stderr, (command, result.stderr)
        assert result.stdout.strip() not in ("[]", "no sessions yet"), command
    status = rig.agentctl("status", "--json")
    assert status.returncode == 3  # UNKNOWN: the monitor hears that it cannot know
    assert str(path) in json.loads(status.stdout)["summary"]
    assert digest(path) == before


def test_no_database_yet_is_no_sessions_yet(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    result = rig.agentctl("sessions", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == []
    assert not rig.state_dir.exists()


# Inside `unshare --mount`: the state dir on a 1 MiB tmpfs holding a copy of the database,
# the rest of the space filled, then agentctl.
FULL_DISK = """
set -eu
state="$1"; shift
cp -a "$state" "$state.copy"
mount -t tmpfs -o size=1m tmpfs "$state"
cp -a "$state.copy/." "$state/"
dd if=/dev/zero of="$state/filler" bs=4k 2>/dev/null || true
exec "$@"
"""


def test_a_full_state_disk_is_named_with_what_to_do(make_rig: Callable[..., Rig]) -> None:
    reason = _cannot_mount()
    if reason is not None:
        pytest.skip(reason)
    rig = make_rig()
    age(write_session(rig, "mouse1/s1", {"a.bin": b"a" * 100}), 60)
    assert sync(rig)["sessions_uploaded"] == 1
    # Many new files to record: the database must grow, and cannot.
    age(write_session(rig, "mouse2/s1", {f"f{n:04d}.bin": b"b" for n in range(3000)}), 60)
    result = subprocess.run(
        [
            *("unshare", "--mount", "--propagation", "private", "sh", "-c", FULL_DISK, "sh"),
            *(str(rig.state_dir), sys.executable, "-m", "agent", "sync"),
            *("--config", str(rig.config)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "full" in result.stderr and "free space on" in result.stderr, result.stderr
    assert "cannot rollback" not in result.stderr
