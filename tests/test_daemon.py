"""The daemon as systemd runs it: a child process, real inotify on a temporary folder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from tests.conftest import Rig, start_daemon, stop_daemon, wait_for


def session_rows(rig: Rig) -> list[dict[str, Any]]:
    result = rig.agentctl("sessions", "--json")
    if result.returncode != 0:
        return []
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def state_of(rig: Rig, session_id: str) -> str | None:
    for row in session_rows(rig):
        if row["id"] == session_id:
            return str(row["state"])
    return None


def test_slow_session_is_not_uploaded_early_then_uploads(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    rig = make_rig(quiet_period="3s", agent_extra='rescan_interval = "1h"')
    daemon = start_daemon(rig)
    try:
        assert wait_for(lambda: rig.agentctl("status").returncode == 0, timeout=30)
        # Written over ~6 s, i.e. twice the quiet period: it must never be judged complete.
        session = rig.session("mouse1/2026-11-23_10-00")
        with (session / "continuous.ap.bin").open("wb") as handle:
            for _ in range(12):
                handle.write(os.urandom(4096))
                handle.flush()
                time.sleep(0.5)
                assert state_of(rig, "ephys/mouse1/2026-11-23_10-00") in (None, "waiting")
        assert wait_for(
            lambda: state_of(rig, "ephys/mouse1/2026-11-23_10-00") == "uploaded", timeout=30
        )
        body = client.get_object(
            Bucket=rig.bucket, Key="rig-01/ephys/mouse1/2026-11-23_10-00/continuous.ap.bin"
        )["Body"].read()
        assert body == (session / "continuous.ap.bin").read_bytes()
    finally:
        code, log = stop_daemon(daemon)
    assert code == 0, log


def test_directory_created_with_files_inside_is_found(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(quiet_period="1s", agent_extra='rescan_interval = "1h"')
    daemon = start_daemon(rig)
    try:
        assert wait_for(lambda: rig.agentctl("status").returncode == 0, timeout=30)
        staging = rig.root / "staging" / "s1"
        staging.mkdir(parents=True)
        (staging / "a.bin").write_bytes(b"a" * 100)
        (rig.source / "mouse2").mkdir()
        os.rename(staging, rig.source / "mouse2" / "s1")  # appears whole, files inside
        assert wait_for(lambda: state_of(rig, "ephys/mouse2/s1") == "uploaded", timeout=30)
    finally:
        code, log = stop_daemon(daemon)
    assert code == 0, log


def test_reconcile_alone_uploads_everything_with_watcher_off(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(
        quiet_period="1s", source_extra='watch = "off"', agent_extra='rescan_interval = "1s"'
    )
    daemon = start_daemon(rig)
    try:
        for index in range(3):
            session = rig.session(f"mouse3/s{index}")
            (session / "data.bin").write_bytes(os.urandom(1000))
        assert wait_for(
            lambda: sum(row["state"] == "uploaded" for row in session_rows(rig)) == 3,
            timeout=40,
        )
    finally:
        code, log = stop_daemon(daemon)
    assert code == 0, log


def test_sigterm_stops_cleanly_and_status_turns_critical(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    daemon = start_daemon(rig)
    assert wait_for(lambda: rig.agentctl("status").returncode == 0, timeout=30)
    started = time.monotonic()
    code, log = stop_daemon(daemon)
    assert code == 0, log
    assert time.monotonic() - started < 30
    status = rig.agentctl("status", "--json")
    assert status.returncode == 2
    assert json.loads(status.stdout)["daemon"]["running"] is False
