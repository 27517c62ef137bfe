"""`[hooks] on_uploaded`: a command the operator wants run once a session is complete in S3,
e.g. to queue the analysis pipeline. It never blocks uploads: sessions are queued to one
worker thread, which runs one hook at a time (a backfill of 500 sessions must not start 500
processes on the acquisition computer). Each run is time-limited: at the timeout its whole
process group is killed, so what it started in the background goes too. Its output goes to a
temporary file of which only the end is kept (a chatty hook cannot fill the agent's memory).
It gets the session's facts in its environment, and not the agent's AWS credentials. A
failure (non-zero exit, a timeout, a command that cannot start) is logged and kept in the
state database, so `status` shows it until a later run succeeds.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

import structlog

from agent.config import Settings
from agent.redact import redact
from agent.state import SessionRecord

log = structlog.get_logger("agent.hooks")

# How much of a failed hook's output is kept for the log and `status`.
OUTPUT_TAIL = 500
# Sessions waiting for their hook; beyond this, the oldest waiting ones are dropped (logged).
QUEUE_LIMIT = 10_000
# The agent's own credentials stay with the agent: a hook that needs S3 uses its own.
WITHHELD = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def hook_environment(
    settings: Settings, record: SessionRecord, manifest_key: str | None
) -> dict[str, str]:
    """The environment a hook runs with: the agent's, without its AWS credentials, plus the
    session's facts."""
    environment = {name: value for name, value in os.environ.items() if name not in WITHHELD}
    environment.update(
        {
            "INGEST_SESSION_ID": record.id,
            "INGEST_SOURCE": record.source,
            "INGEST_SESSION_PATH": record.path,
            "INGEST_BUCKET": settings.destination.bucket,
            "INGEST_KEY_PREFIX": record.key_prefix,
            "INGEST_MANIFEST_KEY": manifest_key or record.manifest_key or "",
            "INGEST_AGENT": settings.agent.name,
        }
    )
    return environment


def _tail(handle: BinaryIO) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - 4 * OUTPUT_TAIL))
    text = handle.read().decode("utf-8", "replace").strip()
    return text[-OUTPUT_TAIL:]


def run_hook(command: tuple[str, ...], environment: dict[str, str], timeout: float) -> str | None:
    """Run one hook to its end or its timeout; return None on success, else what went wrong
    (with the end of its output)."""
    session = environment["INGEST_SESSION_ID"]
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen(
                command,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed whole at the timeout
            )
        except OSError as error:
            return f"{session}: cannot start {command[0]!r}: {error.strerror or error}"
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return f"{session}: did not finish within {timeout:g} s and was killed"
        if code == 0:
            return None
        text = _tail(output)
        return f"{session}: exit {code}" + (f": {text}" if text else "")


class Hooks:
    """Runs `on_uploaded` for each uploaded session, one at a time, in a worker thread, and
    reports each result to `record_failure` (the failure's text, or None after a success)."""

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
        self._queue: queue.Queue[dict[str, str]] = queue.Queue()
        self._idle = threading.Condition()
        self._busy = 0  # hooks queued or running
        self._worker: threading.Thread | None = None

    def session_uploaded(self, record: SessionRecord, manifest_key: str | None) -> None:
        """Queue the hook for this session, if one is configured; return at once."""
        if self.settings.hooks.on_uploaded is None:
            return
        if self._queue.qsize() >= QUEUE_LIMIT:
            log.error("hook_skipped", hook="on_uploaded", session=record.id, reason="queue full")
            return
        with self._idle:
            self._busy += 1
        self._queue.put(hook_environment(self.settings, record, manifest_key))
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="hooks", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        command = self.settings.hooks.on_uploaded
        assert command is not None
        while True:
            environment = self._queue.get()
            session = environment["INGEST_SESSION_ID"]
            started = time.monotonic()
            try:
                failure = run_hook(command, environment, self.settings.hooks.timeout)
                if failure is None:
                    log.info(
                        "hook_finished",
                        hook="on_uploaded",
                        session=session,
                        seconds=round(time.monotonic() - started, 3),
                    )
                else:
                    failure = redact(failure)
                    log.error("hook_failed", hook="on_uploaded", session=session, error=failure)
                self.record_failure(failure)
            except Exception:  # the database busy at that moment, say: the worker lives on
                log.exception("hook_failed", hook="on_uploaded", session=session)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for queued and running hooks; return whether all
        finished."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True
