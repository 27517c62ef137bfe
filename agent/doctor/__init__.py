"""`agentctl doctor`: can this machine ingest? Credentials, bucket, server features, clock,
state directory, sources, inotify limits and the systemd unit, one `Check` each.

Each check is a small function that does its I/O and hands what it saw to a pure verdict
function (clock skew, filesystem type, watch count, what a server's answer means), so the
verdicts are tested without a server. The S3 checks share one client, built the way the
agent builds its own (`store_from_settings`) but with short timeouts and one retry, so the
doctor answers within seconds when the server is down. Whatever the doctor writes to the
bucket (a probe object, a multipart upload) it removes again, or names what it could not.

The package: `checks` (the `Check` line and shared helpers), `s3_client` (the client, its
answers, the credentials found), `s3_verdicts` (what those answers mean), `s3` (the probes
and `s3_checks`), `local` (state directory, sources, inotify) and `systemd` (the unit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from agent.config import Settings
from agent.doctor.checks import (
    ASCII_SYMBOLS,
    FAIL,
    OK,
    SKIPPED,
    SYMBOLS,
    WARNING,
    Check,
    mask_key_id,
    skipped,
)
from agent.doctor.local import (
    MAX_USER_WATCHES,
    MIN_FREE_BYTES,
    SUGGESTED_MIN_WATCHES,
    WATCH_COUNT_CAP,
    check_inotify,
    check_source,
    count_directories,
    free_space_verdict,
    inotify_verdict,
    read_watch_limit,
    state_dir_checks,
    state_filesystem_verdict,
    state_write_verdict,
    suggested_watches,
    try_write,
    watch_verdict,
)
from agent.doctor.s3 import S3_CHECKS, multipart_checks, object_checks, s3_checks
from agent.doctor.s3_client import (
    Answer,
    FoundCredentials,
    S3Probe,
    answer_of,
    doctor_upload_settings,
    find_credentials,
    probe_keys,
)
from agent.doctor.s3_verdicts import (
    MAX_SKEW,
    SKEW_WARNING,
    bucket_verdict,
    checksum_verdict,
    clock_verdict,
    conditional_verdict,
    credentials_verdict,
    endpoint_verdict,
    list_parts_verdict,
    list_uploads_verdict,
    multipart_verdict,
    write_verdict,
)
from agent.doctor.systemd import (
    SYSTEMD_RUN_DIR,
    UNIT,
    Systemctl,
    check_systemd,
    parse_properties,
    systemd_verdict,
)
from agent.errors import ConfigError
from agent.redact import redact

__all__ = [
    "ASCII_SYMBOLS",
    "FAIL",
    "MAX_SKEW",
    "MAX_USER_WATCHES",
    "MIN_FREE_BYTES",
    "OK",
    "S3_CHECKS",
    "SKEW_WARNING",
    "SKIPPED",
    "SUGGESTED_MIN_WATCHES",
    "SYMBOLS",
    "SYSTEMD_RUN_DIR",
    "UNIT",
    "WARNING",
    "WATCH_COUNT_CAP",
    "Answer",
    "Check",
    "FoundCredentials",
    "S3Probe",
    "Systemctl",
    "answer_of",
    "bucket_verdict",
    "check_inotify",
    "check_source",
    "check_systemd",
    "checksum_verdict",
    "clock_verdict",
    "conditional_verdict",
    "config_report",
    "count_directories",
    "credentials_verdict",
    "doctor_upload_settings",
    "endpoint_verdict",
    "exit_code",
    "find_credentials",
    "free_space_verdict",
    "inotify_verdict",
    "list_parts_verdict",
    "list_uploads_verdict",
    "mask_key_id",
    "multipart_checks",
    "multipart_verdict",
    "object_checks",
    "parse_properties",
    "probe_keys",
    "read_watch_limit",
    "render",
    "report_json",
    "run_checks",
    "s3_checks",
    "skipped",
    "state_dir_checks",
    "state_filesystem_verdict",
    "state_write_verdict",
    "suggested_watches",
    "systemd_verdict",
    "try_write",
    "watch_verdict",
    "write_verdict",
]


def render(checks: Sequence[Check], *, ascii_only: bool = False) -> list[str]:
    """Given checks, return the report's lines: "✔ name: detail", and an indented
    "fix: ..." under every failure and warning that has one. Secrets are masked; with
    `ascii_only` (a terminal that cannot show them), no character beyond ASCII."""
    symbols = ASCII_SYMBOLS if ascii_only else SYMBOLS
    lines: list[str] = []
    for check in checks:
        lines.append(f"{symbols[check.status]} {check.name}: {redact(check.detail)}")
        if check.fix and check.status in (FAIL, WARNING):
            lines.append(f"    fix: {redact(check.fix)}")
    if ascii_only:
        lines = [text.replace("…", "...").encode("ascii", "replace").decode() for text in lines]
    return lines


def report_json(checks: Sequence[Check]) -> dict[str, object]:
    """{"ok": bool, "checks": [...]} for `--json`."""
    return {"ok": all(check.ok for check in checks), "checks": [c.as_json() for c in checks]}


def exit_code(checks: Sequence[Check]) -> int:
    """0 when nothing failed (warnings allowed), 1 otherwise."""
    return 0 if all(check.ok for check in checks) else 1


def config_report(error: ConfigError) -> dict[str, object]:
    """The `--json` report when the configuration itself is invalid (exit code 2)."""
    problems = [str(problem) for problem in error.problems]
    check = Check(
        "config",
        FAIL,
        f"{len(problems)} problem(s): " + "; ".join(problems),
        "correct the configuration; `agentctl check-config` lists every problem",
    )
    return {**report_json([check]), "problems": [redact(problem) for problem in problems]}


def run_checks(settings: Settings, *, clock: Callable[[], float] = time.time) -> list[Check]:
    """Given validated settings, run every check and return them in report order."""
    checks = s3_checks(settings, clock=clock)
    checks.extend(state_dir_checks(settings.agent.state_dir))
    checks.extend(
        check_source(source, settings.agent.rescan_interval) for source in settings.sources
    )
    checks.append(check_inotify(settings.sources))
    checks.append(check_systemd())
    return checks
