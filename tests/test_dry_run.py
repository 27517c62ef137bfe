"""`agentctl sync --dry-run` and `agentctl sync` judge every session alike: the dry run is the
same observation over a copy of the state, so it cannot say "ready" where sync would wait."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from agent import sessions
from agent.state import State
from tests.conftest import Rig
from tests.test_sync import age, sync, write_session

pytestmark = pytest.mark.slow


def bucket_keys(client: Any, rig: Rig) -> set[str]:
    listing = client.list_objects_v2(Bucket=rig.bucket)
    return {item["Key"] for item in listing.get("Contents", [])}


def test_dry_run_and_sync_agree_on_every_session(make_rig: Callable[..., Rig], client: Any) -> None:
    rig = make_rig(quiet_period="30s")
    # Uploaded by a first pass: one left alone, one a crash will leave `uploading`.
    for name in ("m1/done", "m2/crashed"):
        age(write_session(rig, name, {"a.bin": b"a" * 10}), 120)
    assert sync(rig)["sessions_uploaded"] == 2
    with State.open(rig.settings().state_db_path) as state:
        for step in (sessions.WAITING, sessions.READY, sessions.UPLOADING):
            state.sessions.move("ephys/m2/crashed", step)
    write_session(rig, "m2/crashed", {"new.bin": b"written after the crash"})  # quiet: no

    age(write_session(rig, "m1/ready", {"a.bin": b"r" * 20, "b/c.bin": b"c"}), 120)
    open_session = write_session(rig, "m1/open", {"a.bin": b"o" * 5, "live.bin": b"x"})
    age(open_session, 120)
    age(write_session(rig, "m1\\bad/s1", {"a.bin": b"b"}), 120)  # unsafe key prefix
    write_session(rig, "m3/fresh", {"a.bin": b"f"})  # within its quiet period

    with (open_session / "live.bin").open("ab"):  # still being written by the instrument
        dry = rig.agentctl("sync", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        planned = {row["id"]: row for row in json.loads(dry.stdout)}
        with State.open(rig.settings().state_db_path, create=False) as state:
            # The dry run judged a copy: the real database still holds what it held.
            crashed = state.sessions.get("ephys/m2/crashed")
            assert crashed is not None and crashed.state == sessions.UPLOADING
            assert state.sessions.get("ephys/m1/ready") is None
        summary = sync(rig)

    assert {row_id: row["ready"] for row_id, row in planned.items()} == {
        "ephys/m1/done": False,
        "ephys/m1/open": False,
        "ephys/m1/ready": True,
        "ephys/m1\\bad/s1": False,
        "ephys/m2/crashed": False,
        "ephys/m3/fresh": False,
    }
    assert "live.bin" in planned["ephys/m1/open"]["reason"]
    assert planned["ephys/m1\\bad/s1"]["reason"].startswith("session refused: ")
    assert planned["ephys/m2/crashed"]["state"] == "waiting"
    assert planned["ephys/m1/done"]["state"] == "uploaded"
    assert planned["ephys/m1/ready"]["files"] == 2 and planned["ephys/m1/ready"]["bytes"] == 21

    # What sync did, session by session, is what the dry run said it would do.
    assert summary["sessions_uploaded"] == 1 and summary["sessions_failed"] == 0
    after = {row["id"]: row for row in json.loads(rig.agentctl("sessions", "--json").stdout)}
    keys = bucket_keys(client, rig)
    for session_id, row in planned.items():
        if row["state"] == "refused":
            assert session_id not in after
            assert not any(key.startswith(row["key_prefix"] + "/") for key in keys)
            continue
        expected = "uploaded" if row["ready"] else row["state"]
        assert after[session_id]["state"] == expected, session_id
        sent = set(row["keys"]) & keys
        assert sent == (set(row["keys"]) if row["ready"] else set()), session_id
