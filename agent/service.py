"""The daemon: wiring, signals, systemd notifications and the main loop. Holds no policy.

Start-up: take the state directory's lock (one daemon per state), open state, recover from
any crash, reconcile every source (the truth), start watching (hints), then tell systemd
READY=1. Until SIGTERM/SIGINT: beat the heartbeat and keep STATUS= current, ping the
watchdog while the loop and the uploader make progress, re-scan sessions that events point
at, re-check waiting sessions whose quiet period may have passed, rescan everything every
`rescan_interval`, and upload ready sessions one after another in a worker thread. SIGHUP
is logged and ignored (settings are read once; restart to apply a changed config). On stop:
STOPPING=1, finish or abandon the part in flight (it resumes), record the stop.

Signal handlers only set flags: logging or talking to systemd from inside a handler could
deadlock on a lock the interrupted code holds.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import structlog

from agent import fleet, lock, logs
from agent.checksums import Tally
from agent.config import Settings, load_settings
from agent.disk_pause import DiskPause
from agent.errors import AgentError, StateDiskError, TransferError
from agent.hooks import Hooks
from agent.ingest import Ingest, log_retry
from agent.limits import Limits
from agent.metrics import Metrics
from agent.notify import Notifier, Pulse, stall_limit
from agent.observe import source_for_path
from agent.report import HOOK_FLAG, status_report
from agent.state import WATCH_MODES_FLAG, SessionRecord, State
from agent.state.rescue import REBUILT_FLAG, open_or_rebuild
from agent.transfer import S3Store, store_from_settings
from agent.upload import UploadOutcome
from agent.vitals import Vitals, WatchdogGuard
from agent.watch import Watcher
from agent.worker import UploadWorker

log = structlog.get_logger("agent.service")

TICK = 0.5
STOP_GRACE = 25.0
# At a stop, hooks still running get this long (systemd stops what is left with the unit).
HOOK_GRACE = 1.0
# Test-only fault switch: with AGENT_TEST_FAULTS=1 in the environment, a file of this name in
# the state directory holding "loop" or "uploader" hangs that part of the daemon (once; the
# file is removed), so tests can watch systemd's watchdog act. Ignored without the variable.
FAULT_FILE = "test-fault-hang"


class Daemon:
    """The long-running agent."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.stop = stop or threading.Event()
        self.notifier = notifier or Notifier()
        self.pulse = Pulse(time.monotonic)
        self.guard = WatchdogGuard(
            self.notifier,
            self.pulse,
            stall_limit(settings.upload.connect_timeout, settings.upload.read_timeout),
        )
        self._hints: set[tuple[str, str]] = set()
        self._hints_lock = threading.Lock()
        self._rescan_now = threading.Event()
        self._reload_asked = threading.Event()
        self._signal: str | None = None
        # Set to halt uploads (stop, operator pause, or a paused time window); parts in
        # flight are abandoned and resume from the database later.
        self.halt = threading.Event()
        self.limits = Limits(settings.upload, clock=clock)
        self.vitals = Vitals(clock=clock, started_at=clock())
        self.worker: UploadWorker | None = None
        # Uploads waiting for a full or failing state disk.
        self.disk = DiskPause(settings.agent.state_dir, self.notifier, self.halt)
        self._published_modes: str | None = None

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
        """SIGTERM and SIGINT ask for a clean stop; SIGHUP asks for a reload (refused, logged).

        The handlers only set flags; the main loop logs and notifies within one tick.
        """

        def stop(signum: int, frame: FrameType | None) -> None:
            self._signal = signal.Signals(signum).name
            self.stop.set()
            self.halt.set()

        def hang_up(signum: int, frame: FrameType | None) -> None:
            self._reload_asked.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hang_up)

    def run(self) -> int:
        """Run until asked to stop. Return the process exit code.

        Raise lock.AlreadyRunningError if another agent holds this state directory.
        """
        held = lock.acquire(self.settings.agent.state_dir, "daemon")
        try:
            while True:
                try:
                    return self._run()
                except StateDiskError as error:
                    # Exiting would only have systemd start us into the same error, again
                    # and again: wait here, said once, and start again when the disk allows.
                    if not self.disk.wait_at_start(error, self.stop):
                        return 0
        finally:
            held.release()

    def _run(self) -> int:
        if self.notifier.missing_library:
            log.warning(
                "sd_notify_unavailable",
                error="systemd-python is not installed; systemd will not hear READY or "
                "WATCHDOG (install python3-systemd or the systemd-python package)",
            )
        state, damage, moved_to = open_or_rebuild(self.settings.state_db_path, self.clock())
        if damage is not None:
            log.critical(
                "state_database_rebuilt",
                error=str(damage),
                moved_to=str(moved_to),
                hint="the damaged file was set aside, not deleted; the agent finds its sessions "
                "again from the sources and sends nothing S3 already holds",
            )
        previous = state.control.heartbeat()
        # When S3 last acknowledged anything survives a restart: a daemon restarted by the
        # watchdog again and again must still show as stalled.
        state.ledger.acknowledged_at = previous.progress_at if previous else None
        store = store_from_settings(
            self.settings.destination,
            self.settings.upload,
            stop=self.halt,
            on_retry=self._on_retry,
        )
        self.metrics = Metrics(
            self.settings,
            lambda: status_report(self.settings, state, self.clock()),
            lambda: store.limiter.taken,
        )
        self.hooks = Hooks(
            self.settings, lambda failure: state.control.set_flag(HOOK_FLAG, failure, self.clock())
        )
        ingest = Ingest(self.settings, state, store, clock=self.clock, on_outcome=self._on_outcome)
        watcher = Watcher(self.settings.sources, self._on_path, self._rescan_now.set)
        beater: fleet.Beater | None = None
        try:
            self.vitals.beat(state, "starting: recovering and reconciling")
            self.disk.started()
            # The fleet hears of the start at once, not after a long first scan.
            beater = self._start_beater(state)
            self.notifier.status("starting: recovering unfinished uploads, scanning sources")
            # A stop asked for during a long first reconcile ends it early.
            ingest.start_up(self.stop.is_set)
            watcher.start()
            worker = UploadWorker(
                ingest,
                stop=self.stop,
                halt=self.halt,
                pulse=self.pulse,
                on_disk_trouble=self.disk.hand_over,
            )
            self.worker = worker
            self._apply_limits(state, store, read_flag=True)
            line = self.vitals.status_line(state, store.limiter.taken, self.limits.paused_by)
            # The last write before the uploader starts: a full disk here starts over
            # (run()) with no uploader thread left behind.
            self.vitals.beat(state, line)
            worker.start()
            self.notifier.ready(line)
            log.info(
                "agent_started",
                agent=self.settings.agent.name,
                pid=os.getpid(),
                sources=[s.name for s in self.settings.sources],
                watchdog_s=self.notifier.watchdog_interval,
            )
            self.metrics.start()
            self._main_loop(state, ingest, watcher, store)
            self.notifier.stopping()
            log.info("stop_requested", signal=self._signal)
            stopped_beater, beater = beater, None
            if stopped_beater is not None:
                stopped_beater.stop()
            worker.join(STOP_GRACE)
            # Only a clean stop is recorded as one: after a crash, status must say so.
            state.control.stopped(self.clock())
            if stopped_beater is not None:
                stopped_beater.last_beat()  # the fleet sees a stop, not a silence
            self.metrics.stop()
            self.hooks.wait(HOOK_GRACE)
        except StateDiskError as error:
            if self.stop.is_set():
                log.error("stopped_with_state_disk_trouble", error=str(error))
                return 1
            raise  # before the main loop (which waits itself): run() waits and starts again
        except Exception:
            log.critical("daemon_crashed", exc_info=True)
            return 1
        finally:
            if beater is not None:
                beater.stop()
            self.halt.set()
            watcher.stop()
            state.close()
            logs.flush_repeats(final=True)
            log.info("agent_stopped")
        return 0

    def _start_beater(self, state: State) -> fleet.Beater | None:
        """Start writing this agent's fleet beat to the bucket, unless `[fleet] interval = 0`."""
        if self.settings.fleet.interval <= 0:
            return None
        beater = fleet.Beater(
            self.settings,
            fleet.beat_client(self.settings),
            lambda: status_report(self.settings, state, self.clock()),
            clock=self.clock,
        )
        beater.start()
        return beater

    def _on_outcome(self, record: SessionRecord, outcome: UploadOutcome, seconds: float) -> None:
        self.metrics.outcome(record, outcome, seconds)
        if outcome.complete:
            self.hooks.session_uploaded(record, outcome.manifest_key)

    def _on_retry(self, error: TransferError, attempt: int, delay: float) -> None:
        self.pulse.beat()
        self.metrics.retry(error)
        log_retry(error, attempt, delay)

    def _apply_limits(self, state: State, store: S3Store, *, read_flag: bool) -> None:
        worker = self.worker
        self.limits.apply(
            state,
            store.limiter,
            stop=self.stop,
            halt=self.halt,
            on_resume=worker.wake if worker is not None else lambda: None,
            read_flag=read_flag,
        )

    def _serve_requests(self, state: State) -> None:
        for request_id, command, _argument in state.control.pending_requests():
            if command == "rescan":
                self._rescan_now.set()
                result = "rescanning"
            else:
                result = f"unknown command {command!r}"
            log.info("control_request", command=command, result=result)
            state.control.request_done(request_id, result, self.clock())

    def _ping(self, next_ping: float) -> float:
        died = self.worker is not None and self.worker.died()
        return self.guard.ping(time.monotonic(), next_ping, died)

    def _publish_modes(self, state: State, watcher: Watcher) -> None:
        """Record how each source is watched when it changes (a fall-back to polling)."""
        modes = json.dumps(dict(watcher.modes), sort_keys=True)
        if modes != self._published_modes:
            state.control.set_flag(WATCH_MODES_FLAG, modes, self.clock())
            self._published_modes = modes

    def _end_rebuild(self, state: State) -> None:
        """A rebuilt database stops being news once nothing is left to send."""
        if state.control.flag(REBUILT_FLAG) is None:
            return
        counts = state.queries.session_counts()
        if any(counts.get(name, 0) for name in ("ready", "uploading")):
            return  # failed sessions are reported by status on their own
        state.control.set_flag(REBUILT_FLAG, None, self.clock())
        log.warning("state_rebuild_caught_up", sessions=counts)

    def _main_loop(self, state: State, ingest: Ingest, watcher: Watcher, store: S3Store) -> None:
        next_beat = 0.0
        next_ping = 0.0
        next_rescan = self.clock() + self.settings.agent.rescan_interval
        watcher_died = False
        last_moved = (store.limiter.taken, Tally.value)

        def reconcile_tick() -> bool:
            nonlocal next_ping
            next_ping = self._ping(next_ping)
            return self.stop.is_set()

        while not self.stop.is_set():
            now = self.clock()
            fault = requested_fault(self.settings)
            if fault == "loop":
                threading.Event().wait()  # hung on purpose: the watchdog must notice
            elif fault == "uploader" and self.worker is not None:
                self.worker.hang.set()
            next_ping = self._ping(next_ping)
            self.disk.take_handed(now)
            if self.disk.trouble is not None:
                if not self.disk.recovered(
                    now, lambda: self.vitals.beat(state, "state disk recovered")
                ):
                    self.stop.wait(TICK)
                    continue
                self._rescan_now.set()  # what was seen meanwhile may not be recorded
                if self.worker is not None:
                    self.worker.wake()
            try:
                moved = (store.limiter.taken, Tally.value)
                if moved != last_moved:
                    last_moved = moved
                    self.pulse.beat()
                if self._reload_asked.is_set():
                    self._reload_asked.clear()
                    answer_reload(self.settings)
                # What only other processes write (pause, retry, requests) is read again
                # only when one has written: an idle tick costs a pragma, not four queries.
                elsewhere = state.changed_elsewhere()
                self._apply_limits(state, store, read_flag=elsewhere)
                if elsewhere:
                    self._serve_requests(state)
                if now >= next_beat:
                    line = self.vitals.status_line(
                        state, store.limiter.taken, self.limits.paused_by
                    )
                    self.vitals.beat(state, line)
                    self.notifier.status(line)
                    self._end_rebuild(state)
                    self._publish_modes(state, watcher)
                    next_beat = now + self.settings.agent.heartbeat_interval
                self.metrics.tick(now)
                observed = elsewhere
                for source_name, rel_path in self._take_hints():
                    ingest.observe(self.settings.source(source_name), rel_path)
                    observed = True
                if not watcher.healthy() and not watcher_died:
                    watcher_died = True
                    log.error("watcher_died", hint="rescanning every rescan_interval; restart me")
                    next_rescan = min(next_rescan, now)
                if self._rescan_now.is_set():
                    self._rescan_now.clear()
                    next_rescan = now
                if now >= next_rescan:
                    ingest.reconcile(reconcile_tick)
                    next_rescan = now + self.settings.agent.rescan_interval
                    observed = True
                observed = ingest.recheck_waiting() or observed
                # The worker looks for due sessions every IDLE_WAIT seconds on its own; this
                # wakes it at once when something may have become due.
                if observed and self.worker is not None and ingest.due_sessions():
                    self.worker.wake()
            except StateDiskError as error:
                self.disk.enter(error, now)
                # What was seen since the last reconcile may not have been recorded.
                next_rescan = now
            logs.flush_repeats()
            self.stop.wait(TICK)
        self.halt.set()
        if self.worker is not None:
            self.worker.wake()


def answer_reload(settings: Settings) -> None:
    """SIGHUP: settings are read once, so a reload is refused; say whether the file on disk
    differs and how to apply it, and never stop."""
    try:
        on_disk = load_settings(settings.config_path)
    except AgentError as error:
        log.warning(
            "reload_ignored",
            reason="reload is not supported; the config on disk is also invalid",
            error=str(error).replace("\n", "; "),
        )
        return
    log.warning(
        "reload_ignored",
        reason="reload is not supported: restart the service to apply a changed config "
        "(systemctl restart ingest-agent)",
        config_changed=on_disk != settings,
    )


def requested_fault(settings: Settings) -> str | None:
    """The test-only fault asked for, if any (see FAULT_FILE)."""
    if os.environ.get("AGENT_TEST_FAULTS") != "1":
        return None
    path = settings.agent.state_dir / FAULT_FILE
    try:
        what = path.read_text(encoding="ascii").strip()
        path.unlink()
    except (OSError, UnicodeDecodeError):
        return None
    log.warning("test_fault", hang=what)
    return what
