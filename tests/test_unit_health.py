"""Unit tests for health: Nagios verdicts from a heartbeat, session counts and the backlog,
all at an explicit `now`; and the one-line status."""

from __future__ import annotations

import os
import socket

import pytest

from agent.health import (
    CODES,
    CRITICAL,
    NAMES,
    OK,
    UNKNOWN,
    WARNING,
    Backlog,
    Health,
    assess,
    process_alive,
    status_line,
)
from agent.state import Heartbeat

NOW = 1_800_000_000.0
HOUR = 3600.0
STALE = 60.0


def beat(
    ago: float = 5.0, stopped_at: float | None = None, pid: int = 4242, host: str = "rig-7"
) -> Heartbeat:
    return Heartbeat(
        pid=pid,
        hostname=host,
        started_at=NOW - 2 * HOUR,
        beat_at=NOW - ago,
        stopped_at=stopped_at,
        status="running",
    )


def backlog(
    ready_since: float | None = None,
    oldest_ready: tuple[str, float] | None = None,
    last_sent_at: float | None = None,
    uploading: bool = False,
    resumed_at: float | None = None,
) -> Backlog:
    return Backlog(
        ready_since=ready_since,
        oldest_ready=oldest_ready,
        last_sent_at=last_sent_at,
        ready_limit=6 * HOUR,
        stall_limit=HOUR,
        uploading=uploading,
        resumed_at=resumed_at,
    )


def test_nagios_codes() -> None:
    assert (OK, WARNING, CRITICAL, UNKNOWN) == (0, 1, 2, 3)
    assert NAMES == {0: "ok", 1: "warning", 2: "critical", 3: "unknown"}
    assert CODES == {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}
    assert Health(UNKNOWN, "x", False, None).name == "unknown"


# --- assess ---------------------------------------------------------------------------------


def test_healthy_daemon() -> None:
    health = assess(beat(5), {"uploaded": 3}, 0, None, NOW, STALE, True)
    assert health == Health(OK, "daemon running; 0 files waiting to upload", True, 5.0)
    assert health.name == "ok"


def test_never_run_is_a_warning() -> None:
    health = assess(None, {}, 7, None, NOW, STALE)
    assert health == Health(WARNING, "daemon has never run; 7 files waiting to upload", False, None)


def test_stopped_daemon_is_critical() -> None:
    health = assess(beat(30, stopped_at=NOW - 30), {}, 2, None, NOW, STALE, None)
    assert health == Health(
        CRITICAL, "daemon stopped (pid 4242); 2 files waiting to upload", False, 30.0
    )


def test_vanished_process_is_critical_even_with_a_fresh_beat() -> None:
    health = assess(beat(1), {}, 0, None, NOW, STALE, False)
    assert health.code == CRITICAL
    assert health.summary == (
        "daemon (pid 4242) is gone without stopping cleanly; 0 files waiting to upload"
    )
    assert health.daemon_running is False


def test_stale_heartbeat_is_critical() -> None:
    health = assess(beat(61), {}, 1, None, NOW, STALE, True)
    assert health == Health(
        CRITICAL,
        "daemon heartbeat is 61s old (limit 60s): crashed or hung; 1 files waiting to upload",
        False,
        61.0,
    )


def test_a_beat_exactly_at_the_limit_still_counts() -> None:
    assert assess(beat(STALE), {}, 0, None, NOW, STALE, True).code == OK
    assert assess(beat(STALE + 0.5), {}, 0, None, NOW, STALE, True).code == CRITICAL


def test_a_beat_from_the_future_has_age_zero() -> None:
    health = assess(beat(-120), {}, 0, None, NOW, STALE, True)
    assert health.code == OK
    assert health.heartbeat_age == 0.0


def test_unknown_liveness_on_another_host_trusts_the_beat() -> None:
    assert assess(beat(5), {}, 0, None, NOW, STALE, None).code == OK
    assert assess(beat(500), {}, 0, None, NOW, STALE, None).code == CRITICAL


