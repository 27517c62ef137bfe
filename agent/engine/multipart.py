"""One file's resumable multipart upload, from open or resume to complete or abort.

Owns: the decisions of a resume as pure functions of plain data (which recorded parts the
server no longer holds, which parts it holds that were never recorded and may be adopted,
whether a recorded upload can carry on into the file as it is now, where the running
checksum resumes), and `MultipartUpload`, the one place that knows how a multipart upload
begins (created and recorded in the same step), goes on (each part recorded as the server
acknowledges it, or adopted at resume when the server holds the local bytes) and ends
(completed, conditionally where the server supports it; settled after "no such upload" or a
failed condition; tagged with the whole-file checksum; or aborted and forgotten). Reads the
file only to judge parts it may adopt; otherwise `agent.engine.reading` reads and
`agent.engine.pipeline` schedules.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.checksums import RunningChecksum
from agent.engine.adoption import adopt
from agent.engine.context import EngineContext, check_record_unchanged
from agent.engine.pipeline import Sent
from agent.engine.single_put import ABSENT, OURS, SAME, existing_verdict, refusal
from agent.errors import (
    FileChangedError,
    NoSuchUploadError,
    RetryableTransferError,
    TransferError,
)
from agent.planning import MAX_PARTS, Part, multipart_etag, part_size_for, plan_parts
from agent.s3errors import PreconditionFailedError
from agent.state import FileRecord, PartRecord, UploadRecord
from agent.transfer import ListedPart

log = structlog.get_logger("agent.upload")


# --- decisions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reconciliation:
    """What a resume does with a recorded upload after asking the server for its parts:
    start afresh (`restart`), or carry on after forgetting the parts in `lost`."""

    restart: bool = False
    lost: tuple[int, ...] = ()


def reconcile(
    recorded: Sequence[PartRecord], listed: Mapping[int, str] | None, *, gone: bool, planned: int
) -> Reconciliation:
    """Given the parts recorded for an upload, the server's {number: etag} for it (None where
    the server cannot list parts), whether the server answered "no such upload", and how many
    parts the file has, return what to do. A recorded part the server does not list with the
    same ETag is lost (sent again). An upload the server lost is restarted, unless every part
    was recorded: then Complete may already have happened, and completing settles it."""
    if gone:
        if not recorded or len(recorded) < planned:
            return Reconciliation(restart=True)
        return Reconciliation()
    if listed is None:
        return Reconciliation()
    return Reconciliation(
        lost=tuple(part.number for part in recorded if listed.get(part.number) != part.etag)
    )


def covered(upload: UploadRecord) -> int:
    """Bytes of the file that an upload's recorded parts cover."""
    return sum(part.size for part in upload.parts)


def growing_mismatch(upload: UploadRecord, record: FileRecord) -> str | None:
    """Why a growing upload cannot carry on into the file as it is now, or None if it can
    (same inode, not shorter than what was sent, and within the part limit)."""
    if not upload.growing:
        return "file changed since it started"
    if upload.inode is not None and upload.inode != record.inode:
        return "file was replaced (new inode)"
    if record.size < covered(upload):
        return "file is shorter than what was already sent"
    if len(plan_parts(record.size, upload.part_size)) > MAX_PARTS:
        return "file outgrew 10,000 parts of the growing part size"
    return None


def discard_reason(upload: UploadRecord, record: FileRecord) -> str | None:
    """Why a recorded upload cannot carry this version of the file, or None if it can: it
    was started for the same size and mtime, or it is a growing upload the file extends."""
    if (upload.size, upload.mtime_ns) == (record.size, record.mtime_ns):
        return None
    return growing_mismatch(upload, record)


