"""The upload engine against a real S3 server (moto on loopback), with the in-memory ledger.

Each test builds one session folder, a `MemoryLedger` holding what a scan would have
recorded, and a real `S3Store`; it then tampers with the bucket through a plain boto3 client
(another writer's object at our key, a part lost behind the agent's back) and checks what the
engine promises: it never overwrites another writer's object, it sends again exactly the
parts the server does not hold, both passes turn any failure into an error in the outcome,
and the running checksum recorded with each part is that of the file up to the part's end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from agent.checksums import RunningChecksum
from agent.config import Settings, settings_from_mapping
from agent.engine.multipart import MultipartUpload
from agent.errors import PermanentTransferError
from agent.planning import object_key, plan_parts
from agent.state import DONE, PENDING, FileRecord, PartRecord, SessionRecord
from agent.transfer import AGENT_METADATA_MARK, S3Store, store_from_settings
from agent.upload import SessionUploader
from tests.fakes import MemoryLedger
from tests.s3server import Fault, KillAfter, S3TestServer

MIB = 1024**2
AGENT_NAME = "engine-test"
SESSION_ID = "ephys/mouse1/s1"
PREFIX = "rig-01/ephys/mouse1/s1"

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class Bench:
    """One session folder, the engine over a memory ledger, and the bucket it writes to."""

    folder: Path
    settings: Settings
    ledger: MemoryLedger
    store: S3Store
    bucket: str
    client: Any

    def uploader(self) -> SessionUploader:
        return SessionUploader(self.settings, self.ledger, self.store, clock=time.time)

    def add_file(self, rel_path: str, data: bytes) -> FileRecord:
        """Write a file into the session and record it as a scan would."""
        path = self.folder / rel_path
        path.write_bytes(data)
        return self.record(rel_path)

    def record(self, rel_path: str) -> FileRecord:
        """Record the file as it is now (pending), as a scan would."""
        info = (self.folder / rel_path).stat()
        record = FileRecord(
            session_id=SESSION_ID,
            rel_path=rel_path,
            size=info.st_size,
            mtime_ns=info.st_mtime_ns,
            inode=info.st_ino,
            key=object_key(PREFIX, rel_path),
            state=PENDING,
            checksum=None,
            checksum_algorithm=None,
            etag=None,
            uploaded_size=None,
            uploaded_mtime_ns=None,
            uploaded_at=None,
            error=None,
            device=info.st_dev,
        )
        self.ledger.add(record)
        return record

    def session(self) -> SessionRecord:
        return SessionRecord(
            id=SESSION_ID,
            source="ephys",
            rel_path="mouse1/s1",
            path=str(self.folder),
            state="uploading",
            files=len(self.ledger.files),
            bytes=sum(record.size for record in self.ledger.files.values()),
            uploaded_bytes=0,
            key_prefix=PREFIX,
            manifest_key=None,
            manifest_revision=0,
            metadata={},
            fingerprint="",
            detected_at=0.0,
            last_change_at=0.0,
            completed_at=None,
            uploaded_at=None,
            error=None,
            reason=None,
            attempts=0,
            next_attempt_at=None,
            local_missing=False,
        )

    def object_bytes(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())


@pytest.fixture
def bench(tmp_path: Path, s3: S3TestServer, client: Any) -> Bench:
    bucket = f"engine-{os.getpid()}-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    folder = tmp_path / "recordings" / "mouse1" / "s1"
    folder.mkdir(parents=True)
    settings = settings_from_mapping(
        {
            "agent": {"name": AGENT_NAME, "state_dir": str(tmp_path / "state")},
            "destination": {
                "bucket": bucket,
                "prefix": "rig-01",
                "endpoint_url": s3.url,
                "region": "us-east-1",
            },
            "upload": {
                "part_size": "5MiB",
                "multipart_threshold": "6MiB",
                "concurrency": 2,
                "retry_delay": "0.05s",
                "retries": 1,
            },
            "source": [{"name": "ephys", "path": str(tmp_path / "recordings")}],
        },
        "engine-test.toml",
    )
    store = store_from_settings(settings.destination, settings.upload)
    return Bench(folder, settings, MemoryLedger(), store, bucket, client)


def running_value(data: bytes, algorithm: str = "crc32c") -> str | None:
    """The resumable running checksum of `data` from its first byte, computed apart."""
    running = RunningChecksum(algorithm)
    running.update(data)
    return running.save()


def whole_checksum(data: bytes, algorithm: str = "crc32c") -> str:
    running = RunningChecksum(algorithm)
    running.update(data)
    return running.value()


# --- the existing-object policy ---------------------------------------------------------------


# A file sent in one PUT, and one sent in three parts (5 MiB, 5 MiB and a short third).
SIZES = {"single-put": 64 * 1024, "multipart": 12 * MIB + 4321}


def assert_refused(bench: Bench, outcome: Any, record: FileRecord, theirs: bytes) -> None:
    """The other writer's object is untouched, the session failed on it, the file is pending."""
    assert bench.object_bytes(record.key) == theirs
    assert len(outcome.errors) == 1, outcome
    error = outcome.errors[0]
    assert isinstance(error, PermanentTransferError)
    assert error.key == record.key
    assert "refusing to overwrite" in str(error)
    assert not outcome.complete
    assert bench.ledger.files[(SESSION_ID, record.rel_path)].state == PENDING
    assert bench.ledger.manifests == {}


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("same_size", [False, True], ids=["other-size", "same-size"])
def test_another_writers_object_at_the_key_is_refused_not_overwritten(
    bench: Bench, s3: S3TestServer, same_size: bool, size: int
) -> None:
    data = os.urandom(size)
    record = bench.add_file("meta.bin", data)
    theirs = os.urandom(len(data) if same_size else 1000)
    bench.client.put_object(Bucket=bench.bucket, Key=record.key, Body=theirs)

    outcome = bench.uploader().upload_session(bench.session())

    assert_refused(bench, outcome, record, theirs)


