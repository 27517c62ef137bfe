"""`[hooks] on_uploaded`: a command the operator wants run once a session is complete in S3,
e.g. to queue the analysis pipeline. It runs in its own thread, time-limited, with the
session's facts in its environment; it never blocks uploads. A failure (non-zero exit, a
timeout, a command that cannot start) is logged and kept in the state database so `status`
shows it until a later run succeeds.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable

import structlog

from agent.config import Settings
from agent.redact import redact
from agent.state import SessionRecord

log = structlog.get_logger("agent.hooks")

# How much of a failed hook's output is kept for the log and `status`.
OUTPUT_TAIL = 500


def hook_environment(
    settings: Settings, record: SessionRecord, manifest_key: str | None
) -> dict[str, str]:
    """The variables a hook is given, on top of the agent's own environment."""
    return {
        "INGEST_SESSION_ID": record.id,
        "INGEST_SOURCE": record.source,
        "INGEST_SESSION_PATH": record.path,
        "INGEST_BUCKET": settings.destination.bucket,
        "INGEST_KEY_PREFIX": record.key_prefix,
        "INGEST_MANIFEST_KEY": manifest_key or record.manifest_key or "",
        "INGEST_AGENT": settings.agent.name,
    }


class Hooks:
    """Runs `on_uploaded` in the background and reports each result to `record_failure`
    (the failure's text, or None after a success)."""

    def __init__(
        self,
        settings: Settings,
        record_failure: Callable[[str | None], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.record_failure = record_failure
        self.clock = clock
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def session_uploaded(self, record: SessionRecord, manifest_key: str | None) -> None:
        """Start the hook for this session, if one is configured; return at once."""
        command = self.settings.hooks.on_uploaded
        if command is None:
            return
        environment = hook_environment(self.settings, record, manifest_key)
        thread = threading.Thread(
            target=self._run, args=(command, environment), name="hook", daemon=True
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _run(self, command: tuple[str, ...], environment: dict[str, str]) -> None:
        session = environment["INGEST_SESSION_ID"]
        timeout = self.settings.hooks.timeout
        started = time.monotonic()
        try:
            result = subprocess.run(
                command,
                env={**os.environ, **environment},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            failure = f"{session}: did not finish within {timeout:g} s and was killed"
        except OSError as error:
            failure = f"{session}: cannot start {command[0]!r}: {error.strerror or error}"
        else:
            if result.returncode == 0:
                log.info(
                    "hook_finished",
                    hook="on_uploaded",
                    session=session,
                    seconds=round(time.monotonic() - started, 3),
                )
                self.record_failure(None)
                return
            output = (result.stderr or result.stdout).decode("utf-8", "replace").strip()
            failure = f"{session}: exit {result.returncode}"
            if output:
                failure += f": {output[-OUTPUT_TAIL:]}"
        failure = redact(failure)
        log.error("hook_failed", hook="on_uploaded", session=session, error=failure)
        self.record_failure(failure)

    def wait(self, timeout: float) -> None:
        """Wait up to `timeout` seconds in all for the hooks still running (at exit)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
