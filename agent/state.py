"""Durable state: the one SQLite database, its schema, migrations and every read and write.

The database is the agent's only memory. WAL mode lets `agentctl` read while the daemon
writes; every step of an upload is committed as it happens so that a restart resumes exactly
where the last run stopped. Times are stored as epoch seconds (REAL) and converted to ISO 8601
only at the edge.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from agent.errors import StateError
from agent.scan import FileStat

# File states.
PENDING = "pending"
DONE = "uploaded"
MISSING = "missing"
REFUSED = "refused"

BUSY_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class SessionRecord:
    """One row of `sessions`."""

    id: str
    source: str
    rel_path: str
    path: str
    state: str
    files: int
    bytes: int
    uploaded_bytes: int
    key_prefix: str
    manifest_key: str | None
    manifest_revision: int
    metadata: dict[str, str]
    fingerprint: str
    detected_at: float
    last_change_at: float
    completed_at: float | None
    uploaded_at: float | None
    error: str | None
    reason: str | None
    attempts: int
    next_attempt_at: float | None
    local_missing: bool
    recheck_at: float | None = None


@dataclass(frozen=True)
class FileRecord:
    """One row of `files`."""

    session_id: str
    rel_path: str
    size: int
    mtime_ns: int
    inode: int
    key: str
    state: str
    checksum: str | None
    checksum_algorithm: str | None
    etag: str | None
    uploaded_size: int | None
    uploaded_mtime_ns: int | None
    uploaded_at: float | None
    error: str | None
    device: int | None = None


@dataclass(frozen=True)
class PartRecord:
    """One finished part of a multipart upload."""

    number: int
    etag: str
    checksum: str | None
    size: int
    running_checksum: str | None


@dataclass(frozen=True)
class UploadRecord:
    """A multipart upload the agent started, with its finished parts."""

    upload_id: str
    session_id: str
    rel_path: str
    key: str
    part_size: int
    size: int
    mtime_ns: int
    checksum_algorithm: str | None
    created_at: float
    parts: tuple[PartRecord, ...]
    growing: bool = False
    inode: int | None = None


@dataclass(frozen=True)
class SourceRow:
    """One line of `State.source_summary`."""

    source: str
    state: str
    sessions: int
    files: int
    bytes: int


@dataclass(frozen=True)
class Heartbeat:
    """The daemon's last sign of life."""

    pid: int
    hostname: str
    started_at: float
    beat_at: float
    stopped_at: float | None
    status: str
    rate: float = 0.0  # bytes/s sent over the daemon's last few seconds
    progress_at: float | None = None  # when S3 last acknowledged a part or file of the daemon


def fingerprint_of(files: tuple[FileStat, ...]) -> str:
    """A short digest of a session's listing (names, sizes, mtimes)."""
    digest = hashlib.sha1(usedforsecurity=False)
    for item in files:
        digest.update(f"{item.rel_path}\0{item.size}\0{item.mtime_ns}\n".encode())
        if item.refusal is not None:
            # Only entries the scan refuses add to the digest, so listings of ordinary files
            # keep the fingerprint earlier versions stored (no session reopens on upgrade),
            # while a file turning into a symlink of the same size and mtime still counts.
            digest.update(f"\0{item.refusal}\n".encode())
    return digest.hexdigest()


