"""The session's manifest: every uploaded file with its checksum, written last.

Owns: gathering the manifest's content from the ledger, writing it (one PUT of a new revision)
and recording it. The document's shape is `agent.planning`'s (`manifest_head`,
`manifest_entry`); this module adds no field of its own but the refused files.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog

from agent import __version__
from agent.engine.context import EngineContext
from agent.planning import (
    encode_entry,
    encode_manifest,
    manifest_entry,
    manifest_head,
    manifest_key,
)
from agent.state import DONE, REFUSED, FileRecord, SessionRecord
from agent.transfer import AGENT_METADATA_MARK

log = structlog.get_logger("agent.upload")


def iso_time(now: float) -> str:
    """Given epoch seconds, return the UTC time as ISO 8601 with a Z, to the second."""
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_manifest(context: EngineContext, session: SessionRecord) -> str:
    """Write the next revision of `session`'s manifest and record it; return its key.

    Each uploaded file's entry is encoded as its row is read, so a session of 100,000 files
    costs about its manifest's size in memory, not a document of dicts besides."""
    key = manifest_key(session.key_prefix)
    now = context.clock()
    total = 0

    def entry(record: FileRecord) -> bytes:
        nonlocal total
        total += record.size
        return encode_entry(
            manifest_entry(
                rel_path=record.rel_path,
                key=record.key,
                size=record.size,
                mtime_ns=record.mtime_ns,
                checksum_algorithm=record.checksum_algorithm,
                checksum=record.checksum,
                etag=record.etag,
            )
        )

    entries = context.ledger.files_in_state(session.id, DONE, entry)
    refused = context.ledger.files_in_state(
        session.id, REFUSED, lambda f: {"path": f.rel_path, "reason": f.error}
    )
    revision = session.manifest_revision + 1
    head: dict[str, Any] = manifest_head(
        session={
            "id": session.id,
            "source": session.source,
            "rel_path": session.rel_path,
            "key_prefix": session.key_prefix,
            "metadata": session.metadata,
        },
        agent_name=context.agent_name,
        agent_version=__version__,
        revision=revision,
        written_at=iso_time(now),
        files=len(entries),
        size=total,
    )
    if refused:
        head["refused"] = refused
    body = encode_manifest(head, entries)
    del entries
    context.store.put(
        key,
        body,
        metadata={
            AGENT_METADATA_MARK: context.agent_name,
            "agent-manifest-revision": str(revision),
        },
        content_type="application/json",
    )
    context.ledger.manifest_written(session.id, key=key, revision=revision, now=now)
    log.info(
        "manifest_written",
        session=session.id,
        key=key,
        revision=revision,
        files=head["totals"]["files"],
    )
    return key
