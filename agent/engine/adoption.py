"""Adopting, at resume, the parts the server holds but the ledger never recorded.

A kill after S3 acknowledged a part and before the agent recorded it leaves a part on the
server that the ledger does not know (up to `concurrency` per kill). Sending it again costs
the network; reading it again costs only the local disk. A listed part is adopted (recorded
exactly as a sent part would be, with the running whole-file checksum carried through it)
once its local bytes are proven the listed ones; otherwise it is sent again as before.
The decisions are pure functions of plain data; `adopt` does the reading and recording for
one `MultipartUpload`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent.checksums import RunningChecksum
from agent.errors import FileChangedError
from agent.planning import Part, plan_parts
from agent.scan import open_source
from agent.state import PartRecord
from agent.throttle import Interrupted
from agent.transfer import ListedPart

if TYPE_CHECKING:
    from agent.engine.multipart import MultipartUpload

log = structlog.get_logger("agent.upload")


# Chunk in which a part is re-read to judge it for adoption (parts may be GiBs).
ADOPTION_CHUNK = 8 * 1024**2


@dataclass(frozen=True)
class LocalPart:
    """What re-reading one part of the local file gave: its length, hex MD5 (what S3 makes
    a part's ETag of) and checksum in the agent's algorithm (base64)."""

    size: int
    md5: str
    algorithm: str
    checksum: str


def adoption_candidates(
    parts: Sequence[Part], recorded: Mapping[int, PartRecord], listed: Mapping[int, ListedPart]
) -> tuple[int, ...]:
    """Given the file's planned parts, the recorded ones and the server's listing, return
    the numbers of the parts the server holds and our records lack: the answer to their
    UploadPart was lost in a crash (up to `concurrency` per kill). Each may be adopted once
    its local bytes are shown to be the listed ones. A listed size other than the planned
    one rules a part out without reading it."""
    return tuple(
        part.number
        for part in parts
        if part.number in listed
        and part.number not in recorded
        and listed[part.number].size in (None, part.length)
    )


def adoption_reads(
    parts: Sequence[Part],
    recorded: Mapping[int, PartRecord],
    candidates: Sequence[int],
    *,
    resumable: bool,
) -> list[Part]:
    """Given the planned parts, the recorded ones and the candidates for adoption, return
    the parts to read locally, in order: every candidate and, where the running checksum
    resumes (CRCs), every part between a candidate and the nearest earlier part whose record
    saved the running checksum (read only to feed it). So an adopted part is recorded with
    the running checksum of the file up to its end, exactly as if it had been sent, and a
    later resume still starts after it. Without a resumable checksum (SHA-256) no part
    records one, so only the candidates are read."""
    wanted = set(candidates)
    if not wanted:
        return []
    if not resumable:
        return [part for part in parts if part.number in wanted]

    def saved(part: Part) -> bool:
        record = recorded.get(part.number)
        return record is not None and record.running_checksum is not None

    indexes = [index for index, part in enumerate(parts) if part.number in wanted]
    start = 0
    for index in range(indexes[0] - 1, -1, -1):
        if saved(parts[index]):
            start = index + 1
            break
    return [
        part for part in parts[start : indexes[-1] + 1] if part.number in wanted or not saved(part)
    ]


def listed_matches(listed: ListedPart, local: LocalPart) -> bool:
    """Whether a part the server lists holds the local bytes. Every piece of evidence the
    listing carries must agree: its size (where given) and a checksum it holds in the
    agent's algorithm. Then it must be proven: its ETag is the MD5 of the local bytes (S3's
    part ETag), or, where the listing carries SHA-256 and that is the agent's algorithm, the
    SHA-256 (parts encrypted with KMS or a customer key have ETags that are no MD5). A CRC
    alone (32 bits) never proves it: a wrong adoption would corrupt the object, a missed
    one only costs sending the part again."""
    if listed.size is not None and listed.size != local.size:
        return False
    server_checksum = listed.checksums.get(local.algorithm)
    if server_checksum is not None and server_checksum != local.checksum:
        return False
    if listed.etag.lower() == local.md5:
        return True
    return local.algorithm == "sha256" and server_checksum == local.checksum


def adopt(
    upload_: MultipartUpload, listed: Mapping[int, ListedPart], fields: Mapping[str, Any]
) -> None:
    """Record, without sending them again, the parts the server lists and our records
    lack whose bytes are the local file's, re-read here (reading is local, sending is
    not). Each is recorded as a sent part is: the server's ETag, the part's checksum and
    the running checksum of the file up to its end. A part that differs is sent again."""
    upload, context = upload_.upload, upload_.context
    parts = plan_parts(upload_.record.size, upload.part_size)
    recorded = {part.number: part for part in upload.parts}
    candidates = set(adoption_candidates(parts, recorded, listed))
    if not candidates:
        return
    algorithm = context.algorithm
    resumable = RunningChecksum(algorithm).save() is not None
    reads = adoption_reads(parts, recorded, sorted(candidates), resumable=resumable)
    index_of = {part.number: index for index, part in enumerate(parts)}
    adopted: list[int] = []
    differ: list[int] = []
    record = upload_.record
    with open_source(upload_.path, inode=record.inode, device=record.device) as (handle, info):
        if (info.st_size, info.st_mtime_ns) != (record.size, record.mtime_ns):
            raise FileChangedError(str(upload_.path))
        running: RunningChecksum | None = None
        for part in reads:
            if context.store.stop.is_set():
                raise Interrupted()
            if resumable and (running is None or running.position != part.offset):
                running = _running_before(algorithm, parts, index_of[part.number], recorded)
            local = _read_local(handle.fileno(), part, algorithm, running, upload_.path)
            if part.number not in candidates:
                continue
            if not listed_matches(listed[part.number], local):
                differ.append(part.number)
                continue
            found = PartRecord(
                part.number,
                listed[part.number].etag,
                local.checksum,
                part.length,
                running.save() if running is not None else None,
            )
            context.ledger.part_finished(upload.upload_id, found)
            recorded[part.number] = found
            adopted.append(part.number)
    if adopted:
        log.info("parts_adopted", **fields, parts=adopted)
        upload_.refresh()
    if differ:
        log.info(
            "listed_parts_differ",
            **fields,
            parts=differ,
            reason="the server holds other bytes than the local file's: sent again",
        )


def _running_before(
    algorithm: str, parts: Sequence[Part], index: int, recorded: Mapping[int, PartRecord]
) -> RunningChecksum | None:
    """The running checksum of the file before `parts[index]`, from the start or from
    the record of the part before it; None if that record saved none (the adopted part
    then records none either, and a later resume reads from the first byte)."""
    if index == 0:
        return RunningChecksum(algorithm)
    previous = parts[index - 1]
    record = recorded.get(previous.number)
    return RunningChecksum.resume(
        algorithm,
        None if record is None else record.running_checksum,
        previous.offset + previous.length,
    )


def _read_local(
    descriptor: int, part: Part, algorithm: str, running: RunningChecksum | None, path: Path
) -> LocalPart:
    """Read one part of the file in chunks, feeding `running` (when given); return its
    length, MD5 and checksum. A short read means the file shrank: FileChangedError."""
    md5 = hashlib.md5(usedforsecurity=False)
    checksum = RunningChecksum(algorithm)
    position, end = part.offset, part.offset + part.length
    while position < end:
        block = os.pread(descriptor, min(ADOPTION_CHUNK, end - position), position)
        if not block:
            raise FileChangedError(str(path))
        md5.update(block)
        checksum.update(block)
        if running is not None:
            running.update(block)
        position += len(block)
    return LocalPart(part.length, md5.hexdigest(), algorithm, checksum.value())
