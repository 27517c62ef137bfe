"""Observation: what the sources hold now, recorded and judged. Never touches S3.

`reconcile` (the truth, needs no events) scans every source and records what it sees;
`observe` re-scans one session (what an event hint triggers) and judges it with the pure
policy in `sessions`; `recover_sessions` puts back sessions a crash left `uploading`. The
daemon and `sync` observe through it, and the dry run observes a throwaway copy of the state
with it, so a dry run and a sync cannot judge a session differently.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import structlog

from agent import sessions
from agent.config import Settings, SourceSettings
from agent.planning import (
    join_key,
    key_length_reason,
    object_key,
    render_key_template,
    strict_name_reason,
    template_root,
    unsafe_name_reason,
)
from agent.scan import (
    SessionScan,
    find_sessions,
    is_utf8,
    open_for_writing,
    real_directory,
    scan_session,
    shown_name,
)
from agent.state import REFUSED_FLAG, SessionRecord, State

log = structlog.get_logger("agent.observe")

# A session held back only by a file still open for writing is looked at again this often.
OPEN_FILE_RECHECK = 10.0

NOT_UTF8_SESSION_REASON = (
    "session directory name is not valid UTF-8 (shown with \\x escapes); rename it to upload it"
)


def session_id_for(source: SourceSettings, rel_path: str) -> str:
    """The id operators see and type: `{source}/{session path}`."""
    return f"{source.name}/{rel_path}"


def session_values(
    settings: Settings, source: SourceSettings, rel_path: str
) -> dict[str, str] | None:
    """The values a key template may use for one session: the source's metadata, `source`,
    `path`, `agent` and the layout's named parts. None when the path does not fit the layout."""
    values = {
        **source.metadata,
        "source": source.name,
        "path": rel_path,
        "agent": settings.agent.name,
    }
    if source.layout is not None:
        fields = source.layout.fields_of(rel_path)
        if fields is None:
            return None
        values.update(fields)
    return values


def session_metadata(source: SourceSettings, values: dict[str, str]) -> dict[str, str]:
    """A session's metadata: the source's `metadata` table plus the layout's named parts."""
    metadata = dict(source.metadata)
    for name in source.layout.fields if source.layout else ():
        metadata[name] = values[name]
    return metadata


def key_prefix_for(settings: Settings, source: SourceSettings, values: dict[str, str]) -> str:
    """Where a session's objects go: the destination prefix, then the rendered key template."""
    return join_key(settings.destination.prefix, render_key_template(source.key_template, values))


def source_key_root(settings: Settings, source: SourceSettings) -> str:
    """The key prefix shared by every session of a source (may be empty)."""
    known = {**source.metadata, "source": source.name, "agent": settings.agent.name}
    return join_key(settings.destination.prefix, template_root(source.key_template, known))


def refusal_reason(source: SourceSettings, session_prefix: str, rel_path: str) -> str | None:
    """Why a file of this source will not be uploaded (unsafe or, with strict_names, badly
    named, or its whole key over S3's 1,024 bytes), or None."""
    reason = unsafe_name_reason(rel_path)
    if reason is None and source.strict_names:
        reason = strict_name_reason(rel_path)
    if reason is None:
        # The whole key counts: a short name under a long prefix can still be too long.
        reason = key_length_reason(object_key(session_prefix, rel_path))
    return reason


def rule_of(source: SourceSettings) -> sessions.Rule:
    """The completeness rule of a source."""
    return sessions.Rule(
        quiet_period=source.quiet_period,
        marker=source.marker,
        required=source.required,
        min_age=source.min_age,
    )


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
        rel_path = "/".join(parts[: source.session_depth])
        if source.layout is not None and source.layout.fields_of(rel_path) is None:
            return None
        return source, rel_path
    return None