def test_another_writers_object_arriving_mid_upload_is_refused_at_complete(
    bench: Bench, s3: S3TestServer
) -> None:
    """The look before sending found the key free; another writer's object arrives while
    the parts are on the wire. Only a conditional Complete (If-None-Match: *) keeps it."""
    data = os.urandom(SIZES["multipart"])
    record = bench.add_file("continuous.ap.bin", data)
    theirs = os.urandom(1000)

    def another_writer() -> None:
        bench.client.put_object(Bucket=bench.bucket, Key=record.key, Body=theirs)

    s3.kills.append(KillAfter("UploadPart", 1, action=another_writer))

    outcome = bench.uploader().upload_session(bench.session())

    assert_refused(bench, outcome, record, theirs)
    # The upload is kept: a retry once the object is moved away sends no part again.
    upload = bench.ledger.upload_for(SESSION_ID, record.rel_path)
    assert upload is not None and len(upload.parts) == 3
    bench.client.delete_object(Bucket=bench.bucket, Key=record.key)
    s3.reset()
    retried = bench.uploader().upload_session(bench.session())
    assert retried.complete, retried
    assert s3.count("UploadPart") == 0
    assert bench.object_bytes(record.key) == data


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_an_older_version_this_agent_wrote_is_replaced(
    bench: Bench, s3: S3TestServer, size: int
) -> None:
    data = os.urandom(size)
    record = bench.add_file("meta.bin", data)
    ours_before = os.urandom(1000)
    bench.client.put_object(
        Bucket=bench.bucket,
        Key=record.key,
        Body=ours_before,
        Metadata={AGENT_METADATA_MARK: AGENT_NAME},
    )

    outcome = bench.uploader().upload_session(bench.session())

    assert outcome.errors == []
    assert outcome.complete
    assert bench.object_bytes(record.key) == data
    assert bench.ledger.files[(SESSION_ID, "meta.bin")].state == DONE


def test_same_bytes_already_at_the_key_are_recorded_without_sending(
    bench: Bench, s3: S3TestServer
) -> None:
    data = os.urandom(64 * 1024)
    record = bench.add_file("meta.bin", data)
    checksum = whole_checksum(data)
    bench.client.put_object(
        Bucket=bench.bucket,
        Key=record.key,
        Body=data,
        Metadata={"agent-checksum": checksum, "agent-checksum-algorithm": "crc32c"},
    )
    s3.reset()

    outcome = bench.uploader().upload_session(bench.session())

    assert outcome.complete, outcome
    assert outcome.files_already_there == 1
    assert [r.path for r in s3.of("PutObject")] == [
        f"/{bench.bucket}/{PREFIX}/ingest-manifest.json"
    ]
    assert bench.ledger.files[(SESSION_ID, "meta.bin")].checksum == checksum


