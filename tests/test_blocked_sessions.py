"""Sessions that cannot go up as they are never vanish silently: a session folder whose name
cannot become a key, or that holds what the agent cannot read, is named by `sync` and makes
`status` a WARNING until a person acts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from agent.state import State
from tests.conftest import Rig
from tests.test_doctor import _drop_dac
from tests.test_status import beat
from tests.test_sync import age, write_session

pytestmark = pytest.mark.slow


def status(rig: Rig) -> tuple[int, dict[str, Any]]:
    """`status --json` as monitoring sees it while a daemon (this test's process) beats."""
    with State.open(rig.settings().state_db_path) as state:
        beat(state, started_at=time.time() - 60, now=time.time())
    result = rig.agentctl("status", "--json")
    with State.open(rig.settings().state_db_path) as state:
        state.control.stopped(time.time())  # so that the next sync does not wait for it
    return result.returncode, json.loads(result.stdout)


def test_refused_session_folders_are_named_by_sync_and_status(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    age(write_session(rig, "mouse1/s1", {"a.bin": b"a"}), 60)
    age(write_session(rig, "mouse1\\x/s1", {"a.bin": b"b"}), 60)  # a backslash in the prefix
    odd = os.fsencode(rig.source) + b"/mouse\xff/s1"  # not UTF-8
    os.makedirs(odd)
    with open(odd + b"/a.bin", "wb") as handle:
        handle.write(b"c")
    age(rig.source, 60)

    result = rig.agentctl("sync", "--json")
    assert result.returncode == 0, result.stderr  # nothing failed; two were refused
    summary = json.loads(result.stdout)
    assert summary["sessions_uploaded"] == 1 and summary["sessions_refused"] == 2
    refused = {item["session"]: item["reason"] for item in summary["refused"]}
    assert "ephys/mouse1\\x/s1" in refused and "backslash" in refused["ephys/mouse1\\x/s1"]
    (shown,) = [name for name in refused if name.endswith("mouse\\xff/s1")]
    assert "UTF-8" in refused[shown]

    text = rig.agentctl("sync")
    assert "2 refused" in text.stdout and "refused: ephys/mouse1\\x/s1" in text.stdout

    code, report = status(rig)
    assert code == 1 and "2 session(s) refused" in report["summary"], report["summary"]
    assert {item["session"] for item in report["blocked"]["refused"]} == set(refused)

    # Renamed by the operator: refused no more, and uploaded.
    os.rename(rig.source / "mouse1\\x", rig.source / "mouse1x")
    os.rename(odd.rsplit(b"/", 1)[0], os.fsencode(rig.source) + b"/mouse2")
    age(rig.source, 60)
    again = json.loads(rig.agentctl("sync", "--json").stdout)
    assert again["sessions_refused"] == 0 and again["sessions_uploaded"] == 2
    code, report = status(rig)
    assert code == 0, report["summary"]
    assert report["blocked"]["refused"] == []


@pytest.mark.skipif(_drop_dac() is None, reason="needs root and setpriv to drop DAC capabilities")
def test_a_session_waiting_on_an_unreadable_folder_is_a_warning(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    session = write_session(rig, "mouse1/s1", {"a.bin": b"a", "probe/b.bin": b"b"})
    age(session, 60)
    (session / "probe").chmod(0o000)
    prefix = _drop_dac()
    assert prefix is not None
    try:
        result = subprocess.run(
            [*prefix, sys.executable, "-m", "agent", "sync", "--json", "--config", str(rig.config)],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    finally:
        (session / "probe").chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sessions_waiting"] == 1
    with State.open(rig.settings().state_db_path) as state:
        beat(state, started_at=time.time() - 60, now=time.time())
    result = rig.agentctl("status", "--json")
    code, report = result.returncode, json.loads(result.stdout)
    assert code == 1, report["summary"]
    assert "cannot be read" in report["summary"] and "ephys/mouse1/s1" in report["summary"]
    (item,) = report["blocked"]["unreadable"]
    assert item["session"] == "ephys/mouse1/s1" and "probe" in item["reason"]
    lines = rig.agentctl("status").stdout
    assert "cannot read session ephys/mouse1/s1" in lines


def test_names_with_bidi_or_zero_width_characters_are_printed_escaped(
    make_rig: Callable[..., Rig],
) -> None:
    """Such a name is a valid key (it is uploaded), but printed raw it would reorder or hide
    what an operator reads on the terminal."""
    rig = make_rig()
    age(write_session(rig, "mouse\u202e1/s\u200b1", {"a.bin": b"b"}), 60)
    assert json.loads(rig.agentctl("sync", "--json").stdout)["sessions_uploaded"] == 1
    lines = rig.agentctl("sessions").stdout
    assert "\u202e" not in lines and "\u200b" not in lines
    assert "mouse\\u202e1/s\\u200b1" in lines
    listed = json.loads(rig.agentctl("sessions", "--json").stdout)
    assert listed[0]["id"] == "ephys/mouse\u202e1/s\u200b1"  # JSON keeps the real name
