"""Ingest: one agent's sessions from its sources to S3, and their states settled.

Composes observation (agent/observe.py: scan, record, judge) with the upload engine
(agent/upload.py). `start_up` is the one start-up sequence of the daemon and `sync`: sessions
a crash left `uploading` are put back, multipart uploads never recorded are aborted, then
every source is reconciled, so a session is always judged again before it is uploaded.
`upload` sends one ready session and settles its state, whatever goes wrong.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import structlog

from agent import sessions
from agent.config import Settings
from agent.errors import PermanentTransferError, StateDiskError, StateError, TransferError
from agent.observe import Observer, source_key_root
from agent.state import SessionRecord, State
from agent.transfer import S3Store
from agent.upload import SessionUploader, UploadOutcome

log = structlog.get_logger("agent.ingest")


def log_retry(error: TransferError, attempt: int, delay: float) -> None:
    """The store's retry callback for `sync` and the daemon: one warning per retry, whose
    `error` is the server's answer without the key, so a storm of identical answers for many
    files is summarised as one line a minute."""
    log.warning(
        "s3_retry",
        error=error.reason,
        operation=error.operation,
        key=error.key,
        attempt=attempt,
        delay_s=round(delay, 2),
    )


class Ingest:
    """Observes, uploads and recovers for one agent."""

    def __init__(
        self,
        settings: Settings,
        state: State,
        store: S3Store,
        *,
        clock: Callable[[], float] = time.time,
        on_outcome: Callable[[SessionRecord, UploadOutcome, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.store = store
        self.clock = clock
        # Told of every session upload's outcome and its seconds (metrics, hooks): after the
        # state is settled, so it may read it.
        self.on_outcome = on_outcome
        self.observer = Observer(settings, state, clock=clock)
        self.observe = self.observer.observe
        self.reconcile = self.observer.reconcile
        self.recheck_waiting = self.observer.recheck_waiting
        self.uploader = SessionUploader(settings, state.ledger, store, clock=clock)

    def start_up(self, tick: Callable[[], bool] | None = None) -> TransferError | None:
        """Recover, then reconcile (see the module's docstring). A failure to list or abort
        orphan uploads does not stop the start; it is logged and returned."""
        self.observer.recover_sessions()
        problem: TransferError | None = None
        try:
            self.abort_orphans()
        except TransferError as error:
            log.error("recovery_failed", error=str(error))
            problem = error
        self.reconcile(tick)
        return problem

    # --- uploading ----------------------------------------------------------------------------

    def recover_sessions(self) -> None:
        """Sessions left `uploading` (by a crash, or a write the state disk refused) become
        `ready`, to be judged again."""
        self.observer.recover_sessions()

    def due_sessions(self) -> list[SessionRecord]:
        """Ready sessions, and failed ones whose retry time has come, oldest first."""
        now = self.clock()
        candidates = self.state.sessions.in_states((sessions.READY, sessions.FAILED))
        return [record for record in candidates if self._is_due(record, now)]

    @staticmethod
    def _is_due(record: SessionRecord, now: float) -> bool:
        return record.state == sessions.READY or (
            record.state == sessions.FAILED
            and record.next_attempt_at is not None
            and record.next_attempt_at <= now
        )

    def upload(self, record: SessionRecord) -> UploadOutcome:
        """Upload one session and settle its state: uploaded, back to waiting (a file changed),
        back to ready (interrupted), or failed with the reason and a retry time. A session no
        longer due when its turn comes (moved since it was listed) is skipped untouched, with
        an interrupted outcome."""
        fresh = self.state.sessions.get(record.id)
        if fresh is None or not self._is_due(fresh, self.clock()):
            # Listed as due, but changed since (a new file reopened it, say): not this time.
            log.info("session_upload_skipped", session=record.id, state=fresh and fresh.state)
            return UploadOutcome(interrupted=True)
        if not self.state.sessions.move(
            record.id, sessions.UPLOADING, expect=fresh.state, reason=None
        ):
            log.info("session_upload_skipped", session=record.id, state="moved meanwhile")
            return UploadOutcome(interrupted=True)
        record = fresh
        log.info(
            "session_upload_started", session=record.id, files=record.files, bytes=record.bytes
        )
        started = self.clock()
        try:
            outcome = self.uploader.upload_session(record)
        except StateDiskError:
            # The disk under the database, not the session, is at fault: no failure is
            # recorded against the session (nor could be). It is sent again once the daemon
            # can write; what S3 acknowledged and was recorded is not sent twice.
            with contextlib.suppress(StateError):
                self.state.sessions.move(record.id, sessions.READY, reason="state disk trouble")
            raise
        except TransferError as error:
            outcome = UploadOutcome(errors=[error])
        except OSError as error:
            outcome = UploadOutcome(errors=[TransferError("read", record.path, str(error))])
        except Exception as error:  # a bug must not leave the session `uploading`
            log.error("session_upload_crashed", session=record.id, exc_info=True)
            reason = f"unexpected {type(error).__name__}: {error}"
            outcome = UploadOutcome(errors=[PermanentTransferError("upload", record.path, reason)])
        elapsed = max(self.clock() - started, 1e-6)
        if outcome.complete:
            log.info(
                "session_uploaded",
                session=record.id,
                files_sent=outcome.files_sent,
                bytes_sent=outcome.bytes_sent,
                seconds=round(elapsed, 3),
                mb_per_s=round(outcome.bytes_sent / elapsed / 1e6, 2),
                manifest=outcome.manifest_key,
            )
        elif outcome.errors:
            first_error = outcome.errors[0]
            attempts = record.attempts + 1
            delay = min(
                self.settings.upload.failed_retry_delay * 2 ** min(attempts - 1, 6), 86400.0
            )
            self.state.sessions.fail(record.id, str(first_error), self.clock() + delay)
            log.error(
                "session_failed",
                session=record.id,
                error=str(first_error),
                retryable=first_error.retryable,
                retry_in_s=round(delay),
            )
        elif outcome.interrupted:
            self.state.sessions.move(record.id, sessions.READY, reason="interrupted; resumes")
        else:
            reason = f"changed during upload: {', '.join(outcome.changed[:3])}"
            log.warning("session_changed_during_upload", session=record.id, files=outcome.changed)
            # Forget the listing's fingerprint so the next scan records the files afresh even
            # if names, sizes and mtimes look the same (a file swapped for a copy, or for a
            # link, keeps them): otherwise the stale inode would fail every later attempt.
            self.state.sessions.move(record.id, sessions.WAITING, reason=reason, fingerprint="")
        if self.on_outcome is not None:
            self.on_outcome(record, outcome, elapsed)
        return outcome

    def growing_sessions(self) -> list[SessionRecord]:
        """Waiting sessions of sources that upload files while they grow."""
        growing = {source.name for source in self.settings.sources if source.upload_while_growing}
        if not growing:
            return []
        return [
            record
            for record in self.state.sessions.in_states((sessions.WAITING,))
            if record.source in growing and not record.local_missing
        ]

    def upload_growing(self, record: SessionRecord) -> UploadOutcome:
        """Send the stable leading parts of a waiting session's growing files, so that the
        session is complete in S3 soon after acquisition ends. Never changes its state."""
        source = self.settings.source(record.source)
        try:
            outcome = self.uploader.upload_growing(record, source.growing_part_size)
        except StateDiskError:
            raise
        except TransferError as error:
            outcome = UploadOutcome(errors=[error])
        except OSError as error:
            outcome = UploadOutcome(errors=[TransferError("read", record.path, str(error))])
        except Exception as error:  # the ordinary pass takes the session up later
            log.error("growing_upload_crashed", session=record.id, exc_info=True)
            reason = f"unexpected {type(error).__name__}: {error}"
            outcome = UploadOutcome(errors=[PermanentTransferError("upload", record.path, reason)])
        if outcome.bytes_sent:
            log.info("growing_parts_sent", session=record.id, bytes_sent=outcome.bytes_sent)
        for problem in outcome.errors:
            log.warning("growing_upload_error", session=record.id, error=str(problem))
        return outcome

    # --- recovery -----------------------------------------------------------------------------

    def abort_orphans(self) -> None:
        """Abort multipart uploads under our sources' prefixes that the database does not
        know: they were created but never recorded (a crash at that moment)."""
        known = {upload.upload_id for upload in self.state.ledger.all_uploads()}
        roots = {source_key_root(self.settings, source) for source in self.settings.sources}
        if "" in roots:
            log.warning(
                "orphan_check_skipped",
                reason="a source's keys have no fixed prefix, so other writers' multipart "
                "uploads could not be told from ours; set destination.prefix",
            )
            return
        for root in sorted(roots):
            remote_uploads = self.store.list_multipart_uploads(root + "/")
            if remote_uploads is None:
                log.warning(
                    "orphan_check_skipped",
                    reason="the server does not implement ListMultipartUploads, so uploads "
                    "created but never recorded (a crash at that moment) cannot be found and "
                    "aborted; a lifecycle rule AbortIncompleteMultipartUpload cleans them up",
                )
                return
            for remote in remote_uploads:
                if remote.upload_id not in known:
                    log.warning("orphan_upload_aborted", key=remote.key, upload_id=remote.upload_id)
                    self.store.abort_multipart(remote.key, remote.upload_id)
