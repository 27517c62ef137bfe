"""How the state database's troubles are told apart: what is set aside as damaged, what is
waited out as a disk problem, and what is refused as it is."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.errors import StateDamagedError, StateDiskError, StateError
from agent.state import State
from agent.state.db import Database, header_version, problem
from agent.state.rescue import open_or_rebuild


def test_a_database_of_a_newer_agent_is_refused_not_set_aside(tmp_path: Path) -> None:
    """Its header says a newer schema: even if this SQLite could not read the rest (a newer
    file format), it is refused as newer and left where it is, never rebuilt over."""
    path = tmp_path / "state.db"
    State.open(path).close()
    connection = sqlite3.connect(path)
    connection.execute("pragma journal_mode = delete")  # the header written in place
    connection.execute("pragma user_version = 99")
    connection.close()
    data = bytearray(path.read_bytes())
    data[100:] = b"\x00not a page this SQLite understands" * ((len(data) - 100) // 35 + 1)
    path.write_bytes(bytes(data[: len(path.read_bytes())]))
    assert header_version(path) == 99
    with pytest.raises(StateError, match="newer agent") as raised:
        open_or_rebuild(path, 0.0)
    assert not isinstance(raised.value, StateDamagedError)
    assert sorted(item.name for item in tmp_path.iterdir()) == ["state.db"]


def test_a_foreign_file_is_damaged_and_a_real_database_is_not(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"these are not the bytes of a database\n" * 200)
    assert header_version(path) is None
    with pytest.raises(StateDamagedError):
        Database.open(path)
    sound = tmp_path / "sound.db"
    State.open(sound).close()
    Database.open(sound).close()


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("attempt to write a readonly database", StateDiskError),
        ("database or disk is full", StateDiskError),
        ("disk I/O error", StateDiskError),
        ("database disk image is malformed", StateDamagedError),
        ("file is not a database", StateDamagedError),
        ("database is locked", StateError),
    ],
)
def test_errors_are_sorted_by_what_helps(tmp_path: Path, message: str, kind: type) -> None:
    """A read-only remount (ext4 after I/O errors), a full or failing disk: wait for it; a
    damaged file: set it aside; a lock: neither."""
    found = problem(tmp_path / "state.db", sqlite3.OperationalError(message))
    assert type(found) is kind, found


def test_changed_elsewhere_sees_other_processes_writes_and_not_its_own(tmp_path: Path) -> None:
    """The daemon reads what only `agentctl` writes (pause, retry, requests) again only when
    this says another connection committed: its own writes must not count, theirs must."""
    path = tmp_path / "state.db"
    with State.open(path) as daemon, State.open(path) as agentctl:
        assert daemon.changed_elsewhere()  # the first look reads everything
        assert not daemon.changed_elsewhere()
        daemon.control.set_flag("resumed", "1", 1.0)
        assert not daemon.changed_elsewhere()
        agentctl.control.set_flag("paused", "operator", 2.0)
        assert daemon.changed_elsewhere()
        assert not daemon.changed_elsewhere()
