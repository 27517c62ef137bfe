"""Completeness policy: pure decisions over plain data. No I/O, no clock (takes `now`).

Given what a scan saw of a session and the source's rule, `judge` says whether the session is
ready to upload and, if not, why (in words an operator can act on).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

WAITING = "waiting"
READY = "ready"
UPLOADING = "uploading"
UPLOADED = "uploaded"
FAILED = "failed"
SESSION_STATES = (WAITING, READY, UPLOADING, UPLOADED, FAILED)

# The life cycle as data: every move a session may make, and why. A session is created
# `waiting`; the state store refuses any move not listed here (`StateError`).
TRANSITIONS: dict[tuple[str, str], str] = {
    (WAITING, WAITING): "still incomplete, for a new reason or recheck time",
    (WAITING, READY): "judged complete",
    (READY, WAITING): "changed before its upload began",
    (READY, UPLOADING): "upload started",
    (UPLOADING, UPLOADED): "every file and the manifest are in S3",
    (UPLOADING, FAILED): "an upload error; retried after a delay",
    (UPLOADING, READY): "interrupted (stop, pause, restart); resumes",
    (UPLOADING, WAITING): "a file changed during the upload",
    (UPLOADED, READY): "a change observed, and already complete again",
    (UPLOADED, WAITING): "a change observed (new or changed file)",
    (FAILED, UPLOADING): "its retry time came",
    (FAILED, READY): "retry requested, or a change observed and complete",
    (FAILED, WAITING): "a change observed",
}


def may_move(old: str, new: str) -> bool:
    """Whether the life cycle allows a session in `old` to move to `new`."""
    return (old, new) in TRANSITIONS


@dataclass(frozen=True)
class Rule:
    """A source's completeness rule; every part that is set must hold."""

    quiet_period: float
    marker: str | None = None
    required: tuple[str, ...] = ()
    min_age: float = 0.0


@dataclass(frozen=True)
class Observation:
    """What the agent knows about a session at one moment (times in epoch seconds)."""

    file_names: tuple[str, ...]
    last_change: float
    first_seen: float
    unreadable: tuple[str, ...] = ()
    open_for_writing: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """The decision, and the reason when not ready."""

    ready: bool
    reason: str
    ready_at: float | None = None


def _has_match(names: tuple[str, ...], pattern: str) -> bool:
    return any(
        fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.rsplit("/", 1)[-1], pattern)
        for name in names
    )


def judge(observation: Observation, rule: Rule, now: float) -> Verdict:
    """Given an observation of a session, its rule and the time, return the verdict.

    `ready_at` is the earliest time the time-based parts of the rule could next be met, so a
    caller can wake up just then instead of polling.
    """
    if not observation.file_names:
        return Verdict(False, "no files yet")
    if observation.unreadable:
        return Verdict(False, f"cannot read {', '.join(observation.unreadable[:3])}")
    if rule.marker is not None and not _has_match(observation.file_names, rule.marker):
        return Verdict(False, f"waiting for marker {rule.marker}")
    missing = [p for p in rule.required if not _has_match(observation.file_names, p)]
    if missing:
        return Verdict(False, f"waiting for required files: {', '.join(missing)}")
    # A change stamped in the future (clock skew, copied mtimes) counts as "now".
    last_change = min(observation.last_change, now)
    quiet_until = last_change + rule.quiet_period
    old_enough_at = observation.first_seen + rule.min_age
    ready_at = max(quiet_until, old_enough_at)
    # Durations are compared (not sums of times) so tiny periods are not lost to rounding.
    if now - last_change < rule.quiet_period:
        return Verdict(False, f"waiting for {rule.quiet_period:g}s without changes", ready_at)
    if now - observation.first_seen < rule.min_age:
        return Verdict(False, f"younger than min_age {rule.min_age:g}s", ready_at)
    if observation.open_for_writing:
        shown = ", ".join(observation.open_for_writing[:3])
        return Verdict(False, f"still open for writing: {shown}")
    return Verdict(True, "complete", ready_at)
