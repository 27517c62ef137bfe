"""The control channel between `agentctl` and the daemon: persistent flags (pause), queued
requests (retry, rescan, reload) with their results, and the daemon's heartbeat."""

from __future__ import annotations

from agent.state.db import Database
from agent.state.records import Heartbeat

# Sessions the last reconcile refused to record (unsafe key prefix, name not UTF-8), as a
# JSON list of {"session", "reason"}; unset when there are none.
REFUSED_FLAG = "refused_sessions"
# How the running daemon watches each source, as a JSON {source: "inotify"|"poll"|"off"}:
# a source that fell back to polling (inotify limit reached) must show it.
WATCH_MODES_FLAG = "watch_modes"


class Control:
    """Tables `flags`, `control` and `heartbeat`."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def set_flag(self, name: str, value: str | None, now: float) -> None:
        """Set (or, with None, clear) a persistent flag such as `paused`."""
        with self._database.transaction():
            if value is None:
                self._database.execute("delete from flags where name = ?", [name])
            else:
                self._database.db.table("flags").upsert(
                    {"name": name, "value": value, "set_at": now}, pk="name"
                )

    def flag(self, name: str) -> str | None:
        """The value of a flag, or None when it is not set."""
        rows = self._database.rows("select value from flags where name = ?", [name])
        return str(rows[0]["value"]) if rows else None

    def request(self, command: str, argument: str | None, now: float) -> int:
        """Queue a command for the running daemon; return its id."""
        with self._database.transaction():
            cursor = self._database.execute(
                "insert into control (command, argument, requested_at) values (?, ?, ?)",
                [command, argument, now],
            )
        return int(cursor.lastrowid or 0)

    def pending_requests(self) -> list[tuple[int, str, str | None]]:
        """(id, command, argument) of queued commands not yet done, oldest first."""
        rows = self._database.rows(
            "select id, command, argument from control where done_at is null order by id"
        )
        return [(row["id"], row["command"], row["argument"]) for row in rows]

    def request_done(self, request_id: int, result: str, now: float) -> None:
        """Mark a queued command as carried out."""
        with self._database.transaction():
            self._database.execute(
                "update control set done_at = ?, result = ? where id = ?",
                [now, result, request_id],
            )

    def request_result(self, request_id: int) -> str | None:
        """The result of a queued command, or None while it is not done."""
        rows = self._database.rows("select result, done_at from control where id = ?", [request_id])
        return str(rows[0]["result"]) if rows and rows[0]["done_at"] is not None else None

    def beat(
        self,
        *,
        pid: int,
        hostname: str,
        started_at: float,
        now: float,
        status: str,
        rate: float = 0.0,
        progress_at: float | None = None,
    ) -> None:
        """Record that the daemon is alive, what it says, and how fast it is sending."""
        with self._database.transaction():
            self._database.db.table("heartbeat").upsert(
                {
                    "id": 1,
                    "pid": pid,
                    "hostname": hostname,
                    "started_at": started_at,
                    "beat_at": now,
                    "stopped_at": None,
                    "status": status,
                    "rate": rate,
                    "progress_at": progress_at,
                },
                pk="id",
            )

    def stopped(self, now: float) -> None:
        """Record a clean stop of the daemon."""
        with self._database.transaction():
            self._database.execute("update heartbeat set stopped_at = ? where id = 1", [now])

    def heartbeat(self) -> Heartbeat | None:
        """The daemon's last heartbeat, or None if it never ran."""
        rows = self._database.rows("select * from heartbeat where id = 1")
        if not rows:
            return None
        row = rows[0]
        return Heartbeat(
            row["pid"],
            row["hostname"],
            row["started_at"],
            row["beat_at"],
            row["stopped_at"],
            row["status"] or "",
            row["rate"] or 0.0,
            row["progress_at"],
        )
