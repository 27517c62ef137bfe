"""The daemon and systemd's notify protocol, read from a real NOTIFY_SOCKET datagram socket.

Also: one daemon per state directory, and SIGHUP never stops the daemon.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.notify import Notifier, Pulse, stall_limit
from tests.conftest import Rig, start_daemon, stop_daemon, wait_for


class NotifySocket:
    """A bound AF_UNIX datagram socket that records every message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode("utf-8")))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self._socket.close()

    def with_line(self, line: str) -> list[tuple[float, str]]:
        return [(at, text) for at, text in self.messages if line in text.split("\n")]

    def statuses(self) -> list[str]:
        return [
            part[len("STATUS=") :]
            for _, text in self.messages
            for part in text.split("\n")
            if part.startswith("STATUS=")
        ]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


def session_ids(rig: Rig) -> list[str]:
    result = rig.agentctl("sessions", "--json")
    return [row["id"] for row in json.loads(result.stdout)] if result.returncode == 0 else []


# --- in process: the pure parts ---------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pulse_counts_a_busy_uploader_without_progress_as_stalled() -> None:
    clock = FakeClock()
    pulse = Pulse(clock)
    clock.now = 500
    assert pulse.stalled_for() == 0  # idle for long is not a stall
    pulse.busy()
    clock.now = 510
    assert pulse.stalled_for() == 10
    pulse.beat()  # bytes moved
    clock.now = 515
    assert pulse.stalled_for() == 0  # progress seen at 515
    clock.now = 600
    assert pulse.stalled_for() == 85
    pulse.idle()
    assert pulse.stalled_for() == 0


def test_stall_limit_outlasts_the_s3_timeouts() -> None:
    assert stall_limit(10, 120) > 2 * (10 + 120)


