"""The upload ledger's contract, run on both implementations (SQLite and in memory), and the
session store: the life cycle as a table, totals kept per file, first-sight times."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import sessions
from agent.errors import StateError
from agent.scan import FileStat
from agent.state import DONE, PENDING, FileRecord, Ledger, PartRecord, State
from tests.fakes import MemoryLedger

SESSION = "rig/m1/s1"
NOW = 1_700_000_000.0


def stats(*sizes: int, mtime: float = NOW - 3600) -> tuple[FileStat, ...]:
    return tuple(
        FileStat(f"f{i}.bin", size, int(mtime * 1e9), i + 1) for i, size in enumerate(sizes)
    )


def observe(state: State, files: tuple[FileStat, ...], *, now: float = NOW) -> None:
    state.sessions.observe(
        session_id=SESSION,
        source="rig",
        rel_path="m1/s1",
        path="/data/m1/s1",
        key_prefix="lab/m1/s1",
        files=files,
        keys={f.rel_path: f"lab/m1/s1/{f.rel_path}" for f in files},
        refused={},
        newest_mtime=max((f.mtime_ns for f in files), default=0) / 1e9,
        metadata={},
        now=now,
    )


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    with State.open(tmp_path / "state.db") as opened:
        yield opened


@pytest.fixture(params=["sqlite", "memory"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A ledger holding one session of three pending files (10, 20 and 30 bytes)."""
    if request.param == "memory":
        memory = MemoryLedger()
        for number, size in enumerate((10, 20, 30)):
            memory.add(
                FileRecord(
                    session_id=SESSION,
                    rel_path=f"f{number}.bin",
                    size=size,
                    mtime_ns=int((NOW - 3600) * 1e9),
                    inode=number + 1,
                    key=f"lab/m1/s1/f{number}.bin",
                    state=PENDING,
                    checksum=None,
                    checksum_algorithm=None,
                    etag=None,
                    uploaded_size=None,
                    uploaded_mtime_ns=None,
                    uploaded_at=None,
                    error=None,
                )
            )
        yield memory
        return
    with State.open(tmp_path / "state.db") as opened:
        observe(opened, stats(10, 20, 30))
        opened.sessions.move(SESSION, sessions.READY)
        opened.sessions.move(SESSION, sessions.UPLOADING)
        yield opened.ledger


# --- the ledger contract (both implementations) ---------------------------------------------


def test_pending_files_come_in_pages_by_path(ledger: Ledger) -> None:
    """The engine reads a large session a page at a time (after the last path, so many)."""
    assert [f.rel_path for f in ledger.pending_files(SESSION, limit=2)] == ["f0.bin", "f1.bin"]
    assert [f.rel_path for f in ledger.pending_files(SESSION, after="f1.bin", limit=2)] == [
        "f2.bin"
    ]
    assert ledger.pending_files(SESSION, after="f2.bin", limit=2) == []


def test_pending_files_are_listed_by_path_and_leave_once_uploaded(ledger: Ledger) -> None:
    pending = ledger.pending_files(SESSION)
    assert [f.rel_path for f in pending] == ["f0.bin", "f1.bin", "f2.bin"]
    ledger.file_uploaded(pending[1], checksum="c1", checksum_algorithm="crc32c", etag="e", now=NOW)
    assert [f.rel_path for f in ledger.pending_files(SESSION)] == ["f0.bin", "f2.bin"]
    done = {f.rel_path: f for f in ledger.files_of(SESSION)}["f1.bin"]
    assert (done.state, done.checksum, done.uploaded_size, done.uploaded_at) == (
        DONE,
        "c1",
        20,
        NOW,
    )
    assert ledger.acknowledged_at == NOW


def test_an_older_version_sent_leaves_the_newer_one_pending(ledger: Ledger) -> None:
    current = ledger.pending_files(SESSION)[0]
    older = dataclasses.replace(current, mtime_ns=current.mtime_ns - 1)
    ledger.file_uploaded(older, checksum="c", checksum_algorithm="crc32c", etag="e", now=NOW)
    after = ledger.files_of(SESSION)[0]
    assert after.state == PENDING
    assert after.uploaded_mtime_ns == older.mtime_ns


def test_multipart_upload_keeps_its_parts_until_the_file_is_recorded(ledger: Ledger) -> None:
    record = ledger.pending_files(SESSION)[2]
    ledger.upload_started(
        upload_id="u1", record=record, part_size=8, checksum_algorithm="crc32c", now=NOW
    )
    for number in (2, 1, 3):
        ledger.part_finished("u1", PartRecord(number, f'"e{number}"', f"c{number}", 8, "r"))
    ledger.part_finished("u1", PartRecord(3, '"e3b"', "c3b", 8, "r"))  # sent again: replaced
    upload = ledger.upload_for(SESSION, record.rel_path)
    assert upload is not None
    assert [(p.number, p.etag) for p in upload.parts] == [(1, '"e1"'), (2, '"e2"'), (3, '"e3b"')]
    ledger.forget_parts("u1", [2])
    upload = ledger.upload_for(SESSION, record.rel_path)
    assert upload is not None and [p.number for p in upload.parts] == [1, 3]
    assert [u.upload_id for u in ledger.all_uploads()] == ["u1"]
    ledger.file_uploaded(
        record,
        checksum="c",
        checksum_algorithm="crc32c",
        etag="e",
        now=NOW,
        finished_upload_id="u1",
    )
    assert ledger.upload_for(SESSION, record.rel_path) is None
    assert ledger.all_uploads() == []


