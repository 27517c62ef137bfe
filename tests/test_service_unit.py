"""The daemon's watchdog guard and upload loop, in process, with an injected notifier."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from agent.checksums import RunningChecksum, Tally
from agent.ingest import Ingest
from agent.notify import Notifier
from agent.service import Daemon
from agent.state import State
from agent.transfer import store_from_settings
from tests.conftest import Rig


def daemon_with(rig: Rig, sent: list[str]) -> Daemon:
    notifier = Notifier(
        environ={"NOTIFY_SOCKET": "/unused", "WATCHDOG_USEC": "2000000"}, send=sent.append
    )
    return Daemon(rig.settings(), notifier=notifier)


def test_no_watchdog_ping_once_the_upload_thread_has_died(make_rig: Callable[..., Rig]) -> None:
    sent: list[str] = []
    daemon = daemon_with(make_rig(), sent)
    alive = threading.Event()
    thread = threading.Thread(target=alive.wait)
    thread.start()
    daemon._uploader = thread
    daemon._watchdog(100.0, 0.0)
    assert sent == ["WATCHDOG=1"]
    alive.set()
    thread.join()
    daemon._watchdog(200.0, 0.0)
    assert sent == ["WATCHDOG=1"]  # dead uploader: no more pings


class FlakyIngest:
    """Our Ingest's two listing calls; the first listing fails as a locked database would."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.calls = 0

    def due_sessions(self) -> list[Any]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("database is locked")
        if self.calls >= 3:
            self.daemon.stop.set()
        return []

    def growing_sessions(self) -> Iterator[Any]:
        return iter(())

    def upload(self, record: Any) -> None:
        raise AssertionError("nothing is due")

    upload_growing = upload


def test_upload_loop_survives_an_error_while_listing(make_rig: Callable[..., Rig]) -> None:
    daemon = daemon_with(make_rig(), [])
    ingest = FlakyIngest(daemon)
    thread = threading.Thread(target=daemon._upload_loop, args=(ingest,))
    daemon._wake_uploader.set()
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert ingest.calls >= 3  # it went on listing after the failure


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
