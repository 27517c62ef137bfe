"""A file replaced by rename while its bytes are on the wire (issue 12, item 10).

Editors, `rsync` and `cp -p` replace a file by writing a copy and renaming it over the old
name: same name, size and mtime, new inode, maybe new bytes. When that happens while the
old bytes are being sent, the old bytes must not be recorded as the file's: the agent must
see the new inode, leave the file pending, and send the new bytes after the rescan.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent.ingest import Ingest
from agent.state import State
from tests.conftest import Rig
from tests.s3server import KillAfter, S3TestServer
from tests.test_hostile_symlinks import age, library  # noqa: F401 - the shared fixture

SMALL = 1000
LARGE = 7 * 1024**2  # above the rig's 6 MiB multipart threshold: two parts of 5 MiB


def replace_by_rename(target: Path, data: bytes) -> None:
    """Put `data` at `target` the way rsync does (write a copy, rename it over), keeping the
    old size and mtime and the directory's mtime, so only the inode tells."""
    info = os.stat(target)
    directory = os.stat(target.parent)
    staging = target.parent.parent / f".{target.name}.staging"
    staging.write_bytes(data)
    os.utime(staging, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.rename(staging, target)
    os.utime(target.parent, ns=(directory.st_atime_ns, directory.st_mtime_ns))
    assert os.stat(target).st_ino != info.st_ino


@pytest.mark.parametrize(
    ("size", "operation"),
    [(SMALL, "PutObject"), (LARGE, "UploadPart")],
    ids=["single-put", "multipart"],
)
def test_file_replaced_by_rename_during_its_upload_is_sent_again_with_the_new_bytes(
    library: tuple[Rig, Ingest, State],  # noqa: F811 - the imported fixture
    s3: S3TestServer,
    client: Any,
    size: int,
    operation: str,
) -> None:
    rig, ingest, state = library
    session = rig.session("mouse7/s1")
    target = session / "frames.bin"
    old, new = os.urandom(size), os.urandom(size)
    target.write_bytes(old)
    age(session, 60)
    ingest.reconcile()
    (record,) = ingest.due_sessions()
    # Once the server has stored the file's (first) bytes, and before the agent hears so,
    # the file is replaced.
    swap = KillAfter(operation, 1, action=lambda: replace_by_rename(target, new))
    s3.kills.append(swap)

    outcome = ingest.upload(record)
    assert swap.fired.is_set()
    assert outcome.changed == ["frames.bin"] and not outcome.complete
    (row,) = state.ledger.files_of("ephys/mouse7/s1")
    assert row.state == "pending", "the old inode's bytes must not be recorded as the file's"

    for _ in range(20):
        ingest.reconcile()
        ingest.recheck_waiting()
        due = ingest.due_sessions()
        if due and ingest.upload(due[0]).complete:
            break
        time.sleep(0.3)
    key = "rig-01/ephys/mouse7/s1/frames.bin"
    assert client.get_object(Bucket=rig.bucket, Key=key)["Body"].read() == new
    (row,) = state.ledger.files_of("ephys/mouse7/s1")
    assert (row.state, row.inode) == ("uploaded", os.stat(target).st_ino)
