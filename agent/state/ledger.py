"""The upload ledger: which files still need sending, which are in S3, and every multipart
upload the agent started with the parts the server acknowledged.

The engine (agent/upload.py) depends only on the `Ledger` protocol; `SqliteLedger` is the
durable one. tests/fakes.py holds an in-memory one, and tests/test_ledger.py runs the same
conformance tests on both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from agent.state.db import Database
from agent.state.records import (
    DONE,
    PENDING,
    FileRecord,
    PartRecord,
    UploadRecord,
    file_from_row,
)
from agent.state.session_store import SessionStore

T = TypeVar("T")


class Ledger(Protocol):
    """What the engine reads and records while it uploads a session."""

    acknowledged_at: float | None

    def files_of(self, session_id: str) -> list[FileRecord]:
        """Every file of a session, by path."""

    def pending_files(
        self, session_id: str, *, after: str | None = None, limit: int | None = None
    ) -> list[FileRecord]:
        """Files of a session that still need sending, by path: with `after` and `limit`,
        at most `limit` of them whose paths sort after `after` (a page)."""

    def files_in_state(
        self, session_id: str, state: str, convert: Callable[[FileRecord], T]
    ) -> list[T]:
        """The files of a session in `state`, by path, each passed through `convert` as it
        is read: a session of 100,000 files is never held whole as records (the manifest)."""

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
        """This exact version (size, mtime) of the file is in S3; forget the multipart upload
        that carried it, in the same step. A newer version seen meanwhile stays pending, and a
        file the scan found gone meanwhile stays missing."""

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
        """A multipart upload was created for this file (recorded before any part is sent)."""

    def part_finished(self, upload_id: str, part: PartRecord) -> None:
        """The server acknowledged one part."""

    def upload_for(self, session_id: str, rel_path: str) -> UploadRecord | None:
        """The newest multipart upload in progress for this file, with its parts, or None."""

    def all_uploads(self) -> list[UploadRecord]:
        """Every multipart upload in progress, oldest first."""

    def upload_finished(self, upload_id: str) -> None:
        """Forget a multipart upload (completed or aborted) and its parts."""

    def forget_parts(self, upload_id: str, numbers: list[int]) -> None:
        """Forget parts the server does not hold after all, so they are sent again."""

    def manifest_written(self, session_id: str, *, key: str, revision: int, now: float) -> None:
        """The session's manifest is in S3: the session is uploaded."""


