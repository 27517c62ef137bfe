"""`agentctl sync`: one pass over every source, the same start-up as the daemon's, then every
due session uploaded in turn."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from agent import sessions
from agent.config import Settings
from agent.errors import TransferError
from agent.hooks import Hooks
from agent.ingest import Ingest, log_retry
from agent.report import HOOK_FLAG
from agent.state import SessionRecord, State
from agent.throttle import limit_at
from agent.transfer import S3Store, store_from_settings
from agent.upload import UploadOutcome


@dataclass
class SyncSummary:
    """What one pass did."""

    uploaded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    waiting: int = 0
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    recovery_error: TransferError | None = None
    refused: list[tuple[str, str]] = field(default_factory=list)  # (session, reason)


class SyncPass:
    """One pass: `start` (recover, reconcile; returns the due sessions), `upload` each, then
    `finish`. The caller draws progress between the steps."""

    def __init__(self, settings: Settings, state: State, store: S3Store | None = None) -> None:
        self.settings = settings
        self.state = state
        self.store = store or store_from_settings(
            settings.destination, settings.upload, on_retry=log_retry
        )
        # A one-off pass keeps to the bandwidth of the time window it starts in; a paused
        # window does not stop it (the operator asked for it).
        limit = limit_at(settings.upload.windows, settings.upload.max_bandwidth, datetime.now())
        self.store.limiter.set_rate(limit.max_bandwidth)
        self.hooks = Hooks(
            settings, lambda failure: state.control.set_flag(HOOK_FLAG, failure, time.time())
        )
        self.ingest = Ingest(settings, state, self.store, on_outcome=self._on_outcome)
        self.summary = SyncSummary()
        self._started = time.monotonic()

    def _on_outcome(self, record: SessionRecord, outcome: UploadOutcome, _seconds: float) -> None:
        if outcome.complete:
            self.hooks.session_uploaded(record, outcome.manifest_key)

    def start(self) -> list[SessionRecord]:
        """The daemon's start-up sequence; return the sessions due for upload, oldest first."""
        self._started = time.monotonic()
        self.summary.recovery_error = self.ingest.start_up()
        return self.ingest.due_sessions()

    def upload(self, record: SessionRecord) -> UploadOutcome:
        """Upload one due session and count its outcome."""
        outcome = self.ingest.upload(record)
        self.summary.files += outcome.files_sent
        self.summary.bytes += outcome.bytes_sent
        if outcome.complete:
            self.summary.uploaded.append(record.id)
        elif outcome.errors:
            self.summary.failed.append(record.id)
        # else: a file changed while being sent; the session waits to be quiet again.
        return outcome

    def finish(self) -> SyncSummary:
        """Count what still waits and let the hooks of this pass finish."""
        self.summary.waiting = len(self.state.sessions.in_states((sessions.WAITING,)))
        self.summary.refused = self.ingest.observer.refusals()
        self.summary.seconds = max(time.monotonic() - self._started, 1e-6)
        # A one-off run lets its hooks finish (each is killed at its own timeout).
        self.hooks.wait(self.settings.hooks.timeout * (len(self.summary.uploaded) + 1))
        return self.summary
