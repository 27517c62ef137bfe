"""`agentctl sync --dry-run`: what a sync would upload, found by the same observation a sync
runs, over a throwaway in-memory copy of the state database.

The copy is the read-only view: observation records and judges into it exactly as sync would
into the real database (recovery first, then the reconcile), and the copy is dropped. So the
dry run can never judge a session differently from sync (an open file, an unsafe name, a
session a crash left `uploading`), while touching neither S3 nor the database.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agent import sessions
from agent.config import Settings
from agent.errors import StateError
from agent.observe import Observer
from agent.redact import redact
from agent.state import PENDING, REFUSED, State
from agent.state.db import Database


@dataclass(frozen=True)
class PlannedSession:
    """One session as sync would find it: whether it would be uploaded now and, if not, why;
    the files it would send and those it refuses."""

    id: str
    key_prefix: str
    state: str  # as sync would find it: waiting, ready, uploaded, failed; or refused
    ready: bool
    reason: str | None  # "complete" when ready, else why not
    files: int
    bytes: int
    keys: tuple[str, ...]
    refused: tuple[tuple[str, str], ...] = ()


def _copy_of(path: Path) -> Database:
    """The database at `path` copied into memory (an empty one if there is none yet)."""
    memory = sqlite3.connect(":memory:", check_same_thread=False)
    if path.exists():
        try:
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                source.backup(memory)
            finally:
                source.close()
        except sqlite3.Error as error:
            raise StateError(f"cannot read state database {path}: {error}") from error
    database = Database(memory, path)
    database.migrate(allowed=True)  # only the copy is migrated
    return database


def plan(settings: Settings, now: float) -> list[PlannedSession]:
    """Every session of the configured sources present locally, judged as a sync starting
    now would judge it, with what it would send."""
    with State(_copy_of(settings.state_db_path)) as view:
        observer = Observer(settings, view, clock=lambda: now)
        observer.recover_sessions()
        observer.reconcile()
        planned = []
        sources = {source.name for source in settings.sources}
        # In the order sync meets them: by source as configured, then by path.
        order = {source.name: number for number, source in enumerate(settings.sources)}
        records = sorted(view.sessions.all(), key=lambda r: (order.get(r.source, -1), r.rel_path))
        for record in records:
            if record.source not in sources or record.local_missing:
                continue
            due = record.state == sessions.READY or (
                record.state == sessions.FAILED
                and record.next_attempt_at is not None
                and record.next_attempt_at <= now
            )
            files = view.ledger.files_of(record.id)
            to_send = [f for f in files if f.state == PENDING]
            reason = record.reason
            if due:
                reason = "complete"
            elif record.state == sessions.FAILED:
                reason = f"failed, retried later: {redact(record.error or '')}"
            elif record.state == sessions.UPLOADED:
                reason = "uploaded; nothing changed since"
            planned.append(
                PlannedSession(
                    id=record.id,
                    key_prefix=record.key_prefix,
                    state=record.state,
                    ready=due,
                    reason=reason,
                    files=len(to_send),
                    bytes=sum(f.size for f in to_send),
                    keys=tuple(f.key for f in to_send),
                    refused=tuple((f.rel_path, f.error or "") for f in files if f.state == REFUSED),
                )
            )
        for session_id, (prefix, problem) in sorted(observer.refused.items()):
            # Never recorded: sync neither records nor uploads a session it refuses.
            planned.append(
                PlannedSession(
                    id=session_id,
                    key_prefix=prefix,
                    state="refused",
                    ready=False,
                    reason=f"session refused: {problem}",
                    files=0,
                    bytes=0,
                    keys=(),
                )
            )
    return planned