class SqliteLedger:
    """The ledger in the state database (tables `files`, `uploads`, `parts`)."""

    def __init__(self, database: Database, sessions: SessionStore) -> None:
        self._database = database
        self._sessions = sessions
        # When this process last had S3 acknowledge a part or a whole file (the daemon puts
        # it in its heartbeat, so `status` can tell a slow upload from a stalled one).
        self.acknowledged_at: float | None = None

    def files_of(self, session_id: str) -> list[FileRecord]:
        return self._database.converted(
            "select * from files where session_id = ? order by rel_path",
            [session_id],
            file_from_row,
        )

    def files_in_state(
        self, session_id: str, state: str, convert: Callable[[FileRecord], T]
    ) -> list[T]:
        return self._database.converted(
            "select * from files where session_id = ? and state = ? order by rel_path",
            [session_id, state],
            lambda row: convert(file_from_row(row)),
        )

    def pending_files(
        self, session_id: str, *, after: str | None = None, limit: int | None = None
    ) -> list[FileRecord]:
        return self._database.converted(
            "select * from files where session_id = ? and state = 'pending' and rel_path > ? "
            "order by rel_path limit ?",
            [session_id, "" if after is None else after, -1 if limit is None else limit],
            file_from_row,
        )

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
        where = [record.session_id, record.rel_path]
        with self._database.transaction():
            rows = self._database.rows(
                "select state, size, mtime_ns from files where session_id = ? and rel_path = ?",
                where,
            )
            # Only a pending row of this very version becomes uploaded: a newer version seen
            # meanwhile stays pending, a file found gone stays missing.
            done = bool(rows) and (rows[0]["state"], rows[0]["size"], rows[0]["mtime_ns"]) == (
                PENDING,
                record.size,
                record.mtime_ns,
            )
            self._database.execute(
                """update files set state = ?, checksum = ?, checksum_algorithm = ?, etag = ?,
                   uploaded_size = ?, uploaded_mtime_ns = ?, uploaded_at = ?, error = null
                   where session_id = ? and rel_path = ?""",
                [
                    DONE if done else (rows[0]["state"] if rows else PENDING),
                    checksum,
                    checksum_algorithm,
                    etag,
                    record.size,
                    record.mtime_ns,
                    now,
                    *where,
                ],
            )
            if finished_upload_id is not None:
                self._forget_upload(finished_upload_id)
            if done:
                # The session's totals move by this one file: recounting every row of the
                # session here made each file cost more the larger its session.
                self._database.execute(
                    """update sessions set uploaded_bytes = uploaded_bytes + ?,
                       pending_files = pending_files - 1, pending_bytes = pending_bytes - ?
                       where id = ?""",
                    [record.size, record.size, record.session_id],
                )

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
        with self._database.transaction():
            self._database.db.table("uploads").insert(
                {
                    "upload_id": upload_id,
                    "session_id": record.session_id,
                    "rel_path": record.rel_path,
                    "key": record.key,
                    "part_size": part_size,
                    "size": record.size,
                    "mtime_ns": record.mtime_ns,
                    "checksum_algorithm": checksum_algorithm,
                    "created_at": now,
                    "growing": int(growing),
                    "inode": record.inode,
                }
            )

    def part_finished(self, upload_id: str, part: PartRecord) -> None:
        self.acknowledged_at = time.time()
        with self._database.transaction():
            self._database.db.table("parts").upsert(
                {
                    "upload_id": upload_id,
                    "number": part.number,
                    "etag": part.etag,
                    "checksum": part.checksum,
                    "size": part.size,
                    "running_checksum": part.running_checksum,
                },
                pk=("upload_id", "number"),
            )

    def upload_for(self, session_id: str, rel_path: str) -> UploadRecord | None:
        with self._database.lock:
            rows = self._database.rows(
                "select * from uploads where session_id = ? and rel_path = ? "
                "order by created_at desc limit 1",
                [session_id, rel_path],
            )
            return self._upload_from_row(rows[0]) if rows else None

    def all_uploads(self) -> list[UploadRecord]:
        with self._database.lock:
            rows = self._database.rows("select * from uploads order by created_at")
            return [self._upload_from_row(row) for row in rows]

    def _upload_from_row(self, row: dict[str, Any]) -> UploadRecord:
        parts = tuple(
            PartRecord(p["number"], p["etag"], p["checksum"], p["size"], p["running_checksum"])
            for p in self._database.rows(
                "select * from parts where upload_id = ? order by number", [row["upload_id"]]
            )
        )
        return UploadRecord(
            upload_id=row["upload_id"],
            session_id=row["session_id"],
            rel_path=row["rel_path"],
            key=row["key"],
            part_size=row["part_size"],
            size=row["size"],
            mtime_ns=row["mtime_ns"],
            checksum_algorithm=row["checksum_algorithm"],
            created_at=row["created_at"],
            parts=parts,
            growing=bool(row.get("growing")),
            inode=row.get("inode"),
        )

    def upload_finished(self, upload_id: str) -> None:
        with self._database.transaction():
            self._forget_upload(upload_id)

    def _forget_upload(self, upload_id: str) -> None:
        self._database.execute("delete from parts where upload_id = ?", [upload_id])
        self._database.execute("delete from uploads where upload_id = ?", [upload_id])

    def forget_parts(self, upload_id: str, numbers: list[int]) -> None:
        with self._database.transaction():
            self._database.connection.executemany(
                "delete from parts where upload_id = ? and number = ?",
                [(upload_id, number) for number in numbers],
            )

    def manifest_written(self, session_id: str, *, key: str, revision: int, now: float) -> None:
        self._sessions.uploaded(session_id, key=key, revision=revision, now=now)
