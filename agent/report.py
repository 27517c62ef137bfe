"""The status report: one read of the state database turned into the verdict and the facts
behind it. `agentctl status`, the metrics and the fleet beat all print this one report, so
they can never disagree.

Reads SQLite only (no S3, no file system walk): it must answer in milliseconds while the
daemon is down, hung or busy.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from agent import __version__, health
from agent.config import Settings
from agent.logs import plain
from agent.redact import redact
from agent.sessions import SESSION_STATES
from agent.state import REFUSED_FLAG, WATCH_MODES_FLAG, State, free_space, nearly_full
from agent.state.rescue import REBUILT_FLAG
from agent.throttle import limit_at
from agent.units import human_age, human_bytes, human_rate, iso

# Sessions whose files are due to be sent now (a failed one is retried later, a waiting one
# is still being written).
SENDING_STATES = ("ready", "uploading")
# Flags in the state (Control): the operator's pause; the last hook failure; when a pause ended.
PAUSED_FLAG = "paused"
HOOK_FLAG = "hook_failed"
# Set by the daemon when a pause (operator's or schedule's) ends: waiting while paused is
# not a stall.
RESUMED_FLAG = "resumed_at"


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def status_report(settings: Settings, state: State, now: float | None = None) -> dict[str, Any]:
    """Read `state` and return the status report (the JSON of `agentctl status --json`),
    whose "code" key holds the Nagios exit code."""
    now = time.time() if now is None else now
    heartbeat = state.control.heartbeat()
    rows = state.queries.source_summary()
    last_error = state.queries.last_error()
    refused = json.loads(state.control.flag(REFUSED_FLAG) or "[]")
    unreadable = state.queries.unreadable_waiting()
    operator_pause = state.control.flag(PAUSED_FLAG) is not None
    hook_failure = state.control.flag(HOOK_FLAG)
    oldest = {name: state.queries.oldest_in(name) for name in ("waiting", "ready", "uploading")}
    last_file_at = state.queries.last_file_uploaded_at()
    watch_modes = json.loads(state.control.flag(WATCH_MODES_FLAG) or "{}")
    rebuilt_flag = state.control.flag(REBUILT_FLAG)
    rebuilt = json.loads(rebuilt_flag) if rebuilt_flag else None
    state_dir = settings.agent.state_dir

    counts = dict.fromkeys(SESSION_STATES, 0)
    files = size = ready_files = ready_bytes = 0
    per_source: dict[str, dict[str, Any]] = {
        source.name: {"sessions": dict.fromkeys(SESSION_STATES, 0), "files": 0, "bytes": 0}
        for source in settings.sources
    }
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + row.sessions
        files += row.files
        size += row.bytes
        if row.state in SENDING_STATES:
            ready_files += row.files
            ready_bytes += row.bytes
        entry = per_source.setdefault(
            row.source, {"sessions": dict.fromkeys(SESSION_STATES, 0), "files": 0, "bytes": 0}
        )
        entry["sessions"][row.state] = entry["sessions"].get(row.state, 0) + row.sessions
        entry["files"] += row.files
        entry["bytes"] += row.bytes

    limit = limit_at(settings.upload.windows, settings.upload.max_bandwidth, datetime.now())
    paused_by = limit.paused_by(operator_pause)
    sending_since = [item[1] for item in (oldest["ready"], oldest["uploading"]) if item]
    progress_at = heartbeat.progress_at if heartbeat else None
    last_sent_at = max((t for t in (last_file_at, progress_at) if t is not None), default=None)
    resumed = state.control.flag(RESUMED_FLAG)
    backlog = health.Backlog(
        ready_since=min(sending_since) if sending_since else None,
        oldest_ready=oldest["ready"],
        last_sent_at=last_sent_at,
        ready_limit=settings.status.ready_warning,
        stall_limit=settings.status.stalled_warning,
        uploading=oldest["uploading"] is not None,
        resumed_at=float(resumed) if resumed else None,
    )
    verdict = health.assess(
        heartbeat,
        counts,
        files,
        last_error,
        now,
        settings.agent.heartbeat_stale,
        health.process_alive(heartbeat) if heartbeat else None,
        paused_by=paused_by,
        backlog=backlog,
        blocked=_blocked(refused, unreadable),
        critical=_state_trouble(state_dir, rebuilt),
    )
    rate = heartbeat.rate if heartbeat is not None and verdict.daemon_running else 0.0
    eta = ready_bytes / rate if rate > 0 and ready_bytes else (0.0 if not ready_bytes else None)

    def aged(item: tuple[str, float] | None) -> dict[str, Any] | None:
        if item is None:
            return None
        return {"id": item[0], "since": iso(item[1]), "age_s": _round(max(0.0, now - item[1]))}

    return {
        "state": verdict.name,
        "code": verdict.code,
        "summary": redact(verdict.summary),
        "agent": {
            "name": settings.agent.name,
            "version": __version__,
            "host": socket.gethostname(),
        },
        "daemon": {
            "running": verdict.daemon_running,
            "pid": heartbeat.pid if heartbeat else None,
            "heartbeat_age_s": _round(verdict.heartbeat_age),
            "status": heartbeat.status if heartbeat else None,
            "host": heartbeat.hostname if heartbeat else None,
            "started_at": iso(heartbeat.started_at) if heartbeat else None,
        },
        "sessions": counts,
        "backlog": {
            "files": files,
            "bytes": size,
            "ready_files": ready_files,
            "ready_bytes": ready_bytes,
            "eta_s": _round(eta, 0),
        },
        "last_error": redact(f"{last_error[0]}: {last_error[1]}") if last_error else None,
        "uploads": {
            "paused": paused_by is not None,
            "paused_by": paused_by,
            "max_bandwidth": limit.max_bandwidth,
            "rate_bytes_per_s": round(rate),
            "last_upload_at": iso(last_file_at),
            "last_upload_age_s": _round(None if last_file_at is None else now - last_file_at),
            "last_sent_at": iso(last_sent_at),
        },
        "oldest": {
            "waiting": aged(oldest["waiting"]),
            "ready": aged(oldest["ready"]),
        },
        "sources": [
            {
                "name": name,
                # As the daemon last said; None before it ran, or while it is stopped.
                "watch": watch_modes.get(name) if verdict.daemon_running else None,
                "sessions": entry["sessions"],
                "backlog": {"files": entry["files"], "bytes": entry["bytes"]},
            }
            for name, entry in per_source.items()
        ],
        "hooks": {"last_failure": redact(hook_failure) if hook_failure else None},
        # Sessions only a person can help: refused (never recorded) and unreadable ones.
        "blocked": {
            "refused": [
                {"session": redact(item["session"]), "reason": item["reason"]} for item in refused
            ],
            "unreadable": [
                {"session": session, "reason": redact(reason)} for session, reason in unreadable
            ],
        },
        # The state database itself: set aside and rebuilt (until caught up), and its disk.
        "state_db": {
            "rebuilt": (
                {
                    "moved_to": rebuilt["moved_to"],
                    "at": iso(rebuilt["at"]),
                    "reason": redact(rebuilt["reason"]),
                }
                if rebuilt
                else None
            ),
            "disk_free_bytes": free_space(state_dir),
        },
        "thresholds": {
            "heartbeat_stale_s": settings.agent.heartbeat_stale,
            "ready_warning_s": settings.status.ready_warning,
            "stalled_warning_s": settings.status.stalled_warning,
        },
    }


def _state_trouble(state_dir: Path, rebuilt: dict[str, Any] | None) -> str | None:
    """What is wrong with the state database that status must call CRITICAL, or None."""
    if nearly_full(state_dir):
        return (
            f"state disk full: the filesystem of {state_dir} has "
            f"{human_bytes(free_space(state_dir) or 0)} free; uploads are paused until space "
            "is freed there, then resume by themselves"
        )
    if rebuilt:
        return (
            f"state database was damaged and set aside as {rebuilt['moved_to']} at "
            f"{iso(rebuilt['at'])}; rebuilding from the sources (nothing S3 holds is sent "
            "again); this clears once every complete session is uploaded"
        )
    return None


def unknown_report(message: str) -> dict[str, Any]:
    """The report when the database or config cannot be read: UNKNOWN, same shape."""
    return {
        "state": "unknown",
        "code": health.UNKNOWN,
        "summary": message,
        "daemon": {"running": False, "pid": None, "heartbeat_age_s": None},
        "sessions": dict.fromkeys(SESSION_STATES, 0),
        "backlog": {"files": 0, "bytes": 0},
        "last_error": message,
    }


def _counts(sessions: dict[str, int]) -> str:
    return ", ".join(f"{sessions.get(name, 0)} {name}" for name in SESSION_STATES)


def status_lines(report: dict[str, Any]) -> list[str]:
    """`agentctl status` for people: the Nagios line first, then the facts behind it."""
    lines = [f"{report['state'].upper()} - {report['summary']}"]
    if "uploads" not in report:
        return lines
    backlog, uploads, daemon = report["backlog"], report["uploads"], report["daemon"]
    lines.append("sessions: " + _counts(report["sessions"]))
    text = f"backlog: {backlog['files']} file(s), {human_bytes(backlog['bytes'])}"
    if backlog["ready_files"]:
        text += (
            f"; ready to send: {backlog['ready_files']} file(s), "
            f"{human_bytes(backlog['ready_bytes'])}"
        )
        if backlog["eta_s"] is not None and uploads["rate_bytes_per_s"]:
            text += (
                f", ETA {human_age(backlog['eta_s'])} at {human_rate(uploads['rate_bytes_per_s'])}"
            )
        elif uploads["paused"]:
            text += f", paused by {uploads['paused_by']}"
        else:
            text += ", nothing being sent now"
    lines.append(text)
    for label, key in (("oldest waiting", "waiting"), ("oldest ready", "ready")):
        item = report["oldest"][key]
        if item is not None:
            lines.append(f"{label}: {item['id']} ({human_age(item['age_s'])})")
    if uploads["last_upload_at"] is None:
        lines.append("last upload: none yet")
    else:
        lines.append(
            f"last upload: {uploads['last_upload_at']} "
            f"({human_age(max(0.0, uploads['last_upload_age_s']))} ago)"
        )
    for source in report["sources"]:
        watched = f"; watched by {source['watch']}" if source.get("watch") else ""
        lines.append(
            f"source {source['name']}: {_counts(source['sessions'])}; backlog "
            f"{source['backlog']['files']} file(s), {human_bytes(source['backlog']['bytes'])}"
            f"{watched}"
        )
    for item in report["blocked"]["refused"]:
        lines.append(plain(f"refused session {item['session']}: {item['reason']}"))
    for item in report["blocked"]["unreadable"]:
        lines.append(plain(f"cannot read session {item['session']}: {item['reason']}"))
    if report["hooks"]["last_failure"]:
        lines.append(f"hook on_uploaded last failed: {report['hooks']['last_failure']}")
    if daemon["pid"] is not None:
        lines.append(
            f"daemon: pid {daemon['pid']} on {daemon['host']}, started {daemon['started_at']}: "
            f"{daemon['status']}"
        )
    return lines


def _blocked(refused: list[dict[str, str]], unreadable: list[tuple[str, str]]) -> str | None:
    """The status summary's words for sessions that cannot go up as they are, or None."""
    parts = []
    if refused:
        first = refused[0]
        parts.append(f"{len(refused)} session(s) refused ({first['session']}: {first['reason']})")
    if unreadable:
        session, reason = unreadable[0]
        parts.append(
            f"{len(unreadable)} session(s) waiting on what cannot be read ({session}: "
            f"{reason}; check its permissions)"
        )
    return plain(redact("; ".join(parts))) if parts else None
