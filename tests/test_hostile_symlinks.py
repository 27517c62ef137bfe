"""Symbolic links (issue 12, item 2).

A file swapped for a symlink between the scan and the read must never be followed: the
agent reads only the regular file it scanned (same device and inode), opened without
following links. Symlinks the scan finds are refused visibly, never followed or dropped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.ingest import Ingest
from agent.state import State
from agent.transfer import store_from_settings
from agent.verify import verify_session
from tests.conftest import Rig

SMALL = 1000
LARGE = 7 * 1024**2  # above the rig's 6 MiB multipart threshold: two parts


@pytest.fixture
def library(make_rig: Callable[..., Rig]) -> Iterator[tuple[Rig, Ingest, State]]:
    """A rig and the library itself (no subprocess), so a test can act between the scan
    and the upload."""
    rig = make_rig(concurrency=1)
    settings = rig.settings()
    state = State.open(settings.state_db_path)
    store = store_from_settings(settings.destination, settings.upload)
    yield rig, Ingest(settings, state, store), state
    state.close()


def age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    for item in [path, *path.rglob("*")]:
        os.utime(item, (stamp, stamp), follow_symlinks=False)


def bucket_bodies(client: Any, bucket: str) -> dict[str, bytes]:
    listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {
        item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        for item in listing
    }


def swap_for_symlink(target: Path, outside: Path) -> None:
    """Replace `target` by a symlink to `outside`, a file of the same size with the same
    mtime, so that anything following links sees an unchanged file."""
    info = os.stat(target)
    os.utime(outside, ns=(info.st_atime_ns, info.st_mtime_ns))
    target.unlink()
    os.symlink(outside, target)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
    assert os.stat(target).st_size == info.st_size
    assert os.stat(target).st_mtime_ns == info.st_mtime_ns


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["single-put", "multipart"])
def test_file_swapped_for_symlink_after_scan_is_never_read(
    library: tuple[Rig, Ingest, State], client: Any, size: int
) -> None:
    rig, ingest, state = library
    session = rig.session("mouse1/s1")
    (session / "meta.json").write_bytes(b"{}")
    target = session / "continuous.bin"
    target.write_bytes(os.urandom(size))
    outside_dir = rig.root / "outside"
    outside_dir.mkdir()
    outside = outside_dir / "root-only.bin"
    secret = b"SECRET" + os.urandom(size - 6)
    outside.write_bytes(secret)
    age(session, 60)

    ingest.reconcile()
    (record,) = ingest.due_sessions()
    swap_for_symlink(target, outside)  # after the scan, before the read

    outcome = ingest.upload(record)
    assert not outcome.complete
    assert outcome.changed == ["continuous.bin"]
    for key, body in bucket_bodies(client, rig.bucket).items():
        assert secret[:4096] not in body, f"outside bytes reached {key}"
    assert all(upload.parts == () for upload in state.ledger.all_uploads()), (
        "no part of the outside file may be sent"
    )
    session_row = state.sessions.get("ephys/mouse1/s1")
    assert session_row is not None and session_row.state == "waiting"
    (row,) = [f for f in state.ledger.files_of("ephys/mouse1/s1") if f.rel_path == "continuous.bin"]
    assert row.state != "uploaded" and row.uploaded_size is None

    # The rescan sees the symlink for what it is, and the session completes without it.
    ingest.reconcile()
    (row,) = [f for f in state.ledger.files_of("ephys/mouse1/s1") if f.rel_path == "continuous.bin"]
    assert (row.state, row.error) == ("refused", "symbolic link: not followed")
    time.sleep(1.2)  # the rig's quiet period restarts with the change
    ingest.recheck_waiting()
    (record,) = ingest.due_sessions()
    assert ingest.upload(record).complete
    bodies = bucket_bodies(client, rig.bucket)
    assert all(secret[:4096] not in body for body in bodies.values())
    document = json.loads(bodies["rig-01/ephys/mouse1/s1/ingest-manifest.json"])
    assert [entry["path"] for entry in document["files"]] == ["meta.json"]
    assert document["refused"] == [
        {"path": "continuous.bin", "reason": "symbolic link: not followed"}
    ]


def test_symlinks_found_by_the_scan_are_refused_visibly(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    rig = make_rig()
    session = rig.session("mouse2/s1")
    (session / "data.bin").write_bytes(b"data")
    outside = rig.root / "elsewhere.bin"
    outside.write_bytes(b"not part of the session")
    os.symlink(outside, session / "link.bin")
    os.symlink(rig.root, session / "linked-dir")
    age(session, 60)

    dry = rig.agentctl("sync", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    (planned,) = json.loads(dry.stdout)
    assert sorted(item["path"] for item in planned["refused"]) == ["link.bin", "linked-dir"]

    result = rig.agentctl("sync", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sessions_uploaded"] == 1
    assert result.stderr.count('"file_refused"') == 2
    bodies = bucket_bodies(client, rig.bucket)
    assert b"not part of the session" not in bodies.values()
    document = json.loads(bodies["rig-01/ephys/mouse2/s1/ingest-manifest.json"])
    assert [entry["path"] for entry in document["files"]] == ["data.bin"]
    assert document["refused"] == [
        {"path": "link.bin", "reason": "symbolic link: not followed"},
        {"path": "linked-dir", "reason": "symbolic link: not followed"},
    ]


def test_verify_does_not_read_through_a_symlink(
    library: tuple[Rig, Ingest, State], client: Any
) -> None:
    rig, ingest, state = library
    session = rig.session("mouse3/s1")
    target = session / "data.bin"
    target.write_bytes(b"original bytes")
    outside = rig.root / "other.bin"
    outside.write_bytes(b"OTHER!! bytes!")
    age(session, 60)
    ingest.reconcile()
    (record,) = ingest.due_sessions()
    assert ingest.upload(record).complete
    swap_for_symlink(target, outside)

    uploaded = state.sessions.get("ephys/mouse3/s1")
    assert uploaded is not None
    check = verify_session(state, ingest.store, uploaded)
    assert check.bytes_read == 0  # the outside file was not read
    assert [difference.problem for difference in check.differences] == [
        "local file is no longer the regular file that was uploaded: symbolic link: not followed"
    ]


def test_file_replaced_by_same_looking_copy_after_scan_is_sent_after_rescan(
    library: tuple[Rig, Ingest, State], client: Any
) -> None:
    """A copy put in place with the same name, size and mtime (cp -p, rsync) has a new inode:
    the upload stops, and the rescan must record the new inode instead of failing forever."""
    rig, ingest, _state = library
    session = rig.session("mouse4/s1")
    target = session / "data.bin"
    target.write_bytes(b"first version!")
    age(session, 60)
    ingest.reconcile()
    (record,) = ingest.due_sessions()
    info = os.stat(target)
    session_mtime = os.stat(session).st_mtime_ns
    replacement = session.parent / "staging.bin"
    replacement.write_bytes(b"second version")
    os.utime(replacement, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.rename(replacement, target)
    os.utime(session, ns=(info.st_atime_ns, session_mtime))  # the listing looks untouched

    outcome = ingest.upload(record)
    assert outcome.changed == ["data.bin"] and not outcome.complete
    ingest.reconcile()
    time.sleep(1.2)
    ingest.recheck_waiting()
    (record,) = ingest.due_sessions()
    assert ingest.upload(record).complete
    body = client.get_object(Bucket=rig.bucket, Key="rig-01/ephys/mouse4/s1/data.bin")["Body"]
    assert body.read() == b"second version"
