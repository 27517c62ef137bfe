"""The daemon: wiring, signals and the main loop. Holds no policy of its own.

Start-up: open state, recover from any crash, reconcile every source (the truth), start
watching (hints). Then, until SIGTERM/SIGINT: beat the heartbeat, re-scan sessions that
events point at, re-check waiting sessions whose quiet period may have passed, rescan
everything every `rescan_interval`, and upload ready sessions one after another in a worker
thread. On stop: finish or abandon the part in flight (it resumes), record the stop.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType

import structlog

from agent.config import Settings
from agent.errors import TransferError
from agent.ingest import Ingest, source_for_path
from agent.state import State
from agent.throttle import Limit, limit_at
from agent.transfer import S3Store, store_from_settings
from agent.watch import Watcher

log = structlog.get_logger("agent.service")

TICK = 0.5
STOP_GRACE = 25.0


class Daemon:
    """The long-running agent."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.stop = stop or threading.Event()
        self._hints: set[tuple[str, str]] = set()
        self._hints_lock = threading.Lock()
        self._wake_uploader = threading.Event()
        self._rescan_now = threading.Event()
        # Set to halt uploads (stop, operator pause, or a paused time window); parts in
        # flight are abandoned and resume from the database later.
        self.halt = threading.Event()
        self.limit: Limit | None = None
        self.paused_by: str | None = None
        self.started_at = clock()

    def _on_path(self, path: Path) -> None:
        found = source_for_path(self.settings, path)
        if found is not None:
            with self._hints_lock:
                self._hints.add((found[0].name, found[1]))

    def _take_hints(self) -> set[tuple[str, str]]:
        with self._hints_lock:
            hints, self._hints = self._hints, set()
        return hints

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT ask for a clean stop."""

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("stop_requested", signal=signal.Signals(signum).name)
            self.stop.set()
            self.halt.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        """Run until asked to stop. Return the process exit code."""
        state = State.open(self.settings.state_db_path)
        store = store_from_settings(
            self.settings.destination,
            self.settings.upload,
            stop=self.halt,
            on_retry=lambda error, attempt, delay: log.warning(
                "s3_retry", error=str(error), attempt=attempt, delay_s=round(delay, 2)
            ),
        )
        ingest = Ingest(self.settings, state, store, clock=self.clock)
        watcher = Watcher(self.settings.sources, self._on_path, self._rescan_now.set)
        try:
            self._beat(state, "starting")
            try:
                ingest.recover()
            except TransferError as error:
                log.error("recovery_failed", error=str(error))
            ingest.reconcile()
            watcher.start()
            self._apply_limits(state, store)
            uploader = threading.Thread(
                target=self._upload_loop, args=(ingest,), name="uploader", daemon=True
            )
            uploader.start()
            log.info(
                "agent_started",
                agent=self.settings.agent.name,
                pid=os.getpid(),
                sources=[s.name for s in self.settings.sources],
            )
            self._main_loop(state, ingest, watcher, store)
            uploader.join(STOP_GRACE)
        finally:
            watcher.stop()
            state.stopped(self.clock())
            state.close()
            log.info("agent_stopped")
        return 0

    def _beat(self, state: State, status: str) -> None:
        state.beat(
            pid=os.getpid(),
            hostname=socket.gethostname(),
            started_at=self.started_at,
            now=self.clock(),
            status=status,
        )

    def _status_line(self, state: State) -> str:
        counts = state.session_counts()
        files, size = state.backlog()
        paused = f"; paused ({self.paused_by})" if self.paused_by else ""
        return (
            f"{counts.get('uploading', 0)} uploading, {counts.get('ready', 0)} ready, "
            f"{counts.get('waiting', 0)} waiting, {counts.get('failed', 0)} failed; "
            f"backlog {files} files {size / 1e9:.2f} GB{paused}"
        )

    def _apply_limits(self, state: State, store: S3Store) -> None:
        """Bring the bandwidth limit and the pause in line with the schedule and the
        operator's `pause`/`resume`."""
        upload = self.settings.upload
        limit = limit_at(upload.windows, upload.max_bandwidth, datetime.now())
        if limit != self.limit:
            store.limiter.set_rate(limit.max_bandwidth)
            log.info(
                "upload_limit",
                max_bandwidth=limit.max_bandwidth,
                paused=limit.paused,
                window=limit.window,
            )
            self.limit = limit
        operator = state.flag("paused")
        paused_by = "operator" if operator is not None else "schedule" if limit.paused else None
        if paused_by != self.paused_by:
            if paused_by:
                log.info("uploads_paused", by=paused_by)
            else:
                log.info("uploads_resumed")
                self._wake_uploader.set()
            self.paused_by = paused_by
        if paused_by or self.stop.is_set():
            self.halt.set()
        else:
            self.halt.clear()

    def _serve_requests(self, state: State) -> None:
        for request_id, command, _argument in state.pending_requests():
            if command == "rescan":
                self._rescan_now.set()
                result = "rescanning"
            else:
                result = f"unknown command {command!r}"
            log.info("control_request", command=command, result=result)
            state.request_done(request_id, result, self.clock())

    def _main_loop(self, state: State, ingest: Ingest, watcher: Watcher, store: S3Store) -> None:
        next_beat = 0.0
        next_rescan = self.clock() + self.settings.agent.rescan_interval
        watcher_died = False
        while not self.stop.is_set():
            now = self.clock()
            self._apply_limits(state, store)
            self._serve_requests(state)
            if now >= next_beat:
                self._beat(state, self._status_line(state))
                next_beat = now + self.settings.agent.heartbeat_interval
            for source_name, rel_path in self._take_hints():
                ingest.observe(self.settings.source(source_name), rel_path)
            if not watcher.healthy() and not watcher_died:
                watcher_died = True
                log.error("watcher_died", hint="rescanning every rescan_interval; restart me")
                next_rescan = min(next_rescan, now)
            if self._rescan_now.is_set():
                self._rescan_now.clear()
                next_rescan = now
            if now >= next_rescan:
                ingest.reconcile()
                next_rescan = now + self.settings.agent.rescan_interval
            ingest.recheck_waiting()
            if ingest.due_sessions():
                self._wake_uploader.set()
            self.stop.wait(TICK)
        self.halt.set()
        self._wake_uploader.set()

    def _upload_loop(self, ingest: Ingest) -> None:
        while not self.stop.is_set():
            self._wake_uploader.wait(TICK * 4)
            self._wake_uploader.clear()
            for record in ingest.due_sessions():
                if self.stop.is_set():
                    return
                if self.halt.is_set():
                    break
                try:
                    ingest.upload(record)
                except Exception:
                    log.exception("upload_loop_error", session=record.id)
            for record in ingest.growing_sessions():
                if self.stop.is_set() or self.halt.is_set():
                    break
                try:
                    ingest.upload_growing(record)
                except Exception:
                    log.exception("upload_loop_error", session=record.id)