def test_notifier_is_silent_without_socket_and_reads_watchdog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[str] = []
    quiet = Notifier(environ={}, send=sent.append)
    assert not quiet.enabled
    assert quiet.watchdog_interval is None
    armed = Notifier(
        environ={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},
        send=sent.append,
    )
    assert armed.watchdog_interval is None  # meant for another process
    mine = Notifier(environ={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"}, send=sent.append)
    assert mine.watchdog_interval == 15.0
    mine.status("a\nREADY=1")  # a forged line in a status stays inside STATUS=
    mine.status("a\nREADY=1")  # unchanged: not sent again
    assert sent == ["STATUS=a\\nREADY=1"]


def test_notifier_reaches_a_real_socket(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    notifier = Notifier()
    notifier.ready("0 waiting")
    notifier.watchdog()
    notifier.stopping()
    assert wait_for(lambda: len(notify_socket.messages) == 3, timeout=5)
    assert notify_socket.messages[0][1] == "READY=1\nSTATUS=0 waiting"
    assert notify_socket.messages[1][1] == "WATCHDOG=1"
    assert notify_socket.messages[2][1].startswith("STOPPING=1")


# --- the daemon, as systemd starts it -------------------------------------------------------------


@pytest.mark.slow
def test_daemon_notifies_ready_status_watchdog_and_stopping(
    make_rig: Callable[..., Rig], notify_socket: NotifySocket
) -> None:
    rig = make_rig(quiet_period="1h", agent_extra='rescan_interval = "1h"')
    session = rig.session("mouse1/2026-11-26_09-00")
    (session / "a.bin").write_bytes(b"x" * 1000)
    environment = {
        "NOTIFY_SOCKET": str(notify_socket.path),
        "WATCHDOG_USEC": "1000000",  # a ping every 0.5 s
        "AGENT_TEST_FAULTS": "1",
    }
    daemon = start_daemon(rig, environment)
    try:
        assert wait_for(lambda: bool(notify_socket.with_line("READY=1")), timeout=30)
        # Freeze the daemon the moment it says READY: the session must already be known,
        # i.e. READY came after recovery and the first reconcile.
        daemon.send_signal(signal.SIGSTOP)
        try:
            assert session_ids(rig) == ["ephys/mouse1/2026-11-26_09-00"]
        finally:
            daemon.send_signal(signal.SIGCONT)
        ready_message = notify_socket.with_line("READY=1")[0][1]
        assert "STATUS=1 waiting" in ready_message
        assert "backlog 0.0 GB in 1 files" in ready_message
        assert wait_for(lambda: len(notify_socket.with_line("WATCHDOG=1")) >= 4, timeout=10)

        daemon.send_signal(signal.SIGHUP)
        pings = len(notify_socket.with_line("WATCHDOG=1"))
        assert wait_for(lambda: len(notify_socket.with_line("WATCHDOG=1")) >= pings + 3)
        assert daemon.poll() is None

        # Hang the main loop: the pings must stop while the process lives on.
        fault = rig.state_dir / "test-fault-hang"
        fault.write_text("loop")
        assert wait_for(lambda: not fault.exists(), timeout=10)
        hung_at = time.monotonic()
        time.sleep(3)
        late = [at for at, _ in notify_socket.with_line("WATCHDOG=1") if at > hung_at + 0.2]
        assert late == []
        assert daemon.poll() is None
    finally:
        daemon.kill()
        _, errors = daemon.communicate(timeout=30)
    assert '"event": "reload_ignored"' in errors
    assert '"event": "test_fault"' in errors

    # The lock died with the killed process: a new daemon starts, and stops cleanly.
    notify_socket.messages.clear()
    daemon = start_daemon(rig, environment)
    try:
        assert wait_for(lambda: bool(notify_socket.with_line("READY=1")), timeout=30)
    finally:
        code, errors = stop_daemon(daemon)
    assert code == 0, errors
    assert notify_socket.with_line("STOPPING=1")
    stopping_at = notify_socket.with_line("STOPPING=1")[0][0]
    assert all(at <= stopping_at for at, _ in notify_socket.with_line("WATCHDOG=1"))


@pytest.mark.slow
def test_watchdog_pings_stop_when_the_uploader_hangs(
    make_rig: Callable[..., Rig], notify_socket: NotifySocket
) -> None:
    # Timeouts of 1 s make the stall limit 2 * (1 + 1) + 10 = 14 s.
    rig = make_rig(upload_extra='connect_timeout = "1s"\nread_timeout = "1s"')
    daemon = start_daemon(
        rig,
        {
            "NOTIFY_SOCKET": str(notify_socket.path),
            "WATCHDOG_USEC": "1000000",
            "AGENT_TEST_FAULTS": "1",
        },
    )
    try:
        assert wait_for(lambda: bool(notify_socket.with_line("READY=1")), timeout=30)
        fault = rig.state_dir / "test-fault-hang"
        fault.write_text("uploader")
        assert wait_for(lambda: not fault.exists(), timeout=10)
        hung_at = time.monotonic()
        assert wait_for(
            lambda: any(at > hung_at + 5 for at, _ in notify_socket.with_line("WATCHDOG=1")),
            timeout=10,
        ), "pings go on while the stall is shorter than the limit"
        time.sleep(16)
        last_ping = notify_socket.with_line("WATCHDOG=1")[-1][0]
        assert time.monotonic() - last_ping > 3, "pings must stop once the uploader stalls"
        assert daemon.poll() is None
    finally:
        daemon.kill()
        _, errors = daemon.communicate(timeout=30)
    assert '"event": "uploader_stalled"' in errors


@pytest.mark.slow
def test_second_daemon_on_one_state_dir_is_refused(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    first = start_daemon(rig, {})
    try:
        assert wait_for(lambda: rig.agentctl("status").returncode == 0, timeout=30)
        second = start_daemon(rig, {})
        try:
            _, errors = second.communicate(timeout=30)
        finally:
            second.kill()
        assert second.returncode == 1
        assert f"daemon pid {first.pid}" in errors
        assert str(rig.state_dir) in errors
        sync = rig.agentctl("sync")
        assert sync.returncode == 1
        assert f"daemon pid {first.pid}" in sync.stderr
    finally:
        code, errors = stop_daemon(first)
    assert code == 0, errors


@pytest.mark.slow
def test_a_crash_in_the_main_loop_is_reported_not_recorded_as_a_clean_stop(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    daemon = start_daemon(rig)
    try:
        assert wait_for(lambda: rig.agentctl("status").returncode == 0, timeout=30)
        # Break the schema under the running daemon: its next tick fails.
        connection = sqlite3.connect(rig.state_dir / "state.db")
        connection.execute("alter table control rename to control_gone")
        connection.commit()
        connection.close()
        code = daemon.wait(timeout=30)
    finally:
        daemon.kill()
        _, errors = daemon.communicate(timeout=30)
    assert code == 1
    crash = [json.loads(line) for line in errors.splitlines() if "daemon_crashed" in line]
    assert crash and crash[0]["level"] == "critical" and "control" in crash[0]["exception"]
    status = rig.agentctl("status")
    assert status.returncode == 2
    assert "without stopping cleanly" in status.stdout


def test_unusable_lock_file_gives_one_clear_line(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.state_dir.mkdir()
    (rig.state_dir / "agent.lock").symlink_to(rig.root / "elsewhere")
    result = rig.agentctl("sync")
    assert result.returncode == 1
    assert "cannot lock" in result.stderr and "Traceback" not in result.stderr
    assert not (rig.root / "elsewhere").exists()
