"""Filesystem events (watchdog): hints that a session directory changed.

Events are never the truth: the service's reconcile scan alone finds everything. Here we
only turn events into "session X may have changed" hints, and fall back to scanning, loudly,
when inotify cannot be used (watch limit reached, network filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyEmitter
from watchdog.observers.inotify_c import InotifyEvent, InotifyFD
from watchdog.observers.polling import PollingObserver

from agent.config import SourceSettings

log = structlog.get_logger("agent.watch")

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


class OverflowAwareReader(InotifyFD):
    """watchdog's inotify reader, which also calls `on_overflow` when the kernel's event
    queue overflowed. watchdog then rebuilds its watches but hands handlers no event, so
    without this the lost events would wait for the next reconcile."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__()
        self._on_overflow = on_overflow

    def handle_event(self, event: InotifyEvent) -> None:
        """watchdog's handling of one kernel event, then the callback if it is an overflow."""
        super().handle_event(event)
        if event.is_queue_overflow:
            # Called once watchdog has re-added its watches: every later change raises an
            # event, and the rescan the callback asks for finds every earlier one.
            self._on_overflow()


class OverflowAwareObserver(BaseObserver):
    """watchdog's InotifyObserver, reading through an `OverflowAwareReader`."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        self.reader = OverflowAwareReader(on_overflow)
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
    """Watches every source; calls `on_path` (from watchdog's threads) for each path touched."""

    def __init__(
        self,
        sources: tuple[SourceSettings, ...],
        on_path: Callable[[Path], None],
        on_overflow: Callable[[], None] = lambda: None,
    ) -> None:
        self.sources = sources
        self.on_path = on_path
        self.observers: list[BaseObserver] = []
        self.modes: dict[str, str] = {}
        self.overflows = 0
        self._on_overflow = on_overflow
        self._lock = threading.Lock()

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
        self._on_overflow()

    def start(self) -> None:
        """Start observers; a source whose inotify watch fails falls back to polling."""
        handler = _Handler(self.on_path)
        for source in self.sources:
            mode = choose_mode(source)
            if mode == "off":
                self.modes[source.name] = "off"
                continue
            if mode == "inotify":
                started: BaseObserver | None = None
                try:
                    started = OverflowAwareObserver(self._overflowed)
                    observer: BaseObserver = started
                    observer.schedule(handler, str(source.path), recursive=True)
                    observer.start()
                except OSError as error:
                    # Give back the inotify instance and the watches it did add: they count
                    # against the same limits as every other source's.
                    if started is not None:
                        with contextlib.suppress(Exception):
                            started.stop()
                    if error.errno in (errno.ENOSPC, errno.EMFILE):
                        log.error(
                            "inotify_limit_reached",
                            source=source.name,
                            hint="raise it: sysctl -w fs.inotify.max_user_watches=1048576 "
                            "(and fs.inotify.max_user_instances); polling meanwhile",
                        )
                    else:
                        log.error("inotify_failed", source=source.name, error=str(error))
                    mode = "poll"
                else:
                    self.observers.append(observer)
            if mode == "poll":
                observer = PollingObserver(timeout=source.poll_interval)
                observer.schedule(handler, str(source.path), recursive=True)
                observer.start()
                self.observers.append(observer)
            self.modes[source.name] = mode
            log.info("watching", source=source.name, path=str(source.path), mode=mode)

    def healthy(self) -> bool:
        """True while every observer thread is alive."""
        return all(observer.is_alive() for observer in self.observers)

    def stop(self) -> None:
        """Stop every observer and wait for its thread."""
        for observer in self.observers:
            observer.stop()
        for observer in self.observers:
            observer.join(timeout=5)
        self.observers.clear()
