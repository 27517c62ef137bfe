"""Operator controls: pause, resume, retry, rescan. Each returns (done, message); the state is
the channel to a running daemon (a persistent flag, or a queued request it answers)."""

from __future__ import annotations

import time

from agent import health, sessions
from agent.config import Settings
from agent.report import PAUSED_FLAG
from agent.state import Heartbeat, State

RESCAN_WAIT = 10.0


def live_daemon(settings: Settings, state: State) -> Heartbeat | None:
    """The heartbeat of a daemon that is running now, or None."""
    heartbeat = state.control.heartbeat()
    if heartbeat is None:
        return None
    verdict = health.assess(
        heartbeat,
        {},
        0,
        None,
        time.time(),
        settings.agent.heartbeat_stale,
        health.process_alive(heartbeat),
    )
    return heartbeat if verdict.daemon_running else None


def pause(settings: Settings, state: State) -> tuple[bool, str]:
    """Stop uploading (persists across restarts) until `resume`."""
    state.control.set_flag(PAUSED_FLAG, "operator", time.time())
    where = (
        "the daemon stops within a second; parts in flight resume later"
        if live_daemon(settings, state) is not None
        else "the daemon is not running; it will start paused"
    )
    return True, f"uploads paused: {where}. `agentctl resume` undoes it"


def resume(state: State) -> tuple[bool, str]:
    """Undo `pause`."""
    was = state.control.flag(PAUSED_FLAG) is not None
    state.control.set_flag(PAUSED_FLAG, None, time.time())
    return True, "uploads resumed" if was else "uploads were not paused"


def retry(state: State, session_id: str) -> tuple[bool, str]:
    """Make a failed session ready again at once."""
    record = state.sessions.get(session_id)
    if record is None:
        return False, f"no session {session_id!r}; see `agentctl sessions`"
    if record.state == sessions.FAILED and state.sessions.retry_now(record.id):
        return True, f"{record.id} will be uploaded again shortly"
    now = state.sessions.get(record.id) or record  # it may have moved since it was read
    return False, f"{now.id} is {now.state}, not failed: nothing to retry"


def rescan(settings: Settings, state: State) -> tuple[bool, str]:
    """Ask the running daemon to rescan every source now, and wait for its answer."""
    if live_daemon(settings, state) is None:
        return False, "the daemon is not running; start it, or run `agentctl sync` for one pass"
    request = state.control.request("rescan", None, time.time())
    deadline = time.monotonic() + RESCAN_WAIT
    result = state.control.request_result(request)
    while result is None and time.monotonic() < deadline:
        time.sleep(0.1)
        result = state.control.request_result(request)
    if result is None:
        return False, f"the daemon did not take the request within {RESCAN_WAIT:.0f} s"
    return True, f"daemon: {result}"