# --- re-uploads of a changed file: If-Match on the object the agent recorded -----------------


def changed_on_disk(bench: Bench, rel_path: str, data: bytes) -> FileRecord:
    """Rewrite an uploaded file with `data` and record it as a scan would: pending again,
    still knowing the (size, mtime) and ETag it was uploaded with."""
    before = bench.ledger.files[(SESSION_ID, rel_path)]
    assert before.state == DONE and before.etag
    (bench.folder / rel_path).write_bytes(data)
    info = (bench.folder / rel_path).stat()
    record = dataclasses.replace(
        before, size=info.st_size, mtime_ns=info.st_mtime_ns, inode=info.st_ino, state=PENDING
    )
    bench.ledger.add(record)
    return record


def conditions_sent(s3: S3TestServer, since: int) -> list[tuple[str, dict[str, str]]]:
    """Every PutObject and CompleteMultipartUpload the server received after its first
    `since` requests, with the If-Match / If-None-Match headers it carried, in order: what
    went over the wire, whether botocore or a direct request (agent/direct.py) sent it."""
    names = {"if-match": "IfMatch", "if-none-match": "IfNoneMatch"}
    return [
        (request.operation, {names[h]: v for h, v in request.headers.items() if h in names})
        for request in s3.requests[since:]
        if request.operation in ("PutObject", "CompleteMultipartUpload")
    ]


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_changed_file_replaces_only_the_object_it_recorded(
    bench: Bench, s3: S3TestServer, size: int
) -> None:
    record = bench.add_file("data.bin", os.urandom(size))
    assert bench.uploader().upload_session(bench.session()).complete
    earlier_etag = bench.ledger.files[(SESSION_ID, "data.bin")].etag
    new = os.urandom(size)
    changed_on_disk(bench, "data.bin", new)
    since = len(s3.requests)

    outcome = bench.uploader().upload_session(bench.session())

    assert outcome.complete, outcome
    assert bench.object_bytes(record.key) == new
    operation = "PutObject" if size == SIZES["single-put"] else "CompleteMultipartUpload"
    sent = conditions_sent(s3, since)
    assert (operation, {"IfMatch": f'"{earlier_etag}"'}) in sent, sent


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_changed_file_does_not_replace_another_writers_object(
    bench: Bench, s3: S3TestServer, size: int
) -> None:
    """Our earlier object was replaced by another writer's since; the changed file's upload
    must not overwrite it. moto honours If-Match on PutObject but ignores it on
    CompleteMultipartUpload (AWS and MinIO honour both): for the multipart case the server's
    412 is injected, and the test checks that the Complete carried the recorded ETag."""
    record = bench.add_file("data.bin", os.urandom(size))
    assert bench.uploader().upload_session(bench.session()).complete
    earlier_etag = bench.ledger.files[(SESSION_ID, "data.bin")].etag
    theirs = os.urandom(size)
    bench.client.put_object(Bucket=bench.bucket, Key=record.key, Body=theirs)
    changed_on_disk(bench, "data.bin", os.urandom(size))
    bench.ledger.manifests.clear()
    since = len(s3.requests)
    multipart = size == SIZES["multipart"]
    if multipart:
        s3.faults.append(Fault("CompleteMultipartUpload", 412, "PreconditionFailed", 1))

    outcome = bench.uploader().upload_session(bench.session())

    assert_refused(bench, outcome, record, theirs)
    operation = "CompleteMultipartUpload" if multipart else "PutObject"
    sent = conditions_sent(s3, since)
    assert sent[0] == (operation, {"IfMatch": f'"{earlier_etag}"'}), sent


