"""The upload engine: sends a session's pending files and its manifest, recording every step.

Wires the state database to the S3 store (it imports neither sqlite_utils nor boto3). One
producer (the calling thread) reads files in order, feeding each byte once to the checksum
and to the upload; a thread pool sends small files and parts of large files interleaved, so
neither starves the other; one byte budget bounds the memory in flight.

Crash safety: a multipart upload id is recorded the moment the server returns it, and each
part as soon as the server acknowledges it; a file is recorded as uploaded only after the
object is complete and the local file is unchanged. After a restart, recorded parts are not
sent again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from agent import __version__
from agent.checksums import RunningChecksum, digest_b64
from agent.config import Settings
from agent.errors import (
    FileChangedError,
    NoSuchUploadError,
    PermanentTransferError,
    RetryableTransferError,
    TransferError,
)
from agent.planning import (
    MAX_PARTS,
    Part,
    build_manifest,
    manifest_key,
    multipart_etag,
    part_size_for,
    plan_parts,
)
from agent.scan import check_unchanged, open_source
from agent.state import FileRecord, Ledger, PartRecord, SessionRecord, UploadRecord
from agent.throttle import Interrupted
from agent.transfer import (
    AGENT_METADATA_MARK,
    ObjectInfo,
    PreconditionFailedError,
    S3Store,
)

log = structlog.get_logger("agent.upload")


class ByteBudget:
    """Bounds the bytes read into memory and not yet sent."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._condition = threading.Condition()

    def acquire(self, amount: int, stop: threading.Event) -> int:
        """Wait until `amount` bytes fit (capped at capacity); return what was taken."""
        amount = min(amount, self.capacity)
        with self._condition:
            while self._used + amount > self.capacity:
                if stop.is_set():
                    raise Interrupted()
                self._condition.wait(0.2)
            self._used += amount
        return amount

    def release(self, amount: int) -> None:
        """Give back bytes taken by `acquire`."""
        with self._condition:
            self._used -= amount
            self._condition.notify_all()


@dataclass
class UploadOutcome:
    """What one upload pass of a session did."""

    files_sent: int = 0
    bytes_sent: int = 0
    files_already_there: int = 0
    changed: list[str] = field(default_factory=list)
    errors: list[TransferError] = field(default_factory=list)
    interrupted: bool = False
    manifest_key: str | None = None

    @property
    def complete(self) -> bool:
        """True when every file went up and the manifest was written."""
        return self.manifest_key is not None


@dataclass
class _MultipartJob:
    record: FileRecord
    path: Path
    upload_id: str
    part_size: int
    remaining: set[int]
    reading_done: bool = False
    finishing: bool = False
    checksum: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Unit:
    """One thing for a worker to send: a whole small file, or one part of a large file."""

    record: FileRecord
    data: bytes
    reserved: int
    part: Part | None = None
    job: _MultipartJob | None = None
    part_checksum: str | None = None
    running_checksum: str | None = None
    checksum: str | None = None


