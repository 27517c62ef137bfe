"""Talking to systemd: READY, STATUS, WATCHDOG, STOPPING, RELOADING through sd_notify.

The one owner of the notify socket. Without NOTIFY_SOCKET (not started by systemd as
`Type=notify`), every call does nothing, cheaply.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping

from agent.logs import plain

Send = Callable[[str], object]

# The uploader counts as stalled after this long without progress, on top of twice the S3
# timeouts (a call that could still end on its own is not a stall).
STALL_MARGIN = 10.0


def stall_limit(connect_timeout: float, read_timeout: float) -> float:
    """Given the S3 client's timeouts, return how long the uploader may show no progress
    before the agent stops pinging the watchdog: a request past its timeouts has failed or
    retried (both count as progress), so a longer silence means a hang."""
    return 2 * (connect_timeout + read_timeout) + STALL_MARGIN


class Pulse:
    """Evidence that the uploader is alive: busy since when, and progress seen when.

    Progress is anything that moves: bytes read or sent, a retry, a file or session done.
    `beat` is called from many threads; a plain counter is enough under the GIL.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.count = 0
        self.busy_since: float | None = None
        self._seen_count = 0
        self._seen_at = clock()

    def beat(self) -> None:
        """Something moved."""
        self.count += 1

    def busy(self) -> None:
        """The uploader starts a unit of work."""
        self.busy_since = self._clock()

    def idle(self) -> None:
        """The uploader waits for work; waiting is not a stall."""
        self.busy_since = None
        self.count += 1

    def stalled_for(self) -> float:
        """Seconds the uploader has been busy without any progress (0 when idle)."""
        now = self._clock()
        if self.count != self._seen_count:
            self._seen_count = self.count
            self._seen_at = now
        if self.busy_since is None:
            return 0.0
        return max(0.0, now - max(self.busy_since, self._seen_at))


def _systemd_send() -> Send | None:
    try:
        from systemd import daemon  # noqa: PLC0415 - optional; only needed under systemd
    except ImportError:
        return None
    notify: Send = daemon.notify
    return notify


class Notifier:
    """sd_notify messages for one daemon. `send` replaces systemd-python's `daemon.notify`."""

    def __init__(self, environ: Mapping[str, str] | None = None, send: Send | None = None):
        environ = os.environ if environ is None else environ
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self._send = send if send is not None else (_systemd_send() if self.enabled else None)
        self.missing_library = self.enabled and self._send is None
        self.watchdog_interval = _watchdog_interval(environ)
        self._last_status: str | None = None

    def _notify(self, message: str) -> None:
        if self._send is None:
            return
        # systemd went away (shutdown): nothing to tell it any more. No lock here: this may
        # run while another thread is sending, and sd_notify is one datagram per call.
        with contextlib.suppress(OSError):
            self._send(message)

    def ready(self, status: str) -> None:
        """Start-up is over: recovery and the first reconcile are done."""
        self._last_status = plain(status)
        self._notify(f"READY=1\nSTATUS={self._last_status}")

    def status(self, line: str) -> None:
        """Keep `systemctl status`'s Status: line current (sent only when it changes)."""
        line = plain(line)
        if line != self._last_status:
            self._last_status = line
            self._notify(f"STATUS={line}")

    def watchdog(self) -> None:
        """The main loop and the uploader make progress."""
        self._notify("WATCHDOG=1")

    def stopping(self) -> None:
        """A stop was asked for; systemd waits for the exit."""
        self._notify("STOPPING=1\nSTATUS=stopping: finishing the part in flight")


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC, in seconds, if the watchdog is meant for this process."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        interval = int(usec) / 2 / 1e6
    except ValueError:
        return None
    return interval if interval > 0 else None