def _migration_1(db: sqlite_utils.Database) -> None:
    db["sessions"].create(  # type: ignore[union-attr]
        {
            "id": str,
            "source": str,
            "rel_path": str,
            "path": str,
            "state": str,
            "files": int,
            "bytes": int,
            "key_prefix": str,
            "manifest_key": str,
            "manifest_revision": int,
            "metadata": str,
            "fingerprint": str,
            "detected_at": float,
            "last_change_at": float,
            "completed_at": float,
            "uploaded_at": float,
            "error": str,
            "reason": str,
            "attempts": int,
            "next_attempt_at": float,
            "local_missing": int,
        },
        pk="id",
        not_null={"source", "rel_path", "path", "state", "key_prefix"},
        defaults={
            "files": 0,
            "bytes": 0,
            "manifest_revision": 0,
            "attempts": 0,
            "local_missing": 0,
            "metadata": "{}",
            "fingerprint": "",
        },
    )
    db["sessions"].create_index(["state"])  # type: ignore[union-attr]
    db["files"].create(  # type: ignore[union-attr]
        {
            "session_id": str,
            "rel_path": str,
            "size": int,
            "mtime_ns": int,
            "inode": int,
            "key": str,
            "state": str,
            "checksum": str,
            "checksum_algorithm": str,
            "etag": str,
            "uploaded_size": int,
            "uploaded_mtime_ns": int,
            "uploaded_at": float,
            "error": str,
        },
        pk=("session_id", "rel_path"),
        not_null={"size", "mtime_ns", "key", "state"},
        foreign_keys=[("session_id", "sessions", "id")],
    )
    db["files"].create_index(["state"])  # type: ignore[union-attr]
    db["uploads"].create(  # type: ignore[union-attr]
        {
            "upload_id": str,
            "session_id": str,
            "rel_path": str,
            "key": str,
            "part_size": int,
            "size": int,
            "mtime_ns": int,
            "checksum_algorithm": str,
            "created_at": float,
        },
        pk="upload_id",
        not_null={"session_id", "rel_path", "key", "part_size", "size", "mtime_ns"},
    )
    db["uploads"].create_index(["session_id", "rel_path"])  # type: ignore[union-attr]
    db["parts"].create(  # type: ignore[union-attr]
        {
            "upload_id": str,
            "number": int,
            "etag": str,
            "checksum": str,
            "size": int,
            "running_checksum": str,
        },
        pk=("upload_id", "number"),
        foreign_keys=[("upload_id", "uploads", "upload_id")],
    )
    db["heartbeat"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "pid": int,
            "hostname": str,
            "started_at": float,
            "beat_at": float,
            "stopped_at": float,
            "status": str,
        },
        pk="id",
    )
    db["control"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "command": str,
            "argument": str,
            "requested_at": float,
            "done_at": float,
            "result": str,
        },
        pk="id",
    )
    db["events"].create(  # type: ignore[union-attr]
        {"id": int, "at": float, "level": str, "session_id": str, "message": str},
        pk="id",
    )


def _migration_2(db: sqlite_utils.Database) -> None:
    # Totals kept as columns and a partial index on pending files: status, the main loop and
    # the heartbeat must not sum a million file rows each time they look.
    db.execute("alter table sessions add column uploaded_bytes integer default 0")
    db.execute("alter table sessions add column recheck_at float")
    db.execute("alter table sessions add column pending_files integer default 0")
    db.execute("alter table sessions add column pending_bytes integer default 0")
    db.execute(
        """update sessions set
             uploaded_bytes = (select coalesce(sum(size), 0) from files
               where files.session_id = sessions.id and files.state = 'uploaded'),
             pending_files = (select count(*) from files
               where files.session_id = sessions.id and files.state = 'pending'),
             pending_bytes = (select coalesce(sum(size), 0) from files
               where files.session_id = sessions.id and files.state = 'pending')"""
    )
    db.execute("create index files_pending on files(session_id) where state = 'pending'")
    db.execute("create index sessions_state on sessions(state)")
    db.execute("alter table uploads add column growing integer default 0")
    db.execute("alter table uploads add column inode integer")
    db["flags"].create({"name": str, "value": str, "set_at": float}, pk="name")  # type: ignore[union-attr]


def _migration_3(db: sqlite_utils.Database) -> None:
    # The device a file was scanned on: a read checks the opened descriptor's (device, inode)
    # against the scan's, so a file swapped for another (or a link to one) is never read.
    db.execute("alter table files add column device integer")


def _migration_4(db: sqlite_utils.Database) -> None:
    # What `status` tells about throughput: the daemon's current rate and when it last sent
    # data, and an index so "when did a file last finish uploading" is one index lookup.
    db.execute("alter table heartbeat add column rate float default 0")
    db.execute("alter table heartbeat add column progress_at float")
    db.execute("create index files_uploaded_at on files(uploaded_at)")


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
)