def test_failed_sessions_warn_with_the_last_error() -> None:
    error = ("ephys/m1/s1", "PutObject k: AccessDenied (403): denied")
    health = assess(beat(), {"failed": 2, "uploaded": 5}, 0, error, NOW, STALE, True)
    assert health == Health(
        WARNING,
        "2 session(s) failed: ephys/m1/s1: PutObject k: AccessDenied (403): denied",
        True,
        5.0,
    )
    plain = assess(beat(), {"failed": 1}, 0, None, NOW, STALE, True)
    assert plain.summary == "1 session(s) failed"


def test_zero_failed_is_not_a_warning() -> None:
    assert assess(beat(), {"failed": 0}, 0, ("s", "e"), NOW, STALE, True).code == OK


def test_operator_pause_warns_schedule_pause_does_not() -> None:
    operator = assess(beat(), {}, 4, None, NOW, STALE, True, paused_by="operator")
    assert operator == Health(
        WARNING,
        "uploads paused by an operator (agentctl resume); 4 files waiting to upload",
        True,
        5.0,
    )
    schedule = assess(beat(), {}, 4, None, NOW, STALE, True, paused_by="schedule")
    assert schedule == Health(
        OK, "daemon running, uploads paused by the schedule; 4 files waiting to upload", True, 5.0
    )


def test_a_scheduled_pause_is_not_judged_by_the_backlog_limits() -> None:
    stalled = backlog(ready_since=NOW - 10 * HOUR, oldest_ready=("s", NOW - 10 * HOUR))
    paused = assess(beat(), {}, 1, None, NOW, STALE, True, paused_by="schedule", backlog=stalled)
    assert paused.code == OK
    running = assess(beat(), {}, 1, None, NOW, STALE, True, backlog=stalled)
    assert running.code == WARNING


def test_critical_beats_failed_and_failed_beats_paused() -> None:
    error = ("s", "e")
    stale = assess(beat(600), {"failed": 3}, 0, error, NOW, STALE, True, paused_by="operator")
    assert stale.code == CRITICAL
    failed = assess(beat(), {"failed": 3}, 0, error, NOW, STALE, True, paused_by="operator")
    assert failed.summary.startswith("3 session(s) failed")


def test_backlog_warning_is_reported() -> None:
    stalled = backlog(ready_since=NOW - 2 * HOUR, last_sent_at=NOW - 2 * HOUR)
    health = assess(beat(), {"ready": 1}, 3, None, NOW, STALE, True, backlog=stalled)
    assert health.code == WARNING
    assert health.summary == (
        "sessions are ready but nothing was sent for 2 h (limit 60 min; "
        "[status] stalled_warning); 3 files waiting to upload"
    )
    assert health.daemon_running is True


def test_quiet_backlog_is_ok() -> None:
    fine = backlog(ready_since=NOW - 60, last_sent_at=NOW - 10)
    assert assess(beat(), {"ready": 1}, 3, None, NOW, STALE, True, backlog=fine).code == OK


# --- Backlog --------------------------------------------------------------------------------


def test_nothing_ready_is_never_stalled() -> None:
    idle = backlog(last_sent_at=NOW - 100 * HOUR, oldest_ready=None)
    assert idle.stalled_for(NOW) is None
    assert idle.warning(NOW) is None


def test_stall_counts_from_the_latest_of_ready_sent_and_resumed() -> None:
    assert backlog(ready_since=NOW - 300).stalled_for(NOW) == 300
    assert backlog(ready_since=NOW - 300, last_sent_at=NOW - 20).stalled_for(NOW) == 20
    assert backlog(ready_since=NOW - 30, last_sent_at=NOW - 200).stalled_for(NOW) == 30
    resumed = backlog(ready_since=NOW - 300, last_sent_at=NOW - 200, resumed_at=NOW - 5)
    assert resumed.stalled_for(NOW) == 5
    future = backlog(ready_since=NOW + 50)
    assert future.stalled_for(NOW) == 0.0


def test_stall_warning_only_past_the_limit() -> None:
    assert backlog(ready_since=NOW - HOUR).warning(NOW) is None
    text = backlog(ready_since=NOW - HOUR - 1).warning(NOW)
    assert text == (
        "sessions are ready but nothing was sent for 60 min (limit 60 min; "
        "[status] stalled_warning)"
    )