def test_a_changed_file_whose_object_was_deleted_is_written_as_new(
    bench: Bench, s3: S3TestServer
) -> None:
    """If-Match on a key with no object is answered 404 NoSuchKey (AWS, moto): nothing is
    there to protect, so the file is written, conditionally, as a first write."""
    record = bench.add_file("data.bin", os.urandom(SIZES["single-put"]))
    assert bench.uploader().upload_session(bench.session()).complete
    earlier_etag = bench.ledger.files[(SESSION_ID, "data.bin")].etag
    bench.client.delete_object(Bucket=bench.bucket, Key=record.key)
    new = os.urandom(SIZES["single-put"])
    changed_on_disk(bench, "data.bin", new)
    since = len(s3.requests)

    outcome = bench.uploader().upload_session(bench.session())

    assert outcome.complete, outcome
    assert bench.object_bytes(record.key) == new
    sent = conditions_sent(s3, since)
    puts = [found for operation, found in sent if operation == "PutObject"]
    assert puts[:2] == [{"IfMatch": f'"{earlier_etag}"'}, {"IfNoneMatch": "*"}], sent


def test_a_server_without_conditional_complete_is_said_once_and_written_without(
    bench: Bench, s3: S3TestServer
) -> None:
    data = os.urandom(SIZES["multipart"])
    record = bench.add_file("continuous.ap.bin", data)
    s3.faults.append(Fault("CompleteMultipartUpload", 501, "NotImplemented", 1))

    with structlog.testing.capture_logs() as logs:
        outcome = bench.uploader().upload_session(bench.session())

    assert outcome.complete, outcome
    assert bench.object_bytes(record.key) == data
    assert bench.store.conditional_writes is False
    said = [entry for entry in logs if entry["event"] == "conditional_writes_unsupported"]
    assert len(said) == 1 and said[0]["header"] == "If-None-Match", logs
    assert s3.count("CompleteMultipartUpload") == 2


# --- resume: the ListParts cross-check --------------------------------------------------------


def start_recorded_upload(bench: Bench, record: FileRecord, data: bytes, numbers: list[int]) -> str:
    """A multipart upload the agent started in an earlier run: created on the server, parts
    `numbers` sent, and all of it recorded in the ledger as the engine records it."""
    part_size = 5 * MIB
    answer = bench.client.create_multipart_upload(
        Bucket=bench.bucket, Key=record.key, Metadata={AGENT_METADATA_MARK: AGENT_NAME}
    )
    upload_id = str(answer["UploadId"])
    bench.ledger.upload_started(
        upload_id=upload_id,
        record=record,
        part_size=part_size,
        checksum_algorithm="crc32c",
        now=time.time(),
    )
    for part in plan_parts(len(data), part_size):
        if part.number not in numbers:
            continue
        body = data[part.offset : part.offset + part.length]
        sent = bench.client.upload_part(
            Bucket=bench.bucket,
            Key=record.key,
            UploadId=upload_id,
            PartNumber=part.number,
            Body=body,
        )
        bench.ledger.part_finished(
            upload_id,
            PartRecord(
                part.number,
                str(sent["ETag"]).strip('"'),
                whole_checksum(body),
                part.length,
                running_value(data[: part.offset + part.length]),
            ),
        )
    return upload_id


def test_resume_with_every_recorded_part_on_the_server_sends_only_the_rest(
    bench: Bench, s3: S3TestServer
) -> None:
    data = os.urandom(12 * MIB + 4321)  # parts of 5 MiB, 5 MiB and a short third
    record = bench.add_file("continuous.ap.bin", data)
    start_recorded_upload(bench, record, data, [1, 2])
    s3.reset()

    outcome = bench.uploader().upload_session(bench.session())

    assert outcome.complete, outcome
    assert [r.part_number for r in s3.completed("UploadPart")] == [3]
    assert s3.count("ListParts") == 1
    assert s3.count("CreateMultipartUpload") == 0
    assert bench.object_bytes(record.key) == data
    done = bench.ledger.files[(SESSION_ID, "continuous.ap.bin")]
    assert done.state == DONE
    assert done.checksum == whole_checksum(data)
    assert bench.ledger.uploads == {}


