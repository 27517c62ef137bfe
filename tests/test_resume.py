"""Crash safety of the upload engine: a daemon killed with SIGKILL at the worst moments, then
a restart, against the real S3 server. The kill happens at the server, right after it has
done a request's work and before the agent hears the answer."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.state import State
from tests.conftest import Rig, start_daemon, stop_daemon, wait_for
from tests.s3server import Fault, KillAfter, S3TestServer

SIZE = 4 * 5 * 1024**2 - 123  # four parts of 5 MiB, the last one short


def make_session(rig: Rig, name: str = "mouse1/s1") -> tuple[Path, bytes]:
    session = rig.session(name)
    data = os.urandom(SIZE)
    (session / "continuous.ap.bin").write_bytes(data)
    (session / "meta.json").write_bytes(b"{}")
    stamp = time.time() - 60
    for item in (session, *session.iterdir()):
        os.utime(item, (stamp, stamp))
    return session, data


def crash_daemon_at(rig: Rig, s3: S3TestServer, operation: str, nth: int) -> None:
    """Run the daemon until the server has served the `nth` `operation`, then SIGKILL it."""
    daemon = start_daemon(rig)
    kill = KillAfter(operation, nth, pid=daemon.pid)
    s3.kills.append(kill)
    assert kill.fired.wait(60), f"the daemon never sent {operation} #{nth}"
    daemon.wait(10)
    stop_daemon(daemon)
    assert daemon.returncode == -9


def finish_with_sync(rig: Rig) -> dict[str, Any]:
    result = rig.agentctl("sync", "--json")
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def assert_landed(rig: Rig, client: Any, data: bytes, name: str = "mouse1/s1") -> None:
    key = f"rig-01/ephys/{name}/continuous.ap.bin"
    assert client.get_object(Bucket=rig.bucket, Key=key)["Body"].read() == data
    assert client.list_multipart_uploads(Bucket=rig.bucket).get("Uploads", []) == []
    state = State.open(rig.settings().state_db_path)
    try:
        record = state.sessions.get(f"ephys/{name}")
        assert record is not None and record.state == "uploaded"
        assert state.ledger.all_uploads() == []
    finally:
        state.close()


def recorded_parts(rig: Rig) -> set[int]:
    state = State.open(rig.settings().state_db_path)
    try:
        return {part.number for upload in state.ledger.all_uploads() for part in upload.parts}
    finally:
        state.close()


@pytest.mark.parametrize("list_parts", [True, False])
def test_kill_mid_file_resumes_without_resending_recorded_parts(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any, list_parts: bool
) -> None:
    rig = make_rig(concurrency=1)
    s3.list_parts_supported = list_parts
    _, data = make_session(rig)
    crash_daemon_at(rig, s3, "UploadPart", 3)
    done_before = recorded_parts(rig)
    assert done_before == {1, 2}  # part 3 reached the server; its answer never came back

    finish_with_sync(rig)
    assert_landed(rig, client, data)
    sent = Counter(request.part_number for request in s3.of("UploadPart"))
    assert all(sent[number] == 1 for number in done_before), sent
    assert set(sent) == {1, 2, 3, 4}
    # Part 3 is on the server: where it lists parts, its bytes are checked locally and it is
    # adopted (tests/test_adopt_parts.py); without ListParts it is sent again.
    assert sent[3] == (1 if list_parts else 2), sent
    assert s3.count("CreateMultipartUpload") == 1


def test_kill_between_create_and_record_aborts_the_orphan(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig()
    _, data = make_session(rig)
    crash_daemon_at(rig, s3, "CreateMultipartUpload", 1)
    assert recorded_parts(rig) == set()
    orphans = client.list_multipart_uploads(Bucket=rig.bucket).get("Uploads", [])
    assert len(orphans) == 1

    finish_with_sync(rig)
    assert_landed(rig, client, data)
    assert s3.count("AbortMultipartUpload") == 1
    assert s3.count("CreateMultipartUpload") == 2


@pytest.mark.parametrize("repeat_answer", ["success", "NoSuchUpload"])
def test_kill_between_complete_and_record_settles(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any, repeat_answer: str
) -> None:
    rig = make_rig()
    _, data = make_session(rig)
    crash_daemon_at(rig, s3, "CompleteMultipartUpload", 1)
    parts_before = s3.count("UploadPart")
    if repeat_answer == "NoSuchUpload":
        # MinIO's answer to a repeated Complete: the HEAD must settle it.
        s3.faults.append(Fault("CompleteMultipartUpload", 404, "NoSuchUpload", 1))
        s3.list_parts_supported = False

    finish_with_sync(rig)
    assert_landed(rig, client, data)
    assert s3.count("UploadPart") == parts_before  # nothing sent again
    assert s3.count("CreateMultipartUpload") == 1


def test_lost_upload_id_restarts_the_file(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig(concurrency=1)
    _, data = make_session(rig)
    crash_daemon_at(rig, s3, "UploadPart", 2)
    for upload in client.list_multipart_uploads(Bucket=rig.bucket).get("Uploads", []):
        client.abort_multipart_upload(
            Bucket=rig.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )
    finish_with_sync(rig)
    assert_landed(rig, client, data)
    assert s3.count("CreateMultipartUpload") == 2


def test_injected_slowdown_and_503_are_retried(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig()
    _, data = make_session(rig)
    s3.faults.append(Fault("UploadPart", 503, "SlowDown", 2))
    s3.faults.append(Fault("PutObject", 500, "InternalError", 1))
    finish_with_sync(rig)
    assert_landed(rig, client, data)


def test_permanent_error_shows_in_status_with_reason(
    make_rig: Callable[..., Rig], s3: S3TestServer
) -> None:
    rig = make_rig(create_bucket=False)
    make_session(rig)
    result = rig.agentctl("sync", "--json")
    assert result.returncode == 1
    rows = json.loads(rig.agentctl("sessions", "--json").stdout)
    assert rows[0]["state"] == "failed"
    assert "NoSuchBucket" in rows[0]["error"]
    status = json.loads(rig.agentctl("status", "--json").stdout)
    assert status["sessions"]["failed"] == 1
    assert "NoSuchBucket" in status["last_error"]


def test_file_modified_mid_upload_is_sent_again(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig(concurrency=1, quiet_period="1s")
    session, _ = make_session(rig)
    target = session / "continuous.ap.bin"
    extra = os.urandom(1000)

    def append() -> None:
        with target.open("ab") as handle:
            handle.write(extra)

    s3.kills.append(KillAfter("UploadPart", 2, action=append))
    first = rig.agentctl("sync", "--json")
    assert first.returncode == 0, first.stderr
    rows = json.loads(rig.agentctl("sessions", "--json").stdout)
    assert rows[0]["state"] == "waiting" and "changed" in rows[0]["reason"]
    time.sleep(1.2)
    rig.agentctl("sync", "--json")
    time.sleep(1.2)
    finish_with_sync(rig)
    assert_landed(rig, client, target.read_bytes())


def test_works_without_conditional_writes_or_list_parts(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig(concurrency=1)
    s3.conditional_writes_supported = False
    s3.list_parts_supported = False
    _, data = make_session(rig)
    crash_daemon_at(rig, s3, "UploadPart", 2)
    finish_with_sync(rig)
    assert_landed(rig, client, data)


def test_rolled_back_database_sends_nothing_already_in_s3(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig()
    _, data = make_session(rig)
    finish_with_sync(rig)
    (rig.state_dir / "state.db").unlink()
    for leftover in rig.state_dir.glob("state.db-*"):
        leftover.unlink()
    s3.reset()
    summary = finish_with_sync(rig)
    assert summary["files"] == 0
    assert s3.count("UploadPart") == 0
    assert s3.count("PutObject") == 1  # only the manifest, revised
    assert_landed(rig, client, data)


def test_waits_for_ready_daemon_then_status_ok(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    daemon = start_daemon(rig)
    try:
        assert wait_for(lambda: rig.agentctl("status").returncode == 0, timeout=30)
    finally:
        code, _ = stop_daemon(daemon)
    assert code == 0


def test_a_database_rolled_back_past_a_finished_upload_sends_nothing_again(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    """A power loss can bring back a database from before a file's multipart upload
    completed (found by the soak): the recorded upload is gone from the server, but the
    object holds the file whole. It is recognised and the stale upload forgotten, not the
    file sent again under a new upload left open beside the object."""
    rig = make_rig(concurrency=1)
    _, data = make_session(rig)
    crash_daemon_at(rig, s3, "UploadPart", 2)
    state_db = rig.settings().state_db_path
    older = {path.name: path.read_bytes() for path in state_db.parent.glob("state.db*")}
    finish_with_sync(rig)
    for path in state_db.parent.glob("state.db*"):
        path.unlink()
    for name, content in older.items():
        (state_db.parent / name).write_bytes(content)
    s3.reset()

    finish_with_sync(rig)
    assert s3.count("UploadPart") == 0 and s3.count("CreateMultipartUpload") == 0
    assert_landed(rig, client, data)


def test_an_identical_object_arriving_before_complete_settles_and_closes_the_upload(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    """Complete answered 412 because the object now at the key holds these very bytes:
    the file is uploaded, and the agent's own upload is aborted, not left open holding
    its parts."""
    rig = make_rig(concurrency=1)
    _, data = make_session(rig)
    key = "rig-01/ephys/mouse1/s1/continuous.ap.bin"

    def same_bytes_by_another_path() -> None:
        # The same parts, so the same multipart ETag as the agent's upload will have.
        started = client.create_multipart_upload(Bucket=rig.bucket, Key=key)
        part = 5 * 1024**2
        etags = [
            client.upload_part(
                Bucket=rig.bucket,
                Key=key,
                UploadId=started["UploadId"],
                PartNumber=number + 1,
                Body=data[offset : offset + part],
            )["ETag"]
            for number, offset in enumerate(range(0, len(data), part))
        ]
        client.complete_multipart_upload(
            Bucket=rig.bucket,
            Key=key,
            UploadId=started["UploadId"],
            MultipartUpload={
                "Parts": [{"PartNumber": n + 1, "ETag": etag} for n, etag in enumerate(etags)]
            },
        )

    arrived = KillAfter("UploadPart", 1, action=same_bytes_by_another_path)
    s3.kills.append(arrived)
    finish_with_sync(rig)
    assert arrived.fired.is_set()
    # The other path's Complete, then the agent's, refused: the object was there.
    assert [request.status for request in s3.of("CompleteMultipartUpload")] == [200, 412]
    assert_landed(rig, client, data)
