"""The schema: migrations applied in order, the count kept in `PRAGMA user_version`.

A migration is never edited once released; a change of schema is a new migration.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils


def _migration_1(db: sqlite_utils.Database) -> None:
    db.table("sessions").create(
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
    db.table("sessions").create_index(["state"])
    db.table("files").create(
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
    db.table("files").create_index(["state"])
    db.table("uploads").create(
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
    db.table("uploads").create_index(["session_id", "rel_path"])
    db.table("parts").create(
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
    db.table("heartbeat").create(
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
    db.table("control").create(
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
    db.table("events").create(
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
    db.table("flags").create({"name": str, "value": str, "set_at": float}, pk="name")


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
