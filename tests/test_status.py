"""`agentctl status` for people and for checks: rate, ETA, oldest sessions, per-source lines,
last upload, and the WARNINGs for a session ready too long or a stalled backlog.

The bottom layer drives the report over a real SQLite state with an injected clock; the top
layer runs the daemon against the S3 server on loopback."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from agent import health
from agent.config import Settings, settings_from_mapping
from agent.report import status_lines, status_report
from agent.scan import FileStat
from agent.state import Heartbeat, State
from tests.conftest import Rig, start_daemon, stop_daemon, wait_for
from tests.s3server import Fault

NOW = 1_800_000_000.0
HOUR = 3600.0


def settings_for(tmp_path: Path, **status: str) -> Settings:
    for name in ("ephys", "scope"):
        (tmp_path / name).mkdir(exist_ok=True)
    return settings_from_mapping(
        {
            "agent": {"name": "rig-07", "state_dir": str(tmp_path / "state")},
            "destination": {"bucket": "lab-raw"},
            "status": status,
            "source": [
                {"name": "ephys", "path": str(tmp_path / "ephys")},
                {"name": "scope", "path": str(tmp_path / "scope")},
            ],
        },
        "config.toml",
    )


def add_session(
    state: State, session_id: str, *, state_name: str, at: float, sizes: tuple[int, ...] = (10,)
) -> None:
    source, _, rel_path = session_id.partition("/")
    files = tuple(FileStat(f"f{i}.bin", size, int(at * 1e9), i + 1) for i, size in enumerate(sizes))
    state.sessions.observe(
        session_id=session_id,
        source=source,
        rel_path=rel_path,
        path=f"/data/{session_id}",
        key_prefix=f"rig/{session_id}",
        files=files,
        keys={f.rel_path: f"rig/{session_id}/{f.rel_path}" for f in files},
        refused={},
        newest_mtime=at,
        metadata={},
        now=at,
    )
    # Along the life cycle's own moves: the store refuses a jump such as waiting → uploaded.
    path = {"ready": 1, "uploading": 2, "uploaded": 3, "failed": 3}.get(state_name, 0)
    for step in ("ready", "uploading", state_name)[:path]:
        state.sessions.move(session_id, step, completed_at=at)
    if state_name == "uploaded":
        for record in state.ledger.files_of(session_id):
            state.ledger.file_uploaded(
                record, checksum="c", checksum_algorithm="crc32c", etag="e", now=at
            )


def beat(state: State, *, started_at: float, now: float, rate: float = 0.0) -> None:
    # The daemon's pid is this test's own: alive, on this host.
    state.control.beat(
        pid=os.getpid(),
        hostname=socket.gethostname(),
        started_at=started_at,
        now=now,
        status="running",
        rate=rate,
    )


@pytest.fixture
def state(tmp_path: Path) -> Any:
    opened = State.open(tmp_path / "state" / "state.db")
    yield opened
    opened.close()


# --- the verdict over a backlog, pure ------------------------------------------------------


def heartbeat(started_at: float) -> Heartbeat:
    return Heartbeat(1, "host", started_at, NOW, None, "")


def backlog(**fields: Any) -> health.Backlog:
    defaults: dict[str, Any] = {
        "ready_since": None,
        "oldest_ready": None,
        "last_sent_at": None,
        "ready_limit": 6 * HOUR,
        "stall_limit": HOUR,
    }
    return health.Backlog(**{**defaults, **fields})


def test_nothing_ready_is_never_stalled() -> None:
    assert backlog(last_sent_at=NOW - 99 * HOUR).stalled_for(NOW) is None


def test_stall_counts_from_the_latest_of_ready_start_last_ack_and_pause_end() -> None:
    # Ready for 3 h, the last part acknowledged 2 h ago: stalled 2 h.
    long_ready = backlog(ready_since=NOW - 3 * HOUR, last_sent_at=NOW - 2 * HOUR)
    assert long_ready.stalled_for(NOW) == 2 * HOUR
    # A session ready 10 min ago after a week of silence is not a 1-week stall.
    fresh = backlog(ready_since=NOW - 600, last_sent_at=NOW - 7 * 24 * HOUR)
    assert fresh.stalled_for(NOW) == 600
    # Uploads only at night: the day's sessions waited through the pause; 30 s after it
    # ended they have waited 30 s, not 11 h.
    evening = backlog(
        ready_since=NOW - 11 * HOUR, last_sent_at=NOW - 12 * HOUR, resumed_at=NOW - 30
    )
    assert evening.stalled_for(NOW) == 30


def test_stall_and_long_ready_warn_only_past_their_limits() -> None:
    assert backlog(ready_since=NOW - 59 * 60).warning(NOW) is None
    stalled = backlog(ready_since=NOW - 61 * 60).warning(NOW)
    assert stalled is not None
    assert "nothing was sent for 61 min" in stalled
    assert "stalled_warning" in stalled
    waiting = backlog(
        ready_since=NOW - 7 * HOUR,
        last_sent_at=NOW - 60,
        oldest_ready=("ephys/m1/s2", NOW - 7 * HOUR),
    ).warning(NOW)
    assert waiting is not None
    assert "ephys/m1/s2 has been ready for 7 h" in waiting
    assert "ready_warning" in waiting


def test_a_queue_behind_a_running_upload_or_a_pause_is_not_too_long_ready() -> None:
    # A 7 h session uploading at full rate: the next one waits its turn.
    queued = backlog(
        ready_since=NOW - 8 * HOUR,
        last_sent_at=NOW - 5,
        oldest_ready=("ephys/m1/s3", NOW - 7 * HOUR),
        uploading=True,
    )
    assert queued.warning(NOW) is None
    # Ready since the morning, uploads allowed from 20:00: 5 min after the pause, fine.
    after_pause = backlog(
        ready_since=NOW - 10 * HOUR,
        last_sent_at=NOW - 5,
        oldest_ready=("ephys/m1/s4", NOW - 10 * HOUR),
        resumed_at=NOW - 300,
    )
    assert after_pause.warning(NOW) is None


def test_a_scheduled_pause_does_not_warn_about_the_backlog_it_causes() -> None:
    stalled = backlog(ready_since=NOW - 10 * HOUR)
    arguments: dict[str, Any] = {"backlog": stalled}
    beat_ = heartbeat(0)
    verdict = health.assess(beat_, {}, 1, None, NOW, 60, True, paused_by="schedule", **arguments)
    assert verdict.code == health.OK
    verdict = health.assess(beat_, {}, 1, None, NOW, 60, True, **arguments)
    assert verdict.code == health.WARNING


# --- the report over a real state database --------------------------------------------------


def test_report_counts_per_source_oldest_sessions_rate_and_eta(
    tmp_path: Path, state: State
) -> None:
    settings = settings_for(tmp_path)
    add_session(state, "ephys/m1/s1", state_name="waiting", at=NOW - 1800, sizes=(5, 5))
    add_session(state, "ephys/m1/s2", state_name="ready", at=NOW - 600, sizes=(1000, 1000))
    add_session(state, "lost/m9/s1", state_name="uploaded", at=NOW - 99 * HOUR)
    beat(state, started_at=NOW - HOUR, now=NOW - 1, rate=100.0)
    state.ledger.acknowledged_at = None

    report = status_report(settings, state, NOW)

    assert report["state"] == "ok"
    assert report["sessions"]["waiting"] == 1
    assert report["sessions"]["ready"] == 1
    assert report["backlog"]["files"] == 4
    assert report["backlog"]["bytes"] == 2010
    assert report["backlog"]["ready_files"] == 2
    assert report["backlog"]["ready_bytes"] == 2000
    assert report["uploads"]["rate_bytes_per_s"] == 100
    assert report["backlog"]["eta_s"] == 20
    assert report["oldest"]["waiting"]["id"] == "ephys/m1/s1"
    assert report["oldest"]["waiting"]["age_s"] == 1800
    assert report["oldest"]["ready"]["age_s"] == 600
    by_name = {source["name"]: source for source in report["sources"]}
    # Configured sources appear even when empty; a source no longer configured still shows.
    assert by_name["scope"]["sessions"]["waiting"] == 0
    assert by_name["ephys"]["backlog"] == {"files": 4, "bytes": 2010}
    assert by_name["lost"]["sessions"]["uploaded"] == 1
    assert report["agent"]["name"] == "rig-07"
    text = "\n".join(status_lines({k: v for k, v in report.items() if k != "code"}))
    assert "ETA 20 s" in text
    assert "oldest waiting: ephys/m1/s1 (30 min)" in text
    assert "source scope: 0 waiting" in text


def test_report_warns_when_a_session_waits_ready_too_long(tmp_path: Path, state: State) -> None:
    settings = settings_for(tmp_path, ready_warning="2h", stalled_warning="100h")
    add_session(state, "ephys/m1/s1", state_name="ready", at=NOW - 3 * HOUR)
    beat(state, started_at=NOW - 10 * HOUR, now=NOW - 1)

    report = status_report(settings, state, NOW)

    assert report["state"] == "warning"
    assert report["code"] == health.WARNING
    assert "ephys/m1/s1 has been ready for 3 h" in report["summary"]
    # Under the limit it is fine.
    assert status_report(settings, state, NOW - 1.5 * HOUR)["state"] == "ok"


def test_report_takes_the_last_finished_file_as_the_last_upload(
    tmp_path: Path, state: State
) -> None:
    settings = settings_for(tmp_path, stalled_warning="30m")
    add_session(state, "ephys/m1/s1", state_name="uploading", at=NOW - 2 * HOUR, sizes=(7, 7))
    beat(state, started_at=NOW - 5 * HOUR, now=NOW - 1)
    assert status_report(settings, state, NOW)["state"] == "warning"

    first = state.ledger.files_of("ephys/m1/s1")[0]
    state.ledger.file_uploaded(
        first, checksum="x", checksum_algorithm="crc32c", etag='"e"', now=NOW - 60
    )
    report = status_report(settings, state, NOW)

    assert report["state"] == "ok"
    assert report["uploads"]["last_upload_age_s"] == 60
    assert report["backlog"]["ready_files"] == 1


# --- end to end: the daemon's heartbeat carries the rate; a refusing server is a stall -------


def write_session(rig: Rig, rel_path: str, sizes: dict[str, int]) -> None:
    folder = rig.session(rel_path)
    for name, size in sizes.items():
        (folder / name).write_bytes(b"x" * size)
    old = time.time() - 60
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (old, old))


def status_json(rig: Rig) -> tuple[int, dict[str, Any]]:
    result = rig.agentctl("status", "--json")
    return result.returncode, json.loads(result.stdout)


@pytest.mark.slow
def test_status_shows_the_rate_and_eta_while_the_daemon_uploads(make_rig: Any) -> None:
    rig = make_rig(upload_extra='max_bandwidth = "1MiB"', concurrency=1)
    write_session(rig, "mouse1/s1", {f"f{i}.bin": 1024 * 1024 for i in range(6)})
    daemon = start_daemon(rig)
    seen: list[dict[str, Any]] = []
    try:

        def sending() -> bool:
            code, report = status_json(rig)
            seen.append(report)
            return bool(report.get("uploads", {}).get("rate_bytes_per_s")) and code == 0

        assert wait_for(sending, timeout=30, interval=0.5)
        report = seen[-1]
        assert 0.3e6 < report["uploads"]["rate_bytes_per_s"] < 3e6
        assert report["backlog"]["eta_s"] is not None
        assert wait_for(lambda: status_json(rig)[1]["sessions"]["uploaded"] == 1, timeout=30)
        code, final = status_json(rig)
        assert code == 0
        assert final["uploads"]["last_upload_at"] is not None
        assert final["backlog"]["files"] == 0
        text = rig.agentctl("status").stdout
        assert "last upload: " in text
        assert "source ephys: 0 waiting, 0 ready, 0 uploading, 1 uploaded" in text
    finally:
        stop_daemon(daemon)


@pytest.mark.slow
def test_status_warns_when_the_server_accepts_nothing(make_rig: Any, s3: Any) -> None:
    rig = make_rig(agent_extra="", upload_extra="retries = 100")
    with rig.config.open("a") as handle:
        handle.write('\n[status]\nstalled_warning = "3s"\n')
    write_session(rig, "mouse1/s1", {"a.bin": 1000})
    s3.faults.append(Fault("PutObject", 503, "SlowDown", times=10_000))
    daemon = start_daemon(rig)
    try:
        assert wait_for(lambda: status_json(rig)[0] == 1, timeout=30, interval=0.5)
        code, report = status_json(rig)
        assert code == 1
        assert "nothing was sent for" in report["summary"]
        assert report["daemon"]["running"] is True
    finally:
        stop_daemon(daemon)


@pytest.mark.slow
def test_a_slow_upload_whose_parts_are_acknowledged_is_not_a_stall(make_rig: Any) -> None:
    # One 40 MiB file at 2 MiB/s: no file finishes for ~20 s, but a 5 MiB part is
    # acknowledged every ~2.5 s, well inside the 8 s limit; status must stay OK throughout.
    rig = make_rig(upload_extra='max_bandwidth = "2MiB"', concurrency=1)
    add_status = '\n[status]\nstalled_warning = "8s"\n'
    with rig.config.open("a") as handle:
        handle.write(add_status)
    write_session(rig, "mouse1/s1", {"big.bin": 40 * 1024 * 1024})
    daemon = start_daemon(rig)
    verdicts: list[str] = []
    try:
        assert wait_for(lambda: status_json(rig)[1]["daemon"]["running"], timeout=30)

        def done() -> bool:
            code, report = status_json(rig)
            verdicts.append(report["summary"] if code else "ok")
            return bool(report["sessions"]["uploaded"] == 1)

        assert wait_for(done, timeout=60, interval=0.5)
    finally:
        stop_daemon(daemon)
    assert len(verdicts) > 20  # watched all along the ~20 s upload
    assert [v for v in verdicts if v != "ok"] == []
