"""Progress of `agentctl sync`: how much of what was due is done, drawn as a bar on a
terminal or logged as one line now and then elsewhere.

Nothing here uploads or counts bytes itself. A `Measure` reads counters that exist anyway
(the state database's backlog, the bandwidth limiter's byte count); `SyncProgress` polls it
on a thread of its own and hands each `Snapshot` to a view: `BarView` (tqdm, on a terminal)
or `LineView` (a `sync_progress` log event every 30 s). The arithmetic (capping, rate, ETA,
text) is pure and takes the time as an argument.
"""

from __future__ import annotations

import collections
import io
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TextIO

import structlog

from agent.logs import plain
from agent.units import human_bytes, human_rate

log = structlog.get_logger("agent.progress")

# Redraws per second at most: enough to look live, too few to cost the rig's CPU anything.
BAR_INTERVAL = 0.2
# Without a terminal, one line this often, and none at all for a shorter run.
LINE_INTERVAL = 30.0
# The rate is averaged over this many seconds: steady enough for an ETA, quick to follow a
# change of bandwidth window.
RATE_WINDOW = 10.0
# No rate (and no ETA) is claimed before this much time has been measured.
RATE_MINIMUM_SPAN = 1.0
# Terminal width when the terminal does not say (a pseudo-terminal nobody sized).
DEFAULT_COLUMNS = 80
BAR_FORMAT = "{percentage:3.0f}%|{bar}| {desc}"


# --- pure parts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    """What a sync has to do, known before it starts: the pending files and bytes of its
    due sessions."""

    files: int
    bytes: int


@dataclass(frozen=True)
class Snapshot:
    """Progress at one moment. `rate` is bytes per second lately, None until measured."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    rate: float | None = None
    session: str | None = None

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, or None when the rate is unknown or zero."""
        return eta_seconds(self.bytes_total - self.bytes_done, self.rate)


def capped(done: int, total: int, shown: int = 0) -> int:
    """Given a raw count of work done, the total and the count shown last, return the count
    to show: never above the total (bytes sent again on a retry are not progress) and never
    below what was shown already (a bar does not go backwards)."""
    return max(shown, min(max(done, 0), total))


def eta_seconds(remaining: int, rate: float | None) -> float | None:
    """Seconds to send `remaining` bytes at `rate` bytes per second; 0 when nothing is left;
    None when the rate is unknown or zero."""
    if remaining <= 0:
        return 0.0
    if rate is None or rate <= 0:
        return None
    return remaining / rate


def upload_estimate(size: int, bandwidth: int) -> float | None:
    """Seconds to send `size` bytes at a bandwidth limit of `bandwidth` bytes per second, a
    lower bound (the network may be slower than the limit). None when unlimited (0): there is
    no honest number to give then."""
    if bandwidth <= 0:
        return None
    return size / bandwidth


def format_duration(seconds: float) -> str:
    """42.3 → '42s', 192 → '3m12s', 7500 → '2h05m'."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def progress_text(snapshot: Snapshot) -> str:
    """'12/40 files, 1.2 GiB/3.4 GiB, 38.2 MB/s, ETA 1m05s, session ephys/mouse1/s1'.

    The session id comes from a directory name: it is shown as plain text, so a control
    character in it cannot reach the terminal."""
    rate = human_rate(snapshot.rate) if snapshot.rate is not None else "? MB/s"
    eta = snapshot.eta
    parts = [
        f"{snapshot.files_done}/{snapshot.files_total} files",
        f"{human_bytes(snapshot.bytes_done)}/{human_bytes(snapshot.bytes_total)}",
        rate,
        f"ETA {format_duration(eta)}" if eta is not None else "ETA ?",
    ]
    if snapshot.session is not None:
        parts.append(f"session {plain(snapshot.session)}")
    return ", ".join(parts)


class RateMeter:
    """Bytes per second over a sliding window of (time, bytes done) samples.

    The newest sample older than the window is kept as the anchor, so samples further apart
    than the window (a line every 30 s) still give the rate between them."""

    def __init__(
        self, window: float = RATE_WINDOW, minimum_span: float = RATE_MINIMUM_SPAN
    ) -> None:
        self.window = window
        self.minimum_span = minimum_span
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, done: int) -> float | None:
        """Record that `done` bytes were done at `now`; return the rate, or None while less
        than `minimum_span` seconds have been measured."""
        self._samples.append((now, done))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()
        first_at, first_done = self._samples[0]
        span = now - first_at
        if span < self.minimum_span:
            return None
        return max(done - first_done, 0) / span


