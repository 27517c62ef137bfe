"""The daemon's watchdog guard and upload worker, in process, with an injected notifier and
clock; and the reconcile's tick."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from agent import worker as worker_module
from agent.checksums import RunningChecksum, Tally
from agent.errors import StateDiskError
from agent.ingest import Ingest
from agent.notify import Notifier, Pulse
from agent.state import SessionRecord, State
from agent.transfer import store_from_settings
from agent.vitals import WatchdogGuard
from agent.worker import UploadWorker
from tests.conftest import Rig


def test_no_watchdog_ping_once_the_upload_thread_has_died() -> None:
    sent: list[str] = []
    notifier = Notifier(
        environ={"NOTIFY_SOCKET": "/unused", "WATCHDOG_USEC": "2000000"}, send=sent.append
    )
    pulse = Pulse(lambda: 0.0)
    guard = WatchdogGuard(notifier, pulse, stall_limit=60.0)
    assert guard.ping(100.0, 0.0, uploader_died=False) == 101.0  # every half of 2 s
    assert sent == ["WATCHDOG=1"]
    assert guard.ping(100.5, 101.0, uploader_died=False) == 101.0  # not due yet
    guard.ping(200.0, 0.0, uploader_died=True)
    assert sent == ["WATCHDOG=1"]  # dead uploader: no more pings


def test_no_watchdog_ping_while_the_uploader_is_busy_without_a_pulse() -> None:
    sent: list[str] = []
    notifier = Notifier(
        environ={"NOTIFY_SOCKET": "/unused", "WATCHDOG_USEC": "2000000"}, send=sent.append
    )
    now = [0.0]
    pulse = Pulse(lambda: now[0])
    guard = WatchdogGuard(notifier, pulse, stall_limit=60.0)
    pulse.busy()
    now[0] = 59.0
    guard.ping(1.0, 0.0, uploader_died=False)
    assert sent == ["WATCHDOG=1"]
    now[0] = 61.0
    guard.ping(2.0, 0.0, uploader_died=False)
    assert sent == ["WATCHDOG=1"]  # stalled past the limit: systemd may restart it
    pulse.beat()
    guard.ping(3.0, 0.0, uploader_died=False)
    assert sent == ["WATCHDOG=1", "WATCHDOG=1"]


class FlakyUploads:
    """The worker's view of Ingest; the first listing fails as a locked database would."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.calls = 0

    def due_sessions(self) -> list[SessionRecord]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("database is locked")
        if self.calls >= 3:
            self.stop.set()
        return []

    def growing_sessions(self) -> list[SessionRecord]:
        return []

    def upload(self, record: SessionRecord) -> None:
        raise AssertionError("nothing is due")

    upload_growing = upload

    def recover_sessions(self) -> None:
        raise AssertionError("no disk trouble here")


class FullDiskUploads(FlakyUploads):
    """Listing the sessions fails on a full state disk once; then it succeeds."""

    recovered = 0

    def due_sessions(self) -> list[SessionRecord]:
        self.calls += 1
        if self.calls == 1:
            raise StateDiskError("state.db: database or disk is full")
        if self.calls >= 3:
            self.stop.set()
        return []

    def recover_sessions(self) -> None:
        self.recovered += 1


def test_upload_loop_survives_an_error_while_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "IDLE_WAIT", 0.01)
    stop = threading.Event()
    uploads = FlakyUploads(stop)
    worker = UploadWorker(uploads, stop=stop, halt=threading.Event(), pulse=Pulse(time.monotonic))
    worker.start()
    worker.wake()
    worker.join(30)
    assert worker.died()  # ended because stop was set, not because of the error
    assert uploads.calls >= 3  # it went on listing after the failure


def test_a_full_state_disk_is_handed_to_the_daemon_and_sessions_recovered_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The uploader does not log a full state disk as its own error: it hands it to the
    daemon (which pauses uploads until the disk can be written) and, before its next round,
    makes sessions it may have left `uploading` ready again."""
    monkeypatch.setattr(worker_module, "IDLE_WAIT", 0.01)
    stop = threading.Event()
    uploads = FullDiskUploads(stop)
    handed: list[StateDiskError] = []
    worker = UploadWorker(
        uploads,
        stop=stop,
        halt=threading.Event(),
        pulse=Pulse(time.monotonic),
        on_disk_trouble=handed.append,
    )
    worker.start()
    worker.wake()
    worker.join(30)
    assert [str(error) for error in handed] == ["state.db: database or disk is full"]
    assert uploads.recovered == 1


def test_hashing_local_bytes_counts_as_progress() -> None:
    before = Tally.value
    running = RunningChecksum("crc32c")
    running.update(b"x" * 1000)
    assert Tally.value - before == 1000


def test_reconcile_ticks_per_session_and_stops_when_asked(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(quiet_period="1h")
    for number in range(5):
        (rig.session(f"mouse{number}/s1") / "a.bin").write_bytes(b"x")
    settings = rig.settings()
    state = State.open(settings.state_db_path)
    try:
        ingest = Ingest(settings, state, store_from_settings(settings.destination, settings.upload))
        ticks: list[int] = []

        def count(stop_after: int) -> Callable[[], bool]:
            def tick() -> bool:
                ticks.append(1)
                return len(ticks) >= stop_after

            return tick

        assert ingest.reconcile(count(stop_after=100)) == 5
        assert len(ticks) == 5  # one tick per session: the watchdog is pinged during a long scan
        ticks.clear()
        assert ingest.reconcile(count(stop_after=1)) == 1  # stop asked: ends early
    finally:
        state.close()
