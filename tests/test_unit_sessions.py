"""Unit tests for the completeness policy: `judge` over explicit observations and times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sessions import (
    FAILED,
    READY,
    SESSION_STATES,
    TRANSITIONS,
    UPLOADED,
    UPLOADING,
    WAITING,
    Observation,
    Rule,
    Verdict,
    judge,
    may_move,
)

T0 = 1_800_000_000.0  # epoch seconds, late enough that float spacing is coarse (~2e-7 s)
FILES = ("probe0/continuous.dat", "probe0/continuous.meta", "settings.xml")


def seen(
    files: tuple[str, ...] = FILES,
    last_change: float = T0,
    first_seen: float = T0,
    unreadable: tuple[str, ...] = (),
    open_for_writing: tuple[str, ...] = (),
) -> Observation:
    return Observation(files, last_change, first_seen, unreadable, open_for_writing)


def test_states() -> None:
    assert SESSION_STATES == ("waiting", "ready", "uploading", "uploaded", "failed")
    assert (WAITING, READY, UPLOADING, UPLOADED, FAILED) == SESSION_STATES


def test_life_cycle_moves() -> None:
    for old in SESSION_STATES:
        for new in SESSION_STATES:
            assert may_move(old, new) == ((old, new) in TRANSITIONS)
    assert all(reason for reason in TRANSITIONS.values())
    # Uploads start only from ready (or a failed session's retry), and end only from uploading.
    assert {old for old, new in TRANSITIONS if new == UPLOADING} == {READY, FAILED}
    assert {old for old, new in TRANSITIONS if new in (UPLOADED, FAILED)} == {UPLOADING}
    assert not may_move(WAITING, UPLOADING)
    assert not may_move(UPLOADED, UPLOADING)
    assert not may_move(UPLOADED, UPLOADED)
    assert not may_move(WAITING, "deleted")
    # Every state can be left, and every state but the first can be reached.
    assert {old for old, _new in TRANSITIONS} == set(SESSION_STATES)
    assert {new for _old, new in TRANSITIONS} == set(SESSION_STATES)


def test_rule_defaults() -> None:
    rule = Rule(30)
    assert (rule.marker, rule.required, rule.min_age) == (None, (), 0.0)


# --- quiet period ---------------------------------------------------------------------------


def test_ready_exactly_when_the_quiet_period_has_passed() -> None:
    rule = Rule(quiet_period=300)
    assert judge(seen(), rule, T0 + 299.5) == Verdict(
        False, "waiting for 300s without changes", T0 + 300
    )
    assert judge(seen(), rule, T0 + 300) == Verdict(True, "complete", T0 + 300)
    assert judge(seen(), rule, T0 + 10_000) == Verdict(True, "complete", T0 + 300)


def test_quiet_period_is_shown_compactly() -> None:
    assert judge(seen(), Rule(0.5), T0).reason == "waiting for 0.5s without changes"
    assert judge(seen(), Rule(1e6), T0).reason == "waiting for 1e+06s without changes"


def test_zero_quiet_period_is_ready_at_once() -> None:
    assert judge(seen(), Rule(0), T0) == Verdict(True, "complete", T0)


def test_a_tiny_quiet_period_is_not_lost_to_rounding() -> None:
    # T0 + 1e-9 == T0 in floating point: a sum of times would call it ready at once.
    assert T0 + 1e-9 == T0
    verdict = judge(seen(), Rule(1e-9), T0)
    assert not verdict.ready
    assert verdict.reason == "waiting for 1e-09s without changes"


def test_a_change_stamped_in_the_future_counts_as_now() -> None:
    observation = seen(last_change=T0 + 3600)  # clock skew, or mtimes copied from elsewhere
    verdict = judge(observation, Rule(60), T0)
    assert verdict == Verdict(False, "waiting for 60s without changes", T0 + 60)
    assert judge(observation, Rule(60), T0 + 60).ready is False  # still in the "future"
    assert judge(observation, Rule(60), T0 + 3660).ready is True


# --- min_age --------------------------------------------------------------------------------


def test_min_age_holds_back_a_quiet_session() -> None:
    rule = Rule(quiet_period=10, min_age=600)
    observation = seen(last_change=T0 - 1000, first_seen=T0)
    assert judge(observation, rule, T0 + 599) == Verdict(
        False, "younger than min_age 600s", T0 + 600
    )
    assert judge(observation, rule, T0 + 600) == Verdict(True, "complete", T0 + 600)


def test_ready_at_is_the_later_of_quiet_and_old_enough() -> None:
    quiet_later = judge(seen(last_change=T0 + 50, first_seen=T0), Rule(100, min_age=60), T0 + 60)
    assert quiet_later.ready_at == T0 + 150
    old_later = judge(seen(last_change=T0, first_seen=T0 + 10), Rule(20, min_age=200), T0 + 30)
    assert old_later == Verdict(False, "younger than min_age 200s", T0 + 210)


def test_quiet_period_is_reported_before_min_age() -> None:
    verdict = judge(seen(last_change=T0, first_seen=T0), Rule(100, min_age=50), T0 + 10)
    assert verdict.reason == "waiting for 100s without changes"
    assert verdict.ready_at == T0 + 100


# --- marker and required files --------------------------------------------------------------


def test_marker_anywhere_in_the_session_by_its_name() -> None:
    rule = Rule(0, marker="transfer_me.flag")
    assert judge(seen(FILES), rule, T0) == Verdict(False, "waiting for marker transfer_me.flag")
    assert judge(seen((*FILES, "transfer_me.flag")), rule, T0).ready
    assert judge(seen((*FILES, "deep/down/transfer_me.flag")), rule, T0).ready


def test_marker_is_a_case_sensitive_glob() -> None:
    rule = Rule(0, marker="*.done")
    assert judge(seen(("a.bin", "acq.done")), rule, T0).ready
    assert not judge(seen(("a.bin", "acq.DONE")), rule, T0).ready
    assert not judge(seen(("a.bin", "acq.done.tmp")), rule, T0).ready


def test_marker_pattern_with_a_directory_matches_the_whole_path() -> None:
    rule = Rule(0, marker="probe0/*.flag")
    assert judge(seen(("probe0/x.flag",)), rule, T0).ready
    assert not judge(seen(("probe1/x.flag",)), rule, T0).ready


def test_required_files_are_all_listed_while_missing() -> None:
    rule = Rule(0, required=("*.ap.bin", "*.ap.meta", "settings.xml"))
    verdict = judge(seen(("probe0/x.ap.bin",)), rule, T0)
    assert verdict == Verdict(False, "waiting for required files: *.ap.meta, settings.xml")
    complete = ("probe0/x.ap.bin", "probe0/x.ap.meta", "settings.xml")
    assert judge(seen(complete), rule, T0) == Verdict(True, "complete", T0)


def test_marker_is_checked_before_required_files() -> None:
    rule = Rule(0, marker="done", required=("*.bin",))
    assert judge(seen(("a.txt",)), rule, T0).reason == "waiting for marker done"


def test_marker_and_required_come_before_the_clock() -> None:
    rule = Rule(1000, marker="done")
    assert judge(seen(("a",)), rule, T0).ready_at is None
    assert judge(seen(("a", "done")), rule, T0).ready_at == T0 + 1000


# --- what stops a session outright ----------------------------------------------------------


def test_no_files_yet() -> None:
    assert judge(seen(()), Rule(0), T0 + 10**6) == Verdict(False, "no files yet")


def test_unreadable_entries_block_and_at_most_three_are_named() -> None:
    observation = seen(unreadable=("d1", "d2", "d3", "d4"))
    assert judge(observation, Rule(0), T0 + 10**6) == Verdict(False, "cannot read d1, d2, d3")
    one = seen(unreadable=("probe0",))
    assert judge(one, Rule(0, marker="never"), T0).reason == "cannot read probe0"


def test_open_files_block_a_session_that_is_otherwise_complete() -> None:
    observation = seen(open_for_writing=("a.dat", "b.dat", "c.dat", "d.dat"))
    verdict = judge(observation, Rule(10), T0 + 100)
    assert verdict == Verdict(False, "still open for writing: a.dat, b.dat, c.dat")
    assert judge(seen(open_for_writing=("x",)), Rule(10), T0 + 100).reason == (
        "still open for writing: x"
    )


def test_open_files_are_only_reported_once_the_time_rules_hold() -> None:
    observation = seen(open_for_writing=("a.dat",))
    assert judge(observation, Rule(10), T0 + 5).reason == "waiting for 10s without changes"
    assert judge(observation, Rule(10, min_age=60), T0 + 20).reason == "younger than min_age 60s"


@pytest.mark.parametrize("now", [T0 - 10, T0, T0 + 1, T0 + 1e9])
def test_no_files_wins_over_everything(now: float) -> None:
    observation = Observation((), T0, T0, ("x",), ("y",))
    assert judge(observation, Rule(0, marker="m", required=("r",)), now).reason == "no files yet"


# --- properties -----------------------------------------------------------------------------


@given(
    st.floats(0, 1e5),
    st.floats(0, 1e5),
    st.floats(0, 1e5),
    st.floats(-1e5, 1e5),
    st.floats(0, 2e5),
)
def test_ready_exactly_when_every_time_rule_holds(
    quiet: float, min_age: float, first_seen_ago: float, change_ago: float, elapsed: float
) -> None:
    now = T0 + elapsed
    observation = seen(last_change=now - change_ago, first_seen=now - first_seen_ago)
    verdict = judge(observation, Rule(quiet, min_age=min_age), now)
    quiet_enough = now - min(observation.last_change, now) >= quiet
    old_enough = now - observation.first_seen >= min_age
    assert verdict.ready == (quiet_enough and old_enough)
    assert verdict.ready_at is not None
    if verdict.ready:
        assert verdict.reason == "complete"


@given(st.floats(0, 1e4), st.floats(0, 1e4), st.floats(0, 1e4))
def test_judging_again_at_ready_at_is_ready(quiet: float, min_age: float, change: float) -> None:
    observation = seen(last_change=T0 + change, first_seen=T0)
    rule = Rule(quiet, min_age=min_age)
    first = judge(observation, rule, T0 + change)
    assert first.ready_at is not None
    later = judge(observation, rule, first.ready_at + 1e-3)
    assert later.ready