def _now_iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class SessionUploader:
    """Uploads sessions for one agent: its settings, upload ledger and S3 store."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        store: S3Store,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.store = store
        self.clock = clock
        self.algorithm = settings.destination.checksum
        self.send_checksums = settings.destination.server_checksums
        self.budget = ByteBudget(settings.upload.max_memory)

    # --- metadata -----------------------------------------------------------------------------

    def _object_metadata(self, record: FileRecord, **extra: str) -> dict[str, str]:
        metadata = dict(self.settings.destination.metadata)
        metadata.update(
            {
                AGENT_METADATA_MARK: self.settings.agent.name,
                "agent-mtime-ns": str(record.mtime_ns),
                "agent-checksum-algorithm": self.algorithm,
            }
        )
        metadata.update(extra)
        return metadata

    def _header(self, value: str | None) -> tuple[str, str] | None:
        return (self.algorithm, value) if self.send_checksums and value is not None else None

    # --- session ------------------------------------------------------------------------------

    def upload_session(self, session: SessionRecord) -> UploadOutcome:
        """Send every pending file of `session`, then its manifest. Return what happened.

        Transfer errors are collected in the outcome (the caller decides the session's state);
        files that changed while being read are listed in `changed` and left pending.
        """
        outcome = UploadOutcome()
        pending = self.ledger.pending_files(session.id)
        remote_sizes = self._remote_sizes(session, pending)
        small: list[FileRecord] = []
        large: list[FileRecord] = []
        for record in pending:
            upload = self.ledger.upload_for(session.id, record.rel_path)
            if (
                upload is None
                and remote_sizes.get(record.key) == record.size
                and self._already_there(session, record, outcome)
            ):
                continue
            if record.size < self.settings.upload.multipart_threshold and upload is None:
                small.append(record)
            else:
                large.append(record)

        failed = threading.Event()
        lock = threading.Lock()

        def finished(unit: _Unit, future: Future[None]) -> None:
            self.budget.release(unit.reserved)
            error = future.exception()
            with lock:
                if error is None:
                    return
                if isinstance(error, FileChangedError):
                    outcome.changed.append(unit.record.rel_path)
                elif isinstance(error, Interrupted):
                    outcome.interrupted = True
                elif isinstance(error, TransferError):
                    outcome.errors.append(error)
                    failed.set()
                else:
                    outcome.errors.append(
                        PermanentTransferError(
                            "upload", unit.record.key, f"{type(error).__name__}: {error}"
                        )
                    )
                    failed.set()

        def send(unit: _Unit) -> None:
            self._send_unit(session, unit, outcome, lock)

        units = self._interleave(
            self._small_units(session, small, outcome, lock),
            self._large_units(session, large, outcome, lock),
        )
        with ThreadPoolExecutor(
            max_workers=self.settings.upload.concurrency, thread_name_prefix="upload"
        ) as pool:
            try:
                for unit in units:
                    if failed.is_set() or self.store.stop.is_set():
                        self.budget.release(unit.reserved)
                        break
                    future = pool.submit(send, unit)
                    future.add_done_callback(functools.partial(finished, unit))
            except Interrupted:
                outcome.interrupted = True
            except TransferError as error:
                outcome.errors.append(error)
        if self.store.stop.is_set():
            outcome.interrupted = True
        if outcome.errors or outcome.interrupted or outcome.changed:
            return outcome
        if self.ledger.pending_files(session.id):
            # A file appeared or changed after we started: the next pass picks it up.
            outcome.changed.append("(new files)")
            return outcome
        outcome.manifest_key = self._write_manifest(session)
        return outcome

    @staticmethod
    def _interleave(*sources: Iterator[_Unit]) -> Iterator[_Unit]:
        active = list(sources)
        while active:
            for source in list(active):
                try:
                    yield next(source)
                except StopIteration:
                    active.remove(source)

    def _remote_sizes(self, session: SessionRecord, pending: list[FileRecord]) -> dict[str, int]:
        """Sizes of objects already under the session's prefix, when there is anything to
        check: lets a re-run (or a rolled-back database) skip what S3 already holds."""
        if not pending:
            return {}
        return self.store.list_keys(session.key_prefix + "/")

    def _already_there(
        self, session: SessionRecord, record: FileRecord, outcome: UploadOutcome
    ) -> bool:
        """An object of the right size is at the key: if it holds this file's bytes, record
        the file as uploaded without sending it."""
        info = self.store.head(record.key)
        if info is None or info.size != record.size:
            return False
        path = Path(session.path) / record.rel_path
        match = _local_matches(path, record, info, self.algorithm)
        if match is None:
            return False
        self.ledger.file_uploaded(
            record,
            checksum=match,
            checksum_algorithm=self.algorithm,
            etag=info.etag,
            now=self.clock(),
        )
        outcome.files_already_there += 1
        log.info("already_in_s3", session=session.id, file=record.rel_path, key=record.key)
        return True

    # --- producing units ----------------------------------------------------------------------

    def _read_part(self, descriptor: int, part: Part, path: Path) -> tuple[bytes, int]:
        """Read one whole part within the memory budget; return its bytes and the budget
        taken. A short read means the file shrank: FileChangedError."""
        reserved = self.budget.acquire(part.length, self.store.stop)
        try:
            data = os.pread(descriptor, part.length, part.offset)
        except BaseException:
            self.budget.release(reserved)
            raise
        if len(data) != part.length:
            self.budget.release(reserved)
            raise FileChangedError(str(path))
        return data, reserved

    @staticmethod
    def _check_unchanged(path: Path, record: FileRecord) -> None:
        check_unchanged(
            path,
            size=record.size,
            mtime_ns=record.mtime_ns,
            inode=record.inode,
            device=record.device,
        )

    def _small_units(
        self,
        session: SessionRecord,
        records: list[FileRecord],
        outcome: UploadOutcome,
        lock: threading.Lock,
    ) -> Iterator[_Unit]:
        for record in records:
            path = Path(session.path) / record.rel_path
            reserved = self.budget.acquire(record.size, self.store.stop)
            try:
                with open_source(path, inode=record.inode, device=record.device) as (
                    handle,
                    info,
                ):
                    if (info.st_size, info.st_mtime_ns) != (record.size, record.mtime_ns):
                        raise FileChangedError(str(path))
                    data = handle.read(record.size + 1)
                if len(data) != record.size:
                    raise FileChangedError(str(path))
            except (FileChangedError, FileNotFoundError):
                self.budget.release(reserved)
                with lock:
                    outcome.changed.append(record.rel_path)
                continue
            except BaseException:
                self.budget.release(reserved)
                raise
            checksum = digest_b64(self.algorithm, data)
            yield _Unit(record, data, reserved, checksum=checksum)

    def _large_units(
        self,
        session: SessionRecord,
        records: list[FileRecord],
        outcome: UploadOutcome,
        lock: threading.Lock,
    ) -> Iterator[_Unit]:
        for record in records:
            path = Path(session.path) / record.rel_path
            try:
                # Opened before any multipart upload is created for it: a file swapped since
                # the scan costs nothing on the server.
                with open_source(path, inode=record.inode, device=record.device) as (
                    handle,
                    info,
                ):
                    if (info.st_size, info.st_mtime_ns) != (record.size, record.mtime_ns):
                        raise FileChangedError(str(path))
                    yield from self._parts_of(session, record, path, handle)
            except (FileChangedError, FileNotFoundError):
                with lock:
                    outcome.changed.append(record.rel_path)

    def _open_upload(self, record: FileRecord) -> UploadRecord:
        """The upload to continue for this file: the recorded one if the server still knows
        it and it is for this version of the file; otherwise a new one, recorded at once."""
        upload = self.ledger.upload_for(record.session_id, record.rel_path)
        if upload is not None and (upload.size, upload.mtime_ns) != (record.size, record.mtime_ns):
            reason = _growing_mismatch(upload, record)
            if upload.growing and reason is None:
                pass  # started while the file grew; its parts are checked as they are read
            else:
                log.info(
                    "upload_discarded",
                    session=record.session_id,
                    file=record.rel_path,
                    key=record.key,
                    upload_id=upload.upload_id,
                    reason=reason or "file changed since it started",
                )
                self.store.abort_multipart(upload.key, upload.upload_id)
                self.ledger.upload_finished(upload.upload_id)
                upload = None
        if upload is not None:
            try:
                on_server = self.store.list_parts(upload.key, upload.upload_id)
            except NoSuchUploadError:
                on_server = {}
                if not upload.parts or len(upload.parts) < len(
                    plan_parts(record.size, upload.part_size)
                ):
                    log.warning(
                        "upload_unknown_to_server",
                        session=record.session_id,
                        file=record.rel_path,
                        key=upload.key,
                        upload_id=upload.upload_id,
                    )
                    self.ledger.upload_finished(upload.upload_id)
                    upload = None
                else:
                    # Every part recorded: Complete may already have happened.
                    on_server = None
            if upload is not None and on_server is not None:
                lost = [p for p in upload.parts if on_server.get(p.number) != p.etag]
                if lost:
                    log.warning(
                        "parts_missing_on_server",
                        session=record.session_id,
                        file=record.rel_path,
                        key=upload.key,
                        upload_id=upload.upload_id,
                        parts=[p.number for p in lost],
                    )
                    self.ledger.forget_parts(upload.upload_id, [p.number for p in lost])
                    upload = self.ledger.upload_for(record.session_id, record.rel_path)
        if upload is not None:
            log.info(
                "upload_resumed",
                session=record.session_id,
                file=record.rel_path,
                key=upload.key,
                upload_id=upload.upload_id,
                parts_done=len(upload.parts),
            )
            return upload
        return self._start_upload(
            record, part_size_for(record.size, self.settings.upload.part_size)
        )

    def _start_upload(
        self, record: FileRecord, part_size: int, *, growing: bool = False
    ) -> UploadRecord:
        """Create a multipart upload and record it in the same step."""
        upload_id = self.store.create_multipart(
            record.key,
            metadata=self._object_metadata(record, **{"agent-part-size": str(part_size)}),
            checksum_algorithm=self.algorithm if self.send_checksums else None,
        )
        self.ledger.upload_started(
            upload_id=upload_id,
            record=record,
            part_size=part_size,
            checksum_algorithm=self.algorithm,
            now=self.clock(),
            growing=growing,
        )
        fresh = self.ledger.upload_for(record.session_id, record.rel_path)
        assert fresh is not None
        return fresh

    def _parts_of(
        self, session: SessionRecord, record: FileRecord, path: Path, handle: BinaryIO
    ) -> Iterator[_Unit]:
        """The parts of one large file still to send, read from `handle` (opened by
        `open_source`, so they come from the scanned file and nothing else)."""
        upload = self._open_upload(record)
        parts = plan_parts(record.size, upload.part_size)
        done = {part.number: part for part in upload.parts}
        # Resume the whole-file checksum after the longest run of finished parts, if the
        # algorithm allows; otherwise read from the start (reading is local, sending is not).
        start = 0
        running: RunningChecksum | None = None
        while start < len(parts) and parts[start].number in done and not upload.growing:
            start += 1
        if start:
            previous = parts[start - 1]
            running = RunningChecksum.resume(
                self.algorithm,
                done[previous.number].running_checksum,
                previous.offset + previous.length,
            )
        if running is None:
            start = 0
            running = RunningChecksum(self.algorithm)
        job = _MultipartJob(
            record,
            path,
            upload.upload_id,
            upload.part_size,
            remaining={p.number for p in parts if p.number not in done},
        )
        for part in parts[start:]:
            data, reserved = self._read_part(handle.fileno(), part, path)
            running.update(data)
            if part.number in done:
                self.budget.release(reserved)
                if upload.growing and digest_b64(self.algorithm, data) != (
                    done[part.number].checksum
                ):
                    self._discard_rewritten(upload, part.number)
                    raise FileChangedError(str(path))
                continue
            if part.number == parts[-1].number:
                job.checksum = running.value()
            yield _Unit(
                record,
                data,
                reserved,
                part=part,
                job=job,
                # Kept even when not sent: it lets a growing upload prove its early
                # parts still match the file.
                part_checksum=digest_b64(self.algorithm, data),
                running_checksum=running.save(),
            )
        with job.lock:
            job.checksum = running.value()
            job.reading_done = True
            ready = not job.remaining and not job.finishing
            job.finishing = job.finishing or ready
        if ready:
            self._complete(session, job)

    def _discard_rewritten(self, upload: UploadRecord, number: int) -> None:
        log.warning(
            "growing_upload_discarded",
            session=upload.session_id,
            file=upload.rel_path,
            key=upload.key,
            upload_id=upload.upload_id,
            part=number,
            reason="bytes already sent changed: the file was rewritten, not appended to",
        )
        self.store.abort_multipart(upload.key, upload.upload_id)
        self.ledger.upload_finished(upload.upload_id)

    # --- growing files ------------------------------------------------------------------------

    def upload_growing(self, session: SessionRecord, part_size: int) -> UploadOutcome:
        """Send the stable leading parts of files still being appended to, in a session not
        yet complete: whole parts of `part_size` that lie at least one part below the
        current end. Nothing is completed here; the session's upload finishes the files."""
        outcome = UploadOutcome()
        lock = threading.Lock()
        candidates = [
            record
            for record in self.ledger.pending_files(session.id)
            if record.size >= 2 * part_size
        ]
        if not candidates:
            return outcome

        def finished(unit: _Unit, future: Future[None]) -> None:
            self.budget.release(unit.reserved)
            error = future.exception()
            if error is not None:
                with lock:
                    if isinstance(error, Interrupted):
                        outcome.interrupted = True
                    elif isinstance(error, TransferError):
                        outcome.errors.append(error)

        with ThreadPoolExecutor(
            max_workers=self.settings.upload.concurrency, thread_name_prefix="growing"
        ) as pool:
            for record in candidates:
                try:
                    for unit in self._growing_units(session, record, part_size):
                        if self.store.stop.is_set() or outcome.errors:
                            self.budget.release(unit.reserved)
                            break
                        future = pool.submit(self._send_unit, session, unit, outcome, lock)
                        future.add_done_callback(functools.partial(finished, unit))
                except (FileChangedError, FileNotFoundError):
                    outcome.changed.append(record.rel_path)
                except Interrupted:
                    outcome.interrupted = True
                    break
                except TransferError as error:
                    outcome.errors.append(error)
                    break
        return outcome

    def _growing_units(
        self, session: SessionRecord, record: FileRecord, part_size: int
    ) -> Iterator[_Unit]:
        path = Path(session.path) / record.rel_path
        upload = self.ledger.upload_for(record.session_id, record.rel_path)
        if upload is not None and not upload.growing:
            return  # an ordinary upload of an earlier version is the final pass's business
        # Opened first, and sized from its own descriptor: the bytes sent below come from the
        # file the scan saw (same inode and device), not from whatever the path leads to now.
        with open_source(path, inode=record.inode, device=record.device) as (handle, info):
            if upload is not None and (
                info.st_ino != upload.inode or info.st_size < _covered(upload)
            ):
                self._discard_rewritten(upload, 0)
                upload = None
            stable = min((info.st_size - part_size) // part_size, MAX_PARTS - 1)
            done = {part.number: part for part in upload.parts} if upload else {}
            if stable <= len(done):
                return
            if upload is None:
                upload = self._start_upload(record, part_size, growing=True)
                log.info(
                    "growing_upload_started",
                    session=record.session_id,
                    file=record.rel_path,
                    key=record.key,
                    upload_id=upload.upload_id,
                    size=info.st_size,
                )
            job = _MultipartJob(record, path, upload.upload_id, part_size, remaining=set())
            running = RunningChecksum(self.algorithm)  # whole-file value is settled at the end
            for number in range(1, stable + 1):
                if number in done:
                    continue
                offset = (number - 1) * part_size
                data, reserved = self._read_part(
                    handle.fileno(), Part(number, offset, part_size), path
                )
                yield _Unit(
                    record,
                    data,
                    reserved,
                    part=Part(number, offset, part_size),
                    job=job,
                    part_checksum=digest_b64(self.algorithm, data),
                    running_checksum=running.save(),
                )

    # --- sending ------------------------------------------------------------------------------

    def _send_unit(
        self, session: SessionRecord, unit: _Unit, outcome: UploadOutcome, lock: threading.Lock
    ) -> None:
        if unit.job is None:
            self._put_small(session, unit)
            with lock:
                outcome.files_sent += 1
                outcome.bytes_sent += len(unit.data)
            return
        job, part = unit.job, unit.part
        assert part is not None
        etag = self.store.upload_part(
            unit.record.key, job.upload_id, part.number, unit.data, self._header(unit.part_checksum)
        )
        self.ledger.part_finished(
            job.upload_id,
            PartRecord(part.number, etag, unit.part_checksum, part.length, unit.running_checksum),
        )
        with lock:
            outcome.bytes_sent += part.length
        with job.lock:
            job.remaining.discard(part.number)
            ready = job.reading_done and not job.remaining and not job.finishing
            job.finishing = job.finishing or ready
        if ready:
            self._complete(session, job)
            with lock:
                outcome.files_sent += 1

    def _put_small(self, session: SessionRecord, unit: _Unit) -> None:
        record = unit.record
        assert unit.checksum is not None
        metadata = self._object_metadata(record, **{"agent-checksum": unit.checksum})
        first_time = record.uploaded_size is None
        try:
            etag = self.store.put(
                record.key,
                unit.data,
                metadata=metadata,
                checksum=self._header(unit.checksum),
                only_if_absent=first_time,
            )
        except PreconditionFailedError:
            etag = self._settle_existing(record, unit, metadata)
        path = Path(session.path) / record.rel_path
        self._check_unchanged(path, record)
        self.ledger.file_uploaded(
            record,
            checksum=unit.checksum,
            checksum_algorithm=self.algorithm,
            etag=etag,
            now=self.clock(),
        )
        log.info(
            "file_uploaded",
            session=session.id,
            file=record.rel_path,
            key=record.key,
            bytes=record.size,
            parts=0,
        )

    def _settle_existing(self, record: FileRecord, unit: _Unit, metadata: dict[str, str]) -> str:
        """A conditional PUT found an object at the key. Ours with the same bytes: done.
        Ours from an earlier version: replace it. Someone else's: refuse to overwrite."""
        assert unit.checksum is not None
        info = self.store.head(record.key)
        if info is None:
            return self.store.put(
                record.key, unit.data, metadata=metadata, checksum=self._header(unit.checksum)
            )
        if info.size == record.size and info.metadata.get("agent-checksum") == unit.checksum:
            return info.etag
        if info.metadata.get(AGENT_METADATA_MARK) == self.settings.agent.name:
            return self.store.put(
                record.key, unit.data, metadata=metadata, checksum=self._header(unit.checksum)
            )
        raise PermanentTransferError(
            "PutObject",
            record.key,
            "an object not written by this agent is already at this key; refusing to overwrite "
            "it (move it away or change the destination prefix)",
        )

    def _complete(self, session: SessionRecord, job: _MultipartJob) -> None:
        record = job.record
        upload = self.ledger.upload_for(record.session_id, record.rel_path)
        assert upload is not None and upload.upload_id == job.upload_id
        try:
            self._check_unchanged(job.path, record)
        except FileChangedError:
            log.warning("file_changed_during_upload", session=session.id, file=record.rel_path)
            self.store.abort_multipart(upload.key, upload.upload_id)
            self.ledger.upload_finished(upload.upload_id)
            raise
        parts = [(p.number, p.etag, self._header(p.checksum)) for p in upload.parts]
        expected_etag = multipart_etag(p.etag for p in upload.parts)
        try:
            etag = self.store.complete_multipart(upload.key, upload.upload_id, parts)
        except NoSuchUploadError:
            # A repeated Complete (after a crash) is answered "no such upload" by some
            # servers: the object itself settles whether the first one worked.
            info = self.store.head(upload.key)
            if info is None or info.size != record.size or info.etag != expected_etag:
                self.ledger.upload_finished(upload.upload_id)
                raise RetryableTransferError(
                    "CompleteMultipartUpload",
                    upload.key,
                    "the server lost the upload before it completed; the file will be sent again",
                ) from None
            etag = info.etag
        assert job.checksum is not None
        self._tag_checksum(upload.key, job.checksum)
        self.ledger.file_uploaded(
            record,
            checksum=job.checksum,
            checksum_algorithm=self.algorithm,
            etag=etag,
            now=self.clock(),
            finished_upload_id=upload.upload_id,
        )
        log.info(
            "file_uploaded",
            session=session.id,
            file=record.rel_path,
            key=record.key,
            bytes=record.size,
            upload_id=upload.upload_id,
            parts=len(parts),
        )

    def _tag_checksum(self, key: str, checksum: str) -> None:
        """A multipart object's whole-file checksum is known only after its last part, too
        late for its metadata: it goes into the object's tags instead (and always into the
        database and the manifest). A server without tagging only costs the tag."""
        try:
            self.store.tag(
                key, {"agent-checksum": checksum, "agent-checksum-algorithm": self.algorithm}
            )
        except TransferError as error:
            log.warning("checksum_tag_failed", key=key, error=str(error))

    # --- manifest -----------------------------------------------------------------------------

    def _write_manifest(self, session: SessionRecord) -> str:
        key = manifest_key(session.key_prefix)
        now = self.clock()
        files = [
            {
                "rel_path": f.rel_path,
                "key": f.key,
                "size": f.size,
                "mtime_ns": f.mtime_ns,
                "checksum_algorithm": f.checksum_algorithm,
                "checksum": f.checksum,
                "etag": f.etag,
            }
            for f in self.ledger.files_of(session.id)
            if f.state == "uploaded"
        ]
        refused = [
            {"path": f.rel_path, "reason": f.error}
            for f in self.ledger.files_of(session.id)
            if f.state == "refused"
        ]
        revision = session.manifest_revision + 1
        document: dict[str, Any] = build_manifest(
            session={
                "id": session.id,
                "source": session.source,
                "rel_path": session.rel_path,
                "key_prefix": session.key_prefix,
                "metadata": session.metadata,
            },
            files=files,
            agent_name=self.settings.agent.name,
            agent_version=__version__,
            revision=revision,
            written_at=_now_iso(now),
        )
        if refused:
            document["refused"] = refused
        body = json.dumps(document, indent=1, sort_keys=True).encode()
        self.store.put(
            key,
            body,
            metadata={
                AGENT_METADATA_MARK: self.settings.agent.name,
                "agent-manifest-revision": str(revision),
            },
            content_type="application/json",
        )
        self.ledger.manifest_written(session.id, key=key, revision=revision, now=now)
        log.info(
            "manifest_written", session=session.id, key=key, revision=revision, files=len(files)
        )
        return key


def _covered(upload: UploadRecord) -> int:
    """Bytes of the file that an upload's recorded parts cover."""
    return sum(part.size for part in upload.parts)


def _growing_mismatch(upload: UploadRecord, record: FileRecord) -> str | None:
    """Why a growing upload cannot carry on into the file as it is now, or None if it can
    (same inode, not shorter than what was sent, and within the part limit)."""
    if not upload.growing:
        return "file changed since it started"
    if upload.inode is not None and upload.inode != record.inode:
        return "file was replaced (new inode)"
    if record.size < _covered(upload):
        return "file is shorter than what was already sent"
    if len(plan_parts(record.size, upload.part_size)) > MAX_PARTS:
        return "file outgrew 10,000 parts of the growing part size"
    return None


def _local_matches(path: Path, record: FileRecord, info: ObjectInfo, algorithm: str) -> str | None:
    """Read a local file once; if it holds the same bytes as the object described by `info`
    (by the agent's checksum metadata, or the multipart ETag for its part size), return the
    file's checksum; otherwise None."""
    stored = info.metadata.get("agent-checksum")
    stored_algorithm = info.metadata.get("agent-checksum-algorithm")
    part_size_text = info.metadata.get("agent-part-size")
    running = RunningChecksum(algorithm)
    part_digests: list[str] = []
    part_size = int(part_size_text) if part_size_text and part_size_text.isdigit() else 0
    try:
        with open_source(path, inode=record.inode, device=record.device) as (handle, opened):
            if (opened.st_size, opened.st_mtime_ns) != (record.size, record.mtime_ns):
                return None
            while True:
                block = handle.read(part_size or 8 * 1024**2)
                if not block and (part_digests or not part_size):
                    break
                running.update(block)
                if part_size:
                    part_digests.append(hashlib.md5(block).hexdigest())
                if not block:
                    break
    except (OSError, FileChangedError):
        return None
    checksum = running.value()
    if stored is not None and stored_algorithm == algorithm:
        return checksum if stored == checksum else None
    if part_size and info.etag.endswith(f"-{len(part_digests)}"):
        return checksum if multipart_etag(part_digests) == info.etag else None
    return None
