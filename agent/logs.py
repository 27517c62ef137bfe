"""Logging setup: one structlog pipeline, three renderers (journald, console, JSON lines).

Only imported for setup, and by the daemon's main loop to flush storm summaries
(`flush_repeats`). Every event passes through the same processors: level filter, storm
control, secret masking, then the renderer `configure` chose:
- journald (under systemd, or `log_target = "journald"`): one journal entry per event through
  `systemd.journal.send`, MESSAGE a one-line sentence and our fields (EVENT, SESSION_ID, ...);
  if the journal socket is unavailable, stderr JSON lines after one warning;
- console on a terminal, JSON lines otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import structlog

from agent.redact import SECRETS, redact_value

IDENTIFIER = "ingest-agent"
# Where sd_journal_send writes. It drops entries silently when the socket is missing, so the
# agent looks for it itself before choosing the journal.
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
STORM_WINDOW = 60.0

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# syslog priorities, as journald expects them in PRIORITY.
_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "exception": 3, "critical": 2}

# Our field names → journald's. Anything else is upper-cased as it is.
JOURNAL_FIELDS = {
    "event": "EVENT",
    "session": "SESSION_ID",
    "source": "SOURCE",
    "file": "FILE",
    "key": "OBJECT_KEY",
    "bytes": "BYTES",
    "upload_id": "UPLOAD_ID",
    "error": "ERROR",
}
# Fields journald or the journal's readers treat specially; ours never take these names.
_RESERVED = frozenset(
    {"MESSAGE", "MESSAGE_ID", "PRIORITY", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "ERRNO"}
    | {"SYSLOG_IDENTIFIER", "SYSLOG_FACILITY", "SYSLOG_PID", "SYSLOG_TIMESTAMP"}
    | {"INVOCATION_ID", "USER_INVOCATION_ID", "UNIT", "USER_UNIT", "TID"}
)
# Dropped from journal entries: journald stamps time and level itself.
_NOT_JOURNALLED = frozenset({"timestamp", "level", "logger", "pathname", "lineno", "func_name"})


def under_systemd(environ: Mapping[str, str]) -> bool:
    """Whether systemd started us with its journal or notify socket (the contract's rule)."""
    return any(name in environ for name in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET"))


def choose_target(configured: str, environ: Mapping[str, str], stream: TextIO) -> str:
    """Given `log_target` from config, the environment and the output stream, return one of
    journald, console or json. This is the one place the renderer is chosen."""
    if configured != "auto":
        return configured
    if under_systemd(environ):
        return "journald"
    return "console" if stream.isatty() else "json"


# --- text hygiene ---------------------------------------------------------------------------

# Characters that could forge lines or reorder what a reader sees: C0/C1 controls, the
# bidirectional overrides and isolates, zero-width characters, line/paragraph separators.
_UNSAFE = frozenset(
    (*range(0x00, 0x20), *range(0x7F, 0xA0), *range(0x200B, 0x2010), *range(0x202A, 0x202F))
) | frozenset((*range(0x2066, 0x206A), 0x2028, 0x2029, 0xFEFF))


def plain(value: object) -> str:
    """Given any value, return one line of printable text: control, bidi and zero-width
    characters become escapes such as `\\n` or `\\u202e`; undecodable bytes of a file name
    (surrogate escapes) become `\\xff`."""
    text = value if isinstance(value, str) else str(value)
    if text.isascii() and text.isprintable():
        return text
    out: list[str] = []
    for character in text:
        code = ord(character)
        if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's escape for an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        elif code in _UNSAFE:
            out.append(character.encode("unicode_escape").decode("ascii"))
        else:
            out.append(character)
    return "".join(out)


# --- processors -----------------------------------------------------------------------------


def mask_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: mask known secrets and secret shapes in every value. A value of
    any other type (an exception, a path, bytes) is rendered as text first, since that is
    how it would reach the output."""
    for name, value in event_dict.items():
        if value is not None and not isinstance(value, bool | int | float):
            event_dict[name] = redact_value(value)
    return event_dict


@dataclass
class _Storm:
    first_at: float
    level: str
    suppressed: int = 0


@dataclass
class Repeat:
    """A summary of identical events that were not logged one by one."""

    event: str
    error: str
    level: str
    count: int
    seconds: float

    def sentence(self) -> str:
        """'SlowDown (503) x 3,214 in the last 60 s'."""
        what = self.error or self.event
        return f"{what} x {self.count:,} in the last {self.seconds:.0f} s ({self.event})"


@dataclass
class StormControl:
    """Lets the first of a run of identical warnings or errors through and counts the rest.

    Identical means the same event name and the same `error` (or `reason`) text; the session
    or file it concerns does not count, so a bucket that vanished is one line and a summary
    a minute, not one line per file. `flush` returns the summaries of windows that ended.
    """

    window: float = STORM_WINDOW
    clock: Callable[[], float] = time.monotonic
    _storms: dict[tuple[str, str], _Storm] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, _logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        """structlog processor: drop an event that repeats one seen within the window."""
        level = str(event_dict.get("level", method))
        if _LEVELS.get(level, logging.ERROR) < logging.WARNING or "repeated" in event_dict:
            return event_dict
        error = str(event_dict.get("error") or event_dict.get("reason") or "")
        if not error:
            # Without an error text two events may differ in everything that matters (which
            # upload was aborted, which exception): each is logged.
            return event_dict
        identity = (str(event_dict.get("event", "")), error)
        now = self.clock()
        with self._lock:
            storm = self._storms.get(identity)
            if storm is not None and now - storm.first_at < self.window:
                storm.suppressed += 1
                raise structlog.DropEvent
            if storm is not None and storm.suppressed:
                event_dict["repeated"] = storm.suppressed
            self._storms[identity] = _Storm(now, level)
        return event_dict

    def flush(self, *, final: bool = False) -> list[Repeat]:
        """Summaries of the windows that have ended with events suppressed (with `final`, of
        every window: the process is ending); those windows close, so the next identical
        event is logged in full again."""
        now = self.clock()
        ended: list[Repeat] = []
        with self._lock:
            for identity, storm in list(self._storms.items()):
                elapsed = now - storm.first_at
                if elapsed < self.window and not final:
                    continue
                del self._storms[identity]
                if storm.suppressed:
                    seconds = min(max(elapsed, 1.0), self.window)
                    ended.append(
                        Repeat(identity[0], identity[1], storm.level, storm.suppressed, seconds)
                    )
        return ended


# --- journald -------------------------------------------------------------------------------


def journal_name(name: str) -> str:
    """Our field name → a valid journald field name (A-Z, 0-9, _; no leading _ or digit)."""
    mapped = JOURNAL_FIELDS.get(name)
    if mapped is not None:
        return mapped
    upper = "".join(c if c.isascii() and c.isalnum() else "_" for c in name.upper()).lstrip("_")
    if not upper or upper[0].isdigit() or upper in _RESERVED:
        upper = f"AGENT_{upper}"
    return upper[:64]


def sentence(event_dict: Mapping[str, Any]) -> str:
    """One human line for an event: 'Session ready: ephys/m1/s1 (files=3, bytes=1024)'."""
    if "message" in event_dict:
        return plain(event_dict["message"])
    event = str(event_dict.get("event", "event"))
    words = event.replace("_", " ")
    text = words[:1].upper() + words[1:]
    subject = event_dict.get("session") or event_dict.get("key") or event_dict.get("source")
    if subject:
        text += f": {subject}"
    if event_dict.get("file"):
        text += f", file {event_dict['file']}"
    if event_dict.get("error"):
        text += f": {event_dict['error']}"
    elif event_dict.get("reason"):
        text += f" ({event_dict['reason']})"
    skip = {"event", "session", "file", "error", "reason", "message", "exception"}
    details = [
        f"{name}={value}"
        for name, value in event_dict.items()
        if name not in skip
        and name not in _NOT_JOURNALLED
        and value is not None
        and not (name in ("key", "source") and value == subject)
    ]
    if details:
        text += f" ({', '.join(details)})"
    return plain(text)


def journal_fields(event_dict: Mapping[str, Any]) -> dict[str, str]:
    """Given a processed event, return the journal entry's fields, every value plain text
    (a newline in a file name cannot start a forged entry or line)."""
    level = str(event_dict.get("level", "info"))
    fields = {
        "MESSAGE": sentence(event_dict),
        "PRIORITY": str(_PRIORITIES.get(level, 6)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "CODE_FILE": plain(event_dict.get("pathname", "")),
        "CODE_LINE": str(event_dict.get("lineno", "")),
        "CODE_FUNC": plain(event_dict.get("func_name", "")),
    }
    for name, value in event_dict.items():
        if name in _NOT_JOURNALLED or name == "message" or value is None:
            continue
        rendered = value if isinstance(value, str) else json.dumps(value, default=str)
        fields[journal_name(name)] = plain(rendered)
    session = event_dict.get("session")
    if "SOURCE" not in fields and isinstance(session, str) and "/" in session:
        fields["SOURCE"] = plain(session.split("/", 1)[0])
    return fields


def render_journal(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog renderer: the event as journal fields (passed on as keyword arguments)."""
    return journal_fields(event_dict)


Sender = Callable[..., None]


def _journal_sender() -> Sender | None:
    try:
        from systemd import journal  # noqa: PLC0415 - optional at import, needed only here
    except ImportError:
        return None
    send: Sender = journal.send
    return send


class JournalLogger:
    """Writes journal entries; after the first failure (no journal socket), JSON lines on
    `fallback` with one warning first. Never raises."""

    def __init__(self, send: Sender | None, fallback: TextIO, socket: Path | None) -> None:
        self._send = send
        self._fallback = fallback
        self._lock = threading.Lock()
        self._warned = False
        if send is None:
            self._fall_back("systemd-python is not installed")
        elif socket is not None and not socket.exists():
            self._fall_back(f"no journal socket at {socket}")

    def _fall_back(self, why: str) -> None:
        self._send = None
        if not self._warned:
            self._warned = True
            self._write({"MESSAGE": f"journald unavailable ({why}); logging to stderr instead"})

    def _write(self, fields: Mapping[str, str]) -> None:
        line = json.dumps(
            {name.lower(): value for name, value in fields.items() if not name.startswith("CODE")},
            sort_keys=True,
        )
        # Nowhere left to log to: the daemon must go on regardless.
        with self._lock, contextlib.suppress(OSError, ValueError):
            print(line, file=self._fallback, flush=True)

    def msg(self, **fields: str) -> None:
        """Send one entry."""
        send = self._send
        if send is not None:
            try:
                message = fields.pop("MESSAGE")
                line = fields.pop("CODE_LINE", "")
                # systemd-python formats CODE_LINE with {:d}: it must be an int or absent.
                send(message, **fields, **({"CODE_LINE": int(line)} if line.isdigit() else {}))
                return
            except (OSError, ValueError) as error:
                fields = {"MESSAGE": message, **fields}
                self._fall_back(f"{type(error).__name__}: {error}")
        self._write(fields)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


# --- configuration --------------------------------------------------------------------------

_storms = StormControl()
_repeat_log = structlog.get_logger("agent.logs")


def flush_repeats(*, final: bool = False) -> None:
    """Log one summary per run of identical events whose window has ended (with `final`,
    of every run so far: call it when the process ends)."""
    for repeat in _storms.flush(final=final):
        log_method = getattr(_repeat_log, repeat.level, _repeat_log.warning)
        log_method(
            "repeated",
            message=repeat.sentence(),
            repeated_event=repeat.event,
            error=repeat.error or None,
            count=repeat.count,
            seconds=repeat.seconds,
            repeated=True,
        )


def configure(
    level: str = "info",
    stream: TextIO | None = None,
    *,
    target: str = "auto",
    force_json: bool = False,
    environ: Mapping[str, str] | None = None,
    storms: StormControl | None = None,
    journal_send: Sender | None = None,
    journal_socket: Path | None = JOURNAL_SOCKET,
) -> str:
    """Set up the one pipeline and return the chosen target (journald, console or json).

    `stream` (default stderr) takes console and JSON lines, and journald's fallback.
    `journal_send` replaces `systemd.journal.send` (tests use it to capture entries);
    `journal_socket` is the socket that must exist for the journal to be used (None: do not
    look; only with an injected sender).
    """
    global _storms  # noqa: PLW0603 - the pipeline is process-wide, as structlog's is
    stream = stream or sys.stderr
    environ = os.environ if environ is None else environ
    chosen = "json" if force_json else choose_target(target, environ, stream)
    SECRETS.add_environment(dict(environ))
    _storms = storms or StormControl()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _storms,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        mask_secrets,
    ]
    logger_factory: Any
    if chosen == "journald":
        processors.append(
            structlog.processors.CallsiteParameterAdder(
                {
                    structlog.processors.CallsiteParameter.PATHNAME,
                    structlog.processors.CallsiteParameter.LINENO,
                    structlog.processors.CallsiteParameter.FUNC_NAME,
                }
            )
        )
        processors.append(render_journal)
        if journal_send is not None:
            sender: Sender | None = journal_send
        else:
            sender = _journal_sender()
        journal_logger = JournalLogger(sender, stream, journal_socket)

        def logger_factory(*_arguments: Any) -> JournalLogger:
            return journal_logger

    elif chosen == "console":
        # The console renderer shows values by repr(): control and bidi characters come out
        # escaped, so a name cannot forge a line there either.
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
        logger_factory = structlog.PrintLoggerFactory(stream)
    else:
        processors.append(structlog.processors.JSONRenderer(sort_keys=True))
        logger_factory = structlog.PrintLoggerFactory(stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )
    return chosen
