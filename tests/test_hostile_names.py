"""File and directory names that are not valid UTF-8 (issue 12, item 1).

Linux names are bytes; Python hands them over as str with lone surrogates, which neither
SQLite nor an S3 key can hold. Such a file is refused visibly and everything else proceeds; a
session directory with such a name is skipped with a warning.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Rig, start_daemon, stop_daemon, wait_for

BAD_FILE = b"bad\xff.bin"
BAD_SHOWN = "bad\\xff.bin"  # how the agent shows and records it: bytes as \x escapes


def write_bytes_name(directory: Path, name: bytes, data: bytes) -> None:
    """Create a file whose name is raw bytes (what a broken tool or an SMB copy leaves)."""
    descriptor = os.open(os.fsencode(directory) + b"/" + name, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, data)
    finally:
        os.close(descriptor)


def age_tree(path: Path, seconds: float) -> None:
    """Make every entry under `path` look `seconds` old (bytes paths: names may be bad)."""
    stamp = time.time() - seconds
    for directory, subdirectories, files in os.walk(os.fsencode(path)):
        for name in (*subdirectories, *files):
            os.utime(os.path.join(directory, name), (stamp, stamp))
        os.utime(directory, (stamp, stamp))


def build_sessions(rig: Rig) -> None:
    """mouse1/s1: a good file and a badly named one; mouse1/s2: good only; and a session
    directory whose own name is not UTF-8."""
    first = rig.session("mouse1/s1")
    (first / "good.bin").write_bytes(b"good bytes")
    write_bytes_name(first, BAD_FILE, b"bad name, good bytes")
    second = rig.session("mouse1/s2")
    (second / "data.bin").write_bytes(b"second session")
    bad_directory = os.fsencode(rig.source / "mouse1") + b"/s\xfe3"
    os.mkdir(bad_directory)
    write_bytes_name(Path(os.fsdecode(bad_directory)), b"inside.bin", b"x")
    age_tree(rig.source, 60)


def manifest_of(client: Any, rig: Rig, session: str) -> dict[str, Any]:
    key = f"rig-01/ephys/{session}/ingest-manifest.json"
    document: dict[str, Any] = json.loads(
        client.get_object(Bucket=rig.bucket, Key=key)["Body"].read()
    )
    return document


def assert_refused_in_manifest(client: Any, rig: Rig) -> None:
    document = manifest_of(client, rig, "mouse1/s1")
    assert [entry["path"] for entry in document["files"]] == ["good.bin"]
    (refusal,) = document["refused"]
    assert refusal["path"] == BAD_SHOWN
    assert "not valid UTF-8" in refusal["reason"]
    assert [entry["path"] for entry in manifest_of(client, rig, "mouse1/s2")["files"]] == [
        "data.bin"
    ]


def test_sync_refuses_non_utf8_name_and_uploads_everything_else(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    rig = make_rig()
    build_sessions(rig)

    dry = rig.agentctl("sync", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = {row["id"]: row for row in json.loads(dry.stdout)}
    assert set(planned) == {"ephys/mouse1/s1", "ephys/mouse1/s2"}
    assert planned["ephys/mouse1/s1"]["refused"][0]["path"] == BAD_SHOWN
    assert "session_skipped" in dry.stderr

    result = rig.agentctl("sync", "--json")
    assert result.returncode == 0, result.stderr  # a refused file is not a failed session
    summary = json.loads(result.stdout)
    assert summary["sessions_uploaded"] == 2 and summary["sessions_failed"] == 0
    refusals = [
        json.loads(line)
        for line in result.stderr.splitlines()
        if line.startswith("{") and '"file_refused"' in line
    ]
    assert [(event["file"], event["session"]) for event in refusals] == [
        (BAD_SHOWN, "ephys/mouse1/s1")
    ]
    assert "session_skipped" in result.stderr
    assert_refused_in_manifest(client, rig)
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=rig.bucket)["Contents"]]
    assert not any("bad" in key or "inside" in key for key in keys), keys

    listing = rig.agentctl("sessions", "--json")
    assert listing.returncode == 0, listing.stderr
    assert {row["id"]: row["state"] for row in json.loads(listing.stdout)} == {
        "ephys/mouse1/s1": "uploaded",
        "ephys/mouse1/s2": "uploaded",
    }
    assert rig.agentctl("sessions").returncode == 0


def test_daemon_starts_and_uploads_despite_non_utf8_names(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    rig = make_rig()
    build_sessions(rig)
    daemon = start_daemon(rig)
    try:

        def both_uploaded() -> bool:
            listing = rig.agentctl("sessions", "--json")
            if listing.returncode != 0:
                return False
            states = [row["state"] for row in json.loads(listing.stdout)]
            return states == ["uploaded", "uploaded"]

        assert wait_for(both_uploaded, timeout=40)
        # An event for the bad directory (a hint) must not crash the main loop either.
        write_bytes_name(
            Path(os.fsdecode(os.fsencode(rig.source / "mouse1") + b"/s\xfe3")), b"more.bin", b"y"
        )
        time.sleep(1.5)
        assert daemon.poll() is None
    finally:
        code, log = stop_daemon(daemon)
    assert code == 0, log
    assert "Traceback" not in log, log
    assert_refused_in_manifest(client, rig)