def test_the_newest_upload_of_a_file_is_the_one_resumed(ledger: Ledger) -> None:
    record = ledger.pending_files(SESSION)[0]
    for number, upload_id in enumerate(("old", "new", "other")):
        target = record if upload_id != "other" else ledger.pending_files(SESSION)[1]
        ledger.upload_started(
            upload_id=upload_id,
            record=target,
            part_size=5,
            checksum_algorithm=None,
            now=NOW + number,
            growing=upload_id == "new",
        )
    newest = ledger.upload_for(SESSION, record.rel_path)
    assert newest is not None and (newest.upload_id, newest.growing) == ("new", True)
    ledger.upload_finished("new")
    older = ledger.upload_for(SESSION, record.rel_path)
    assert older is not None and older.upload_id == "old"


# --- the session store ----------------------------------------------------------------------


def test_every_move_in_the_life_cycle_table_is_allowed_and_no_other(state: State) -> None:
    """Walk all pairs of states: the store accepts exactly the table's moves."""
    observe(state, stats(1))
    reach = {
        sessions.WAITING: [],
        sessions.READY: [sessions.READY],
        sessions.UPLOADING: [sessions.READY, sessions.UPLOADING],
        sessions.UPLOADED: [sessions.READY, sessions.UPLOADING, sessions.UPLOADED],
        sessions.FAILED: [sessions.READY, sessions.UPLOADING, sessions.FAILED],
    }

    def put_in(target: str) -> None:
        # Back to waiting by the shortest allowed way, then forward along `reach`.
        current = state.sessions.get(SESSION)
        assert current is not None
        if current.state == sessions.UPLOADING:
            state.sessions.move(SESSION, sessions.READY)
        if current.state != sessions.WAITING:
            state.sessions.move(SESSION, sessions.WAITING)
        for step in reach[target]:
            if step == sessions.FAILED:
                state.sessions.fail(SESSION, "boom", NOW)
            elif step == sessions.UPLOADED:
                state.sessions.uploaded(SESSION, key="m.json", revision=1, now=NOW)
            else:
                state.sessions.move(SESSION, step)

    allowed = 0
    for old in sessions.SESSION_STATES:
        for new in sessions.SESSION_STATES:
            put_in(old)
            record = state.sessions.get(SESSION)
            assert record is not None and record.state == old
            if sessions.may_move(old, new):
                state.sessions.move(SESSION, new)
                allowed += 1
                after = state.sessions.get(SESSION)
                assert after is not None and after.state == new
            else:
                with pytest.raises(StateError, match=f"cannot move from {old} to {new}"):
                    state.sessions.move(SESSION, new)
                after = state.sessions.get(SESSION)
                assert after is not None and after.state == old
    assert allowed == len(sessions.TRANSITIONS)


def test_a_session_cannot_be_recorded_uploaded_unless_it_was_uploading(state: State) -> None:
    observe(state, stats(1))
    state.sessions.move(SESSION, sessions.READY)
    with pytest.raises(StateError):
        state.ledger.manifest_written(SESSION, key="m.json", revision=1, now=NOW)
    state.sessions.move(SESSION, sessions.UPLOADING)
    state.ledger.manifest_written(SESSION, key="m.json", revision=1, now=NOW)
    record = state.sessions.get(SESSION)
    assert record is not None
    assert (record.state, record.manifest_key, record.uploaded_at) == ("uploaded", "m.json", NOW)


def test_a_move_cannot_set_columns_outside_its_own(state: State) -> None:
    observe(state, stats(1))
    with pytest.raises(ValueError, match="attempts"):
        state.sessions.move(SESSION, sessions.READY, attempts=0)


def test_retry_now_only_touches_a_failed_session(state: State) -> None:
    observe(state, stats(1))
    assert state.sessions.retry_now(SESSION) is False
    record = state.sessions.get(SESSION)
    assert record is not None and record.state == sessions.WAITING
    state.sessions.move(SESSION, sessions.READY)
    state.sessions.move(SESSION, sessions.UPLOADING)
    state.sessions.fail(SESSION, "boom", NOW + 600)
    assert state.sessions.retry_now(SESSION) is True
    record = state.sessions.get(SESSION)
    assert record is not None
    assert (record.state, record.next_attempt_at, record.attempts) == ("ready", None, 0)


