"""Read-only questions `status`, metrics and the daemon's STATUS= line ask of the state.

Each is one query over the session totals (kept as columns), never a sum over file rows but
for the one indexed lookup of the last finished file."""

from __future__ import annotations

from typing import Any

from agent.state.db import Database
from agent.state.records import SourceRow


class StatusQueries:
    """Aggregates over `sessions` (and the index on `files.uploaded_at`)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def _one(self, sql: str, params: list[Any] | None = None) -> dict[str, Any]:
        return self._database.rows(sql, params)[0]

    def session_counts(self) -> dict[str, int]:
        """Number of sessions per state."""
        rows = self._database.rows("select state, count(*) as n from sessions group by state")
        return {row["state"]: row["n"] for row in rows}

    def backlog(self) -> tuple[int, int]:
        """(files, bytes) not yet in S3, over every session not locally missing."""
        row = self._one(
            """select coalesce(sum(pending_files), 0) as files,
                      coalesce(sum(pending_bytes), 0) as bytes
               from sessions where local_missing = 0"""
        )
        return int(row["files"]), int(row["bytes"])

    def last_upload_at(self) -> float | None:
        """When a session was last uploaded completely, or None if never."""
        row = self._one("select max(uploaded_at) as at from sessions")
        return None if row["at"] is None else float(row["at"])

    def upload_progress(self) -> tuple[int, int]:
        """(bytes uploaded, bytes in all) over the sessions being uploaded now."""
        row = self._one(
            """select coalesce(sum(uploaded_bytes), 0) as done, coalesce(sum(bytes), 0) as total
               from sessions where state = 'uploading'"""
        )
        return int(row["done"]), int(row["total"])

    def last_file_uploaded_at(self) -> float | None:
        """When a file last finished uploading, or None if none ever did."""
        row = self._one("select max(uploaded_at) as at from files")
        return None if row["at"] is None else float(row["at"])

    def source_summary(self) -> list[SourceRow]:
        """Per source and session state: sessions, and files/bytes not yet in S3 (sessions
        whose folder went missing locally count as sessions but not as backlog)."""
        rows = self._database.rows(
            """select source, state, count(*) as sessions,
                      coalesce(sum(case when local_missing = 0 then pending_files end), 0)
                        as files,
                      coalesce(sum(case when local_missing = 0 then pending_bytes end), 0)
                        as bytes
               from sessions group by source, state order by source, state"""
        )
        return [
            SourceRow(r["source"], r["state"], r["sessions"], r["files"], r["bytes"]) for r in rows
        ]

    def oldest_in(self, state: str) -> tuple[str, float] | None:
        """(id, since) of the session longest in `state`: waiting since it was detected,
        others since they were found complete. None when no session is in that state."""
        since = "detected_at" if state == "waiting" else "completed_at"
        rows = self._database.rows(
            f"select id, {since} as since from sessions where state = ? "
            f"and {since} is not null order by {since} limit 1",
            [state],
        )
        return (rows[0]["id"], float(rows[0]["since"])) if rows else None

    def last_error(self) -> tuple[str, str] | None:
        """(session id, error) of the most recent failure still standing, or None."""
        rows = self._database.rows(
            "select id, error from sessions where state = 'failed' and error is not null "
            "order by next_attempt_at desc limit 1"
        )
        return (rows[0]["id"], rows[0]["error"]) if rows else None

    def unreadable_waiting(self) -> list[tuple[str, str]]:
        """(id, reason) of sessions waiting on a folder or file the agent cannot read: they
        never become ready by themselves, however long they wait."""
        rows = self._database.rows(
            "select id, reason from sessions where state = 'waiting' and local_missing = 0 "
            "and reason like 'cannot read %' order by detected_at"
        )
        return [(row["id"], row["reason"]) for row in rows]

    def pending_of(self, session_ids: list[str]) -> tuple[int, int]:
        """(files, bytes) still to send in these sessions, from their kept totals."""
        files = size = 0
        for start in range(0, len(session_ids), 500):  # within SQLite's variable limit
            chunk = session_ids[start : start + 500]
            marks = ",".join("?" for _ in chunk)
            row = self._one(
                "select coalesce(sum(pending_files), 0) as files, "
                f"coalesce(sum(pending_bytes), 0) as bytes from sessions where id in ({marks})",
                chunk,
            )
            files += int(row["files"])
            size += int(row["bytes"])
        return files, size