@pytest.mark.parametrize("how", ["never-arrived", "replaced"])
def test_resume_sends_again_recorded_parts_the_server_does_not_hold(
    bench: Bench, s3: S3TestServer, how: str
) -> None:
    data = os.urandom(12 * MIB + 4321)
    record = bench.add_file("continuous.ap.bin", data)
    upload_id = start_recorded_upload(bench, record, data, [1, 2])
    if how == "never-arrived":
        # The ledger holds a part 3 the server never acknowledged to anyone.
        tail = data[10 * MIB :]
        bench.ledger.part_finished(
            upload_id,
            PartRecord(
                3,
                hashlib.md5(tail).hexdigest(),
                whole_checksum(tail),
                len(tail),
                running_value(data),
            ),
        )
        lost = [3]
    else:
        # Part 2 was sent again behind the agent's back with other bytes: the ETag the
        # ledger holds is no longer the server's.
        bench.client.upload_part(
            Bucket=bench.bucket,
            Key=record.key,
            UploadId=upload_id,
            PartNumber=2,
            Body=os.urandom(5 * MIB),
        )
        lost = [2, 3]
    s3.reset()

    outcome = bench.uploader().upload_session(bench.session())

    assert outcome.errors == [], outcome
    assert sorted(r.part_number or 0 for r in s3.completed("UploadPart")) == lost
    assert outcome.complete
    assert bench.object_bytes(record.key) == data
    done = bench.ledger.files[(SESSION_ID, "continuous.ap.bin")]
    assert done.checksum == whole_checksum(data)


# --- resume: adopting parts the server acknowledged but the ledger never recorded ------------


def send_unrecorded(
    bench: Bench, record: FileRecord, upload_id: str, number: int, body: bytes
) -> None:
    """Part `number` reached the server (with `body`) but its answer never reached the
    ledger: the agent was killed in between."""
    bench.client.upload_part(
        Bucket=bench.bucket, Key=record.key, UploadId=upload_id, PartNumber=number, Body=body
    )


def part_bytes(data: bytes, number: int) -> bytes:
    part = plan_parts(len(data), 5 * MIB)[number - 1]
    return data[part.offset : part.offset + part.length]


@pytest.mark.parametrize(
    ("recorded", "unrecorded", "sent"),
    [([1], [2, 3], [4]), ([1], [3], [2, 4]), ([], [1, 2, 3, 4], [])],
    ids=["extending-the-run", "after-a-gap", "none-recorded"],
)
def test_resume_adopts_listed_parts_holding_the_local_bytes(
    bench: Bench, s3: S3TestServer, recorded: list[int], unrecorded: list[int], sent: list[int]
) -> None:
    data = os.urandom(17 * MIB + 4321)  # parts of 5, 5, 5 and 2 MiB
    record = bench.add_file("continuous.ap.bin", data)
    upload_id = start_recorded_upload(bench, record, data, recorded)
    for number in unrecorded:
        send_unrecorded(bench, record, upload_id, number, part_bytes(data, number))
    s3.reset()

    upload = MultipartUpload.open(bench.uploader().context, record, bench.folder / record.rel_path)

    # Each adopted part is recorded as if the agent had heard the server's answer: its ETag,
    # its checksum and the running checksum of the file up to its end.
    by_number = {part.number: part for part in upload.upload.parts}
    assert sorted(by_number) == sorted(recorded + unrecorded)
    for number in unrecorded:
        end = plan_parts(len(data), 5 * MIB)[number - 1]
        assert by_number[number].etag == hashlib.md5(part_bytes(data, number)).hexdigest()
        assert by_number[number].checksum == whole_checksum(part_bytes(data, number))
        assert by_number[number].running_checksum == running_value(data[: end.offset + end.length])
    assert s3.count("UploadPart") == 0

    outcome = bench.uploader().upload_session(bench.session())

    assert outcome.complete, outcome
    assert sorted(r.part_number or 0 for r in s3.completed("UploadPart")) == sent
    assert s3.count("CreateMultipartUpload") == 0
    assert bench.object_bytes(record.key) == data
    assert bench.ledger.files[(SESSION_ID, record.rel_path)].checksum == whole_checksum(data)


@pytest.mark.parametrize("how", ["other-bytes", "other-size"])
def test_resume_sends_again_a_listed_part_that_is_not_the_local_bytes(
    bench: Bench, s3: S3TestServer, how: str
) -> None:
    data = os.urandom(12 * MIB + 4321)
    record = bench.add_file("continuous.ap.bin", data)
    upload_id = start_recorded_upload(bench, record, data, [1])
    body = os.urandom(5 * MIB) if how == "other-bytes" else part_bytes(data, 2) + b"x"
    send_unrecorded(bench, record, upload_id, 2, body)
    s3.reset()

    outcome = bench.uploader().upload_session(bench.session())

    assert outcome.complete, outcome
    assert sorted(r.part_number or 0 for r in s3.completed("UploadPart")) == [2, 3]
    assert bench.object_bytes(record.key) == data
    assert bench.ledger.files[(SESSION_ID, record.rel_path)].checksum == whole_checksum(data)


