"""Verification: compare what S3 holds with the state database and the local files.

For each uploaded file of a session: the object exists, has the recorded size and ETag, and
its checksum metadata (where the agent wrote one) equals the recorded checksum; the local
file, when it is still there, has the recorded size and mtime and (unless `quick`) the
recorded checksum. With `download`, each object is also read back and checksummed. The
session's manifest must exist, carry the recorded revision and list exactly the recorded
files. Nothing is written anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.checksums import stream_checksum
from agent.errors import FileChangedError
from agent.scan import open_source
from agent.state import DONE, FileRecord, SessionRecord, State
from agent.transfer import S3Store


@dataclass(frozen=True)
class Difference:
    """One way in which S3, the database and the local files disagree."""

    session: str
    path: str
    key: str
    problem: str


@dataclass
class SessionCheck:
    """The result of verifying one session."""

    session: str
    files: int = 0
    bytes_read: int = 0
    local_unchecked: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)


def verify_session(
    state: State,
    store: S3Store,
    session: SessionRecord,
    *,
    quick: bool = False,
    download: bool = False,
    on_file: Callable[[str], None] = lambda _path: None,
) -> SessionCheck:
    """Given a session, compare its uploaded files and manifest in S3 with the database and
    the local files; return every difference found."""
    check = SessionCheck(session.id)
    uploaded = [
        record for record in state.ledger.files_of(session.id) if record.uploaded_size is not None
    ]
    for record in uploaded:
        on_file(record.rel_path)
        check.files += 1
        problems = _check_object(store, record, download, check)
        problems += _check_local(Path(session.path) / record.rel_path, record, quick, check)
        check.differences.extend(
            Difference(session.id, record.rel_path, record.key, problem) for problem in problems
        )
    check.differences.extend(_check_manifest(store, session, uploaded))
    return check


def _check_object(
    store: S3Store, record: FileRecord, download: bool, check: SessionCheck
) -> list[str]:
    info = store.head(record.key)
    if info is None:
        return ["object missing in S3"]
    problems: list[str] = []
    if info.size != record.uploaded_size:
        problems.append(f"size in S3 is {info.size}, recorded {record.uploaded_size}")
    if record.etag and info.etag != record.etag:
        problems.append(f"ETag in S3 is {info.etag}, recorded {record.etag} (object replaced?)")
    stored = info.metadata.get("agent-checksum")
    if stored is not None and stored != record.checksum:
        problems.append(f"checksum metadata in S3 is {stored}, recorded {record.checksum}")
    if download and record.checksum_algorithm and record.checksum:
        answer = store.object_checksum(record.key, record.checksum_algorithm)
        if answer is not None:
            check.bytes_read += answer[0]
            if answer[1] != record.checksum:
                problems.append(
                    f"bytes in S3 have {record.checksum_algorithm} {answer[1]}, "
                    f"recorded {record.checksum}"
                )
    return problems


def _check_local(path: Path, record: FileRecord, quick: bool, check: SessionCheck) -> list[str]:
    # Not bound to the recorded inode: a copy put in place with the same bytes is no
    # difference. But never through a symbolic link, so verify reads only session files.
    try:
        with open_source(path) as (handle, info):
            size, mtime_ns = info.st_size, info.st_mtime_ns
            if (size, mtime_ns) != (record.uploaded_size, record.uploaded_mtime_ns):
                return [
                    f"local file changed since upload (size {size}, recorded "
                    f"{record.uploaded_size}); the agent re-sends it once its session is "
                    "complete again"
                ]
            if quick or not record.checksum_algorithm or not record.checksum:
                return []
            checksum, read = stream_checksum(handle, record.checksum_algorithm)
    except FileNotFoundError:
        # Deleting local data after upload is normal; there is nothing to compare.
        check.local_unchecked.append(record.rel_path)
        return []
    except FileChangedError as error:
        return [f"local file is no longer the regular file that was uploaded: {error.reason}"]
    check.bytes_read += read
    if checksum != record.checksum:
        return [
            f"local bytes have {record.checksum_algorithm} {checksum}, recorded "
            f"{record.checksum}, with size and mtime unchanged (modified in place or disk error)"
        ]
    return []


def _check_manifest(
    store: S3Store, session: SessionRecord, uploaded: list[FileRecord]
) -> list[Difference]:
    if session.manifest_key is None:
        return []

    def difference(problem: str) -> Difference:
        return Difference(session.id, "(manifest)", str(session.manifest_key), problem)

    body = store.get_bytes(session.manifest_key)
    if body is None:
        return [difference("manifest missing in S3")]
    try:
        document = json.loads(body)
        revision = int(document["revision"])
        listed = {
            entry["path"]: (entry["size"], entry["checksum"]["value"])
            for entry in document["files"]
        }
    except (ValueError, KeyError, TypeError) as error:
        return [difference(f"manifest is not a valid ingest manifest: {error}")]
    problems: list[Difference] = []
    if revision != session.manifest_revision:
        problems.append(
            difference(f"manifest revision is {revision}, recorded {session.manifest_revision}")
        )
    recorded = {
        record.rel_path: (record.uploaded_size, record.checksum)
        for record in uploaded
        if record.state == DONE
    }
    if session.state == "uploaded" and listed != recorded:
        missing = sorted(set(recorded) - set(listed))
        extra = sorted(set(listed) - set(recorded))
        changed = sorted(p for p in set(listed) & set(recorded) if listed[p] != recorded[p])
        detail = "; ".join(
            f"{label}: {', '.join(names[:3])}"
            for label, names in (
                ("not listed", missing),
                ("not recorded", extra),
                ("differ", changed),
            )
            if names
        )
        problems.append(difference(f"manifest and database disagree ({detail})"))
    return problems