def _session_from_row(row: dict[str, Any]) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        source=row["source"],
        rel_path=row["rel_path"],
        path=row["path"],
        state=row["state"],
        files=row["files"] or 0,
        bytes=row["bytes"] or 0,
        uploaded_bytes=row.get("uploaded_bytes") or 0,
        key_prefix=row["key_prefix"],
        manifest_key=row["manifest_key"],
        manifest_revision=row["manifest_revision"] or 0,
        metadata=json.loads(row["metadata"] or "{}"),
        fingerprint=row["fingerprint"] or "",
        detected_at=row["detected_at"],
        last_change_at=row["last_change_at"],
        completed_at=row["completed_at"],
        uploaded_at=row["uploaded_at"],
        error=row["error"],
        reason=row["reason"],
        attempts=row["attempts"] or 0,
        next_attempt_at=row["next_attempt_at"],
        local_missing=bool(row["local_missing"]),
        recheck_at=row.get("recheck_at"),
    )


def _file_from_row(row: dict[str, Any]) -> FileRecord:
    return FileRecord(**{name: row[name] for name in FileRecord.__dataclass_fields__})


_SESSION_SELECT = "select s.* from sessions s"


class State:
    """The agent's SQLite database. Thread-safe: one connection behind a lock."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.path = path
        self._connection = connection
        self.db = sqlite_utils.Database(connection)
        self._lock = threading.RLock()
        # When this process last had S3 acknowledge a part or a whole file (the daemon puts
        # it in its heartbeat, so `status` can tell a slow upload from a stalled one).
        self.acknowledged_at: float | None = None

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> State:
        """Open (and with `create`, create and migrate) the database at `path`.

        Raise StateError if it cannot be opened, or does not exist and `create` is False.
        """
        if not create and not path.exists():
            raise StateError(f"no state database at {path}; has the agent run yet?")
        try:
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                str(path) if create else f"file:{path}?mode=rw",
                uri=not create,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            # busy_timeout before WAL: switching modes itself may wait for a lock.
            connection.execute(f"pragma busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("pragma journal_mode = wal")
            connection.execute("pragma synchronous = normal")
            connection.execute("pragma foreign_keys = on")
        except (sqlite3.Error, OSError) as error:
            raise StateError(f"cannot open state database {path}: {error}") from error
        state = cls(connection, path)
        state._migrate(allowed=create)
        return state

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._connection.close()

    def _migrate(self, *, allowed: bool) -> None:
        version = self._connection.execute("pragma user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StateError(
                f"{self.path} was written by a newer agent (schema {version}); upgrade the agent"
            )
        if version == len(MIGRATIONS):
            return
        if not allowed:
            raise StateError(f"{self.path} needs migrating; start the daemon once to do it")
        with self._transaction():
            # Read again under the write lock: another process may have migrated meanwhile.
            version = self._connection.execute("pragma user_version").fetchone()[0]
            for number in range(version, len(MIGRATIONS)):
                MIGRATIONS[number](self.db)
            self._connection.execute(f"pragma user_version = {len(MIGRATIONS)}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            try:
                self._connection.execute("begin immediate")
                yield
                self._connection.execute("commit")
            except BaseException:
                self._connection.execute("rollback")
                raise

    # --- sessions -------------------------------------------------------------------------

    def get_session(self, session_id: str) -> SessionRecord | None:
        """Return the session with this id, or None."""
        with self._lock:
            rows = list(self.db.query(_SESSION_SELECT + " where s.id = ?", [session_id]))
        return _session_from_row(rows[0]) if rows else None

    def list_sessions(self, state: str | None = None) -> list[SessionRecord]:
        """Every session (or those in `state`), oldest first."""
        where, params = (" where s.state = ?", [state]) if state else ("", [])
        with self._lock:
            rows = list(
                self.db.query(_SESSION_SELECT + where + " order by s.detected_at, s.id", params)
            )
        return [_session_from_row(row) for row in rows]

    def sessions_in(self, states: tuple[str, ...]) -> list[SessionRecord]:
        """Sessions whose state is one of `states`, oldest first."""
        marks = ",".join("?" for _ in states)
        with self._lock:
            rows = list(
                self.db.query(
                    _SESSION_SELECT + f" where s.state in ({marks}) order by s.detected_at, s.id",
                    list(states),
                )
            )
        return [_session_from_row(row) for row in rows]

    def sessions_to_recheck(self, now: float) -> list[SessionRecord]:
        """Waiting sessions (still present locally) whose recheck time has come."""
        with self._lock:
            rows = list(
                self.db.query(
                    _SESSION_SELECT + " where s.state = 'waiting' and s.local_missing = 0 "
                    "and s.recheck_at is not null and s.recheck_at <= ? order by s.recheck_at",
                    [now],
                )
            )
        return [_session_from_row(row) for row in rows]

    def observe_session(
        self,
        *,
        session_id: str,
        source: str,
        rel_path: str,
        path: str,
        key_prefix: str,
        files: tuple[FileStat, ...],
        keys: dict[str, str],
        refused: dict[str, str],
        newest_mtime: float,
        metadata: dict[str, str],
        now: float,
    ) -> tuple[SessionRecord, bool]:
        """Record what a scan saw of a session: insert it if new, update its files.

        Returns the session and whether anything changed since the last observation. A change
        to an uploaded (or failed) session reopens it as `waiting`; files that are new or whose
        size/mtime differ from what was uploaded become `pending`; files gone become `missing`.
        """
        fingerprint = fingerprint_of(files)
        with self._transaction():
            existing = self.get_session(session_id)
            if existing is None:
                self.db["sessions"].insert(  # type: ignore[union-attr]
                    {
                        "id": session_id,
                        "source": source,
                        "rel_path": rel_path,
                        "path": path,
                        "state": "waiting",
                        "key_prefix": key_prefix,
                        "metadata": json.dumps(metadata, sort_keys=True),
                        "fingerprint": fingerprint,
                        "detected_at": now,
                        # On first sight, trust the files' own times: a tree that has been
                        # quiet for a day is ready at once (backfill).
                        "last_change_at": min(newest_mtime, now),
                    }
                )
                changed = True
            else:
                changed = existing.fingerprint != fingerprint or existing.local_missing
                if changed:
                    update: dict[str, Any] = {
                        "fingerprint": fingerprint,
                        "last_change_at": max(now, existing.last_change_at),
                        "local_missing": 0,
                    }
                    self.db["sessions"].update(session_id, update)  # type: ignore[union-attr]
            if changed:
                self._sync_files(session_id, files, keys, refused)
                self._refresh_totals(session_id)
        record = self.get_session(session_id)
        assert record is not None
        return record, changed

    def _sync_files(
        self,
        session_id: str,
        files: tuple[FileStat, ...],
        keys: dict[str, str],
        refused: dict[str, str],
    ) -> None:
        known = {
            row["rel_path"]: row
            for row in self.db.query(
                "select rel_path, size, mtime_ns, inode, device, state, key, uploaded_size, "
                "uploaded_mtime_ns, error from files where session_id = ?",
                [session_id],
            )
        }
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        seen: set[str] = set()
        for item in files:
            seen.add(item.rel_path)
            row = known.get(item.rel_path)
            key = keys.get(item.rel_path)
            error = None if key else refused.get(item.rel_path, "name cannot become an object key")
            if row is None:
                inserts.append(
                    (
                        session_id,
                        item.rel_path,
                        item.size,
                        item.mtime_ns,
                        item.inode,
                        item.device,
                        key or "",
                        PENDING if key else REFUSED,
                        error,
                    )
                )
                continue
            same_as_uploaded = (row["uploaded_size"], row["uploaded_mtime_ns"]) == (
                item.size,
                item.mtime_ns,
            )
            new_state = REFUSED if not key else DONE if same_as_uploaded else PENDING
            if (
                row["size"],
                row["mtime_ns"],
                row["inode"],
                row["device"],
                row["state"],
                row["key"],
            ) != (
                item.size,
                item.mtime_ns,
                item.inode,
                item.device,
                new_state,
                key or "",
            ) or (not key and row["error"] != error):
                updates.append(
                    (
                        item.size,
                        item.mtime_ns,
                        item.inode,
                        item.device,
                        new_state,
                        key or "",
                        error if not key else row["error"],
                        session_id,
                        item.rel_path,
                    )
                )
        for rel_path, row in known.items():
            if rel_path not in seen and row["state"] != MISSING:
                updates.append(
                    (
                        row["size"],
                        row["mtime_ns"],
                        row["inode"],
                        row["device"],
                        MISSING,
                        row["key"],
                        row["error"],
                        session_id,
                        rel_path,
                    )
                )
        if inserts:
            # Plain executemany: a first scan of a large tree inserts millions of rows.
            self._connection.executemany(
                "insert into files (session_id, rel_path, size, mtime_ns, inode, device, key, "
                "state, error) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                inserts,
            )
        if updates:
            self._connection.executemany(
                "update files set size = ?, mtime_ns = ?, inode = ?, device = ?, state = ?, "
                "key = ?, error = ? where session_id = ? and rel_path = ?",
                updates,
            )

    def _refresh_totals(self, session_id: str) -> None:
        # One pass over the session's rows keeps every total a reader needs as a column.
        self._connection.execute(
            """update sessions set (files, bytes, uploaded_bytes, pending_files, pending_bytes) =
                 (select count(*), coalesce(sum(size), 0),
                         coalesce(sum(case when state = 'uploaded' then size end), 0),
                         count(case when state = 'pending' then 1 end),
                         coalesce(sum(case when state = 'pending' then size end), 0)
                  from files where session_id = :id and state != 'missing')
               where id = :id""",
            {"id": session_id},
        )

    def mark_session_missing(self, session_id: str) -> None:
        """The session's directory is gone locally: keep its record and its objects."""
        with self._transaction():
            self.db["sessions"].update(session_id, {"local_missing": 1})  # type: ignore[union-attr]

    def set_session_state(self, session_id: str, state: str, **fields: Any) -> None:
        """Move a session to `state`, setting any extra columns given."""
        with self._transaction():
            self.db["sessions"].update(session_id, {"state": state, **fields})  # type: ignore[union-attr]

    def session_failed(self, session_id: str, error: str, next_attempt_at: float) -> None:
        """Mark a session failed with its reason; it is retried at `next_attempt_at`."""
        with self._transaction():
            self._connection.execute(
                """update sessions set state = 'failed', error = ?, next_attempt_at = ?,
                   attempts = attempts + 1 where id = ?""",
                [error, next_attempt_at, session_id],
            )

    # --- files ----------------------------------------------------------------------------

    def files_of(self, session_id: str) -> list[FileRecord]:
        """Every file of a session, by path."""
        with self._lock:
            rows = list(
                self.db.query(
                    "select * from files where session_id = ? order by rel_path", [session_id]
                )
            )
        return [_file_from_row(row) for row in rows]

    def pending_files(self, session_id: str) -> list[FileRecord]:
        """Files of a session that still need sending."""
        with self._lock:
            rows = list(
                self.db.query(
                    "select * from files where session_id = ? and state = 'pending' "
                    "order by rel_path",
                    [session_id],
                )
            )
        return [_file_from_row(row) for row in rows]

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
        """Record that this exact version (size, mtime) of the file is in S3, and forget the
        multipart upload that carried it, in one transaction. If the scan has meanwhile seen a
        newer version, the file stays pending."""
        self.acknowledged_at = now
        with self._transaction():
            self._connection.execute(
                """update files set state = case when size = ? and mtime_ns = ? then 'uploaded'
                   else state end, checksum = ?, checksum_algorithm = ?, etag = ?,
                   uploaded_size = ?, uploaded_mtime_ns = ?, uploaded_at = ?, error = null
                   where session_id = ? and rel_path = ?""",
                [
                    record.size,
                    record.mtime_ns,
                    checksum,
                    checksum_algorithm,
                    etag,
                    record.size,
                    record.mtime_ns,
                    now,
                    record.session_id,
                    record.rel_path,
                ],
            )
            if finished_upload_id is not None:
                self._forget_upload(finished_upload_id)
            self._refresh_totals(record.session_id)

    def file_error(self, session_id: str, rel_path: str, error: str | None) -> None:
        """Note (or clear) the last error of one file."""
        with self._transaction():
            self.db["files"].update((session_id, rel_path), {"error": error})  # type: ignore[union-attr]

    # --- multipart uploads ----------------------------------------------------------------

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
        """Record a new multipart upload the moment the server hands out its id. A growing
        upload is started while the file is still being appended to."""
        with self._transaction():
            self.db["uploads"].insert(  # type: ignore[union-attr]
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
        """Record one finished part, as soon as the server acknowledged it."""
        self.acknowledged_at = time.time()
        with self._transaction():
            self.db["parts"].upsert(  # type: ignore[union-attr]
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
        """The multipart upload in progress for this file, with its finished parts, or None."""
        with self._lock:
            rows = list(
                self.db.query(
                    "select * from uploads where session_id = ? and rel_path = ? "
                    "order by created_at desc limit 1",
                    [session_id, rel_path],
                )
            )
            if not rows:
                return None
            return self._upload_from_row(rows[0])

    def _upload_from_row(self, row: dict[str, Any]) -> UploadRecord:
        parts = tuple(
            PartRecord(p["number"], p["etag"], p["checksum"], p["size"], p["running_checksum"])
            for p in self.db.query(
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

    def all_uploads(self) -> list[UploadRecord]:
        """Every multipart upload the database knows of."""
        with self._lock:
            rows = list(self.db.query("select * from uploads order by created_at"))
            return [self._upload_from_row(row) for row in rows]

    def upload_finished(self, upload_id: str) -> None:
        """Forget a multipart upload (completed or aborted) and its parts."""
        with self._transaction():
            self._forget_upload(upload_id)

    def _forget_upload(self, upload_id: str) -> None:
        self._connection.execute("delete from parts where upload_id = ?", [upload_id])
        self._connection.execute("delete from uploads where upload_id = ?", [upload_id])

    def forget_parts(self, upload_id: str, numbers: list[int]) -> None:
        """Forget parts the server does not hold after all, so they are sent again."""
        with self._transaction():
            self._connection.executemany(
                "delete from parts where upload_id = ? and number = ?",
                [(upload_id, number) for number in numbers],
            )

    def manifest_written(self, session_id: str, *, key: str, revision: int, now: float) -> None:
        """The session's manifest is in S3: the session is uploaded."""
        with self._transaction():
            self.db["sessions"].update(  # type: ignore[union-attr]
                session_id,
                {
                    "state": "uploaded",
                    "manifest_key": key,
                    "manifest_revision": revision,
                    "uploaded_at": now,
                    "error": None,
                    "reason": None,
                    "attempts": 0,
                    "next_attempt_at": None,
                },
            )

    # --- operator controls ----------------------------------------------------------------

    def set_flag(self, name: str, value: str | None, now: float) -> None:
        """Set (or, with None, clear) a persistent flag such as `paused`."""
        with self._transaction():
            if value is None:
                self._connection.execute("delete from flags where name = ?", [name])
            else:
                self.db["flags"].upsert(  # type: ignore[union-attr]
                    {"name": name, "value": value, "set_at": now}, pk="name"
                )

    def flag(self, name: str) -> str | None:
        """The value of a flag, or None when it is not set."""
        with self._lock:
            rows = list(self.db.query("select value from flags where name = ?", [name]))
        return str(rows[0]["value"]) if rows else None

    def request(self, command: str, argument: str | None, now: float) -> int:
        """Queue a command for the running daemon; return its id."""
        with self._transaction():
            cursor = self._connection.execute(
                "insert into control (command, argument, requested_at) values (?, ?, ?)",
                [command, argument, now],
            )
        return int(cursor.lastrowid or 0)

    def pending_requests(self) -> list[tuple[int, str, str | None]]:
        """(id, command, argument) of queued commands not yet done, oldest first."""
        with self._lock:
            rows = list(
                self.db.query(
                    "select id, command, argument from control where done_at is null order by id"
                )
            )
        return [(row["id"], row["command"], row["argument"]) for row in rows]

    def request_done(self, request_id: int, result: str, now: float) -> None:
        """Mark a queued command as carried out."""
        with self._transaction():
            self._connection.execute(
                "update control set done_at = ?, result = ? where id = ?",
                [now, result, request_id],
            )

    def request_result(self, request_id: int) -> str | None:
        """The result of a queued command, or None while it is not done."""
        with self._lock:
            rows = list(
                self.db.query("select result, done_at from control where id = ?", [request_id])
            )
        return str(rows[0]["result"]) if rows and rows[0]["done_at"] is not None else None

    def retry_now(self, session_id: str) -> None:
        """A failed session is made ready again at once, its backoff forgotten."""
        with self._transaction():
            self._connection.execute(
                """update sessions set state = 'ready', next_attempt_at = null, attempts = 0,
                   reason = 'retry requested' where id = ? and state = 'failed'""",
                [session_id],
            )

    # --- heartbeat, status ----------------------------------------------------------------

    def beat(
        self,
        *,
        pid: int,
        hostname: str,
        started_at: float,
        now: float,
        status: str,
        rate: float = 0.0,
        progress_at: float | None = None,
    ) -> None:
        """Record that the daemon is alive, what it says, and how fast it is sending."""
        with self._transaction():
            self.db["heartbeat"].upsert(  # type: ignore[union-attr]
                {
                    "id": 1,
                    "pid": pid,
                    "hostname": hostname,
                    "started_at": started_at,
                    "beat_at": now,
                    "stopped_at": None,
                    "status": status,
                    "rate": rate,
                    "progress_at": progress_at,
                },
                pk="id",
            )

    def stopped(self, now: float) -> None:
        """Record a clean stop of the daemon."""
        with self._transaction():
            self._connection.execute("update heartbeat set stopped_at = ? where id = 1", [now])

    def heartbeat(self) -> Heartbeat | None:
        """The daemon's last heartbeat, or None if it never ran."""
        with self._lock:
            rows = list(self.db.query("select * from heartbeat where id = 1"))
        if not rows:
            return None
        row = rows[0]
        return Heartbeat(
            row["pid"],
            row["hostname"],
            row["started_at"],
            row["beat_at"],
            row["stopped_at"],
            row["status"] or "",
            row["rate"] or 0.0,
            row["progress_at"],
        )

    def session_counts(self) -> dict[str, int]:
        """Number of sessions per state."""
        with self._lock:
            rows = self.db.query("select state, count(*) as n from sessions group by state")
            return {row["state"]: row["n"] for row in rows}

    def backlog(self) -> tuple[int, int]:
        """(files, bytes) not yet in S3, over every session not locally missing."""
        with self._lock:
            row = next(
                self.db.query(
                    """select coalesce(sum(pending_files), 0) as files,
                              coalesce(sum(pending_bytes), 0) as bytes
                       from sessions where local_missing = 0"""
                )
            )
        return int(row["files"]), int(row["bytes"])

    def last_upload_at(self) -> float | None:
        """When a session was last uploaded completely, or None if never."""
        with self._lock:
            row = next(self.db.query("select max(uploaded_at) as at from sessions"))
        return None if row["at"] is None else float(row["at"])

    def upload_progress(self) -> tuple[int, int]:
        """(bytes uploaded, bytes in all) over the sessions being uploaded now."""
        with self._lock:
            row = next(
                self.db.query(
                    """select coalesce(sum(uploaded_bytes), 0) as done,
                              coalesce(sum(bytes), 0) as total
                       from sessions where state = 'uploading'"""
                )
            )
        return int(row["done"]), int(row["total"])

    def last_file_uploaded_at(self) -> float | None:
        """When a file last finished uploading, or None if none ever did."""
        with self._lock:
            row = next(self.db.query("select max(uploaded_at) as at from files"))
        return None if row["at"] is None else float(row["at"])

    def source_summary(self) -> list[SourceRow]:
        """Per source and session state: sessions, and files/bytes not yet in S3 (sessions
        whose folder went missing locally count as sessions but not as backlog)."""
        with self._lock:
            rows = self.db.query(
                """select source, state, count(*) as sessions,
                          coalesce(sum(case when local_missing = 0 then pending_files end), 0)
                            as files,
                          coalesce(sum(case when local_missing = 0 then pending_bytes end), 0)
                            as bytes
                   from sessions group by source, state order by source, state"""
            )
            return [
                SourceRow(r["source"], r["state"], r["sessions"], r["files"], r["bytes"])
                for r in rows
            ]

    def oldest_in(self, state: str) -> tuple[str, float] | None:
        """(id, since) of the session longest in `state`: waiting since it was detected,
        others since they were found complete. None when no session is in that state."""
        since = "detected_at" if state == "waiting" else "completed_at"
        with self._lock:
            rows = list(
                self.db.query(
                    f"select id, {since} as since from sessions where state = ? "
                    f"and {since} is not null order by {since} limit 1",
                    [state],
                )
            )
        return (rows[0]["id"], float(rows[0]["since"])) if rows else None

    def last_error(self) -> tuple[str, str] | None:
        """(session id, error) of the most recent failure still standing, or None."""
        with self._lock:
            rows = list(
                self.db.query(
                    "select id, error from sessions where state = 'failed' and error is not null "
                    "order by next_attempt_at desc limit 1"
                )
            )
        return (rows[0]["id"], rows[0]["error"]) if rows else None