def test_ready_too_long_without_starting() -> None:
    # Something was sent recently (not stalled), but one session has waited over 6 h.
    waited = backlog(
        ready_since=NOW - 7 * HOUR, oldest_ready=("ephys/m1/s1", NOW - 7 * HOUR), last_sent_at=NOW
    )
    assert waited.warning(NOW) == (
        "session ephys/m1/s1 has been ready for 7 h without starting to upload "
        "(limit 6 h; [status] ready_warning)"
    )
    at_limit = backlog(
        ready_since=NOW - 6 * HOUR, oldest_ready=("s", NOW - 6 * HOUR), last_sent_at=NOW
    )
    assert at_limit.warning(NOW) is None


def test_a_queue_behind_an_upload_is_not_ready_too_long() -> None:
    queued = backlog(
        ready_since=NOW - 7 * HOUR,
        oldest_ready=("s", NOW - 7 * HOUR),
        last_sent_at=NOW - 1,
        uploading=True,
    )
    assert queued.warning(NOW) is None


def test_an_upload_that_sends_nothing_is_still_stalled() -> None:
    stuck = backlog(ready_since=NOW - 3 * HOUR, last_sent_at=NOW - 2 * HOUR, uploading=True)
    warning = stuck.warning(NOW)
    assert warning is not None
    assert warning.startswith("sessions are ready but nothing was sent for 2 h")


def test_time_spent_paused_does_not_count_as_ready() -> None:
    resumed = backlog(
        ready_since=NOW - 7 * HOUR,
        oldest_ready=("s", NOW - 7 * HOUR),
        last_sent_at=NOW,
        resumed_at=NOW - HOUR,
    )
    assert resumed.warning(NOW) is None
    long_ago = backlog(
        ready_since=NOW - 8 * HOUR,
        oldest_ready=("s", NOW - 8 * HOUR),
        last_sent_at=NOW,
        resumed_at=NOW - 7 * HOUR,
    )
    warning = long_ago.warning(NOW)
    assert warning is not None
    assert "ready for 7 h" in warning


# --- status_line ----------------------------------------------------------------------------


def test_status_line_when_idle() -> None:
    assert status_line({}, 0, 0) == "0 waiting, backlog 0.0 GB in 0 files, no upload yet"


def test_status_line_in_full() -> None:
    line = status_line(
        {"waiting": 2, "ready": 1, "uploading": 1, "failed": 3},
        40,
        12_300_000_000,
        uploading_percent=41.4,
        rate=38_200_000,
        last_upload_age=120,
        paused_by="operator",
    )
    assert line == (
        "2 waiting, 1 ready, 1 uploading 41 % at 38.2 MB/s, 3 failed, "
        "backlog 12.3 GB in 40 files, last upload 2 min ago; paused by operator"
    )


def test_status_line_leaves_out_what_is_unknown() -> None:
    line = status_line({"uploading": 2}, 1, 0, rate=0.0, last_upload_age=-5)
    assert line == "0 waiting, 2 uploading, backlog 0.0 GB in 1 files, last upload 0 s ago"


# --- process_alive --------------------------------------------------------------------------


def test_a_heartbeat_from_another_host_cannot_be_checked() -> None:
    assert process_alive(beat(pid=os.getpid(), host=socket.gethostname() + ".elsewhere")) is None


def test_this_process_is_alive() -> None:
    assert process_alive(beat(pid=os.getpid(), host=socket.gethostname())) is True


def test_a_pid_that_cannot_exist_is_gone() -> None:
    # Linux pids never exceed PID_MAX_LIMIT (2**22).
    assert process_alive(beat(pid=2**22 + 1, host=socket.gethostname())) is False


@pytest.mark.skipif(os.geteuid() == 0, reason="root may signal every process")
def test_a_process_we_may_not_signal_is_alive() -> None:
    assert process_alive(beat(pid=1, host=socket.gethostname())) is True
