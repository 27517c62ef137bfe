"""The rows of the state database as frozen records, and how rows become records."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from agent.scan import FileStat

# File states.
PENDING = "pending"
DONE = "uploaded"
MISSING = "missing"
REFUSED = "refused"


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


@dataclass(frozen=True, slots=True)
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


def session_from_row(row: dict[str, Any]) -> SessionRecord:
    """A `sessions` row as a record."""
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


_FILE_FIELDS = tuple(FileRecord.__dataclass_fields__)


def file_from_row(row: dict[str, Any]) -> FileRecord:
    """A `files` row as a record."""
    return FileRecord(*[row[name] for name in _FILE_FIELDS])
