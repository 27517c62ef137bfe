"""Sessions and what the scans saw of their files; every change of a session's state.

A session's state changes only through `SessionStore.move` and the named moves `fail`,
`uploaded` and `retry_now`, each checked against the life cycle in
`agent.sessions.TRANSITIONS` (`retry_now` by its own `where state = 'failed'`). Readers that
decide on a record they read earlier move with `expect=`, so a session another thread or
process moved meanwhile is left alone instead of being moved from a state it no longer has.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

from agent import sessions
from agent.errors import StateError
from agent.scan import FileStat
from agent.state.db import Database
from agent.state.records import (
    DONE,
    MISSING,
    PENDING,
    REFUSED,
    SessionRecord,
    fingerprint_of,
    session_from_row,
)

_SELECT = "select * from sessions"


class _Known(NamedTuple):
    """What the database holds of one file, as a scan compares it."""

    rel_path: str
    size: int
    mtime_ns: int
    inode: int
    device: int | None
    state: str
    key: str
    uploaded_size: int | None
    uploaded_mtime_ns: int | None
    error: str | None


# Columns a move may set besides the state itself.
_MOVE_FIELDS = frozenset({"reason", "completed_at", "recheck_at", "fingerprint", "error"})

_REFRESH_TOTALS = """update sessions set
       (files, bytes, uploaded_bytes, pending_files, pending_bytes) =
       (select count(*), coalesce(sum(size), 0),
               coalesce(sum(case when state = 'uploaded' then size end), 0),
               count(case when state = 'pending' then 1 end),
               coalesce(sum(case when state = 'pending' then size end), 0)
        from files where session_id = :id and state != 'missing')
     where id = :id"""


class SessionStore:
    """The `sessions` table, and the `files` rows a scan writes."""

    def __init__(self, database: Database) -> None:
        self._database = database

    # --- reading --------------------------------------------------------------------------

    def get(self, session_id: str) -> SessionRecord | None:
        """Return the session with this id, or None."""
        rows = self._database.rows(_SELECT + " where id = ?", [session_id])
        return session_from_row(rows[0]) if rows else None

    def all(self, state: str | None = None) -> list[SessionRecord]:
        """Every session (or those in `state`), oldest first."""
        return self.in_states((state,)) if state else self._select("")

    def in_states(self, states: tuple[str, ...]) -> list[SessionRecord]:
        """Sessions whose state is one of `states`, oldest first."""
        marks = ",".join("?" for _ in states)
        return self._select(f" where state in ({marks})", list(states))

    def to_recheck(self, now: float) -> list[SessionRecord]:
        """Waiting sessions (still present locally) whose recheck time has come."""
        rows = self._database.rows(
            _SELECT + " where state = 'waiting' and local_missing = 0 "
            "and recheck_at is not null and recheck_at <= ? order by recheck_at",
            [now],
        )
        return [session_from_row(row) for row in rows]

    def _select(self, where: str, params: list[Any] | None = None) -> list[SessionRecord]:
        rows = self._database.rows(_SELECT + where + " order by detected_at, id", params)
        return [session_from_row(row) for row in rows]

    # --- observing ------------------------------------------------------------------------

    def observe(
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

        Returns the session and whether anything changed since the last observation. Files
        that are new or whose size/mtime differ from what was uploaded become `pending`; files
        gone become `missing`. Judging the session (its state) is the caller's next step.
        """
        fingerprint = fingerprint_of(files)
        table = self._database.db.table("sessions")
        with self._database.transaction():
            existing = self.get(session_id)
            if existing is None:
                table.insert(
                    {
                        "id": session_id,
                        "source": source,
                        "rel_path": rel_path,
                        "path": path,
                        "state": sessions.WAITING,
                        "key_prefix": key_prefix,
                        "metadata": json.dumps(metadata, sort_keys=True),
                        "fingerprint": fingerprint,
                        "detected_at": now,
                        # On first sight, trust the files' own times: a tree that has been
                        # quiet for a day is ready at once (backfill); a file dated in the
                        # future counts as changed now, not then.
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
                    table.update(session_id, update)
            if changed:
                self._sync_files(session_id, files, keys, refused)
                self._database.execute(_REFRESH_TOTALS, {"id": session_id})
        record = self.get(session_id)
        assert record is not None
        return record, changed

    def _sync_files(
        self,
        session_id: str,
        files: tuple[FileStat, ...],
        keys: dict[str, str],
        refused: dict[str, str],
    ) -> None:
        # Tuples, not dicts: a session of 100,000 files is read whole here at each change.
        known: dict[str, _Known] = {
            row[0]: _Known(*row)
            for row in self._database.execute(
                "select rel_path, size, mtime_ns, inode, device, state, key, uploaded_size, "
                "uploaded_mtime_ns, error from files where session_id = ?",
                [session_id],
            )
        }

        def key_of(item: FileStat) -> tuple[str, str | None]:
            key = keys.get(item.rel_path) or ""
            error = None if key else refused.get(item.rel_path, "name cannot become an object key")
            return key, error

        def new_rows() -> Iterator[tuple[Any, ...]]:
            # Fed to executemany as they are made: a first scan of a large tree inserts
            # millions of rows, never held as a list.
            for item in files:
                if item.rel_path not in known:
                    key, error = key_of(item)
                    state = PENDING if key else REFUSED
                    yield (
                        *(session_id, item.rel_path, item.size, item.mtime_ns, item.inode),
                        *(item.device, key, state, error),
                    )

        self._database.connection.executemany(
            "insert into files (session_id, rel_path, size, mtime_ns, inode, device, key, "
            "state, error) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            new_rows(),
        )
        if not known:
            return
        updates: list[tuple[Any, ...]] = []
        seen: set[str] = set()
        for item in files:
            row = known.get(item.rel_path)
            if row is None:
                continue
            seen.add(item.rel_path)
            key, error = key_of(item)
            same_as_uploaded = (row.uploaded_size, row.uploaded_mtime_ns) == (
                item.size,
                item.mtime_ns,
            )
            state = REFUSED if not key else DONE if same_as_uploaded else PENDING
            kept_error = error if not key else row.error
            now_row = (item.size, item.mtime_ns, item.inode, item.device, key, state, kept_error)
            was_row = (row.size, row.mtime_ns, row.inode, row.device, row.key, row.state, row.error)
            if now_row != was_row:
                updates.append((*now_row, session_id, item.rel_path))
        for rel_path, row in known.items():
            if rel_path not in seen and row.state != MISSING:
                kept = (row.size, row.mtime_ns, row.inode, row.device, row.key)
                updates.append((*kept, MISSING, row.error, session_id, rel_path))
        if updates:
            self._database.connection.executemany(
                "update files set size = ?, mtime_ns = ?, inode = ?, device = ?, key = ?, "
                "state = ?, error = ? where session_id = ? and rel_path = ?",
                updates,
            )

    def mark_missing(self, session_id: str) -> None:
        """The session's directory is gone locally: keep its record and its objects."""
        with self._database.transaction():
            self._database.db.table("sessions").update(session_id, {"local_missing": 1})

    # --- moving ---------------------------------------------------------------------------

    def move(
        self, session_id: str, new_state: str, *, expect: str | None = None, **fields: Any
    ) -> bool:
        """Move a session to `new_state`, setting the extra columns given (`reason`,
        `completed_at`, `recheck_at`, `fingerprint`, `error`).

        With `expect`, the move happens only if the session is still in that state (another
        thread or process may have moved it since it was read): return False, and change
        nothing, when it is not. Raise StateError if the session does not exist or the life
        cycle forbids the move.
        """
        unknown = set(fields) - _MOVE_FIELDS
        if unknown:
            raise ValueError(f"a move cannot set {sorted(unknown)}")
        with self._database.transaction():
            if expect is not None and self._state_of(session_id) != expect:
                return False
            self._check_move(session_id, new_state)
            self._database.db.table("sessions").update(session_id, {"state": new_state, **fields})
        return True

    def fail(self, session_id: str, error: str, next_attempt_at: float) -> None:
        """Mark a session failed with its reason; it is retried at `next_attempt_at`."""
        with self._database.transaction():
            self._check_move(session_id, sessions.FAILED)
            self._database.execute(
                """update sessions set state = 'failed', error = ?, next_attempt_at = ?,
                   attempts = attempts + 1 where id = ?""",
                [error, next_attempt_at, session_id],
            )

    def uploaded(self, session_id: str, *, key: str, revision: int, now: float) -> None:
        """The session's manifest is in S3: the session is uploaded."""
        with self._database.transaction():
            self._check_move(session_id, sessions.UPLOADED)
            self._database.db.table("sessions").update(
                session_id,
                {
                    "state": sessions.UPLOADED,
                    "manifest_key": key,
                    "manifest_revision": revision,
                    "uploaded_at": now,
                    "error": None,
                    "reason": None,
                    "attempts": 0,
                    "next_attempt_at": None,
                },
            )

    def retry_now(self, session_id: str) -> bool:
        """A failed session is made ready at once, its backoff forgotten. Return whether it
        was failed (any other session is left as it is)."""
        with self._database.transaction():
            cursor = self._database.execute(
                """update sessions set state = 'ready', next_attempt_at = null, attempts = 0,
                   reason = 'retry requested' where id = ? and state = 'failed'""",
                [session_id],
            )
        return cursor.rowcount > 0

    def _state_of(self, session_id: str) -> str:
        rows = self._database.rows("select state from sessions where id = ?", [session_id])
        if not rows:
            raise StateError(f"no session {session_id!r} in {self._database.path}")
        return str(rows[0]["state"])

    def _check_move(self, session_id: str, new_state: str) -> None:
        old_state = self._state_of(session_id)
        if not sessions.may_move(old_state, new_state):
            raise StateError(
                f"session {session_id!r} cannot move from {old_state} to {new_state}; "
                "this is a bug in the agent, please report it"
            )
