"""Progress of `agentctl sync`: the pure arithmetic with an injected clock, the views on real
streams, and end to end under a real pseudo-terminal against the S3 test server."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from tqdm import TMonitor  # type: ignore[import-untyped]

from agent.progress import (
    BarView,
    LineView,
    Measure,
    RateMeter,
    Snapshot,
    SyncProgress,
    Totals,
    capped,
    eta_seconds,
    format_duration,
    progress_text,
    upload_estimate,
    view_for,
)
from tests.conftest import Rig
from tests.test_sync import age, write_session

MiB = 1024**2


# --- pure parts ---------------------------------------------------------------------------


def test_capped_never_passes_the_total_nor_goes_back() -> None:
    assert capped(5, 10) == 5
    assert capped(15, 10) == 10  # bytes sent again on retries
    assert capped(3, 10, shown=7) == 7  # a lower reading never moves the bar back
    assert capped(-4, 10) == 0
    assert capped(12, 10, shown=10) == 10


def test_rate_is_measured_over_a_sliding_window() -> None:
    meter = RateMeter(window=10.0, minimum_span=1.0)
    assert meter.add(100.0, 0) is None
    assert meter.add(100.5, 500) is None  # half a second is too little to claim a rate
    assert meter.add(101.0, 1000) == pytest.approx(1000.0)
    for second in range(2, 21):
        rate = meter.add(100.0 + second, 1000 * second)
    assert rate == pytest.approx(1000.0)
    # The rate follows a change within the window: the early samples are forgotten.
    for second in range(21, 41):
        rate = meter.add(100.0 + second, 20_000 + 3000 * (second - 20))
    assert rate == pytest.approx(3000.0)
    # Samples further apart than the window still give the rate between them.
    sparse = RateMeter(window=10.0)
    sparse.add(0.0, 0)
    assert sparse.add(30.0, 30_000) == pytest.approx(1000.0)
    assert sparse.add(60.0, 90_000) == pytest.approx(2000.0)


def test_eta_and_estimate() -> None:
    assert eta_seconds(1000, 100.0) == pytest.approx(10.0)
    assert eta_seconds(0, None) == 0.0
    assert eta_seconds(1000, None) is None
    assert eta_seconds(1000, 0.0) is None  # stalled: no ETA rather than infinity
    assert upload_estimate(10 * MiB, 2 * MiB) == pytest.approx(5.0)
    assert upload_estimate(10 * MiB, 0) is None  # unlimited: no honest number


def test_durations_read_like_a_clock() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(42.4) == "42s"
    assert format_duration(59.6) == "1m00s"
    assert format_duration(192) == "3m12s"
    assert format_duration(7500) == "2h05m"
    assert format_duration(100 * 3600) == "100h00m"


def test_progress_text() -> None:
    snapshot = Snapshot(12, 40, 3 * MiB, 6 * MiB, 1_500_000.0, "ephys/mouse1/s1")
    assert progress_text(snapshot) == (
        "12/40 files, 3.0 MiB/6.0 MiB, 1.5 MB/s, ETA 2s, session ephys/mouse1/s1"
    )
    assert progress_text(Snapshot(0, 4, 0, 100)) == "0/4 files, 0 B/100 B, ? MB/s, ETA ?"
    # A directory name cannot send control characters to the terminal.
    hostile = progress_text(Snapshot(0, 1, 0, 1, None, "ephys/m\x1b[2J/s\r1"))
    assert "\x1b" not in hostile and "\r" not in hostile
    assert "session ephys/m\\x1b[2J/s\\r1" in hostile


def test_measure_counts_finished_files_and_bytes_handed_to_the_network() -> None:
    backlog = [(50, 9000)]  # files, bytes not yet in S3: other sessions' too
    sent = [123]

    measure = Measure(lambda: backlog[0], lambda: sent[0])
    assert measure() == (0, 0)
    sent[0] += 2500  # parts of a large file, no file finished yet
    assert measure() == (0, 2500)
    backlog[0] = (48, 6000)  # two files finished, one of them found already in S3
    assert measure() == (2, 3000)
    sent[0] += 9000  # a retry sent everything again: only capping keeps this in bounds
    assert measure() == (2, 11500)


class RecordingView:
    """A view that keeps what it was given."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.shown: list[Snapshot] = []
        self.closed: list[Snapshot | None] = []

    def show(self, snapshot: Snapshot) -> None:
        self.shown.append(snapshot)

    def close(self, snapshot: Snapshot | None) -> None:
        self.closed.append(snapshot)


