"""The connection: opening the database file, migrating it, one lock and one way to write.

WAL mode lets `agentctl` read while the daemon writes. Every write goes through
`Database.transaction` (BEGIN IMMEDIATE ... COMMIT), so each step of an upload is durable
when the call returns.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from agent.errors import StateDamagedError, StateDiskError, StateError
from agent.state.schema import MIGRATIONS

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
# Below this much free space, a write error of the database is reported as a full disk.
NEARLY_FULL = 4 * 1024**2


def free_space(directory: Path) -> int | None:
    """Bytes free to this user on the filesystem of `directory` (None if it cannot be known)."""
    try:
        stats = os.statvfs(directory)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def nearly_full(directory: Path) -> bool:
    """Whether the filesystem of `directory` has too little room left to write the database."""
    free = free_space(directory)
    return free is not None and free < NEARLY_FULL


def enough_room(directory: Path) -> bool:
    """Whether the filesystem of `directory` has room to resume writing after it was full:
    twice the full mark, so that a recovery is not declared on room for one small write."""
    free = free_space(directory)
    return free is None or free >= 2 * NEARLY_FULL


def _nearly_full(path: Path) -> bool:
    return nearly_full(path.parent)


def _disk_trouble(path: Path, error: BaseException) -> bool:
    text = str(error)
    return (
        "disk is full" in text
        or getattr(error, "errno", None) in (errno.ENOSPC, errno.EIO)
        or getattr(error, "sqlite_errorname", "") in ("SQLITE_FULL", "SQLITE_IOERR")
        or "disk I/O error" in text
        or _nearly_full(path)
    )


def read_only(directory: Path) -> bool:
    """Whether the filesystem of `directory` is mounted read-only (ext4 remounts itself so
    after I/O errors)."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def header_version(path: Path) -> int | None:
    """The schema version (`PRAGMA user_version`) stored in the database file's header, read
    without SQLite: a newer agent's database must be refused as newer, not judged damaged
    because this SQLite cannot parse its schema."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(100)
    except OSError:
        return None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return None
    return int.from_bytes(header[60:64], "big")


def problem(path: Path, error: BaseException) -> StateError:
    """What went wrong with the database at `path` and what the operator can do, as the
    StateError kind a caller can act on: a full or failing disk (StateDiskError), a damaged
    file (StateDamagedError), or anything else."""
    text = str(error)
    if "readonly" in text or read_only(path.parent):
        return StateDiskError(
            f"{path}: {text}: the filesystem of {path.parent} is read-only (remounted after "
            "disk errors?); check it (dmesg), repair and remount it read-write (the agent "
            "resumes where it stopped)"
        )
    if _disk_trouble(path, error):
        # SQLite may say only "disk I/O error" when the WAL index cannot grow.
        if _nearly_full(path) or "full" in text or getattr(error, "errno", None) == errno.ENOSPC:
            return StateDiskError(
                f"{path}: {text}: the filesystem of {path.parent} is full; free space on it "
                "(the agent resumes where it stopped)"
            )
        return StateDiskError(
            f"{path}: {text}: the disk holding {path.parent} failed a read or write; check "
            "it (dmesg, smartctl) and free or replace it (the agent resumes where it stopped)"
        )
    if "malformed" in text or "not a database" in text:
        return StateDamagedError(
            f"{path} is damaged ({text}). Stop the agent, move the file aside (with its -wal "
            "and -shm files) and start it again: it rebuilds its records from the sources, "
            "and what S3 already holds is recognised, not sent again. The daemon does this "
            "itself when it starts"
        )
    return StateError(f"cannot use state database {path}: {text}")


class Database:
    """One SQLite connection shared by the stores, behind one re-entrant lock."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.path = path
        self.connection = connection
        self.db = sqlite_utils.Database(connection)
        self.lock = threading.RLock()

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> Database:
        """Open (and with `create`, create and migrate) the database at `path`.

        Raise StateError if it cannot be opened, or does not exist and `create` is False.
        """
        if not create and not path.exists():
            raise StateError(f"no state database at {path}; has the agent run yet?")
        version = header_version(path)
        if version is not None and version > len(MIGRATIONS):
            # Before SQLite reads it: a newer file format must not pass for a damaged one.
            raise StateError(
                f"{path} was written by a newer agent (schema {version}); upgrade the agent"
            )
        try:
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                str(path) if create else f"file:{path}?mode=rw",
                uri=not create,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            # busy_timeout before WAL: switching modes itself may wait for a lock.
            connection.execute(f"pragma busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("pragma journal_mode = wal")
            connection.execute("pragma synchronous = normal")
            connection.execute("pragma foreign_keys = on")
        except (sqlite3.Error, OSError) as error:
            raise problem(path, error) from error
        database = cls(connection, path)
        try:
            if create:
                # The daemon and sync write: a damaged file (a truncated copy, a disk fault)
                # is refused here, not found half-way through an upload.
                verdict = connection.execute("pragma quick_check(1)").fetchone()[0]
                if verdict != "ok":
                    raise sqlite3.DatabaseError(f"database disk image is malformed: {verdict}")
            database.migrate(allowed=create)
        except sqlite3.Error as error:
            connection.close()
            raise problem(path, error) from error
        return database

    def close(self) -> None:
        """Close the connection."""
        with self.lock:
            self.connection.close()

    def migrate(self, *, allowed: bool) -> None:
        """Bring the schema up to date; refuse a newer schema, or any change if not `allowed`."""
        version = self.connection.execute("pragma user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StateError(
                f"{self.path} was written by a newer agent (schema {version}); upgrade the agent"
            )
        if version == len(MIGRATIONS):
            if allowed:
                self._tidy()
            return
        if not allowed:
            raise StateError(f"{self.path} needs migrating; start the daemon once to do it")
        with self.transaction():
            # Read again under the write lock: another process may have migrated meanwhile.
            version = self.connection.execute("pragma user_version").fetchone()[0]
            for number in range(version, len(MIGRATIONS)):
                MIGRATIONS[number](self.db)
            self.connection.execute(f"pragma user_version = {len(MIGRATIONS)}")
        self._tidy()

    def _tidy(self) -> None:
        # The `events` table of the first schema was never written (the log is journald's).
        # Dropped without a new schema version: agents before and after read the same schema,
        # so neither an upgrade nor a rollback waits for a migration.
        if self.db["events"].exists():
            with self.transaction():
                self.connection.execute("drop table if exists events")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the lock and one write transaction; commit on success, roll back on error."""
        with self.lock:
            try:
                self.connection.execute("begin immediate")
                yield
                self.connection.execute("commit")
            except BaseException as error:
                # SQLite may already have rolled back (a full disk does): rolling back again
                # would raise "no transaction is active" and hide the real error.
                if self.connection.in_transaction:
                    self.connection.execute("rollback")
                if isinstance(error, sqlite3.DatabaseError):
                    raise problem(self.path, error) from error
                raise

    def rows(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        """Every row of a query, as dicts, read under the lock."""
        with self.lock:
            try:
                return list(self.db.query(sql, params or []))
            except sqlite3.DatabaseError as error:
                raise problem(self.path, error) from error

    def converted(self, sql: str, params: Any, convert: Callable[[dict[str, Any]], T]) -> list[T]:
        """Every row of a query, each converted as it is read, under the lock: a session of
        100,000 files never holds its rows as dicts and as records at the same time."""
        with self.lock:
            try:
                return [convert(row) for row in self.db.query(sql, params)]
            except sqlite3.DatabaseError as error:
                raise problem(self.path, error) from error

    def data_version(self) -> int:
        """SQLite's `PRAGMA data_version`: it changes when another connection (another
        process: `agentctl pause`, `retry`, `rescan`) commits, never for this one's writes."""
        with self.lock:
            try:
                return int(self.connection.execute("pragma data_version").fetchone()[0])
            except sqlite3.DatabaseError as error:
                raise problem(self.path, error) from error

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """Run one statement on the connection (inside a caller's transaction for writes)."""
        return self.connection.execute(sql, params)
