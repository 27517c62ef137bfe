"""Ingest: the thin orchestration over scan, sessions policy, state and the upload engine.

`reconcile` (the truth, needs no events) scans every source and records what it sees;
`observe` re-scans one session (what an event hint triggers); `upload` sends one ready
session and settles its state; `recover` cleans up after a crash. Used by both the daemon
and `agentctl sync`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent import sessions
from agent.config import Settings, SourceSettings
from agent.errors import TransferError
from agent.planning import object_key, session_key_prefix, unsafe_name_reason
from agent.scan import find_sessions, scan_session
from agent.state import SessionRecord, State
from agent.transfer import S3Store
from agent.upload import SessionUploader, UploadOutcome

log = structlog.get_logger("agent.ingest")


def session_id_for(source: SourceSettings, rel_path: str) -> str:
    """The id operators see and type: `{source}/{session path}`."""
    return f"{source.name}/{rel_path}"


def rule_of(source: SourceSettings) -> sessions.Rule:
    """The completeness rule of a source."""
    return sessions.Rule(
        quiet_period=source.quiet_period,
        marker=source.marker,
        required=source.required,
        min_age=source.min_age,
    )


@dataclass(frozen=True)
class PlannedSession:
    """What `agentctl sync --dry-run` reports for a session."""

    record: SessionRecord
    verdict: sessions.Verdict
    files: int
    bytes: int
    keys: tuple[str, ...]


class Ingest:
    """Scans, judges and uploads for one agent."""

    def __init__(
        self,
        settings: Settings,
        state: State,
        store: S3Store,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.state = state
        self.store = store
        self.clock = clock
        self.uploader = SessionUploader(settings, state, store, clock=clock)

    # --- observing ----------------------------------------------------------------------------

    def observe(self, source: SourceSettings, rel_path: str) -> SessionRecord | None:
        """Scan one session, record it, judge it; return its record (None if never seen and
        its directory does not exist)."""
        now = self.clock()
        session_id = session_id_for(source, rel_path)
        path = source.path / rel_path
        if not path.is_dir():
            existing = self.state.get_session(session_id)
            if existing is not None and not existing.local_missing:
                log.warning("session_directory_gone", session=session_id, path=str(path))
                self.state.mark_session_missing(session_id)
            return existing
        scan = scan_session(source.path, rel_path, source.exclude)
        prefix = session_key_prefix(self.settings.destination.prefix, source.name, rel_path)
        keys: dict[str, str] = {}
        for item in scan.files:
            reason = unsafe_name_reason(item.rel_path)
            if reason is None:
                keys[item.rel_path] = object_key(prefix, item.rel_path)
            else:
                log.warning("file_refused", session=session_id, file=item.rel_path, reason=reason)
        record, changed = self.state.observe_session(
            session_id=session_id,
            source=source.name,
            rel_path=rel_path,
            path=str(path),
            key_prefix=prefix,
            files=scan.files,
            keys=keys,
            newest_mtime=scan.newest_mtime_ns / 1e9,
            metadata=dict(source.metadata),
            now=now,
        )
        if changed:
            log.debug("session_changed", session=session_id, files=len(scan.files))
        return self._judge(source, record, scan.unreadable, changed, now)

    def _judge(
        self,
        source: SourceSettings,
        record: SessionRecord,
        unreadable: tuple[str, ...],
        changed: bool,
        now: float,
    ) -> SessionRecord:
        if record.state == sessions.UPLOADING:
            return record
        if record.state in (sessions.UPLOADED, sessions.FAILED) and not changed:
            return record
        names = tuple(f.rel_path for f in self.state.files_of(record.id) if f.state != "missing")
        verdict = sessions.judge(
            sessions.Observation(names, record.last_change_at, record.detected_at, unreadable),
            rule_of(source),
            now,
        )
        if verdict.ready:
            if record.state != sessions.READY:
                log.info("session_ready", session=record.id, files=record.files, bytes=record.bytes)
                self.state.set_session_state(
                    record.id, sessions.READY, completed_at=now, reason=None
                )
        elif record.state != sessions.WAITING or record.reason != verdict.reason:
            if record.state != sessions.WAITING:
                log.info("session_reopened", session=record.id, reason=verdict.reason)
            self.state.set_session_state(record.id, sessions.WAITING, reason=verdict.reason)
        updated = self.state.get_session(record.id)
        assert updated is not None
        return updated

    def reconcile(self) -> int:
        """Scan every source from the top; record and judge every session. Return how many
        sessions were seen. Sessions whose directories vanished are marked, never deleted."""
        seen: set[str] = set()
        for source in self.settings.sources:
            for rel_path in find_sessions(source.path, source.session_depth, source.exclude):
                seen.add(session_id_for(source, rel_path))
                self.observe(source, rel_path)
        for record in self.state.list_sessions():
            if record.id not in seen and not record.local_missing:
                try:
                    source = self.settings.source(record.source)
                except KeyError:
                    continue
                self.observe(source, record.rel_path)
        return len(seen)

    def recheck_waiting(self) -> None:
        """Re-scan waiting sessions whose time-based rule may now hold."""
        now = self.clock()
        for record in self.state.sessions_in((sessions.WAITING,)):
            if record.local_missing:
                continue
            try:
                source = self.settings.source(record.source)
            except KeyError:
                continue
            if record.last_change_at + source.quiet_period <= now:
                self.observe(source, record.rel_path)

    # --- uploading ----------------------------------------------------------------------------

    def due_sessions(self) -> list[SessionRecord]:
        """Ready sessions, and failed ones whose retry time has come, oldest first."""
        now = self.clock()
        return [
            record
            for record in self.state.sessions_in((sessions.READY, sessions.FAILED))
            if record.state == sessions.READY
            or (record.next_attempt_at is not None and record.next_attempt_at <= now)
        ]

    def upload(self, record: SessionRecord) -> UploadOutcome:
        """Upload one session and settle its state: uploaded, back to waiting (a file changed),
        back to ready (interrupted), or failed with the reason and a retry time."""
        log.info(
            "session_upload_started", session=record.id, files=record.files, bytes=record.bytes
        )
        self.state.set_session_state(record.id, sessions.UPLOADING, reason=None)
        started = self.clock()
        try:
            outcome = self.uploader.upload_session(record)
        except TransferError as error:
            outcome = UploadOutcome(errors=[error])
        except OSError as error:
            outcome = UploadOutcome(errors=[TransferError("read", record.path, str(error))])
        elapsed = max(self.clock() - started, 1e-6)
        if outcome.complete:
            log.info(
                "session_uploaded",
                session=record.id,
                files_sent=outcome.files_sent,
                bytes_sent=outcome.bytes_sent,
                seconds=round(elapsed, 3),
                mb_per_s=round(outcome.bytes_sent / elapsed / 1e6, 2),
                manifest=outcome.manifest_key,
            )
        elif outcome.errors:
            first_error = outcome.errors[0]
            attempts = record.attempts + 1
            delay = min(
                self.settings.upload.failed_retry_delay * 2 ** min(attempts - 1, 6), 86400.0
            )
            self.state.session_failed(record.id, str(first_error), self.clock() + delay)
            log.error(
                "session_failed",
                session=record.id,
                error=str(first_error),
                retryable=first_error.retryable,
                retry_in_s=round(delay),
            )
        elif outcome.interrupted:
            self.state.set_session_state(record.id, sessions.READY, reason="interrupted; resumes")
        else:
            reason = f"changed during upload: {', '.join(outcome.changed[:3])}"
            log.warning("session_changed_during_upload", session=record.id, files=outcome.changed)
            self.state.set_session_state(record.id, sessions.WAITING, reason=reason)
        return outcome

    # --- recovery -----------------------------------------------------------------------------

    def recover(self) -> None:
        """After a crash: sessions left `uploading` become `ready` again; multipart uploads
        under our sources' prefixes that the database does not know are aborted (they were
        created but never recorded)."""
        for record in self.state.sessions_in((sessions.UPLOADING,)):
            self.state.set_session_state(record.id, sessions.READY, reason="resuming after restart")
        known = {upload.upload_id for upload in self.state.all_uploads()}
        for source in self.settings.sources:
            prefix = session_key_prefix(self.settings.destination.prefix, source.name, "") + "/"
            for remote in self.store.list_multipart_uploads(prefix):
                if remote.upload_id not in known:
                    log.warning("orphan_upload_aborted", key=remote.key, upload_id=remote.upload_id)
                    self.store.abort_multipart(remote.key, remote.upload_id)


def source_for_path(settings: Settings, path: Path) -> tuple[SourceSettings, str] | None:
    """Map a filesystem path to (its source, its session's relative path), or None when it
    is not inside a session directory of any source."""
    for source in settings.sources:
        try:
            relative = path.relative_to(source.path)
        except ValueError:
            continue
        parts = relative.parts
        if len(parts) < source.session_depth:
            return None
        return source, "/".join(parts[: source.session_depth])
    return None


def plan_sync(settings: Settings, state: State | None, now: float) -> list[PlannedSession]:
    """Given settings and the state (None when there is no database yet), return what a sync
    would upload, session by session, without touching S3 or writing anything."""
    planned: list[PlannedSession] = []
    for source in settings.sources:
        for rel_path in find_sessions(source.path, source.session_depth, source.exclude):
            scan = scan_session(source.path, rel_path, source.exclude)
            prefix = session_key_prefix(settings.destination.prefix, source.name, rel_path)
            session_id = session_id_for(source, rel_path)
            existing = state.get_session(session_id) if state is not None else None
            done = {
                f.rel_path: (f.uploaded_size, f.uploaded_mtime_ns)
                for f in (state.files_of(session_id) if state is not None and existing else [])
            }
            to_send = [
                f
                for f in scan.files
                if done.get(f.rel_path) != (f.size, f.mtime_ns)
                and unsafe_name_reason(f.rel_path) is None
            ]
            verdict = sessions.judge(
                sessions.Observation(
                    tuple(f.rel_path for f in scan.files),
                    existing.last_change_at if existing else scan.newest_mtime_ns / 1e9,
                    existing.detected_at if existing else now,
                    scan.unreadable,
                ),
                rule_of(source),
                now,
            )
            record = existing or SessionRecord(
                id=session_id,
                source=source.name,
                rel_path=rel_path,
                path=str(source.path / rel_path),
                state="new",
                files=len(scan.files),
                bytes=scan.total_bytes,
                uploaded_bytes=0,
                key_prefix=prefix,
                manifest_key=None,
                manifest_revision=0,
                metadata=dict(source.metadata),
                fingerprint="",
                detected_at=now,
                last_change_at=now,
                completed_at=None,
                uploaded_at=None,
                error=None,
                reason=None,
                attempts=0,
                next_attempt_at=None,
                local_missing=False,
            )
            planned.append(
                PlannedSession(
                    record,
                    verdict,
                    len(to_send),
                    sum(f.size for f in to_send),
                    tuple(object_key(prefix, f.rel_path) for f in to_send),
                )
            )
    return planned