def test_snapshots_are_capped_at_the_totals_and_carry_the_session() -> None:
    readings = iter([(1, 400), (3, 2500), (2, 900)])
    clock = iter([0.0, 1.0, 2.0])
    progress = SyncProgress(
        Totals(3, 1000), lambda: next(readings), RecordingView(1.0), clock=lambda: next(clock)
    )
    progress.session = "ephys/m1/s1"
    first, second, third = progress.poll(), progress.poll(), progress.poll()
    assert (first.files_done, first.bytes_done, first.rate) == (1, 400, None)
    assert (second.files_done, second.bytes_done) == (3, 1000)  # 2500 sent, 1000 due
    assert second.rate == pytest.approx(600.0)
    assert (third.files_done, third.bytes_done) == (3, 1000)  # never backwards
    assert third.session == "ephys/m1/s1" and third.eta == 0.0


def test_the_rate_is_measured_from_the_start_not_from_the_first_line() -> None:
    times = iter([0.0, 30.0, 31.0])
    view = RecordingView(3600.0)
    with SyncProgress(
        Totals(2, 3_000_000), lambda: (1, 1_500_000), view, clock=lambda: next(times)
    ) as progress:
        first = progress.poll()
    assert first.rate == pytest.approx(50_000.0)
    assert first.eta == pytest.approx(30.0)


def _progress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sync-progress"]


def test_ticker_shows_while_running_and_stops_cleanly_on_an_interrupt() -> None:
    view = RecordingView(0.01)
    progress = SyncProgress(Totals(2, 100), lambda: (1, 50), view)
    with pytest.raises(KeyboardInterrupt), progress:
        deadline = time.monotonic() + 5
        while len(view.shown) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        raise KeyboardInterrupt
    assert len(view.shown) >= 3
    assert view.closed == [None]  # closed once, without a final reading
    assert _progress_threads() == []


def test_ticker_survives_a_failing_measure_and_ends_with_a_final_snapshot() -> None:
    calls = [0]

    def measure() -> tuple[int, int]:
        calls[0] += 1
        if calls[0] < 3:
            raise RuntimeError("database is locked")
        return 2, 100

    view = RecordingView(0.01)
    with SyncProgress(Totals(2, 100), measure, view):
        deadline = time.monotonic() + 5
        while not view.shown and time.monotonic() < deadline:
            time.sleep(0.01)
    assert view.shown  # it kept ticking after the failures
    final = view.closed[0]
    assert final is not None and (final.files_done, final.bytes_done) == (2, 100)
    assert _progress_threads() == []


def test_bar_draws_writes_log_lines_above_itself_and_ends_its_line() -> None:
    stream = io.StringIO()
    view = BarView(stream)
    logs = view.log_stream()
    logs.write("before the bar\n")
    view.show(Snapshot(1, 4, 50, 100, None, "ephys/m1/s1"))
    # `print` writes a line's text and its newline apart; a redraw may come in between.
    logs.write("a log line")
    view.show(Snapshot(2, 4, 75, 100, 25.0, "ephys/m1/s1"))
    logs.write("\n")
    view.close(Snapshot(4, 4, 100, 100, 25.0, "ephys/m1/s1"))
    output = stream.getvalue()
    assert output.startswith("before the bar\n")
    assert " 50%|" in output and " 75%|" in output
    assert "1/4 files, 50 B/100 B, ? MB/s, ETA ?, session ephys/m1/s1" in output
    lines = visible_lines(output)
    assert lines[1] == "a log line"  # the bar was cleared before it, and drawn after it
    assert lines[2].startswith("100%|") and "4/4 files, 100 B/100 B" in lines[2]
    assert output.endswith("\n")
    assert not [t for t in threading.enumerate() if isinstance(t, TMonitor)]


def test_a_bar_only_on_a_terminal_and_never_with_json() -> None:
    leader, follower = os.openpty()
    try:
        with open(follower, "w", encoding="utf-8") as terminal:
            assert isinstance(view_for(terminal, as_json=False), BarView)
            assert isinstance(view_for(terminal, as_json=True), LineView)
    finally:
        os.close(leader)
    assert isinstance(view_for(io.StringIO(), as_json=False), LineView)


def test_line_view_logs_a_line_now_and_then_and_none_for_a_short_run() -> None:
    with structlog.testing.capture_logs() as logs:
        with SyncProgress(Totals(4, 400), lambda: (1, 100), LineView(interval=0.05)) as shown:
            shown.session = "ephys/m1/s1"
            time.sleep(0.3)
        events = [e for e in logs if e["event"] == "sync_progress"]
        assert 2 <= len(events) <= 7
        assert events[-1]["message"].startswith("progress: 1/4 files, 100 B/400 B, ")
        assert events[-1]["message"].endswith(", session ephys/m1/s1")
        assert events[-1]["files_total"] == 4 and events[-1]["bytes_done"] == 100
        logs.clear()
        with SyncProgress(Totals(4, 400), lambda: (4, 400), LineView()):
            time.sleep(0.1)
        assert logs == []


# --- end to end ---------------------------------------------------------------------------


