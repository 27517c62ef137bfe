"""Pure decisions: completeness, key naming, part planning, checksums, bandwidth bucket."""

from __future__ import annotations

import base64
import hashlib
import zlib
from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from agent.checksums import RunningChecksum, digest_b64
from agent.planning import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    Layout,
    object_key,
    part_size_for,
    plan_parts,
    render_key_template,
    strict_name_reason,
    template_root,
    unsafe_name_reason,
)
from agent.sessions import Observation, Rule, judge
from agent.throttle import Limit, TokenBucket, Window, limit_at

names = st.lists(st.text("abcxyz._/", min_size=1, max_size=12), min_size=1, max_size=8)


@given(names, st.floats(0, 1e6), st.floats(0, 1e4), st.floats(0, 1e4))
def test_never_ready_before_quiet_period(
    files: list[str], last_change: float, quiet: float, elapsed: float
) -> None:
    now = last_change + elapsed
    verdict = judge(Observation(tuple(files), last_change, last_change), Rule(quiet), now)
    if now - last_change < quiet:
        assert not verdict.ready
    else:
        assert verdict.ready
    assert verdict.ready_at == last_change + quiet


@given(names, st.floats(0, 1e4))
def test_marker_rule_waits_for_marker(files: list[str], quiet: float) -> None:
    rule = Rule(quiet, marker="transfer_me.flag")
    files = [name for name in files if not name.endswith("transfer_me.flag")]
    late = 1e9
    assert not judge(Observation(tuple(files), 0, 0), rule, late).ready
    with_marker = (*files, "transfer_me.flag")
    assert judge(Observation(with_marker, 0, 0), rule, late).ready


def test_required_files_and_min_age() -> None:
    rule = Rule(0, required=("*.ap.bin", "*.meta"), min_age=60)
    only_bin = Observation(("probe0/a.ap.bin",), 0, 100)
    verdict = judge(only_bin, rule, 1000)
    assert not verdict.ready and "*.meta" in verdict.reason
    both = Observation(("probe0/a.ap.bin", "probe0/a.ap.meta"), 0, 100)
    assert not judge(both, rule, 120).ready
    assert judge(both, rule, 161).ready


def test_a_last_change_after_now_is_not_ready() -> None:
    # The store never records a last change after now (a file dated in the future counts as
    # changed now): tests/test_ledger.py::test_a_file_dated_in_the_future_counts_as_changed_now.
    verdict = judge(Observation(("a",), 5000, 0), Rule(10), 100)
    assert not verdict.ready


def test_empty_session_is_not_ready() -> None:
    assert not judge(Observation((), 0, 0), Rule(0), 100).ready


def test_default_keys() -> None:
    prefix = "rig-01/ephys/mouse1/2026-11-23"
    assert object_key(prefix, "probe0/x.bin") == "rig-01/ephys/mouse1/2026-11-23/probe0/x.bin"


