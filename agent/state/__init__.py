"""Durable state: the one SQLite database, the agent's only memory.

`State` opens the database and hands out one store per concern, each owning its tables:

- `sessions` (SessionStore): sessions, the files a scan saw, every move of the life cycle;
- `ledger` (SqliteLedger): files sent, multipart uploads and their acknowledged parts;
- `control` (Control): flags, queued requests for the daemon, the heartbeat;
- `queries` (StatusQueries): the read-only aggregates status reports are made of.

Every step of an upload is committed as it happens, so a restart resumes exactly where the
last run stopped. Times are stored as epoch seconds (REAL), made ISO 8601 only at the edge.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

# First, before any module that uses sqlite_utils (see the module's docstring).
from agent.state import _imports  # noqa: F401
from agent.state.control import REFUSED_FLAG, WATCH_MODES_FLAG, Control
from agent.state.db import Database, enough_room, free_space, nearly_full
from agent.state.ledger import Ledger, SqliteLedger
from agent.state.queries import StatusQueries
from agent.state.records import (
    DONE,
    MISSING,
    PENDING,
    REFUSED,
    FileRecord,
    Heartbeat,
    PartRecord,
    SessionRecord,
    SourceRow,
    UploadRecord,
    fingerprint_of,
)
from agent.state.session_store import SessionStore

__all__ = [
    "DONE",
    "MISSING",
    "PENDING",
    "REFUSED",
    "REFUSED_FLAG",
    "WATCH_MODES_FLAG",
    "FileRecord",
    "Heartbeat",
    "Ledger",
    "PartRecord",
    "SessionRecord",
    "SourceRow",
    "State",
    "UploadRecord",
    "enough_room",
    "fingerprint_of",
    "free_space",
    "nearly_full",
]


class State:
    """The state database, opened; use as a context manager to close it."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.sessions = SessionStore(database)
        self.ledger = SqliteLedger(database, self.sessions)
        self.control = Control(database)
        self.queries = StatusQueries(database)
        self._seen_version: int | None = None

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> State:
        """Open (and with `create`, create and migrate) the database at `path`.

        Raise StateError if it cannot be opened, or does not exist and `create` is False.
        """
        return cls(Database.open(path, create=create))

    def changed_elsewhere(self) -> bool:
        """Whether another process committed to the database since the last call (True at
        the first): what the daemon reads each tick only for other processes' requests
        (pause, retry, rescan) is read again only then."""
        version = self.database.data_version()
        changed = version != self._seen_version
        self._seen_version = version
        return changed

    @property
    def path(self) -> Path:
        """The database file."""
        return self.database.path

    def close(self) -> None:
        """Close the connection."""
        self.database.close()

    def __enter__(self) -> State:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
