"""What the daemon tells about itself: the send rate, the heartbeat row, the STATUS= line,
and the watchdog guard that pings systemd only while both the loop and the uploader live."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import structlog

from agent import health
from agent.notify import Notifier, Pulse
from agent.state import State

log = structlog.get_logger("agent.vitals")

# The rate in STATUS= and the heartbeat is averaged over this many seconds.
RATE_WINDOW = 10.0


class Vitals:
    """The rate meter (over bytes through the shared token bucket) and the heartbeat."""

    def __init__(self, *, clock: Callable[[], float], started_at: float) -> None:
        self.clock = clock
        self.started_at = started_at
        self.rate = 0.0
        self._samples: list[tuple[float, int]] = []

    def measure(self, taken: int, now: float | None = None) -> float:
        """Record the bucket's byte count; return bytes per second over RATE_WINDOW."""
        now = time.monotonic() if now is None else now
        self._samples.append((now, taken))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.pop(0)
        first_at, first_bytes = self._samples[0]
        self.rate = (taken - first_bytes) / max(now - first_at, 1e-6)
        return self.rate

    def beat(self, state: State, status: str) -> None:
        """Write the heartbeat: alive, what it says, how fast, when S3 last acknowledged."""
        state.control.beat(
            pid=os.getpid(),
            hostname=socket.gethostname(),
            started_at=self.started_at,
            now=self.clock(),
            status=status,
            rate=self.rate,
            progress_at=state.ledger.acknowledged_at,
        )

    def status_line(self, state: State, taken: int, paused_by: str | None) -> str:
        """The one line for STATUS= and the heartbeat."""
        done, total = state.queries.upload_progress()
        last = state.queries.last_upload_at()
        files, size = state.queries.backlog()
        return health.status_line(
            state.queries.session_counts(),
            files,
            size,
            uploading_percent=100 * done / total if total else None,
            rate=self.measure(taken),
            last_upload_age=None if last is None else self.clock() - last,
            paused_by=paused_by,
        )


class WatchdogGuard:
    """Pings systemd's watchdog every half of its interval, unless the uploader thread died
    or has been busy without a pulse for longer than `stall_limit` seconds."""

    def __init__(self, notifier: Notifier, pulse: Pulse, stall_limit: float) -> None:
        self.notifier = notifier
        self.pulse = pulse
        self.stall_limit = stall_limit

    def ping(self, now: float, next_ping: float, uploader_died: bool) -> float:
        """Ping if it is time and the uploader is well; return when the next ping is due."""
        interval = self.notifier.watchdog_interval
        if interval is None or now < next_ping:
            return next_ping
        if uploader_died:
            log.critical(
                "uploader_died",
                error="the upload thread has ended: watchdog pings stopped, systemd restarts "
                "the service",
            )
            return now + interval
        stalled = self.pulse.stalled_for()
        if stalled > self.stall_limit:
            log.error(
                "uploader_stalled",
                error="no upload progress: watchdog pings stopped, systemd restarts the service",
                stalled_s=round(stalled),
                limit_s=round(self.stall_limit),
            )
            return now + interval
        self.notifier.watchdog()
        return now + interval
