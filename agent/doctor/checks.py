"""The doctor's report lines (`Check`), their statuses, and the small helpers every
group of checks shares."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass

from agent.redact import redact

OK = "ok"
WARNING = "warning"  # worth knowing, the agent works: does not change the exit code
FAIL = "fail"
SKIPPED = "skipped"  # not checked here (systemd absent, an earlier check failed)
SYMBOLS = {OK: "✔", WARNING: "!", FAIL: "✘", SKIPPED: "-"}
ASCII_SYMBOLS = {OK: "ok", WARNING: "!", FAIL: "XX", SKIPPED: "-"}


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report: what was checked, what was found, how to fix it."""

    name: str
    status: str  # OK, WARNING, FAIL or SKIPPED
    detail: str
    fix: str | None = None

    @property
    def ok(self) -> bool:
        """False only for a failure; warnings and skipped checks are not problems."""
        return self.status != FAIL

    def as_json(self) -> dict[str, object]:
        """The check as a JSON object, secrets masked."""
        return {
            "name": self.name,
            "ok": self.ok,
            "status": self.status,
            "detail": redact(self.detail),
            "fix": redact(self.fix) if self.fix else None,
        }


def _duration(seconds: float) -> str:
    """90 → "1 min 30 s", 300 → "5 min", 3600 → "1 h"."""
    whole = round(abs(seconds))
    if whole < 60:
        return f"{whole} s"
    parts = [(whole // 3600, "h"), (whole % 3600 // 60, "min")]
    if whole < 3600:
        parts.append((whole % 60, "s"))
    return " ".join(f"{value} {unit}" for value, unit in parts if value)


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def mask_key_id(access_key: str) -> str:
    """An access key id shown for recognition only: AKIAIOSFODNN7EXAMPLE → AKIA…PLE."""
    if len(access_key) >= 16:
        return f"{access_key[:4]}…{access_key[-3:]}"
    return f"{access_key[:2]}…"


def skipped(names: Iterable[str], reason: str) -> list[Check]:
    """Checks that could not run, each saying why."""
    return [Check(name, SKIPPED, f"not checked: {reason}") for name in names]