class Measure:
    """Work done since it was created, read from counters that exist anyway.

    `backlog` returns (files, bytes) not yet in S3 (the state database's backlog): it drops
    as each file completes, so files done are exact. `sent` returns the bytes handed to the
    network so far (the bandwidth limiter's count): it moves within a large file, part by
    part, but also counts retries and manifests, so it only ever raises the bytes done above
    what finished files prove, and `SyncProgress` caps the result at the total."""

    def __init__(self, backlog: Callable[[], tuple[int, int]], sent: Callable[[], int]) -> None:
        self._backlog = backlog
        self._sent = sent
        self._files_before, self._bytes_before = backlog()
        self._sent_before = sent()

    def __call__(self) -> tuple[int, int]:
        """(files done, bytes done) since creation, uncapped."""
        files_left, bytes_left = self._backlog()
        finished_bytes = self._bytes_before - bytes_left
        return self._files_before - files_left, max(
            finished_bytes, self._sent() - self._sent_before
        )


# --- views --------------------------------------------------------------------------------


class View(Protocol):
    """Shows snapshots: `show` every `interval` seconds while a sync runs, `close` once at
    the end (with the final snapshot, or None after an error)."""

    interval: float

    def show(self, snapshot: Snapshot) -> None:
        """Show one snapshot."""

    def close(self, snapshot: Snapshot | None) -> None:
        """Show the final snapshot if there is one, and stop showing."""


def terminal_columns(stream: TextIO) -> int:
    """The width of the terminal behind `stream`, or DEFAULT_COLUMNS if it does not say."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, io.UnsupportedOperation):
        return DEFAULT_COLUMNS
    return columns or DEFAULT_COLUMNS


class BarView:
    """A tqdm bar on a terminal: bytes as the bar, the rest as text beside it. The bar
    appears at the first redraw (a run shorter than that shows none) and stays, in its final
    state, when closed, with the cursor on a fresh line.

    tqdm is imported only here, when a bar is drawn: the daemon and non-terminal runs never
    pay for it."""

    interval = BAR_INTERVAL

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._bar: Any = None
        # Guards the bar's creation against a log line written at that moment.
        self._lock = threading.Lock()

    def _position(self, snapshot: Snapshot) -> int:
        # Bytes drive the bar; a sync of nothing but empty files counts files instead.
        return snapshot.bytes_done if snapshot.bytes_total else snapshot.files_done

    def _draw(self, snapshot: Snapshot) -> None:
        with self._lock:
            if self._bar is None:
                from tqdm.std import tqdm  # type: ignore[import-untyped]  # noqa: PLC0415

                # tqdm's monitor thread hurries bars that are updated by iteration and
                # outlives them; this one is redrawn by our ticker, so it goes without.
                bar_class = type("UnmonitoredBar", (tqdm,), {"monitor_interval": 0})
                self._bar = bar_class(
                    total=snapshot.bytes_total or snapshot.files_total,
                    initial=self._position(snapshot),
                    desc=progress_text(snapshot),
                    file=self.stream,
                    bar_format=BAR_FORMAT,
                    ncols=terminal_columns(self.stream),
                    leave=True,
                    mininterval=0,
                )
        bar = self._bar
        bar.ncols = terminal_columns(self.stream)
        bar.n = self._position(snapshot)
        bar.set_description_str(progress_text(snapshot), refresh=False)

    def show(self, snapshot: Snapshot) -> None:
        """Draw (or redraw) the bar."""
        self._draw(snapshot)
        self._bar.refresh()

    def close(self, snapshot: Snapshot | None) -> None:
        """Redraw the bar a last time (if it was ever drawn) and end its line."""
        if self._bar is None:
            return
        if snapshot is not None:
            self._draw(snapshot)
        self._bar.close()

    def write_above(self, text: str) -> None:
        """Write `text` (whole lines) to the terminal above the bar: clear the bar, write,
        draw the bar again, under tqdm's lock so a redraw cannot cut in."""
        with self._lock:
            bar = self._bar
            if bar is None:
                self.stream.write(text)
                self.stream.flush()
                return
        with bar.get_lock():
            bar.clear(nolock=True)
            self.stream.write(text)
            self.stream.flush()
            bar.refresh(nolock=True)

    def log_stream(self) -> TextIO:
        """A stream for the logging pipeline that writes above the bar."""
        # TextIOBase gives every method of a text stream; TextIO is only its typing.
        return _AboveBar(self)  # type: ignore[return-value]


