"""Health assessment for `agentctl status`: pure, over what the state database says.

Nagios plugin conventions: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from agent.state import Heartbeat
from agent.units import human_age

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "ok", WARNING: "warning", CRITICAL: "critical", UNKNOWN: "unknown"}
CODES = {name: code for code, name in NAMES.items()}


@dataclass(frozen=True)
class Health:
    """The verdict and the one line that explains it."""

    code: int
    summary: str
    daemon_running: bool
    heartbeat_age: float | None

    @property
    def name(self) -> str:
        """ok, warning, critical or unknown."""
        return NAMES[self.code]


def process_alive(heartbeat: Heartbeat) -> bool | None:
    """Whether the heartbeat's process still exists: None when it ran on another host."""
    if heartbeat.hostname != socket.gethostname():
        return None
    try:
        os.kill(heartbeat.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def assess(  # noqa: PLR0917 - each input is a different fact from the database
    heartbeat: Heartbeat | None,
    counts: dict[str, int],
    backlog_files: int,
    last_error: tuple[str, str] | None,
    now: float,
    stale_after: float,
    alive: bool | None = None,
    *,
    paused_by: str | None = None,
    backlog: Backlog | None = None,
    blocked: str | None = None,
    critical: str | None = None,
) -> Health:
    """Given the daemon's heartbeat, session counts, backlog and last error, return health.

    CRITICAL: trouble with the state database named in `critical` (its disk full, or the
    file set aside as damaged and being rebuilt); the daemon has stopped beating (crashed,
    hung or stopped). WARNING: some sessions failed, the daemon never ran, an operator
    paused uploads (a forgotten pause must not look healthy), sessions are `blocked`
    (refused, or unreadable: only a person can help them), a session has waited ready too
    long, or sessions are ready and nothing has been sent for too long. OK otherwise, also
    during a scheduled pause.
    """
    failed = counts.get("failed", 0)
    age = None if heartbeat is None else max(0.0, now - heartbeat.beat_at)
    running = (
        heartbeat is not None
        and heartbeat.stopped_at is None
        and (age or 0) <= stale_after
        and alive is not False
    )
    waiting = f"{backlog_files} files waiting to upload"
    if critical is not None:
        # Trouble with the state database itself (a full disk stops the heartbeat too):
        # named before anything read from it.
        return Health(CRITICAL, f"{critical}; {waiting}", running, age)
    if heartbeat is None:
        return Health(WARNING, f"daemon has never run; {waiting}", False, None)
    if heartbeat.stopped_at is not None:
        return Health(CRITICAL, f"daemon stopped (pid {heartbeat.pid}); {waiting}", False, age)
    if alive is False:
        return Health(
            CRITICAL,
            f"daemon (pid {heartbeat.pid}) is gone without stopping cleanly; {waiting}",
            False,
            age,
        )
    if not running:
        return Health(
            CRITICAL,
            f"daemon heartbeat is {age:.0f}s old (limit {stale_after:.0f}s): crashed or hung; "
            f"{waiting}",
            False,
            age,
        )
    if failed:
        detail = f": {last_error[0]}: {last_error[1]}" if last_error else ""
        return Health(WARNING, f"{failed} session(s) failed{detail}", True, age)
    if paused_by == "operator":
        return Health(
            WARNING, f"uploads paused by an operator (agentctl resume); {waiting}", True, age
        )
    if blocked:
        return Health(WARNING, f"{blocked}; {waiting}", True, age)
    if paused_by:
        return Health(OK, f"daemon running, uploads paused by the schedule; {waiting}", True, age)
    if backlog is not None:
        slow = backlog.warning(now)
        if slow:
            return Health(WARNING, f"{slow}; {waiting}", True, age)
    return Health(OK, f"daemon running; {waiting}", True, age)


@dataclass(frozen=True)
class Backlog:
    """What is ready to send and how long it has waited, against the `[status]` limits."""

    ready_since: float | None  # when the oldest session now ready or uploading became ready
    oldest_ready: tuple[str, float] | None  # (id, since) of the oldest session still `ready`
    last_sent_at: float | None  # when S3 last acknowledged a part or a file (kept across restarts)
    ready_limit: float
    stall_limit: float
    uploading: bool = False  # a session is being uploaded now
    resumed_at: float | None = None  # when the last pause (operator or schedule) ended

    def stalled_for(self, now: float) -> float | None:
        """Seconds that ready sessions have gone without S3 acknowledging anything, or None
        if none are ready. Counted from the latest of: the last acknowledgement, the moment
        the oldest of them became ready, and the end of the last pause. A restart does not
        reset it: a daemon restarted again and again by the watchdog is still stalled."""
        if self.ready_since is None:
            return None
        since = max(self.ready_since, self.last_sent_at or 0.0, self.resumed_at or 0.0)
        return max(0.0, now - since)

    def warning(self, now: float) -> str | None:
        """The WARNING text if a limit is passed, else None."""
        stalled = self.stalled_for(now)
        if stalled is not None and stalled > self.stall_limit:
            return (
                f"sessions are ready but nothing was sent for {human_age(stalled)} "
                f"(limit {human_age(self.stall_limit)}; [status] stalled_warning)"
            )
        # While a session uploads (and is not stalled), the next ones wait their turn: that
        # is a queue, not a fault. Time spent paused does not count either.
        if self.oldest_ready is not None and not self.uploading:
            session_id, since = self.oldest_ready
            waited = now - max(since, self.resumed_at or 0.0)
            if waited > self.ready_limit:
                return (
                    f"session {session_id} has been ready for {human_age(waited)} without "
                    f"starting to upload (limit {human_age(self.ready_limit)}; [status] "
                    "ready_warning)"
                )
        return None


def status_line(
    counts: dict[str, int],
    backlog_files: int,
    backlog_bytes: int,
    *,
    uploading_percent: float | None = None,
    rate: float = 0.0,
    last_upload_age: float | None = None,
    paused_by: str | None = None,
) -> str:
    """One line for `systemctl status` and the heartbeat, e.g. '2 waiting, 1 uploading 41 %
    at 38 MB/s, backlog 12.3 GB in 40 files, last upload 2 min ago'."""
    parts = [f"{counts.get('waiting', 0)} waiting"]
    if counts.get("ready", 0):
        parts.append(f"{counts['ready']} ready")
    uploading = counts.get("uploading", 0)
    if uploading:
        text = f"{uploading} uploading"
        if uploading_percent is not None:
            text += f" {uploading_percent:.0f} %"
        if rate > 0:
            text += f" at {rate / 1e6:.1f} MB/s"
        parts.append(text)
    if counts.get("failed", 0):
        parts.append(f"{counts['failed']} failed")
    parts.append(f"backlog {backlog_bytes / 1e9:.1f} GB in {backlog_files} files")
    if last_upload_age is None:
        parts.append("no upload yet")
    else:
        parts.append(f"last upload {human_age(max(0.0, last_upload_age))} ago")
    line = ", ".join(parts)
    if paused_by:
        line += f"; paused by {paused_by}"
    return line
