"""Unit tests for bandwidth limiting: the token bucket and throttled body on a driven clock,
the memory budget of the uploader, and the time windows that pick the limit in force."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.throttle import (
    DAY_NAMES,
    Interrupted,
    Limit,
    ThrottledBody,
    TokenBucket,
    Window,
    limit_at,
    parse_clock,
)
from agent.upload import ByteBudget

KIB = 1024
MONDAY = datetime(2026, 11, 23)  # a Monday


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps (or the test says)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    @property
    def slept(self) -> float:
        return sum(self.sleeps)


def bucket_on(clock: FakeClock, rate: float, burst: float | None = None) -> TokenBucket:
    return TokenBucket(rate, burst, clock=clock, sleep=clock.sleep)


# --- TokenBucket ----------------------------------------------------------------------------


def test_unlimited_bucket_never_waits_but_counts() -> None:
    clock = FakeClock()
    bucket = bucket_on(clock, 0)
    for _ in range(100):
        bucket.take(10 * 1024**2)
    assert clock.sleeps == []
    assert bucket.taken == 100 * 10 * 1024**2


def test_default_burst_is_a_quarter_second_but_at_least_64_kib() -> None:
    clock = FakeClock()
    assert bucket_on(clock, 4_000_000).burst == 1_000_000
    assert bucket_on(clock, 1000).burst == 64 * KIB
    assert bucket_on(clock, 0).burst == 64 * KIB
    assert bucket_on(clock, 1000, burst=10).burst == 10


def test_a_full_bucket_lets_one_burst_through_without_waiting() -> None:
    clock = FakeClock()
    bucket = bucket_on(clock, 1_000_000)  # burst 250,000
    bucket.take(250_000)
    assert clock.sleeps == []
    bucket.take(1000)
    assert clock.slept == pytest.approx(0.001)


def test_debt_is_waited_off_in_quarter_second_steps() -> None:
    clock = FakeClock()
    bucket = bucket_on(clock, 1_000_000, burst=0)
    bucket.take(600_000)
    assert clock.sleeps == pytest.approx([0.25, 0.25, 0.1])
    assert bucket.taken == 600_000


def test_later_callers_pay_off_earlier_debt() -> None:
    # Two workers arrive at the same moment: the first sends at once and owes the debt, the
    # second waits off both. The clock only moves when the test says.
    clock = FakeClock()
    waits: list[float] = []
    bucket = TokenBucket(100_000, 25_000, clock=clock, sleep=waits.append)
    bucket.take(75_000)
    assert waits == [0.25, 0.25]
    waits.clear()
    bucket.take(25_000)
    assert waits == [0.25, 0.25, 0.25]
    waits.clear()
    clock.now += 0.75  # the debt is paid off...
    bucket.take(0)
    clock.now += 0.25  # ...and a quarter second refills 25,000
    bucket.take(25_000)
    assert waits == []


def test_idle_time_refills_tokens_up_to_the_burst_only() -> None:
    clock = FakeClock()
    bucket = bucket_on(clock, 100_000, burst=100_000)
    bucket.take(100_000)
    clock.now += 0.25  # refills 25,000
    bucket.take(25_000)
    assert clock.sleeps == []
    clock.now += 3600  # an hour idle still allows one burst, not an hour's worth
    bucket.take(150_000)
    assert clock.slept == pytest.approx(0.5)


def test_rate_is_held_over_a_long_transfer() -> None:
    clock = FakeClock()
    bucket = bucket_on(clock, 2_000_000)
    start = clock.now
    for _ in range(1000):
        bucket.take(64 * KIB)
    sent = 1000 * 64 * KIB
    # The first burst was free; everything after it went at the rate.
    assert clock.now - start == pytest.approx((sent - bucket.burst) / 2_000_000)


def test_nothing_or_negative_costs_nothing() -> None:
    clock = FakeClock()
    bucket = bucket_on(clock, 1, burst=0)
    bucket.take(0)
    bucket.take(-5)
    assert clock.sleeps == []
    assert bucket.taken == 0


def test_a_single_byte_and_a_slow_rate_still_cost_time() -> None:
    clock = FakeClock()
    bucket = bucket_on(clock, 1, burst=0)  # 1 B/s is slow, not unlimited
    bucket.take(1)
    assert clock.sleeps == [0.25, 0.25, 0.25, 0.25]
    clock.sleeps.clear()
    half = bucket_on(clock, 0.5, burst=0)
    half.take(1)
    assert clock.slept == pytest.approx(2.0)


def test_taking_nothing_while_in_debt_does_not_wait() -> None:
    clock = FakeClock()
    waits: list[float] = []
    bucket = TokenBucket(1000, 0, clock=clock, sleep=waits.append)
    bucket.take(500)  # owes half a second; the clock does not move
    waits.clear()
    bucket.take(0)
    assert waits == []


def test_set_rate_changes_rate_and_burst() -> None:
    clock = FakeClock()
    bucket = bucket_on(clock, 1_000_000)
    bucket.set_rate(8_000_000)
    assert (bucket.rate, bucket.burst) == (8_000_000, 2_000_000)
    bucket.set_rate(1000)
    assert (bucket.rate, bucket.burst) == (1000, 64 * KIB)


def test_set_rate_to_zero_lifts_the_limit() -> None:
    clock = FakeClock()
    bucket = bucket_on(clock, 1000, burst=0)
    bucket.set_rate(0)
    bucket.take(10**9)
    assert clock.sleeps == []


def test_a_lower_rate_applies_to_the_next_take() -> None:
    clock = FakeClock()
    bucket = bucket_on(clock, 1_000_000, burst=0)
    bucket.take(100_000)
    assert clock.slept == pytest.approx(0.1)
    bucket.set_rate(100_000)  # burst becomes 64 KiB, but the bucket is empty
    clock.sleeps.clear()
    bucket.take(100_000)
    assert clock.slept == pytest.approx(1.0)


def test_debt_from_before_an_unlimited_window_is_not_charged_after_it() -> None:
    clock = FakeClock()
    waits: list[float] = []
    bucket = TokenBucket(1_000_000, 0, clock=clock, sleep=waits.append)
    bucket.take(64_000_000)  # a 64 MB part, still being paid off when the window opens
    assert sum(waits) == pytest.approx(64.0)
    bucket.set_rate(0)  # an unlimited window starts at once
    clock.now += 3600
    bucket.set_rate(1_000_000)  # and ends an hour later: nothing is owed from before it
    waits.clear()
    bucket.take(100_000)
    assert sum(waits) == pytest.approx(0.1)  # this part's own cost, not 64 s more


def test_stop_interrupts_a_wait() -> None:
    clock = FakeClock()
    stop = threading.Event()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        stop.set()  # asked to stop while waiting

    bucket = TokenBucket(1000, 0, clock=clock, sleep=sleep)
    with pytest.raises(Interrupted):
        bucket.take(10_000, stop)
    assert clock.sleeps == [0.25]  # not the 10 s it would have waited


def test_stop_already_set_interrupts_before_any_wait() -> None:
    clock = FakeClock()
    stop = threading.Event()
    stop.set()
    bucket = bucket_on(clock, 1000, burst=0)
    with pytest.raises(Interrupted):
        bucket.take(10, stop)
    assert clock.sleeps == []


def test_stop_does_not_interrupt_a_take_that_needs_no_wait() -> None:
    clock = FakeClock()
    stop = threading.Event()
    stop.set()
    bucket_on(clock, 1000, burst=100).take(100, stop)
    bucket_on(clock, 0).take(100, stop)
    assert clock.sleeps == []


# --- ThrottledBody --------------------------------------------------------------------------


def test_body_reads_whole_data_when_unlimited() -> None:
    data = bytes(range(256)) * 1024
    body = ThrottledBody(data, bucket_on(FakeClock(), 0), chunk=1000)
    assert len(body) == len(data)
    assert body.read(200_000) == data[:200_000]  # no chunking without a limit
    assert body.read() == data[200_000:]
    assert body.read() == b""
    assert body.tell() == len(data)


def test_body_reads_in_chunks_when_limited() -> None:
    data = b"x" * 10_000
    body = ThrottledBody(data, bucket_on(FakeClock(), 1_000_000), chunk=4096)
    assert len(body.read(9000)) == 4096
    assert len(body.read(100)) == 100
    assert body.tell() == 4196
    assert body.read(-1) == data[4196:]  # read-all is not chunked


def test_body_read_of_zero_bytes_reads_nothing() -> None:
    bucket = bucket_on(FakeClock(), 0)
    body = ThrottledBody(b"abcdef", bucket)
    assert body.read(0) == b""
    assert body.tell() == 0
    assert bucket.taken == 0
    assert body.read(2) == b"ab"


def test_body_is_chunked_at_any_positive_rate() -> None:
    body = ThrottledBody(b"z" * 100, bucket_on(FakeClock(), 1, burst=1000), chunk=4)
    assert body.read(50) == b"zzzz"


def test_body_spends_tokens_at_the_rate() -> None:
    clock = FakeClock()
    body = ThrottledBody(b"y" * 200_000, bucket_on(clock, 100_000, burst=64 * KIB))
    while body.read(1024**2):
        pass
    assert clock.slept == pytest.approx((200_000 - 64 * KIB) / 100_000)


def test_bytes_read_again_after_a_seek_are_paid_once() -> None:
    clock = FakeClock()
    bucket = bucket_on(clock, 0)
    data = bytes(range(200)) * 500
    body = ThrottledBody(data, bucket)
    assert body.read() == data  # botocore reads once to sign...
    assert body.seek(0) == 0
    assert body.read() == data  # ...and again to send
    assert bucket.taken == len(data)
    body.seek(10)
    assert body.read(5) == data[10:15]
    assert bucket.taken == len(data)


def test_partial_rereads_pay_only_for_new_bytes() -> None:
    bucket = bucket_on(FakeClock(), 0)
    body = ThrottledBody(b"a" * 1000, bucket)
    body.read(300)
    body.seek(100)
    body.read(400)  # 100..500: only 300..500 is new
    assert bucket.taken == 500


def test_seek_whence_and_clamping() -> None:
    body = ThrottledBody(b"0123456789", bucket_on(FakeClock(), 0))
    assert body.seek(4) == 4
    assert body.read(2) == b"45"
    assert body.seek(-3, 1) == 3
    assert body.read(1) == b"3"
    assert body.seek(-2, 2) == 8
    assert body.read() == b"89"
    assert body.seek(100) == 10
    assert body.seek(-100, 1) == 0
    assert body.seek(5, 2) == 10
    assert body.read(3) == b""


def test_a_stopped_body_refuses_to_read() -> None:
    stop = threading.Event()
    body = ThrottledBody(b"data", bucket_on(FakeClock(), 0), stop)
    assert body.read(2) == b"da"
    stop.set()
    with pytest.raises(Interrupted):
        body.read(2)


def test_stop_interrupts_a_body_waiting_for_tokens() -> None:
    # A pause in the middle of a part must not wait for the bucket to pay off a whole chunk.
    clock = FakeClock()
    stop = threading.Event()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        stop.set()

    bucket = TokenBucket(1000, 0, clock=clock, sleep=sleep)
    body = ThrottledBody(b"q" * 10_000, bucket, stop, chunk=10_000)
    with pytest.raises(Interrupted):
        body.read(10_000)
    assert clock.sleeps == [0.25]


# --- ByteBudget -----------------------------------------------------------------------------


def test_budget_gives_what_fits_and_caps_at_capacity() -> None:
    budget = ByteBudget(100)
    stop = threading.Event()
    assert budget.acquire(60, stop) == 60
    assert budget.acquire(40, stop) == 40
    budget.release(100)
    # One unit larger than the whole budget must still go through, alone.
    assert budget.acquire(1000, stop) == 100
    budget.release(100)
    assert budget.acquire(0, stop) == 0


def test_budget_does_not_check_stop_when_there_is_room() -> None:
    budget = ByteBudget(100)
    stop = threading.Event()
    stop.set()
    assert budget.acquire(100, stop) == 100
    assert budget.acquire(0, stop) == 0  # a zero-byte unit always fits


def _acquire_in_thread(
    budget: ByteBudget, amount: int, stop: threading.Event
) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    done = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            budget.acquire(amount, stop)
            done.set()
        except Interrupted as error:
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done, raised


def test_budget_waiter_proceeds_when_bytes_are_released() -> None:
    budget = ByteBudget(100)
    stop = threading.Event()
    budget.acquire(80, stop)
    thread, done, raised = _acquire_in_thread(budget, 30, stop)
    assert not done.wait(0.05)  # 80 + 30 > 100: must wait
    budget.release(80)
    thread.join(timeout=2)
    assert done.is_set()
    assert raised == []
    assert budget.acquire(70, stop) == 70  # 30 + 70 fills it exactly
    with pytest.raises(Interrupted):
        stop.set()
        budget.acquire(1, stop)


def test_stop_releases_a_waiter() -> None:
    budget = ByteBudget(100)
    stop = threading.Event()
    budget.acquire(100, stop)
    thread, done, raised = _acquire_in_thread(budget, 1, stop)
    stop.set()
    thread.join(timeout=2)
    assert not thread.is_alive()
    assert not done.is_set()
    assert len(raised) == 1


# --- time windows ---------------------------------------------------------------------------


def at(days: int, hour: int, minute: int = 0) -> datetime:
    """Monday 2026-11-23 plus `days`, at hour:minute."""
    return (MONDAY + timedelta(days=days)).replace(hour=hour, minute=minute)


def test_day_names_start_on_monday() -> None:
    assert DAY_NAMES == ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    assert MONDAY.weekday() == 0


def test_daytime_window_start_is_inside_end_is_not() -> None:
    window = Window(start=7 * 60, end=19 * 60, max_bandwidth=1)
    assert not window.contains(0, 7 * 60 - 1)
    assert window.contains(0, 7 * 60)
    assert window.contains(0, 19 * 60 - 1)
    assert not window.contains(0, 19 * 60)


def test_daytime_window_only_on_its_days() -> None:
    weekdays = Window(start=0, end=1440, max_bandwidth=1, days=frozenset(range(5)))
    assert [weekdays.contains(day, 12 * 60) for day in range(7)] == [True] * 5 + [False] * 2


def test_overnight_window_belongs_to_the_day_it_starts() -> None:
    friday_night = Window(start=22 * 60, end=6 * 60, max_bandwidth=1, days=frozenset({4}))
    assert friday_night.contains(4, 22 * 60)
    assert friday_night.contains(4, 23 * 60 + 59)
    assert friday_night.contains(5, 0)
    assert friday_night.contains(5, 6 * 60 - 1)
    assert not friday_night.contains(5, 6 * 60)
    assert not friday_night.contains(5, 22 * 60)  # Saturday night is not Friday night
    assert not friday_night.contains(4, 5 * 60)  # Friday early morning is Thursday's night
    assert not friday_night.contains(4, 21 * 60 + 59)


def test_sunday_night_window_runs_into_monday() -> None:
    sunday_night = Window(start=23 * 60, end=2 * 60, max_bandwidth=1, days=frozenset({6}))
    assert sunday_night.contains(6, 23 * 60 + 30)
    assert sunday_night.contains(0, 60)  # Monday 01:00
    assert not sunday_night.contains(5, 60)  # Saturday 01:00
    assert not sunday_night.contains(0, 23 * 60 + 30)


def test_window_with_equal_start_and_end_lasts_a_whole_day() -> None:
    window = Window(start=8 * 60, end=8 * 60, max_bandwidth=1, days=frozenset({2}))
    assert window.contains(2, 8 * 60)
    assert window.contains(3, 8 * 60 - 1)
    assert not window.contains(3, 8 * 60)
    assert not window.contains(2, 8 * 60 - 1)


def test_limit_outside_every_window_is_the_default() -> None:
    assert limit_at((), 123, at(0, 12)) == Limit(123, False, None)
    day = Window(start=9 * 60, end=17 * 60, max_bandwidth=5)
    assert limit_at((day,), 0, at(2, 8, 59)) == Limit(0, False, None)
    assert limit_at((day,), 0, at(2, 9)) == Limit(5, False, 0)


@pytest.mark.parametrize(
    ("limit", "operator", "expected"),
    [
        (Limit(0, True, 1), True, "operator"),  # the operator's pause is named first
        (Limit(0, True, 1), False, "schedule"),
        (Limit(100, False, None), True, "operator"),
        (Limit(100, False, 0), False, None),
    ],
)
def test_who_holds_uploads_back(limit: Limit, operator: bool, expected: str | None) -> None:
    assert limit.paused_by(operator) == expected


def test_first_matching_window_wins() -> None:
    pause = Window(start=12 * 60, end=13 * 60, max_bandwidth=0, pause=True)
    day = Window(start=8 * 60, end=18 * 60, max_bandwidth=1000)
    windows = (pause, day)
    assert limit_at(windows, 7, at(1, 12, 30)) == Limit(0, True, 0)
    assert limit_at(windows, 7, at(1, 13)) == Limit(1000, False, 1)
    assert limit_at((day, pause), 7, at(1, 12, 30)) == Limit(1000, False, 0)


def test_limit_uses_hours_and_minutes_of_local_time() -> None:
    window = Window(start=10 * 60 + 30, end=10 * 60 + 45, max_bandwidth=9, days=frozenset({3}))
    assert limit_at((window,), 1, at(3, 10, 29)).window is None
    assert limit_at((window,), 1, at(3, 10, 30)).window == 0
    assert limit_at((window,), 1, at(3, 10, 44)).max_bandwidth == 9
    assert limit_at((window,), 1, at(3, 10, 45)).window is None
    assert limit_at((window,), 1, at(4, 10, 30)).window is None


def test_weekend_night_pause_across_midnight() -> None:
    pause = Window(start=20 * 60, end=7 * 60, max_bandwidth=0, pause=True, days=frozenset({4, 5}))
    assert limit_at((pause,), 50, at(4, 20)).paused  # Friday evening
    assert limit_at((pause,), 50, at(5, 3)).paused  # Saturday, Friday's night
    assert limit_at((pause,), 50, at(5, 21)).paused  # Saturday evening
    assert limit_at((pause,), 50, at(6, 6, 59)).paused  # Sunday, Saturday's night
    assert not limit_at((pause,), 50, at(6, 7)).paused
    assert not limit_at((pause,), 50, at(6, 21)).paused  # Sunday evening
    assert not limit_at((pause,), 50, at(4, 3)).paused  # Friday, Thursday's night


@given(
    st.integers(0, 1440),
    st.integers(0, 1440),
    st.frozensets(st.integers(0, 6)),
    st.integers(0, 6),
    st.integers(0, 1439),
)
def test_window_membership_on_its_days(
    start: int, end: int, days: frozenset[int], weekday: int, minute: int
) -> None:
    window = Window(start=start, end=end, max_bandwidth=1, days=days)
    if start < end:
        expected = weekday in days and start <= minute < end
    else:
        expected = (weekday in days and minute >= start) or (
            (weekday + 6) % 7 in days and minute < end
        )
    assert window.contains(weekday, minute) == expected


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("00:00", 0), ("07:30", 450), ("7:05", 425), ("23:59", 1439), ("24:00", 1440)],
)
def test_parse_clock(text: str, minutes: int) -> None:
    assert parse_clock(text) == minutes


@pytest.mark.parametrize(
    "text", ["24:01", "25:00", "07:60", "7", "07:30:00", "", ":", "ab:cd", "-1:00", " 7:00", "7h"]
)
def test_parse_clock_refuses_what_is_not_a_time_of_day(text: str) -> None:
    with pytest.raises(ValueError, match="is not a time of day"):
        parse_clock(text)


def test_readinto_fills_a_buffer_as_read_would_and_pays_once() -> None:
    clock = FakeClock()
    bucket = bucket_on(clock, 1000, burst=0)
    body = ThrottledBody(b"abcdefgh", bucket, chunk=4)
    buffer = bytearray(8)
    assert body.readinto(memoryview(buffer)[:4]) == 4 and bytes(buffer[:4]) == b"abcd"
    body.seek(0)  # signed first, then sent: the bytes already paid for cost nothing again
    assert body.read(4) == b"abcd"
    assert bucket.taken == 4


def test_a_stop_during_readinto_ends_the_body_quietly_and_abandons_it() -> None:
    """awscrt's signer reads through readinto and prints a raw traceback for any exception
    its callback raises; a stop there ends the body instead, and the send that follows is
    given up even if the stop was lifted in between (a pause that ended at once)."""
    stop = threading.Event()
    body = ThrottledBody(b"abcdefgh", TokenBucket(0), stop)
    stop.set()
    assert body.readinto(bytearray(8)) == 0
    stop.clear()
    body.seek(0)
    with pytest.raises(Interrupted):
        body.read(8)
