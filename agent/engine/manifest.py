"""The session's manifest: every uploaded file with its checksum, written last.

Owns: gathering the manifest's content from the ledger, writing it (one PUT of a new revision)
and recording it. The document's shape is `agent.planning.build_manifest`'s; this module adds
no field of its own but the refused files.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import structlog

from agent import __version__
from agent.engine.context import EngineContext
from agent.planning import build_manifest, manifest_key
from agent.state import DONE, REFUSED, SessionRecord
from agent.transfer import AGENT_METADATA_MARK

log = structlog.get_logger("agent.upload")


def iso_time(now: float) -> str:
    """Given epoch seconds, return the UTC time as ISO 8601 with a Z, to the second."""
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_manifest(context: EngineContext, session: SessionRecord) -> str:
    """Write the next revision of `session`'s manifest and record it; return its key."""
    key = manifest_key(session.key_prefix)
    now = context.clock()
    records = context.ledger.files_of(session.id)
    files = [
        {
            "rel_path": f.rel_path,
            "key": f.key,
            "size": f.size,
            "mtime_ns": f.mtime_ns,
            "checksum_algorithm": f.checksum_algorithm,
            "checksum": f.checksum,
            "etag": f.etag,
        }
        for f in records
        if f.state == DONE
    ]
    refused = [{"path": f.rel_path, "reason": f.error} for f in records if f.state == REFUSED]
    revision = session.manifest_revision + 1
    document: dict[str, Any] = build_manifest(
        session={
            "id": session.id,
            "source": session.source,
            "rel_path": session.rel_path,
            "key_prefix": session.key_prefix,
            "metadata": session.metadata,
        },
        files=files,
        agent_name=context.agent_name,
        agent_version=__version__,
        revision=revision,
        written_at=iso_time(now),
    )
    if refused:
        document["refused"] = refused
    body = json.dumps(document, indent=1, sort_keys=True).encode()
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
    log.info("manifest_written", session=session.id, key=key, revision=revision, files=len(files))
    return key