class _AboveBar(io.TextIOBase):
    """The terminal as the log pipeline sees it while a bar is drawn: log lines scroll above
    the bar instead of cutting through it. Text is held until its line is complete (`print`
    writes a line's text and its newline separately): a bar redrawn between the two would
    overwrite the text."""

    def __init__(self, view: BarView) -> None:
        super().__init__()
        self._view = view
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            lines, newline, self._partial = (self._partial + text).rpartition("\n")
            if newline:
                self._view.write_above(lines + newline)
        return len(text)

    def flush(self) -> None:
        self._view.stream.flush()

    def isatty(self) -> bool:
        return self._view.stream.isatty()

    def fileno(self) -> int:
        return self._view.stream.fileno()


class LineView:
    """Without a terminal: a `sync_progress` log event every `interval` seconds (the first
    one after `interval`, so a short run logs none). A log event rather than a bare line,
    because stderr there is a stream of JSON lines (or the journal) that must stay one."""

    def __init__(self, interval: float = LINE_INTERVAL) -> None:
        self.interval = interval

    def show(self, snapshot: Snapshot) -> None:
        """Log one progress line."""
        log.info(
            "sync_progress",
            message=f"progress: {progress_text(snapshot)}",
            session=snapshot.session,
            files_done=snapshot.files_done,
            files_total=snapshot.files_total,
            bytes_done=snapshot.bytes_done,
            bytes_total=snapshot.bytes_total,
            bytes_per_s=round(snapshot.rate) if snapshot.rate is not None else None,
            eta_s=round(snapshot.eta) if snapshot.eta is not None else None,
        )

    def close(self, snapshot: Snapshot | None) -> None:
        """Nothing to clean up: the summary follows."""


def view_for(stream: TextIO, *, as_json: bool) -> BarView | LineView:
    """A bar when `stream` is a terminal and the output is not JSON; log lines otherwise."""
    if not as_json and stream.isatty():
        return BarView(stream)
    return LineView()


# --- the ticker ---------------------------------------------------------------------------


class SyncProgress:
    """Polls a measure on a thread of its own and shows each snapshot.

    A context manager: leaving it, normally or by an exception (Ctrl-C included), stops and
    joins the thread and closes the view, so no thread outlives it and the terminal is left
    on a fresh line. The caller sets `session` to the session being uploaded."""

    def __init__(
        self,
        totals: Totals,
        measure: Callable[[], tuple[int, int]],
        view: View,
        *,
        clock: Callable[[], float] = time.monotonic,
        rate: RateMeter | None = None,
    ) -> None:
        self.totals = totals
        self.session: str | None = None
        self._measure = measure
        self._view = view
        self._clock = clock
        self._rate = rate or RateMeter()
        self._files = 0
        self._bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    def poll(self) -> Snapshot:
        """Read the measure now; return the snapshot to show (capped, never going back)."""
        files, size = self._measure()
        self._files = capped(files, self.totals.files, self._files)
        self._bytes = capped(size, self.totals.bytes, self._bytes)
        rate = self._rate.add(self._clock(), self._bytes)
        return Snapshot(
            self._files, self.totals.files, self._bytes, self.totals.bytes, rate, self.session
        )

    def _tick(self) -> None:
        try:
            self._view.show(self.poll())
        except Exception as error:
            # Progress is cosmetic: whatever goes wrong showing it must never stop an upload.
            if not self._failed:
                self._failed = True
                log.debug("progress_unavailable", error=f"{type(error).__name__}: {error}")

    def _run(self) -> None:
        while not self._stop.wait(self._view.interval):
            self._tick()

    def __enter__(self) -> SyncProgress:
        # Nothing is done yet: the first rate is measured from here, not from the first poll
        # (which, without a terminal, comes 30 s later).
        self._rate.add(self._clock(), 0)
        self._thread = threading.Thread(target=self._run, name="sync-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        final: Snapshot | None = None
        if kind is None:
            try:
                final = self.poll()
            except Exception:  # as in _tick: the summary matters, not the bar
                final = None
        self._view.close(final)
