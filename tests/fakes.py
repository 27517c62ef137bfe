"""In-memory fakes of the agent's own protocols, for the fast unit layer.

`MemoryLedger` implements `agent.state.Ledger` with dicts; tests/test_ledger.py runs the same
conformance tests on it and on the SQLite ledger, so a unit test of the engine on the fake
says something about the real one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

from agent.state import DONE, PENDING, FileRecord, PartRecord, UploadRecord

T = TypeVar("T")


@dataclasses.dataclass
class MemoryLedger:
    """The upload ledger in dicts. `files` is filled by the test (what a scan would record);
    `manifests` holds (key, revision) per session once `manifest_written` was called."""

    files: dict[tuple[str, str], FileRecord] = dataclasses.field(default_factory=dict)
    uploads: dict[str, UploadRecord] = dataclasses.field(default_factory=dict)
    manifests: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    acknowledged_at: float | None = None
    clock_now: float = 0.0

    def add(self, record: FileRecord) -> None:
        """Put a file row in, as a scan would have."""
        self.files[(record.session_id, record.rel_path)] = record

    def files_of(self, session_id: str) -> list[FileRecord]:
        return sorted(
            (record for (owner, _), record in self.files.items() if owner == session_id),
            key=lambda record: record.rel_path,
        )

    def pending_files(
        self, session_id: str, *, after: str | None = None, limit: int | None = None
    ) -> list[FileRecord]:
        found = [
            record
            for record in self.files_of(session_id)
            if record.state == PENDING and (after is None or record.rel_path > after)
        ]
        return found if limit is None else found[:limit]

    def files_in_state(
        self, session_id: str, state: str, convert: Callable[[FileRecord], T]
    ) -> list[T]:
        return [convert(record) for record in self.files_of(session_id) if record.state == state]

    def file_uploaded(
        self,
        record: FileRecord,
        *,
        checksum: str,
        checksum_algorithm: str,
        etag: str,
        now: float,
        finished_upload_id: str | None = None,
    ) -> None:
        self.acknowledged_at = now
        where = (record.session_id, record.rel_path)
        current = self.files.get(where)
        if current is not None:
            same = (current.size, current.mtime_ns) == (record.size, record.mtime_ns)
            self.files[where] = dataclasses.replace(
                current,
                state=DONE if same and current.state == PENDING else current.state,
                checksum=checksum,
                checksum_algorithm=checksum_algorithm,
                etag=etag,
                uploaded_size=record.size,
                uploaded_mtime_ns=record.mtime_ns,
                uploaded_at=now,
                error=None,
            )
        if finished_upload_id is not None:
            self.uploads.pop(finished_upload_id, None)

    def upload_started(
        self,
        *,
        upload_id: str,
        record: FileRecord,
        part_size: int,
        checksum_algorithm: str | None,
        now: float,
        growing: bool = False,
    ) -> None:
        if upload_id in self.uploads:
            raise KeyError(f"upload {upload_id} recorded twice")
        self.uploads[upload_id] = UploadRecord(
            upload_id=upload_id,
            session_id=record.session_id,
            rel_path=record.rel_path,
            key=record.key,
            part_size=part_size,
            size=record.size,
            mtime_ns=record.mtime_ns,
            checksum_algorithm=checksum_algorithm,
            created_at=now,
            parts=(),
            growing=growing,
            inode=record.inode,
        )

    def part_finished(self, upload_id: str, part: PartRecord) -> None:
        self.acknowledged_at = self.clock_now
        upload = self.uploads[upload_id]
        kept = tuple(p for p in upload.parts if p.number != part.number)
        parts = tuple(sorted((*kept, part), key=lambda p: p.number))
        self.uploads[upload_id] = dataclasses.replace(upload, parts=parts)

    def upload_for(self, session_id: str, rel_path: str) -> UploadRecord | None:
        mine = [
            upload
            for upload in self.uploads.values()
            if (upload.session_id, upload.rel_path) == (session_id, rel_path)
        ]
        return max(mine, key=lambda upload: upload.created_at) if mine else None

    def all_uploads(self) -> list[UploadRecord]:
        return sorted(self.uploads.values(), key=lambda upload: upload.created_at)

    def upload_finished(self, upload_id: str) -> None:
        self.uploads.pop(upload_id, None)

    def forget_parts(self, upload_id: str, numbers: list[int]) -> None:
        upload = self.uploads[upload_id]
        kept = tuple(p for p in upload.parts if p.number not in set(numbers))
        self.uploads[upload_id] = dataclasses.replace(upload, parts=kept)

    def manifest_written(self, session_id: str, *, key: str, revision: int, now: float) -> None:
        self.manifests[session_id] = (key, revision)
