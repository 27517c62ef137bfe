"""Parts the server acknowledged but the agent never recorded (issue 12, item 11).

A daemon killed with SIGKILL right after the server stored a part, before the agent heard
the answer: the part is on the server and not in the ledger. Where the server lists parts,
the restart re-reads that byte range locally and, when its size and MD5 are the listed
part's, records it instead of sending it again (reading is local, sending is not). A listed
part that is not the local bytes is sent again. Without ListParts nothing changes: the
part is sent again (tests/test_resume.py).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.state import State
from tests.conftest import Rig
from tests.s3server import S3TestServer
from tests.test_resume import assert_landed, crash_daemon_at, make_session, recorded_parts

KEY = "rig-01/ephys/mouse1/s1/continuous.ap.bin"


def recorded_upload(rig: Rig) -> str:
    """The upload id of the one multipart upload the state database holds."""
    state = State.open(rig.settings().state_db_path)
    try:
        (upload,) = state.ledger.all_uploads()
        return upload.upload_id
    finally:
        state.close()


def held_by_server(client: Any, rig: Rig, upload_id: str) -> set[int]:
    listing = client.list_parts(Bucket=rig.bucket, Key=KEY, UploadId=upload_id)
    return {int(part["PartNumber"]) for part in listing.get("Parts", [])}


def sync(rig: Rig) -> str:
    """Run `agentctl sync`; return its log."""
    result = rig.agentctl("sync", "--json")
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_a_part_acknowledged_before_the_kill_is_adopted_not_sent_again(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig(concurrency=1)
    _, data = make_session(rig)
    crash_daemon_at(rig, s3, "UploadPart", 3)
    assert recorded_parts(rig) == {1, 2}
    assert held_by_server(client, rig, recorded_upload(rig)) == {1, 2, 3}

    log = sync(rig)

    assert_landed(rig, client, data)
    sent = Counter(request.part_number for request in s3.of("UploadPart"))
    assert sent == Counter({1: 1, 2: 1, 3: 1, 4: 1}), sent
    assert "parts_adopted" in log


@pytest.mark.parametrize("how", ["other-bytes", "other-size"])
def test_a_listed_part_that_is_not_the_local_bytes_is_sent_again(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any, how: str
) -> None:
    rig = make_rig(concurrency=1)
    _, data = make_session(rig)
    crash_daemon_at(rig, s3, "UploadPart", 3)
    upload_id = recorded_upload(rig)
    # Part 3 on the server is no longer the file's bytes (sent again behind the agent's back).
    body = os.urandom(5 * 1024**2) if how == "other-bytes" else os.urandom(5 * 1024**2 + 1)
    client.upload_part(Bucket=rig.bucket, Key=KEY, UploadId=upload_id, PartNumber=3, Body=body)
    mark = len(s3.of("UploadPart"))

    log = sync(rig)

    assert_landed(rig, client, data)
    assert sorted(request.part_number or 0 for request in s3.of("UploadPart")[mark:]) == [3, 4]
    assert "parts_adopted" not in log


def test_every_part_acknowledged_at_a_kill_is_adopted_with_concurrency(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    """With four parts in flight, a kill leaves up to four acknowledged and unrecorded; none
    of them is sent again."""
    rig = make_rig(concurrency=4)
    session = rig.session("mouse1/s1")
    data = os.urandom(12 * 5 * 1024**2 - 321)
    (session / "continuous.ap.bin").write_bytes(data)
    age(session)
    crash_daemon_at(rig, s3, "UploadPart", 6)
    time.sleep(0.3)  # what the server was still serving when its client died
    unrecorded = held_by_server(client, rig, recorded_upload(rig)) - recorded_parts(rig)
    assert unrecorded, "the killed part at least is on the server and not recorded"
    mark = len(s3.of("UploadPart"))

    sync(rig)

    assert_landed(rig, client, data)
    again = [request.part_number for request in s3.of("UploadPart")[mark:]]
    assert not unrecorded & set(again), (unrecorded, again)


def age(session: Path) -> None:
    stamp = time.time() - 60
    for item in (session, *session.iterdir()):
        os.utime(item, (stamp, stamp))
