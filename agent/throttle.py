"""Bandwidth limiting: one token bucket shared by every upload worker, and the time windows
(pure) that say which limit is in force."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime


class Interrupted(Exception):  # noqa: N818 - a signal, not a failure
    """Raised inside a transfer when the agent is asked to stop."""


class TokenBucket:
    """Allows `rate` bytes per second on average, with bursts up to `burst` bytes.

    A rate of 0 means unlimited. The clock and sleep are passed in so tests can drive time.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 4, 64 * 1024)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()
        # Bytes let through so far, for the daemon's rate and liveness figures. Updated
        # without the lock when unlimited: a lost increment only blurs a statistic.
        self.taken = 0

    def set_rate(self, rate: float) -> None:
        """Change the rate (e.g. when a time window starts)."""
        with self._lock:
            # Settle the time that passed at the old rate first: debt already waited off
            # must not be charged again at the new one.
            now = self._clock()
            if self.rate > 0:
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            else:
                # Nothing was owed while unlimited: debt from before it is forgiven.
                self._tokens = max(self._tokens, 0.0)
            self._stamp = now
            self.rate = rate
            self.burst = max(rate / 4, 64 * 1024)
            self._tokens = min(self._tokens, self.burst)

    def take(self, amount: int, stop: threading.Event | None = None) -> None:
        """Block until `amount` bytes may be sent. Raise Interrupted if `stop` is set."""
        self.taken += max(amount, 0)
        if self.rate <= 0 or amount <= 0:
            return
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            # Go into debt: the caller sends now and later callers wait it off.
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        while wait > 0:
            if stop is not None and stop.is_set():
                raise Interrupted()
            step = min(wait, 0.25)
            self._sleep(step)
            wait -= step


class ThrottledBody:
    """A seekable read-only body over bytes that spends bucket tokens as it is read.

    botocore may read a body more than once (to sign it, then to send it); only bytes past
    the furthest point read so far cost tokens, so each byte is paid for once.
    """

    def __init__(
        self,
        data: bytes,
        bucket: TokenBucket,
        stop: threading.Event | None = None,
        chunk: int = 64 * 1024,
    ) -> None:
        self._data = memoryview(data)
        self._bucket = bucket
        self._stop = stop
        self._chunk = chunk
        self._position = 0
        self._paid = 0
        self._abandoned = False

    def __len__(self) -> int:
        return len(self._data)

    def read(self, size: int = -1) -> bytes:
        """Return up to `size` bytes (bounded by the chunk size), waiting for tokens."""
        if self._abandoned or (self._stop is not None and self._stop.is_set()):
            raise Interrupted()
        if size is None or size < 0:
            size = len(self._data) - self._position
        elif self._bucket.rate > 0:
            size = min(size, self._chunk)
        end = min(len(self._data), self._position + size)
        if end > self._paid:
            self._bucket.take(end - self._paid, self._stop)
            self._paid = end
        block = bytes(self._data[self._position : end])
        self._position = end
        return block

    def readinto(self, buffer: memoryview | bytearray) -> int:
        """Fill `buffer` as `read` would; awscrt's signer reads this way. An exception raised
        inside awscrt's callback is printed as a raw traceback on stderr, so a stop ends the
        body here as if it were complete (0 bytes) and abandons it: every later read raises
        Interrupted, and the send that follows the signing is given up in Python."""
        try:
            data = self.read(len(buffer))
        except Interrupted:
            self._abandoned = True
            return 0
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move the read position, like a file."""
        base = {0: 0, 1: self._position, 2: len(self._data)}[whence]
        self._position = max(0, min(len(self._data), base + offset))
        return self._position

    def tell(self) -> int:
        """The read position."""
        return self._position


DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Window:
    """A daily time window with its own bandwidth limit (0 = unlimited) or a pause.

    `start` and `end` are minutes after midnight, local time; a window whose end is not
    after its start runs past midnight. `days` are the days on which it starts
    (0 = Monday)."""

    start: int
    end: int
    max_bandwidth: int
    pause: bool = False
    days: frozenset[int] = frozenset(range(7))

    def contains(self, weekday: int, minute: int) -> bool:
        """True if the moment (weekday 0 = Monday, minute of the day) falls inside."""
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        return (weekday in self.days and minute >= self.start) or (
            (weekday - 1) % 7 in self.days and minute < self.end
        )


@dataclass(frozen=True)
class Limit:
    """The upload limit in force: bytes per second (0 = unlimited), or paused."""

    max_bandwidth: int
    paused: bool
    window: int | None  # index of the window in force, None outside every window

    def paused_by(self, operator_paused: bool) -> str | None:
        """Who holds uploads back: the operator's `pause` first, then the schedule, or None."""
        return "operator" if operator_paused else "schedule" if self.paused else None


def limit_at(windows: tuple[Window, ...], default: int, moment: datetime) -> Limit:
    """Given the configured windows, the limit outside them and a local time, return the
    limit in force. The first window that contains the moment wins."""
    minute = moment.hour * 60 + moment.minute
    for index, window in enumerate(windows):
        if window.contains(moment.weekday(), minute):
            return Limit(window.max_bandwidth, window.pause, index)
    return Limit(default, False, None)


def parse_clock(text: str) -> int:
    """ "HH:MM" → minutes after midnight. Raise ValueError otherwise."""
    parts = text.split(":")
    if len(parts) == 2 and all(part.isdigit() for part in parts):
        hours, minutes = int(parts[0]), int(parts[1])
        if 0 <= hours <= 24 and 0 <= minutes < 60 and hours * 60 + minutes <= 1440:
            return hours * 60 + minutes
    raise ValueError(f'{text!r} is not a time of day; use "HH:MM", e.g. "07:30"')
