"""Filesystem events (watchdog): hints that a session directory changed.

Events are never the truth: the service's reconcile scan alone finds everything. Here we
only turn events into "session X may have changed" hints, and poll instead, loudly, where
inotify cannot be used: on a network filesystem, or once the watch limit is reached, whether
at start or later for a new directory (then a rescan covers the switch).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyEmitter
from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchCallback,
    WatchDescriptor,
)
from watchdog.observers.polling import PollingObserver

from agent.config import SourceSettings

log = structlog.get_logger("agent.watch")

# watchdog warns on stderr, outside the structured log, when a directory's watch is added a
# second time with the same callback (a directory created and moved quickly, a rebuild after
# an overflow): the callback is the same one, replaced by itself, and nothing is wrong.
warnings.filterwarnings(
    "ignore", message=r"Callback with id .* already exists", category=RuntimeWarning
)

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "fuse.sshfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "lustre",
        "beegfs",
        "gpfs",
        "davfs",
        "fuse.rclone",
        "fuse.s3fs",
    }
)


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding `path`, from /proc/self/mounts (None if unknown)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            entries = [line.split() for line in mounts]
    except OSError:
        return None
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for entry in entries:
        if len(entry) < 3:
            continue
        mount_point = entry[1].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) > best[0]):
            best = (len(mount_point), entry[2])
    return best[1] if best else None


def choose_mode(source: SourceSettings) -> str:
    """inotify, poll or off for a source: its `watch` setting, or by filesystem type."""
    if source.watch != "auto":
        return source.watch
    return "poll" if filesystem_type(source.path) in NETWORK_FILESYSTEMS else "inotify"


# inotify_add_watch and inotify_init fail with these when the per-user watch or instance
# limit (or the process's descriptor limit) is reached.
LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE})


def limit_hint(error: OSError, poll_interval: float) -> str:
    """Given the error inotify failed with, the sysctl to raise and what is done instead."""
    if error.errno == errno.EMFILE:
        raise_what = (
            "raise fs.inotify.max_user_instances (sysctl -w fs.inotify.max_user_instances=1024) "
            "or the open-file limit (LimitNOFILE=)"
        )
    else:
        raise_what = (
            "raise it: sysctl -w fs.inotify.max_user_watches=1048576, kept in "
            "/etc/sysctl.d/ (agentctl doctor counts what this machine needs)"
        )
    return f"{raise_what}; polling every {poll_interval:g}s meanwhile"


class OverflowAwareReader(InotifyFD):
    """watchdog's inotify reader, which also calls `on_overflow` when the kernel's event
    queue overflowed, and `on_limit` when a watch cannot be added for lack of watches.

    watchdog rebuilds its watches after an overflow but hands handlers no event, and it
    answers a watch it cannot add below the root (a new directory, a rebuild) with a log
    line in its own thread: without these callbacks the lost events, and every later change
    in the unwatched directories, would wait for the next reconcile."""

    def __init__(
        self,
        on_overflow: Callable[[], None],
        on_limit: Callable[[bytes, OSError], None] = lambda path, error: None,
    ) -> None:
        super().__init__()
        self._on_overflow = on_overflow
        self._on_limit = on_limit

    def run(self) -> None:
        """watchdog's reading loop, then the inotify descriptor closed if a stop came before
        the loop read anything (a source whose watches ran out at once): watchdog leaves
        that closing to a read that never comes, and the instance would stay open, counted
        against fs.inotify.max_user_instances."""
        try:
            super().run()
        finally:
            with self._lock:
                # Only in that case is a closed reader still marked as reading: every other
                # path closed the descriptor and cleared the mark together.
                if self._closed and self._is_reading:
                    self._is_reading = False
                    self._close_resources()

    def handle_event(self, event: InotifyEvent) -> None:
        """watchdog's handling of one kernel event, then the callback if it is an overflow."""
        super().handle_event(event)
        if event.is_queue_overflow:
            # Called once watchdog has re-added its watches: every later change raises an
            # event, and the rescan the callback asks for finds every earlier one.
            self._on_overflow()

    def add_callback(
        self, path: bytes, mask: Mask, callback: WatchCallback, id_: CallbackId
    ) -> WatchDescriptor:
        """watchdog's adding of one watch; a limit reached is told to `on_limit` before the
        error goes on to watchdog, which raises it only while a watch is being started."""
        try:
            return super().add_callback(path, mask, callback, id_)
        except OSError as error:
            if error.errno in LIMIT_ERRNOS:
                self._on_limit(path, error)
            raise