@given(st.integers(0, 5 * 1024**4), st.integers(MIN_PART_SIZE, 64 * 1024**2))
def test_part_plan_covers_file_within_limits(size: int, preferred: int) -> None:
    part_size = part_size_for(size, preferred)
    assert MIN_PART_SIZE <= part_size <= MAX_PART_SIZE
    if size == 0:
        return
    count = -(-size // part_size)
    assert count <= MAX_PARTS
    if size < 50 * 1024**2:  # enumerate only small plans; the arithmetic above covers the rest
        parts = plan_parts(size, part_size)
        assert sum(part.length for part in parts) == size
        assert [part.number for part in parts] == list(range(1, len(parts) + 1))
        assert all(
            parts[i].offset + parts[i].length == parts[i + 1].offset for i in range(len(parts) - 1)
        )


@given(st.text(max_size=40))
def test_unsafe_names_are_refused(name: str) -> None:
    reason = unsafe_name_reason(name)
    bad = (
        any(ord(c) < 32 or ord(c) == 127 for c in name)
        or "\\" in name
        or any(seg in ("", ".", "..") for seg in name.split("/"))
    )
    assert (reason is not None) == bad


def test_named_unsafe_cases() -> None:
    assert unsafe_name_reason("a/../b") is not None
    assert unsafe_name_reason("bad\nname.bin") is not None
    assert unsafe_name_reason("Images/r01c01f01p01-ch1sk1fk1fl1.tiff") is None


@given(st.binary(max_size=5000), st.integers(1, 4999))
def test_running_checksum_equals_one_shot(data: bytes, cut: int) -> None:
    for algorithm in ("crc32c", "crc32", "sha256"):
        running = RunningChecksum(algorithm)
        running.update(data[:cut])
        saved = running.save()
        if saved is not None:  # CRCs can be resumed from the saved state after a crash
            resumed = RunningChecksum.resume(algorithm, saved, running.position)
            assert resumed is not None
            running = resumed
        running.update(data[cut:])
        assert running.value() == digest_b64(algorithm, data)


def test_checksums_match_independent_implementations() -> None:
    data = b"acquisition" * 1000
    assert digest_b64("sha256", data) == base64.b64encode(hashlib.sha256(data).digest()).decode()
    crc = zlib.crc32(data).to_bytes(4, "big")
    assert digest_b64("crc32", data) == base64.b64encode(crc).decode()
    # CRC32C check value from RFC 3720: "123456789" -> 0xE3069283
    assert (
        digest_b64("crc32c", b"123456789")
        == base64.b64encode((0xE3069283).to_bytes(4, "big")).decode()
    )


def test_token_bucket_holds_rate_on_a_driven_clock() -> None:
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    bucket = TokenBucket(1_000_000, clock=lambda: clock[0], sleep=sleep)
    sent = 0
    while clock[0] < 30:
        bucket.take(64 * 1024)
        sent += 64 * 1024
    rate = sent / clock[0]
    assert 0.9e6 <= rate <= 1.1e6


WEEKDAYS = frozenset(range(5))


def test_time_windows_pick_the_limit_in_force() -> None:
    day = Window(start=7 * 60, end=20 * 60, max_bandwidth=10_000_000, days=WEEKDAYS)
    friday_night = Window(
        start=20 * 60, end=7 * 60, max_bandwidth=0, pause=True, days=frozenset({4})
    )
    windows = (day, friday_night)
    monday = datetime(2026, 11, 23)  # a Monday
    assert limit_at(windows, 50, monday.replace(hour=8)) == Limit(10_000_000, False, 0)
    assert limit_at(windows, 50, monday.replace(hour=20)) == Limit(50, False, None)
    assert limit_at(windows, 50, monday.replace(hour=6, minute=59)) == Limit(50, False, None)
    friday = monday + timedelta(days=4)
    assert limit_at(windows, 50, friday.replace(hour=23)).paused
    # An overnight window belongs to the day it starts on: Saturday 03:00 is Friday's night.
    assert limit_at(windows, 50, (friday + timedelta(days=1)).replace(hour=3)).paused
    assert not limit_at(windows, 50, (friday + timedelta(days=1)).replace(hour=23)).paused
    assert limit_at(windows, 50, (friday + timedelta(days=1)).replace(hour=8)).window is None


@given(st.integers(0, 1439), st.integers(0, 1439), st.integers(0, 1439), st.integers(0, 6))
def test_window_membership_matches_its_definition(
    start: int, end: int, minute: int, weekday: int
) -> None:
    window = Window(start=start, end=end, max_bandwidth=1)
    if start < end:
        assert window.contains(weekday, minute) == (start <= minute < end)
    elif start > end:
        assert window.contains(weekday, minute) == (minute >= start or minute < end)


def test_layout_and_key_template() -> None:
    layout = Layout.parse("{subject}/{date}_{time}")
    assert layout.depth == 2
    assert layout.fields_of("mouse1/2026-11-23_10-00") == {
        "subject": "mouse1",
        "date": "2026-11-23",
        "time": "10-00",
    }
    assert layout.fields_of("mouse1/notes") is None
    assert layout.fields_of("mouse1") is None
    values = {"instrument": "np2", "subject": "m1", "date": "d", "time": "t"}
    assert render_key_template("{instrument}/{subject}/{date}/{time}", values) == "np2/m1/d/t"
    assert template_root("{instrument}/{subject}/{date}", {"instrument": "np2"}) == "np2"
    assert template_root("{subject}/{date}", {}) == ""
    assert template_root("raw-{subject}/{date}", {}) == ""
    assert strict_name_reason("Images/r01c01f01p01-ch1.tiff") is None
    assert strict_name_reason("plate map.csv") is not None
