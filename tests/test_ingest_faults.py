"""Ingest settles a session's state whatever its upload raises: an error the engine does not
classify (a bug, a failing database) fails the session instead of leaving it `uploading`."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest

from agent.ingest import Ingest
from agent.state import FileRecord, Ledger, State
from agent.transfer import store_from_settings
from tests.conftest import Rig
from tests.test_sync import age

pytestmark = pytest.mark.slow


class DiskFailingLedger:
    """The real ledger, but reading a session's files fails as a dying disk makes it fail."""

    def __init__(self, inner: Ledger) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def pending_files(
        self, session_id: str, *, after: str | None = None, limit: int | None = None
    ) -> list[FileRecord]:
        raise sqlite3.OperationalError("disk I/O error")


def test_an_unexpected_error_fails_the_session_instead_of_leaving_it_uploading(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    session = rig.session("mouse1/s1")
    (session / "a.bin").write_bytes(b"x" * 100)
    age(session, 60)
    settings = rig.settings()
    with State.open(settings.state_db_path) as state:
        state.ledger = DiskFailingLedger(state.ledger)  # type: ignore[assignment]
        ingest = Ingest(settings, state, store_from_settings(settings.destination, settings.upload))
        ingest.start_up()
        (due,) = ingest.due_sessions()
        outcome = ingest.upload(due)
        assert outcome.errors and "OperationalError: disk I/O error" in str(outcome.errors[0])
        after = state.sessions.get(due.id)
        assert after is not None
        assert after.state == "failed"
        assert after.error is not None and "disk I/O error" in after.error
        assert after.next_attempt_at is not None and after.next_attempt_at > time.time()