def stable_parts(size: int, part_size: int) -> int:
    """How many whole parts of a growing file of `size` lie at least a part below its end
    (they will not change if the file is only appended to), within the part limit."""
    return max(0, min((size - part_size) // part_size, MAX_PARTS - 1))


def resume_point(
    parts: Sequence[Part],
    done: Mapping[int, PartRecord],
    algorithm: str,
    *,
    from_start: bool = False,
) -> tuple[int, RunningChecksum]:
    """Given a file's planned parts and those already recorded, return the index of the
    first part to read and the running checksum of the bytes before it: after the longest
    leading run of recorded parts where the algorithm can resume, else from the start
    (reading is local, sending is not)."""
    start = 0
    if not from_start:
        while start < len(parts) and parts[start].number in done:
            start += 1
    if start:
        previous = parts[start - 1]
        running = RunningChecksum.resume(
            algorithm, done[previous.number].running_checksum, previous.offset + previous.length
        )
        if running is not None:
            return start, running
    return 0, RunningChecksum(algorithm)


# --- the upload -------------------------------------------------------------------------------


class MultipartUpload:
    """One file's multipart upload on the server and in the ledger.

    Parts may be sent from several workers; the upload completes once, when reading is done
    and no part is left, from whichever side sees that last.
    """

    def __init__(
        self, context: EngineContext, record: FileRecord, path: Path, upload: UploadRecord
    ) -> None:
        self.context = context
        self.record = record
        self.path = path
        self.upload = upload
        self._lock = threading.Lock()
        self._remaining: set[int] = set()
        self._reading_done = False
        self._finishing = False
        self._checksum: str | None = None

    @property
    def upload_id(self) -> str:
        """The server's id of this upload."""
        return self.upload.upload_id

    # --- beginning ------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        context: EngineContext,
        record: FileRecord,
        path: Path,
        part_size: int,
        *,
        growing: bool = False,
    ) -> MultipartUpload:
        """Create a multipart upload for `record` and record it in the same step."""
        upload_id = context.store.create_multipart(
            record.key,
            metadata=context.metadata(record, **{"agent-part-size": str(part_size)}),
            checksum_algorithm=(
                context.algorithm if context.settings.destination.server_checksums else None
            ),
        )
        context.ledger.upload_started(
            upload_id=upload_id,
            record=record,
            part_size=part_size,
            checksum_algorithm=context.algorithm,
            now=context.clock(),
            growing=growing,
        )
        fresh = context.ledger.upload_for(record.session_id, record.rel_path)
        assert fresh is not None
        return cls(context, record, path, fresh)

    @classmethod
    def open(cls, context: EngineContext, record: FileRecord, path: Path) -> MultipartUpload:
        """The upload to continue for this file: the recorded one if it can carry this
        version of the file and the server still knows it, with the parts the server lost
        forgotten; otherwise a new one."""
        recorded = context.ledger.upload_for(record.session_id, record.rel_path)
        if recorded is not None:
            reason = discard_reason(recorded, record)
            if reason is not None:
                cls(context, record, path, recorded).abort(
                    "upload_discarded", level="info", reason=reason
                )
                recorded = None
        if recorded is not None:
            upload = cls(context, record, path, recorded)
            if upload._reconcile():
                log.info(
                    "upload_resumed",
                    session=record.session_id,
                    file=record.rel_path,
                    key=upload.upload.key,
                    upload_id=upload.upload_id,
                    parts_done=len(upload.upload.parts),
                )
                return upload
        part_size = part_size_for(record.size, context.settings.upload.part_size)
        return cls.start(context, record, path, part_size)

    def _reconcile(self) -> bool:
        """Cross-check the recorded parts with the server's list (ListParts). Forget the
        parts it does not hold; return False (and forget the upload) if it must restart."""
        upload = self.upload
        gone = False
        listed: dict[int, ListedPart] | None
        try:
            listed = self.context.store.list_parts(upload.key, upload.upload_id)
        except NoSuchUploadError:
            listed, gone = None, True
        decision = reconcile(
            upload.parts,
            None if listed is None else {number: part.etag for number, part in listed.items()},
            gone=gone,
            planned=len(plan_parts(self.record.size, upload.part_size)),
        )
        fields = {
            "session": self.record.session_id,
            "file": self.record.rel_path,
            "key": upload.key,
            "upload_id": upload.upload_id,
        }
        if decision.restart:
            log.warning("upload_unknown_to_server", **fields)
            self.context.ledger.upload_finished(upload.upload_id)
            return False
        if decision.lost:
            log.warning("parts_missing_on_server", **fields, parts=list(decision.lost))
            self.context.ledger.forget_parts(upload.upload_id, list(decision.lost))
            self.refresh()
        if listed:
            adopt(self, listed, fields)
        return True

    def refresh(self) -> None:
        """Read the upload's record (and its parts) again from the ledger."""
        fresh = self.context.ledger.upload_for(self.record.session_id, self.record.rel_path)
        assert fresh is not None
        self.upload = fresh

    # --- going on -------------------------------------------------------------------------

    def expect(self, numbers: set[int]) -> None:
        """The parts this pass will send; the upload completes once they are all sent."""
        with self._lock:
            self._remaining = set(numbers)

    def send_part(
        self,
        part: Part,
        data: bytes,
        part_checksum: str | None,
        running_checksum: str | None,
        note: Callable[[Sent], None],
    ) -> bool:
        """Send one part and record it; return True if the upload is now ready to complete
        (the caller completes it)."""
        etag = self.context.store.upload_part(
            self.upload.key, self.upload_id, part.number, data, self.context.header(part_checksum)
        )
        self.context.ledger.part_finished(
            self.upload_id,
            PartRecord(part.number, etag, part_checksum, part.length, running_checksum),
        )
        note(Sent(bytes=part.length))
        with self._lock:
            self._remaining.discard(part.number)
            return self._claim_finish()

    def reading_finished(self, checksum: str) -> bool:
        """Every part was read and `checksum` is the whole file's; return True if the upload
        is now ready to complete (the caller completes it)."""
        with self._lock:
            self._checksum = checksum
            self._reading_done = True
            return self._claim_finish()

    def _claim_finish(self) -> bool:
        ready = self._reading_done and not self._remaining and not self._finishing
        self._finishing = self._finishing or ready
        return ready

    # --- ending ---------------------------------------------------------------------------

    def complete(self) -> None:
        """Complete the upload from its recorded parts, tag the object with the file's
        checksum, and record the file as uploaded (forgetting the upload in the same step).

        Raise FileChangedError (after aborting) if the file changed since it was read, and
        RetryableTransferError if the server lost the upload before it completed.
        """
        record, context = self.record, self.context
        upload = context.ledger.upload_for(record.session_id, record.rel_path)
        assert upload is not None and upload.upload_id == self.upload_id
        assert self._checksum is not None
        try:
            check_record_unchanged(self.path, record)
        except FileChangedError:
            log.warning(
                "file_changed_during_upload", session=record.session_id, file=record.rel_path
            )
            self.abort(None)
            raise
        parts = [(p.number, p.etag, context.header(p.checksum)) for p in upload.parts]
        first = record.uploaded_size is None
        try:
            etag = context.store.complete_multipart(
                upload.key,
                upload.upload_id,
                parts,
                only_if_absent=first,
                if_match=None if first else (record.etag or None),
            )
        except NoSuchUploadError:
            etag = self._settle_lost_complete(upload)
        except PreconditionFailedError:
            etag = self._settle_existing(upload, parts)
        self._tag_checksum(upload.key, self._checksum)
        context.ledger.file_uploaded(
            record,
            checksum=self._checksum,
            checksum_algorithm=context.algorithm,
            etag=etag,
            now=context.clock(),
            finished_upload_id=upload.upload_id,
        )
        log.info(
            "file_uploaded",
            session=record.session_id,
            file=record.rel_path,
            key=record.key,
            bytes=record.size,
            upload_id=upload.upload_id,
            parts=len(parts),
        )

    def _settle_lost_complete(self, upload: UploadRecord) -> str:
        """A repeated Complete (after a crash) is answered "no such upload" by some servers:
        the object itself settles whether the first one worked. Return its ETag, or forget
        the upload and raise RetryableTransferError."""
        expected = multipart_etag(part.etag for part in upload.parts)
        info = self.context.store.head(upload.key)
        if info is None or info.size != self.record.size or info.etag != expected:
            self.context.ledger.upload_finished(upload.upload_id)
            raise RetryableTransferError(
                "CompleteMultipartUpload",
                upload.key,
                "the server lost the upload before it completed; the file will be sent again",
            ) from None
        return info.etag

    def _settle_existing(
        self, upload: UploadRecord, parts: list[tuple[int, str, tuple[str, str] | None]]
    ) -> str:
        """A conditional Complete found at the key another object than the one it allows
        (none for a first upload; the one recorded for a re-upload). As for a single PUT:
        ours with these very parts (a Complete repeated after a crash) is done; ours from an
        earlier version is replaced, and only it (If-Match); with none left, the upload
        completes as a first write; someone else's is refused, not overwritten. The upload
        is then kept, so a retry after the object was moved away sends no part again.
        Return the object's ETag."""
        store = self.context.store
        info = store.head(upload.key)
        expected = multipart_etag(part.etag for part in upload.parts)
        same = info is not None and info.size == self.record.size and info.etag == expected
        verdict = existing_verdict(info, self.context.agent_name, same=same)
        if info is not None and verdict == SAME:
            # The object holds these bytes already (a Complete repeated after a crash, or
            # after a rolled-back database a file sent again that S3 had whole): this upload
            # is not needed, and must not stay open holding its parts.
            store.abort_multipart(upload.key, upload.upload_id)
            return info.etag
        if info is None or verdict == ABSENT:
            return store.complete_multipart(
                upload.key, upload.upload_id, parts, only_if_absent=True
            )
        if verdict == OURS:
            return store.complete_multipart(upload.key, upload.upload_id, parts, if_match=info.etag)
        raise refusal("CompleteMultipartUpload", upload.key)

    def _tag_checksum(self, key: str, checksum: str) -> None:
        """A multipart object's whole-file checksum is known only after its last part, too
        late for its metadata: it goes into the object's tags instead (and always into the
        ledger and the manifest). A server without tagging only costs the tag."""
        try:
            self.context.store.tag(
                key,
                {"agent-checksum": checksum, "agent-checksum-algorithm": self.context.algorithm},
            )
        except TransferError as error:
            log.warning("checksum_tag_failed", key=key, error=str(error))

    def abort(self, event: str | None, *, level: str = "warning", **fields: object) -> None:
        """Abort the upload on the server and forget it; log `event` (with `fields`) at
        `level` first when given."""
        upload = self.upload
        if event is not None:
            getattr(log, level)(
                event,
                session=upload.session_id,
                file=upload.rel_path,
                key=upload.key,
                upload_id=upload.upload_id,
                **fields,
            )
        self.context.store.abort_multipart(upload.key, upload.upload_id)
        self.context.ledger.upload_finished(upload.upload_id)


@dataclass
class PartUnit:
    """One part of a large file, read and ready to send."""

    record: FileRecord
    reserved: int
    upload: MultipartUpload
    part: Part
    data: bytes
    part_checksum: str | None
    running_checksum: str | None

    def send(self, note: Callable[[Sent], None]) -> None:
        """Send the part; complete the upload if it was the last one outstanding."""
        ready = self.upload.send_part(
            self.part, self.data, self.part_checksum, self.running_checksum, note
        )
        if ready:
            self.upload.complete()
            note(Sent(files=1))


@dataclass
class CompletionUnit:
    """The completion of an upload whose parts were all sent before this pass read them."""

    record: FileRecord
    upload: MultipartUpload
    reserved: int = 0

    def send(self, note: Callable[[Sent], None]) -> None:
        """Complete the upload."""
        self.upload.complete()
        note(Sent(files=1))