class Observer:
    """Scans and judges the sessions of one agent's sources, recording them in the state."""

    def __init__(
        self, settings: Settings, state: State, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.state = state
        self.clock = clock
        # Sessions never recorded nor uploaded, as the last reconcile found them: those whose
        # key prefix is unsafe (id → (prefix, reason)), and those whose directory name is not
        # UTF-8 (shown path → reason). Published for `status` (REFUSED_FLAG) and `sync`.
        self.refused: dict[str, tuple[str, str]] = {}
        self.skipped: dict[str, str] = {}
        # Warned about once per process, not at every rescan.
        self._warned: set[str] = set()

    def observe(self, source: SourceSettings, rel_path: str) -> SessionRecord | None:
        """Scan one session, record it, judge it; return its record (None if never seen and
        its directory does not exist, or if the path does not fit the source's layout)."""
        now = self.clock()
        if not is_utf8(rel_path):
            # Its id, path and keys could not be stored or sent; skip it, loudly, once.
            shown = shown_name(str(source.path / rel_path))
            self.skipped[shown] = NOT_UTF8_SESSION_REASON
            if shown not in self._warned:
                self._warned.add(shown)
                log.warning("session_skipped", path=shown, reason=NOT_UTF8_SESSION_REASON)
            return None
        session_id = session_id_for(source, rel_path)
        path = source.path / rel_path
        values = session_values(self.settings, source, rel_path)
        if values is None:
            return None
        if not real_directory(source.path, rel_path):
            existing = self.state.sessions.get(session_id)
            if existing is not None and not existing.local_missing:
                log.warning("session_directory_gone", session=session_id, path=str(path))
                self.state.sessions.mark_missing(session_id)
            return existing
        prefix = key_prefix_for(self.settings, source, values)
        prefix_problem = unsafe_name_reason(prefix)
        if prefix_problem is not None:
            log.error(
                "session_refused", session=session_id, key_prefix=prefix, reason=prefix_problem
            )
            self.refused[session_id] = (prefix, prefix_problem)
            return None
        self.refused.pop(session_id, None)
        scan = scan_session(source.path, rel_path, source.exclude)
        keys: dict[str, str] = {}
        refused: dict[str, str] = {}
        for item in scan.files:
            reason = item.refusal or refusal_reason(source, prefix, item.rel_path)
            if reason is None:
                keys[item.rel_path] = object_key(prefix, item.rel_path)
            else:
                refused[item.rel_path] = reason
        record, changed = self.state.sessions.observe(
            session_id=session_id,
            source=source.name,
            rel_path=rel_path,
            path=str(path),
            key_prefix=prefix,
            files=scan.files,
            keys=keys,
            refused=refused,
            newest_mtime=scan.newest_mtime_ns / 1e9,
            metadata=session_metadata(source, values),
            now=now,
        )
        if changed:
            log.debug("session_changed", session=session_id, files=len(scan.files))
            for name, reason in refused.items():
                log.warning("file_refused", session=session_id, file=name, reason=reason)
        return self._judge(source, record, scan, changed, now)

    def _judge(
        self,
        source: SourceSettings,
        record: SessionRecord,
        scan: SessionScan,
        changed: bool,
        now: float,
    ) -> SessionRecord:
        if record.state == sessions.UPLOADING:
            return record
        if record.state in (sessions.UPLOADED, sessions.FAILED) and not changed:
            return record
        names = tuple(item.rel_path for item in scan.files)
        observation = sessions.Observation(
            names, record.last_change_at, record.detected_at, scan.unreadable
        )
        rule = rule_of(source)
        verdict = sessions.judge(observation, rule, now)
        recheck_at = verdict.ready_at if verdict.ready_at and verdict.ready_at > now else None
        if verdict.ready and source.check_open_files:
            # Only asked once everything else holds: reading /proc costs more than a stat.
            writers = open_for_writing(Path(record.path), ignore_pid=os.getpid()) or {}
            held = tuple(sorted(set(writers) & set(names)))
            if held:
                verdict = sessions.judge(replace(observation, open_for_writing=held), rule, now)
                recheck_at = now + OPEN_FILE_RECHECK
        # Moves name the state this verdict was made on: the uploader (or `agentctl retry`)
        # may have moved the session since it was read, and then it is left alone.
        if verdict.ready:
            if record.state == sessions.READY:
                return record
            moved = self.state.sessions.move(
                record.id,
                sessions.READY,
                expect=record.state,
                completed_at=now,
                reason=None,
                recheck_at=None,
            )
            if moved:
                log.info("session_ready", session=record.id, files=record.files, bytes=record.bytes)
        elif (
            record.state != sessions.WAITING
            or record.reason != verdict.reason
            or record.recheck_at != recheck_at
        ):
            moved = self.state.sessions.move(
                record.id,
                sessions.WAITING,
                expect=record.state,
                reason=verdict.reason,
                recheck_at=recheck_at,
            )
            if moved and record.state != sessions.WAITING:
                log.info("session_reopened", session=record.id, reason=verdict.reason)
        else:
            return record
        updated = self.state.sessions.get(record.id)
        assert updated is not None
        return updated

    def reconcile(self, tick: Callable[[], bool] | None = None) -> int:
        """Scan every source from the top; record and judge every session. Return how many
        sessions were seen. Sessions whose directories vanished are marked, never deleted.

        `tick` is called after each session (the daemon pings its watchdog there, since a
        large tree takes longer than the watchdog's period); when it returns True, the scan
        stops early (a stop was asked for) and marks nothing missing."""
        started = time.monotonic()
        seen: set[str] = set()
        files = 0
        self.refused.clear()
        self.skipped.clear()
        for source in self.settings.sources:
            for rel_path in find_sessions(
                source.path, source.session_depth, source.exclude, source.layout
            ):
                seen.add(session_id_for(source, rel_path))
                record = self.observe(source, rel_path)
                files += record.files if record is not None else 0
                if tick is not None and tick():
                    log.info("reconcile_interrupted", sessions=len(seen))
                    return len(seen)
        for record in self.state.sessions.all():
            if record.id not in seen and not record.local_missing:
                try:
                    source = self.settings.source(record.source)
                except KeyError:
                    continue
                self.observe(source, record.rel_path)
        self._publish_refusals()
        log.info(
            "reconcile_finished",
            sessions=len(seen),
            files=files,
            seconds=round(time.monotonic() - started, 3),
        )
        return len(seen)

    def refusals(self) -> list[tuple[str, str]]:
        """(session, reason) of every session the last reconcile refused, by name."""
        found = [(session, reason) for session, (_prefix, reason) in self.refused.items()]
        return sorted(found + list(self.skipped.items()))

    def _publish_refusals(self) -> None:
        """Keep the refused sessions in the state, where `status` reads them."""
        refusals = self.refusals()
        text = json.dumps([{"session": s, "reason": r} for s, r in refusals]) if refusals else None
        if self.state.control.flag(REFUSED_FLAG) != text:
            self.state.control.set_flag(REFUSED_FLAG, text, self.clock())

    def recheck_waiting(self) -> bool:
        """Re-scan waiting sessions whose time-based rule may now hold (the time their last
        verdict named has come); return whether there were any. Sessions waiting for a
        marker or a required file are not polled: an event or the next reconcile brings
        them back."""
        observed = False
        for record in self.state.sessions.to_recheck(self.clock()):
            try:
                source = self.settings.source(record.source)
            except KeyError:
                continue
            self.observe(source, record.rel_path)
            observed = True
        return observed

    # --- uploading ----------------------------------------------------------------------------

    def recover_sessions(self) -> None:
        """After a crash: sessions left `uploading` become `ready`, to be judged again by the
        reconcile that follows (their files may have changed while nothing watched)."""
        for record in self.state.sessions.in_states((sessions.UPLOADING,)):
            self.state.sessions.move(record.id, sessions.READY, reason="resuming after restart")
