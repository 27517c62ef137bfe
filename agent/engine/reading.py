"""Source files read into units for the pipeline, each byte read once, in file order.

Owns: opening source files (only through `scan.open_source`, so the bytes sent come from the
file the scan saw), reading them within the byte budget, and feeding each byte to the file's
checksum as it goes to the upload. Yields units (a small file, a part, a completion) and
`Changed` for a file that changed or vanished; sends nothing itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import structlog

from agent.checksums import digest_b64
from agent.engine.context import EngineContext, source_path
from agent.engine.multipart import (
    CompletionUnit,
    MultipartUpload,
    PartUnit,
    covered,
    resume_point,
    stable_parts,
)
from agent.engine.pipeline import ByteBudget, Changed
from agent.engine.single_put import FileUnit, SinglePut
from agent.errors import FileChangedError
from agent.planning import Part, plan_parts
from agent.scan import open_source
from agent.state import FileRecord, PartRecord, SessionRecord

log = structlog.get_logger("agent.upload")

REWRITTEN = "bytes already sent changed: the file was rewritten, not appended to"


class Reader:
    """Reads a session's files into units, within one byte budget."""

    def __init__(self, context: EngineContext, budget: ByteBudget, single_put: SinglePut) -> None:
        self.context = context
        self.budget = budget
        self.single_put = single_put

    def _read_part(self, descriptor: int, part: Part, path: Path) -> tuple[bytes, int]:
        """Read one whole part within the memory budget; return its bytes and the budget
        taken. A short read means the file shrank: FileChangedError."""
        reserved = self.budget.acquire(part.length, self.context.store.stop)
        try:
            data = os.pread(descriptor, part.length, part.offset)
        except BaseException:
            self.budget.release(reserved)
            raise
        if len(data) != part.length:
            self.budget.release(reserved)
            raise FileChangedError(str(path))
        return data, reserved

    # --- whole small files ----------------------------------------------------------------

    def small_files(
        self, session: SessionRecord, records: list[FileRecord]
    ) -> Iterator[FileUnit | Changed]:
        """Each file whole, with its checksum."""
        for record in records:
            path = source_path(session, record)
            reserved = self.budget.acquire(record.size, self.context.store.stop)
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
                yield Changed(record.rel_path)
                continue
            except BaseException:
                self.budget.release(reserved)
                raise
            checksum = digest_b64(self.context.algorithm, data)
            yield FileUnit(record, reserved, self.single_put, path, data, checksum)

    # --- large files ----------------------------------------------------------------------

    def large_files(
        self, session: SessionRecord, records: list[FileRecord]
    ) -> Iterator[PartUnit | CompletionUnit | Changed]:
        """The parts of each file still to send, then its completion."""
        for record in records:
            path = source_path(session, record)
            try:
                # Opened before any multipart upload is created for it: a file swapped since
                # the scan costs nothing on the server.
                with open_source(path, inode=record.inode, device=record.device) as (
                    handle,
                    info,
                ):
                    if (info.st_size, info.st_mtime_ns) != (record.size, record.mtime_ns):
                        raise FileChangedError(str(path))
                    yield from self._parts_of(record, path, handle)
            except (FileChangedError, FileNotFoundError):
                yield Changed(record.rel_path)

    def _parts_of(
        self, record: FileRecord, path: Path, handle: BinaryIO
    ) -> Iterator[PartUnit | CompletionUnit]:
        upload = MultipartUpload.open(self.context, record, path)
        algorithm = self.context.algorithm
        parts = plan_parts(record.size, upload.upload.part_size)
        done = {part.number: part for part in upload.upload.parts}
        # A growing upload's early parts are read again to prove they still match the file.
        growing = upload.upload.growing
        start, running = resume_point(parts, done, algorithm, from_start=growing)
        upload.expect({part.number for part in parts if part.number not in done})
        for part in parts[start:]:
            data, reserved = self._read_part(handle.fileno(), part, path)
            running.update(data)
            part_checksum = digest_b64(algorithm, data)
            if part.number in done:
                self.budget.release(reserved)
                if growing and part_checksum != done[part.number].checksum:
                    upload.abort("growing_upload_discarded", part=part.number, reason=REWRITTEN)
                    raise FileChangedError(str(path))
                continue
            yield PartUnit(
                record, reserved, upload, part, data, part_checksum, running_checksum=running.save()
            )
        if upload.reading_finished(running.value()):
            yield CompletionUnit(record, upload)

    # --- growing files --------------------------------------------------------------------

    def growing_files(
        self, session: SessionRecord, records: list[FileRecord], part_size: int
    ) -> Iterator[PartUnit | Changed]:
        """The stable leading parts of each file not yet sent (see `stable_parts`)."""
        for record in records:
            try:
                yield from self._growing_parts(session, record, part_size)
            except (FileChangedError, FileNotFoundError):
                yield Changed(record.rel_path)

    def _growing_parts(
        self, session: SessionRecord, record: FileRecord, part_size: int
    ) -> Iterator[PartUnit]:
        path = source_path(session, record)
        recorded = self.context.ledger.upload_for(record.session_id, record.rel_path)
        if recorded is not None and not recorded.growing:
            return  # an ordinary upload of an earlier version is the final pass's business
        # Sized from its own descriptor: the bytes sent below come from the file the scan
        # saw (same inode and device), not from whatever the path leads to now.
        with open_source(path, inode=record.inode, device=record.device) as (handle, info):
            if recorded is not None and (
                info.st_ino != recorded.inode or info.st_size < covered(recorded)
            ):
                MultipartUpload(self.context, record, path, recorded).abort(
                    "growing_upload_discarded", part=0, reason=REWRITTEN
                )
                recorded = None
            stable = stable_parts(info.st_size, part_size)
            done: dict[int, PartRecord] = (
                {part.number: part for part in recorded.parts} if recorded else {}
            )
            if stable <= len(done):
                return
            if recorded is None:
                upload = MultipartUpload.start(self.context, record, path, part_size, growing=True)
                log.info(
                    "growing_upload_started",
                    session=record.session_id,
                    file=record.rel_path,
                    key=record.key,
                    upload_id=upload.upload_id,
                    size=info.st_size,
                )
            else:
                upload = MultipartUpload(self.context, record, path, recorded)
            parts = [
                Part(number, (number - 1) * part_size, part_size) for number in range(1, stable + 1)
            ]
            # The running checksum recorded with each part is the file's up to that part's
            # end, so it is fed from the first byte (or resumed after the recorded parts).
            start, running = resume_point(parts, done, self.context.algorithm)
            for part in parts[start:]:
                data, reserved = self._read_part(handle.fileno(), part, path)
                running.update(data)
                if part.number in done:
                    self.budget.release(reserved)
                    continue
                yield PartUnit(
                    record,
                    reserved,
                    upload,
                    part,
                    data,
                    digest_b64(self.context.algorithm, data),
                    running_checksum=running.save(),
                )
