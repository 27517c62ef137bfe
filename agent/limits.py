"""The limits in force, applied each tick of the daemon's loop: the bandwidth of the time
window (`[[upload.window]]`) and the pause (the operator's, or a paused window)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

import structlog

from agent.config import UploadSettings
from agent.report import PAUSED_FLAG, RESUMED_FLAG
from agent.state import State
from agent.throttle import Limit, TokenBucket, limit_at

log = structlog.get_logger("agent.limits")


class Limits:
    """Keeps the shared token bucket's rate and the halt event in line with the schedule and
    the operator's `pause`/`resume`; logs each change once."""

    def __init__(self, upload: UploadSettings, *, clock: Callable[[], float]) -> None:
        self.upload = upload
        self.clock = clock
        self.limit: Limit | None = None
        self.paused_by: str | None = None
        self._flagged: bool | None = None

    def apply(
        self,
        state: State,
        bucket: TokenBucket,
        *,
        stop: threading.Event,
        halt: threading.Event,
        on_resume: Callable[[], None],
        read_flag: bool = True,
    ) -> None:
        """Set the rate for the window in force; set `halt` while paused or stopping and
        clear it otherwise; call `on_resume` when a pause ends. The pause flag (`agentctl
        pause`) is read again only with `read_flag` (the caller knows when another process
        wrote); otherwise the last value read stands."""
        limit = limit_at(self.upload.windows, self.upload.max_bandwidth, datetime.now())
        if limit != self.limit:
            bucket.set_rate(limit.max_bandwidth)
            log.info(
                "upload_limit",
                max_bandwidth=limit.max_bandwidth,
                paused=limit.paused,
                window=limit.window,
            )
            self.limit = limit
        if read_flag or self._flagged is None:
            self._flagged = state.control.flag(PAUSED_FLAG) is not None
        paused_by = limit.paused_by(self._flagged)
        if paused_by != self.paused_by:
            if paused_by:
                log.info("uploads_paused", by=paused_by)
            else:
                log.info("uploads_resumed")
                if self.paused_by is not None:  # not at start-up: a pause really ended
                    state.control.set_flag(RESUMED_FLAG, str(self.clock()), self.clock())
                on_resume()
            self.paused_by = paused_by
        if paused_by or stop.is_set():
            halt.set()
        else:
            halt.clear()