# --- the growing pass -------------------------------------------------------------------------


def test_growing_pass_records_the_running_checksum_up_to_each_parts_end(
    bench: Bench, s3: S3TestServer
) -> None:
    part_size = 1 * MIB
    path = bench.folder / "continuous.ap.bin"
    data = os.urandom(4 * part_size + 1000)  # parts 1-3 lie a part below the end
    path.write_bytes(data)
    bench.record("continuous.ap.bin")
    uploader = bench.uploader()

    first = uploader.upload_growing(bench.session(), part_size)
    assert first.errors == [], first
    upload = bench.ledger.upload_for(SESSION_ID, "continuous.ap.bin")
    assert upload is not None and upload.growing
    assert [part.number for part in upload.parts] == [1, 2, 3]

    # The file grows; the next pass continues from the parts recorded by the first.
    more = os.urandom(3 * part_size)
    with path.open("ab") as recording:
        recording.write(more)
    data += more
    bench.record("continuous.ap.bin")
    second = uploader.upload_growing(bench.session(), part_size)
    assert second.errors == [], second

    upload = bench.ledger.upload_for(SESSION_ID, "continuous.ap.bin")
    assert upload is not None
    assert [part.number for part in upload.parts] == [1, 2, 3, 4, 5, 6]
    for part in upload.parts:
        end = part.number * part_size
        assert part.running_checksum == running_value(data[:end]), part.number
        assert part.checksum == whole_checksum(data[end - part_size : end]), part.number


# --- one error mapping for both passes --------------------------------------------------------


class LedgerWithBrokenParts(MemoryLedger):
    """A ledger whose disk fails when a part is recorded (as SQLite does on EIO)."""

    def part_finished(self, upload_id: str, part: PartRecord) -> None:
        raise sqlite3.OperationalError("disk I/O error")


@pytest.mark.parametrize("which", ["growing", "final"])
def test_an_unexpected_error_in_a_worker_is_an_error_of_the_outcome(
    bench: Bench, s3: S3TestServer, which: str
) -> None:
    bench.ledger = LedgerWithBrokenParts()
    record = bench.add_file("continuous.ap.bin", os.urandom(12 * MIB))
    uploader = bench.uploader()

    if which == "growing":
        outcome = uploader.upload_growing(bench.session(), 5 * MIB)
    else:
        outcome = uploader.upload_session(bench.session())

    assert outcome.errors, outcome
    assert all(isinstance(error, PermanentTransferError) for error in outcome.errors)
    assert "OperationalError: disk I/O error" in str(outcome.errors[0])
    assert outcome.errors[0].key == record.key
    assert not outcome.complete
    assert Counter(r.operation for r in s3.of("CompleteMultipartUpload")) == Counter()


def test_a_session_is_sent_a_page_at_a_time_and_a_changed_file_stops_no_other_page(
    bench: Bench,
) -> None:
    """Pending files are read a page at a time (memory stays flat in the session's size):
    every file of every page goes up, and a file that changes in the first page is reported
    without keeping the later pages from being sent."""
    for number in range(7):
        bench.add_file(f"f{number}.bin", os.urandom(1000 + number))
    uploader = bench.uploader()
    uploader.page = 3
    changing = bench.folder / "f1.bin"
    changing.write_bytes(b"rewritten after the scan")
    outcome = uploader.upload_session(bench.session())
    assert outcome.changed == ["f1.bin"] and not outcome.complete
    sent = {f.rel_path for f in bench.ledger.files_of(SESSION_ID) if f.state == DONE}
    assert sent == {f"f{n}.bin" for n in range(7)} - {"f1.bin"}
    bench.record("f1.bin")
    outcome = uploader.upload_session(bench.session())
    assert outcome.complete and outcome.files_sent == 1
    assert bench.object_bytes(f"{PREFIX}/f1.bin") == b"rewritten after the scan"