def test_a_file_dated_in_the_future_counts_as_changed_now(state: State) -> None:
    """First sight trusts the files' times (backfill), but never a time after now: a clock
    that ran ahead on the instrument must not hold the session for hours."""
    observe(state, stats(5, mtime=NOW + 7200), now=NOW)
    record = state.sessions.get(SESSION)
    assert record is not None and record.last_change_at == NOW
    observe(state, stats(5, mtime=NOW - 86400), now=NOW)  # unchanged listing: kept
    record = state.sessions.get(SESSION)
    assert record is not None and record.last_change_at == NOW


def test_an_old_tree_keeps_its_own_time_on_first_sight(state: State) -> None:
    observe(state, stats(5, mtime=NOW - 86400), now=NOW)
    record = state.sessions.get(SESSION)
    assert record is not None and record.last_change_at == NOW - 86400


def totals(state: State) -> tuple[int, int, int]:
    record = state.sessions.get(SESSION)
    assert record is not None
    return record.files, record.bytes, record.uploaded_bytes


def recounted(state: State) -> tuple[int, int, int, int, int]:
    row = state.database.rows(
        "select count(*) as n, coalesce(sum(size), 0) as b, "
        "coalesce(sum(case when state = 'uploaded' then size end), 0) as u, "
        "count(case when state = 'pending' then 1 end) as p, "
        "coalesce(sum(case when state = 'pending' then size end), 0) as pb "
        "from files where session_id = ? and state != 'missing'",
        [SESSION],
    )[0]
    return row["n"], row["b"], row["u"], row["p"], row["pb"]


def stored(state: State) -> tuple[int, int, int, int, int]:
    row = state.database.rows(
        "select files, bytes, uploaded_bytes, pending_files, pending_bytes from sessions "
        "where id = ?",
        [SESSION],
    )[0]
    return (
        row["files"],
        row["bytes"],
        row["uploaded_bytes"],
        row["pending_files"],
        row["pending_bytes"],
    )


def test_totals_follow_each_uploaded_file_without_a_recount(state: State) -> None:
    observe(state, stats(10, 20, 30))
    assert stored(state) == (3, 60, 0, 3, 60)
    first, second, third = state.ledger.pending_files(SESSION)
    state.ledger.file_uploaded(first, checksum="c", checksum_algorithm="crc32c", etag="e", now=NOW)
    assert stored(state) == recounted(state) == (3, 60, 10, 2, 50)
    # The same version recorded twice changes nothing more.
    state.ledger.file_uploaded(first, checksum="c", checksum_algorithm="crc32c", etag="e", now=NOW)
    assert stored(state) == recounted(state)
    # A file the scan already saw change stays pending: the totals too.
    observe(state, (*stats(10, 20), FileStat("f2.bin", 31, int(NOW * 1e9), 3)), now=NOW + 1)
    state.ledger.file_uploaded(third, checksum="c", checksum_algorithm="crc32c", etag="e", now=NOW)
    assert stored(state) == recounted(state) == (3, 61, 10, 2, 51)
    # A file gone missing during its upload stays missing and out of the totals.
    observe(state, stats(10), now=NOW + 2)
    state.ledger.file_uploaded(second, checksum="c", checksum_algorithm="crc32c", etag="e", now=NOW)
    assert stored(state) == recounted(state)
    assert totals(state) == (1, 10, 10)
    assert {f.rel_path: f.state for f in state.ledger.files_of(SESSION)}["f1.bin"] == "missing"


def test_a_move_on_a_stale_read_changes_nothing(state: State) -> None:
    """A verdict made on a record read before someone else moved the session (the uploader
    took it, or `agentctl retry` made it ready) is dropped, not applied and not an error."""
    observe(state, stats(1))
    state.sessions.move(SESSION, sessions.READY)
    state.sessions.move(SESSION, sessions.UPLOADING)
    state.sessions.fail(SESSION, "boom", NOW)
    stale = state.sessions.get(SESSION)
    assert stale is not None and stale.state == sessions.FAILED
    assert state.sessions.retry_now(SESSION)  # meanwhile: failed → ready
    assert not state.sessions.move(SESSION, sessions.READY, expect=stale.state)
    assert not state.sessions.move(SESSION, sessions.WAITING, expect=stale.state)
    record = state.sessions.get(SESSION)
    assert record is not None
    assert (record.state, record.reason) == (sessions.READY, "retry requested")
    assert state.sessions.move(SESSION, sessions.WAITING, expect=sessions.READY, reason="new")


def test_the_unused_events_table_goes_without_a_new_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    State.open(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("create table events (id integer primary key, message text)")
        version = raw.execute("pragma user_version").fetchone()[0]
    with State.open(path, create=False) as reader:  # `status`: reads, never changes
        assert reader.database.db["events"].exists()
    with State.open(path):  # the daemon or sync
        pass
    with sqlite3.connect(path) as raw:
        assert raw.execute("pragma user_version").fetchone()[0] == version
        tables = {row[0] for row in raw.execute("select name from sqlite_master")}
    assert "events" not in tables and "sessions" in tables