class OverflowAwareObserver(BaseObserver):
    """watchdog's InotifyObserver, reading through an `OverflowAwareReader`."""

    def __init__(
        self,
        on_overflow: Callable[[], None],
        on_limit: Callable[[bytes, OSError], None] = lambda path, error: None,
    ) -> None:
        self.reader = OverflowAwareReader(on_overflow, on_limit)
        self.reader.start()
        super().__init__(InotifyEmitter, inotify_fd=self.reader)

    def on_thread_stop(self) -> None:
        """Stop the emitters, then the reader."""
        super().on_thread_stop()
        self.reader.stop()
        self.reader.join()


class _Handler(FileSystemEventHandler):
    def __init__(self, on_path: Callable[[Path], None]) -> None:
        self._on_path = on_path

    def on_any_event(self, event: FileSystemEvent) -> None:
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if raw:
                self._on_path(Path(os.fsdecode(raw)))


class Watcher:
    """Watches every source; calls `on_path` (from watchdog's threads) for each path touched,
    and `on_events_lost` when events were lost and only a rescan can find what changed.

    A source whose inotify watches run out, at start or later when a new directory cannot
    be watched, is polled from then on: said once, and shown in `modes`."""

    def __init__(
        self,
        sources: tuple[SourceSettings, ...],
        on_path: Callable[[Path], None],
        on_events_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.sources = sources
        self.on_path = on_path
        self.observers: list[BaseObserver] = []
        self.modes: dict[str, str] = {}
        self.overflows = 0
        self._on_events_lost = on_events_lost
        self._lock = threading.Lock()
        # Guarded by _lock: the running inotify observer of each source, the sources whose
        # watches ran out (said once each), the threads switching one to polling.
        self._inotify: dict[str, BaseObserver] = {}
        self._limited: set[str] = set()
        self._fallbacks: list[threading.Thread] = []
        self._stopping = False

    def _overflowed(self) -> None:
        with self._lock:
            self.overflows += 1
            first = self.overflows == 1
        if first:
            log.error(
                "inotify_queue_overflow",
                hint="events were lost; rescanning now. Raise the queue: "
                "sysctl -w fs.inotify.max_queued_events=262144",
            )
        else:
            log.debug("inotify_queue_overflow", count=self.overflows)
        self._on_events_lost()

    def start(self) -> None:
        """Start observers; a source whose inotify cannot watch it all polls instead."""
        for source in self.sources:
            mode = choose_mode(source)
            if mode == "inotify" and not self._start_inotify(source):
                mode = "poll"
            if mode == "poll":
                observer = self._polling_observer(source)
                with self._lock:
                    self.observers.append(observer)
            with self._lock:
                self.modes[source.name] = mode
            log.info("watching", source=source.name, path=str(source.path), mode=mode)

    def _polling_observer(self, source: SourceSettings) -> BaseObserver:
        """A started polling observer for `source`; its first listing is taken before this
        returns, so what changes later is reported."""
        observer = PollingObserver(timeout=source.poll_interval)
        observer.schedule(_Handler(self.on_path), str(source.path), recursive=True)
        observer.start()
        return observer

    def _start_inotify(self, source: SourceSettings) -> bool:
        """Start watching `source` with inotify. False if it cannot watch the whole tree
        (then nothing of it is left running and the reason was logged)."""
        observer: BaseObserver | None = None
        try:
            observer = OverflowAwareObserver(
                self._overflowed, lambda path, error: self._limit_reached(source, path, error)
            )
            observer.schedule(_Handler(self.on_path), str(source.path), recursive=True)
            observer.start()
        except OSError as error:
            # Give back the inotify instance and the watches it did add: they count against
            # the same limits as every other source's.
            if observer is not None:
                with contextlib.suppress(Exception):
                    observer.stop()
            if error.errno in LIMIT_ERRNOS:
                self._say_limit(source, error)
            else:
                log.error("inotify_failed", source=source.name, error=str(error))
            return False
        with self._lock:
            # A watch that failed while the tree was being watched but that watchdog did not
            # raise (it carries on with a subtree unwatched) was heard by the reader.
            complete = source.name not in self._limited
            if complete:
                self._inotify[source.name] = observer
                self.observers.append(observer)
        if not complete:
            observer.stop()
            observer.join(timeout=5)
        return complete

    def _say_limit(self, source: SourceSettings, error: OSError, path: bytes = b"") -> bool:
        """Log, once per source, that its inotify ran out and how to raise the limit.
        Return True the first time."""
        with self._lock:
            if source.name in self._limited:
                return False
            self._limited.add(source.name)
        log.error(
            "inotify_limit_reached",
            source=source.name,
            error=str(error),
            path=os.fsdecode(path) if path else str(source.path),
            hint=limit_hint(error, source.poll_interval),
        )
        return True

    def _limit_reached(self, source: SourceSettings, path: bytes, error: OSError) -> None:
        """Heard from `source`'s inotify reader: a watch could not be added. While starting,
        `_start_inotify` falls back itself; once running (a new directory, in watchdog's
        thread) the directory is reported at once and a thread switches the source to
        polling, since nothing written inside it would raise an event."""
        if not self._say_limit(source, error, path):
            return
        with self._lock:
            running = self._inotify.get(source.name)
            if running is None or self._stopping:
                return
            fallback = threading.Thread(
                target=self._fall_back,
                args=(source, running),
                name=f"watch-fallback-{source.name}",
                daemon=True,
            )
            # Started under the lock, so that `stop` joins only started threads. The switch
            # is not done here: this is watchdog's reader, holding its locks, and stopping
            # its observer waits for them.
            self._fallbacks.append(fallback)
            fallback.start()
        self.on_path(Path(os.fsdecode(path)))

    def _fall_back(self, source: SourceSettings, running: BaseObserver) -> None:
        """Replace `source`'s inotify observer by a polling one, then ask for a rescan: it
        finds what changed between the failed watch and the polling's first listing."""
        try:
            polling = self._polling_observer(source)
        except OSError as error:
            log.error("poll_failed", source=source.name, error=str(error))
            self._on_events_lost()
            return
        with self._lock:
            stopping = self._stopping
            if not stopping:
                self.observers[self.observers.index(running)] = polling
                del self._inotify[source.name]
                self.modes[source.name] = "poll"
        if stopping:  # the watcher is being stopped: it stops `running`, not this one
            polling.stop()
            polling.join(timeout=5)
            return
        # Stopping frees the watches this source held, for the other sources.
        running.stop()
        running.join(timeout=5)
        log.info("watching", source=source.name, path=str(source.path), mode="poll")
        self._on_events_lost()

    def healthy(self) -> bool:
        """True while every observer thread is alive."""
        with self._lock:
            observers = list(self.observers)
        return all(observer.is_alive() for observer in observers)

    def stop(self) -> None:
        """Stop every observer and wait for its thread."""
        with self._lock:
            self._stopping = True
            fallbacks, self._fallbacks = self._fallbacks, []
        # A switch under way finishes first, so its observers are stopped too.
        for fallback in fallbacks:
            fallback.join(timeout=10)
        with self._lock:
            observers, self.observers = self.observers, []
            self._inotify.clear()
        for observer in observers:
            observer.stop()
        for observer in observers:
            observer.join(timeout=5)