@contextlib.contextmanager
def _sigint_for_children() -> Iterator[None]:
    """SIGINT as the children started meanwhile should inherit it: deliverable, as for a
    shell's foreground job. A test run started in the background by a shell without job
    control (a CI runner, `cmd &` in a script) has SIGINT ignored, which children inherit
    through exec, and Ctrl-C would never arrive. A handler (unlike "ignore") is reset to the
    default by exec; the previous disposition is restored on leaving."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_on_terminal(
    rig: Rig,
    *arguments: str,
    columns: int = 200,
    timeout: float = 60,
    interrupt_when: Callable[[str], bool] | None = None,
) -> tuple[int, str, str]:
    """Run agentctl with its stderr on a pseudo-terminal of `columns` columns (stdout a
    pipe); return (exit code, stdout, what the terminal received). With `interrupt_when`,
    send SIGINT (Ctrl-C) once it is true of what the terminal has received."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    with _sigint_for_children():
        process = subprocess.Popen(
            [sys.executable, "-m", "agent", *arguments, "--config", str(rig.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
        )
    os.close(follower)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every writer of the terminal has gone
                break
            if not chunk:
                break
            received += chunk
            if interrupt_when is not None and interrupt_when(received.decode(errors="replace")):
                process.send_signal(signal.SIGINT)
                interrupt_when = None
        else:
            process.kill()
            pytest.fail(f"agentctl still running after {timeout}s")
        assert process.stdout is not None
        stdout = process.stdout.read().decode()
        code = process.wait(timeout=10)
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    return code, stdout, received.decode(errors="replace")


def visible_lines(output: str) -> list[str]:
    """What a terminal shows of `output`, line by line: each carriage return goes back to
    the start of the line and what follows overwrites what was there."""
    lines = []
    for raw in output.replace("\r\n", "\n").split("\n"):
        shown = ""
        for segment in raw.split("\r"):
            shown = segment + shown[len(segment) :]
        lines.append(shown.rstrip())
    return lines


@pytest.mark.slow
def test_sync_on_a_terminal_shows_a_live_bar_then_the_summary(
    make_rig: Callable[..., Rig],
) -> None:
    # 7 MiB at 2 MiB/s: a few seconds, so the bar is redrawn in several states.
    rig = make_rig(upload_extra='max_bandwidth = "2MiB"')
    for rel_path, count in (("mouse1/s1", 4), ("mouse1/s2", 3)):
        session = write_session(
            rig, rel_path, {f"chunk{number}.bin": os.urandom(MiB) for number in range(count)}
        )
        age(session, 60)

    code, stdout, terminal = run_on_terminal(rig, "sync")

    assert code == 0, terminal
    assert stdout.startswith("uploaded 2 session(s), 7 file(s), 7.0 MiB in ")
    assert "0 session(s) still waiting; 0 failed" in stdout
    assert "Traceback" not in terminal
    percentages = [int(p) for p in re.findall(r"\r *(\d+)%\|", terminal)]
    assert len(set(percentages)) >= 3, terminal
    assert percentages == sorted(percentages) and percentages[-1] == 100
    files_done = [int(n) for n in re.findall(r"(\d+)/7 files", terminal)]
    assert len(set(files_done)) >= 2 and files_done == sorted(files_done)
    assert "session ephys/mouse1/s1" in terminal and "session ephys/mouse1/s2" in terminal
    assert re.search(r"ETA \d+s", terminal) and re.search(r"\d+\.\d MB/s", terminal)
    lines = visible_lines(terminal)
    # The bar's last state stays on screen, on a line of its own, and the terminal is left
    # on a fresh line.
    bars = [line for line in lines if re.match(r" *\d+%\|", line)]
    assert bars[-1].startswith("100%|") and "7/7 files, 7.0 MiB/7.0 MiB" in bars[-1]
    assert terminal.endswith("\n")
    # Log lines scroll above the bar instead of running through it.
    logged = [line for line in lines if "file_uploaded" in line]
    assert len(logged) == 7
    assert not [line for line in logged if "%|" in line]


@pytest.mark.slow
def test_ctrl_c_stops_the_bar_where_it_was_and_leaves_a_fresh_line(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    # About 8 s at 1 MiB/s: Ctrl-C comes at the first bar past 10 %, and must land well before
    # the end even when the machine is busy (at 2 MiB/s and 6 MiB, a loaded CI run once saw
    # the sync finish first).
    rig = make_rig(upload_extra='max_bandwidth = "1MiB"', concurrency=2)
    session = write_session(rig, "mouse5/s1", {f"c{n}.bin": os.urandom(MiB) for n in range(8)})
    age(session, 60)

    shown_at_ctrl_c: list[str] = []

    def past_ten_percent(text: str) -> bool:
        if re.search(r"\r *[1-9]\d%\|", text) is None:
            return False
        shown_at_ctrl_c.append(text)
        return True

    code, stdout, terminal = run_on_terminal(rig, "sync", interrupt_when=past_ten_percent)

    assert code == 1
    assert stdout == ""  # interrupted: no summary
    assert "Traceback" not in terminal and "Exception" not in terminal
    lines = visible_lines(terminal)
    bars = [line for line in lines if re.match(r" *\d+%\|", line)]
    assert bars and not bars[-1].startswith("100%")  # the bar stopped where it was
    assert terminal.endswith("\n")

    # Ctrl-C stopped the uploads too: the 2 files being sent were stopped and those queued
    # dropped, instead of all of them sent to the end while the operator waited (and the bar
    # went on). So S3 holds what the bar counted as done when Ctrl-C came, give or take the 2
    # files being sent then. Nothing is lost: the next run sends the rest.
    done_at_ctrl_c = int(re.findall(r"(\d+)/8 files", shown_at_ctrl_c[0])[-1])

    def files_in_s3() -> int:
        listed = client.list_objects_v2(Bucket=rig.bucket, Prefix=f"{rig.prefix}/")
        return sum(item["Key"].endswith(".bin") for item in listed.get("Contents", []))

    assert files_in_s3() <= done_at_ctrl_c + 2
    again = rig.agentctl("sync")
    assert again.returncode == 0, again.stderr
    assert files_in_s3() == 8


@pytest.mark.slow
def test_sync_without_a_terminal_draws_no_bar_but_prints_the_summary(
    make_rig: Callable[..., Rig],
) -> None:
    # Long enough (about a second at 1 MiB/s) for a bar to have been drawn, were it wrongly.
    rig = make_rig(upload_extra='max_bandwidth = "1MiB"')
    session = write_session(rig, "mouse2/s1", {f"f{n}.bin": b"x" * (MiB // 2) for n in range(3)})
    age(session, 60)

    result = rig.agentctl("sync")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("uploaded 1 session(s), 3 file(s), 1.5 MiB in ")
    assert "\r" not in result.stderr and "%|" not in result.stderr
    # stderr stays a stream of JSON lines (the log format off a terminal); a run this short
    # logs no progress line at all.
    events = [json.loads(line)["event"] for line in result.stderr.splitlines()]
    assert "session_uploaded" in events and "sync_progress" not in events


@pytest.mark.slow
def test_json_on_a_terminal_draws_no_bar(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(upload_extra='max_bandwidth = "1MiB"')
    session = write_session(rig, "mouse3/s1", {"a.bin": b"a" * MiB})
    age(session, 60)

    code, stdout, terminal = run_on_terminal(rig, "sync", "--json")

    assert code == 0, terminal
    assert json.loads(stdout)["sessions_uploaded"] == 1
    assert "%|" not in terminal


@pytest.mark.slow
def test_dry_run_ends_with_totals_and_an_estimate_at_the_limit_in_force(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(upload_extra='max_bandwidth = "1MiB"', quiet_period="1h")
    session = write_session(rig, "mouse4/s1", {"a.bin": os.urandom(2 * MiB), "b.bin": b"b" * 5})
    age(session, 7200)
    write_session(rig, "mouse4/s2", {"fresh.bin": b"still being written"})  # not ready

    result = rig.agentctl("sync", "--dry-run")
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    assert last == (
        "total: 1 session(s), 2 file(s), 2.0 MiB; "
        "estimated time at least 2s at 1.0 MiB/s (the bandwidth limit in force now)"
    )

    # A time window covering every moment sets the limit in force now, as sync would keep to.
    rig.config.write_text(
        rig.config.read_text().replace(
            'max_bandwidth = "1MiB"',
            'max_bandwidth = "1MiB"\n'
            '[[upload.window]]\nstart = "00:00"\nend = "24:00"\nmax_bandwidth = "64KiB"',
        )
    )
    windowed = rig.agentctl("sync", "--dry-run").stdout.splitlines()[-1]
    assert windowed.endswith(
        "estimated time at least 32s at 64.0 KiB/s (the bandwidth limit in force now)"
    )

    rig.config.write_text(rig.config.read_text().replace('"64KiB"', "0"))
    unlimited = rig.agentctl("sync", "--dry-run").stdout.splitlines()[-1]
    assert unlimited == "total: 1 session(s), 2 file(s), 2.0 MiB; unlimited bandwidth: no estimate"

    # The JSON output stays the list it was: one row per session, nothing else.
    rows = json.loads(rig.agentctl("sync", "--dry-run", "--json").stdout)
    assert isinstance(rows, list) and len(rows) == 2
    assert {row["id"] for row in rows} == {"ephys/mouse4/s1", "ephys/mouse4/s2"}
    assert not rig.state_dir.exists()
