"""A whole small file in one conditional PUT, and the policy for an object already at a key.

Owns: what the agent does when it finds an object at a file's key (ARCHITECTURE.md, "Durable
state"). Before sending, an object of the same size is accepted as this file when its bytes
provably match (the agent's checksum metadata, or the multipart ETag of the local part MD5s).
A first-time PUT is conditional (If-None-Match: *) where the server supports it, and so is
the re-upload of a changed file (If-Match: the ETag recorded for the object it replaces); on
a failed condition, ours with the same bytes is done, ours from an earlier version is
replaced, and another writer's is refused, never overwritten (`existing_verdict`, which the
multipart Complete applies too). Does not read files into memory for sending (that is
`agent.engine.reading`) nor send multipart uploads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.checksums import RunningChecksum
from agent.engine.context import EngineContext, check_record_unchanged, source_path
from agent.engine.pipeline import Sent
from agent.errors import FileChangedError, PermanentTransferError
from agent.planning import multipart_etag
from agent.s3errors import PreconditionFailedError
from agent.scan import open_source
from agent.state import FileRecord, SessionRecord, UploadRecord
from agent.transfer import AGENT_METADATA_MARK, ObjectInfo

log = structlog.get_logger("agent.upload")

# What is at a key where a conditional write failed (`existing_verdict`).
ABSENT = "absent"  # nothing (any more): write it as a first write
SAME = "same"  # ours, with this file's bytes: nothing to send
OURS = "ours"  # ours, from an earlier version: replace it
THEIRS = "theirs"  # another writer's: refuse


def existing_verdict(info: ObjectInfo | None, agent_name: str, *, same: bool) -> str:
    """Given what HEAD says of the object at a key (None: no object), this agent's name,
    and whether the object provably holds the file's bytes (the caller's test: checksum
    metadata for a PUT, the multipart ETag of the recorded parts for a Complete), return
    what the existing-object policy does with it: ABSENT, SAME, OURS or THEIRS."""
    if info is None:
        return ABSENT
    if same:
        return SAME
    if info.metadata.get(AGENT_METADATA_MARK) == agent_name:
        return OURS
    return THEIRS


def refusal(operation: str, key: str) -> PermanentTransferError:
    """The error of a write refused because another writer's object is at its key."""
    return PermanentTransferError(
        operation,
        key,
        "an object not written by this agent is already at this key; refusing to overwrite "
        "it (move it away or change the destination prefix)",
    )


class SinglePut:
    """Sends small files whole, and settles what it finds at their keys."""

    def __init__(self, context: EngineContext) -> None:
        self.context = context

    def already_there(
        self, session: SessionRecord, record: FileRecord, upload: UploadRecord | None = None
    ) -> bool:
        """An object of the right size is at the key: if it holds this file's bytes, record
        the file as uploaded and return True (nothing to send); otherwise False. A multipart
        `upload` recorded for the file (a database rolled back to before S3 had it whole) is
        aborted and forgotten in the same step: resuming it would send the file again."""
        info = self.context.store.head(record.key)
        if info is None or info.size != record.size:
            return False
        match = local_matches(source_path(session, record), record, info, self.context.algorithm)
        if match is None:
            return False
        if upload is not None:
            self.context.store.abort_multipart(upload.key, upload.upload_id)
        self.context.ledger.file_uploaded(
            record,
            checksum=match,
            checksum_algorithm=self.context.algorithm,
            etag=info.etag,
            now=self.context.clock(),
            finished_upload_id=upload.upload_id if upload is not None else None,
        )
        log.info("already_in_s3", session=session.id, file=record.rel_path, key=record.key)
        return True

    def send(self, path: Path, record: FileRecord, data: bytes, checksum: str) -> None:
        """PUT `data` (the whole file at `path`, with `checksum`) at the file's key, then
        record the file as uploaded if it did not change meanwhile.

        Raise FileChangedError if it did, and PermanentTransferError if another writer's
        object is at the key."""
        context = self.context
        metadata = context.metadata(record, **{"agent-checksum": checksum})
        first = record.uploaded_size is None
        try:
            etag = context.store.put(
                record.key,
                data,
                metadata=metadata,
                checksum=context.header(checksum),
                only_if_absent=first,
                if_match=None if first else (record.etag or None),
            )
        except PreconditionFailedError:
            etag = self._settle_existing(record, data, checksum, metadata)
        check_record_unchanged(path, record)
        context.ledger.file_uploaded(
            record,
            checksum=checksum,
            checksum_algorithm=context.algorithm,
            etag=etag,
            now=context.clock(),
        )
        log.info(
            "file_uploaded",
            session=record.session_id,
            file=record.rel_path,
            key=record.key,
            bytes=record.size,
            parts=0,
        )

    def _settle_existing(
        self, record: FileRecord, data: bytes, checksum: str, metadata: dict[str, str]
    ) -> str:
        """A conditional PUT found at the key another object than the one it allows (none
        for a first upload; the one recorded for a re-upload). Ours with the same bytes:
        done. Ours from an earlier version: replace it, and only it (If-Match). None left:
        write it as a first write. Someone else's: refuse to overwrite."""
        store, header = self.context.store, self.context.header(checksum)
        info = store.head(record.key)
        same = (
            info is not None
            and info.size == record.size
            and info.metadata.get("agent-checksum") == checksum
        )
        verdict = existing_verdict(info, self.context.agent_name, same=same)
        if info is not None and verdict == SAME:
            return info.etag
        if info is None or verdict == ABSENT:
            return store.put(
                record.key, data, metadata=metadata, checksum=header, only_if_absent=True
            )
        if verdict == OURS:
            return store.put(
                record.key, data, metadata=metadata, checksum=header, if_match=info.etag
            )
        raise refusal("PutObject", record.key)


@dataclass
class FileUnit:
    """A whole small file, read and ready to send."""

    record: FileRecord
    reserved: int
    sender: SinglePut
    path: Path
    data: bytes
    checksum: str

    def send(self, note: Callable[[Sent], None]) -> None:
        """Send the file."""
        self.sender.send(self.path, self.record, self.data, self.checksum)
        note(Sent(files=1, bytes=len(self.data)))


def local_matches(path: Path, record: FileRecord, info: ObjectInfo, algorithm: str) -> str | None:
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
