"""The daemon's answer to a full or failing state disk: pause, say so once, try again.

Nothing can be recorded while the database's disk refuses writes, so nothing may be sent
(what is sent must be recorded). Exiting would only have systemd start the daemon into the
same error again and again, each start scanning the sources for nothing: the daemon stays
up, keeps systemd's watchdog fed, tries one write every DISK_RETRY seconds, and carries on
by itself once the disk has room again (twice the full mark: room for one heartbeat is not
room for a rescan's writes, and declaring recovery on it would flap).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from agent.errors import StateDiskError
from agent.notify import Notifier
from agent.state import enough_room

log = structlog.get_logger("agent.service")

# While the state disk is full or failing, a write is tried again this often.
DISK_RETRY = 10.0


class DiskPause:
    """Whether uploads wait for the state disk, and the one place that says so."""

    def __init__(self, state_dir: Path, notifier: Notifier, halt: threading.Event) -> None:
        self.state_dir = state_dir
        self.notifier = notifier
        self.halt = halt
        # What is wrong while uploads wait (None when all is well).
        self.trouble: str | None = None
        self._probe_at = 0.0
        self._handed: StateDiskError | None = None

    def hand_over(self, error: StateDiskError) -> None:
        """From the uploader thread: the main loop takes it at its next tick."""
        self._handed = error
        self.halt.set()

    def take_handed(self, now: float) -> None:
        """Enter the pause for an error the uploader handed over, if any."""
        error, self._handed = self._handed, None
        if error is not None:
            self.enter(error, now)

    def enter(self, error: StateDiskError, now: float) -> None:
        """Pause uploads (the halt) until a write succeeds again; said once, loudly."""
        self.halt.set()
        self._probe_at = now + DISK_RETRY
        if self.trouble is None:
            self.trouble = str(error)
            log.critical(
                "state_disk_trouble",
                error=str(error),
                hint=f"uploads paused; the agent tries again every {DISK_RETRY:.0f}s and "
                "resumes by itself",
            )
            self.notifier.status(f"CRITICAL, uploads paused: {error}")

    def recovered(self, now: float, write: Callable[[], None]) -> bool:
        """While in trouble, every DISK_RETRY seconds and only with room enough, try
        `write` (the heartbeat); return True once it succeeds (the pause is over)."""
        if now < self._probe_at:
            return False
        self._probe_at = now + DISK_RETRY
        if not enough_room(self.state_dir):
            return False
        try:
            write()
        except StateDiskError:
            return False
        self.started()
        return True

    def started(self) -> None:
        """A write went through: if uploads were waiting for the disk, they wait no more."""
        if self.trouble is not None:
            log.warning("state_disk_recovered", was=self.trouble)
            self.trouble = None

    def wait_at_start(self, error: StateDiskError, stop: threading.Event) -> bool:
        """Start-up met the disk in trouble: say so (once), tell systemd we are up but
        waiting, keep its watchdog fed; return after DISK_RETRY seconds (True: try the
        start again) or at a stop (False)."""
        if self.trouble is None:
            self.trouble = str(error)
            log.critical(
                "state_disk_trouble",
                error=str(error),
                hint=f"nothing can be recorded, so nothing is uploaded; the agent tries again "
                f"every {DISK_RETRY:.0f}s and carries on by itself",
            )
        self.notifier.ready(f"CRITICAL, waiting for the state disk: {error}")
        deadline = time.monotonic() + DISK_RETRY
        while not stop.is_set() and time.monotonic() < deadline:
            self.notifier.watchdog()
            stop.wait(1.0)
        return not stop.is_set()
