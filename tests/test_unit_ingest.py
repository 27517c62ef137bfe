"""Ingest's choice of what to upload, on a real SQLite file and real folders, without a
server: a session listed as due but moved since is skipped, not uploaded and not an error."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import sessions
from agent.config import settings_from_mapping
from agent.ingest import Ingest
from agent.state import State
from agent.transfer import store_from_settings


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[Ingest]:
    source = tmp_path / "data"
    session = source / "mouse1" / "s1"
    session.mkdir(parents=True)
    (session / "a.bin").write_bytes(b"x")
    stamp = time.time() - 600
    for item in (session / "a.bin", session):
        os.utime(item, (stamp, stamp))
    settings = settings_from_mapping(
        {
            "agent": {"state_dir": str(tmp_path / "state")},
            # Never reached: every call below stops before S3.
            "destination": {"bucket": "lab-raw", "endpoint_url": "http://127.0.0.1:9"},
            "source": [
                {"name": "ephys", "path": str(source), "session_depth": 2, "quiet_period": "1s"}
            ],
        },
        "test.toml",
    )
    with State.open(settings.state_db_path) as state:
        yield Ingest(settings, state, store_from_settings(settings.destination, settings.upload))


def test_a_session_reopened_after_it_was_listed_is_skipped(ingest: Ingest) -> None:
    ingest.reconcile()
    (due,) = ingest.due_sessions()
    # A new file arrives between the listing and the session's turn: the scan reopens it.
    ingest.state.sessions.move(due.id, sessions.WAITING, expect=sessions.READY, reason="new")
    outcome = ingest.upload(due)
    assert outcome.interrupted and not outcome.errors and not outcome.complete
    after = ingest.state.sessions.get(due.id)
    assert after is not None and (after.state, after.reason) == (sessions.WAITING, "new")


def test_a_failed_session_is_not_taken_before_its_retry_time(ingest: Ingest) -> None:
    ingest.reconcile()
    (due,) = ingest.due_sessions()
    ingest.state.sessions.move(due.id, sessions.UPLOADING)
    ingest.state.sessions.fail(due.id, "boom", time.time() + 3600)
    assert ingest.due_sessions() == []
    outcome = ingest.upload(due)  # a stale listing still names it
    assert outcome.interrupted
    after = ingest.state.sessions.get(due.id)
    assert after is not None and after.state == sessions.FAILED and after.attempts == 1
