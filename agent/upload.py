"""The upload engine: sends a session's pending files and its manifest, recording every step.

`SessionUploader` composes the parts in `agent.engine`: it sorts a session's pending files
(already in S3, small, large), has the `Reader` turn them into units and the one `Pipeline`
send them, then writes the manifest. The growing pass runs on the same pipeline. One
producer (the calling thread) reads files in order, feeding each byte once to the checksum
and to the upload; small files and parts of large files are interleaved in the pool, so
neither starves the other; one byte budget bounds the memory in flight.

Crash safety: a multipart upload id is recorded the moment the server returns it, and each
part as soon as the server acknowledges it; a file is recorded as uploaded only after the
object is complete and the local file is unchanged. After a restart, recorded parts are not
sent again (see `agent.engine.multipart`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.config import Settings
from agent.engine.context import EngineContext
from agent.engine.manifest import write_manifest
from agent.engine.pipeline import ByteBudget, Pipeline, UploadOutcome, interleave
from agent.engine.reading import Reader
from agent.engine.single_put import SinglePut
from agent.state import FileRecord, Ledger, SessionRecord
from agent.transfer import S3Store

__all__ = ["ByteBudget", "SessionUploader", "UploadOutcome"]


# Pending files read and sent per page (see upload_session).
PAGE = 5_000


class SessionUploader:
    """Uploads sessions for one agent: its settings, upload ledger and S3 store."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        store: S3Store,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.context = EngineContext(settings, ledger, store, clock)
        self.budget = ByteBudget(settings.upload.max_memory)
        self.single_put = SinglePut(self.context)
        self.reader = Reader(self.context, self.budget, self.single_put)
        self.pipeline = Pipeline(self.budget, settings.upload.concurrency, store.stop)
        self.page = PAGE

    def upload_session(self, session: SessionRecord) -> UploadOutcome:
        """Send every pending file of `session`, then its manifest. Return what happened.

        Transfer errors are collected in the outcome (the caller decides the session's state);
        files that changed while being read are listed in `changed` and left pending.
        """
        context = self.context
        outcome = UploadOutcome()
        remote_sizes: dict[str, int] | None = None
        after: str | None = None
        # A page of pending files at a time: a session of 100,000 files never holds all its
        # records (measured: 590 MiB peak at 100,000 files before paging and the streamed
        # manifest).
        while page := context.ledger.pending_files(session.id, after=after, limit=self.page):
            after = page[-1].rel_path
            if remote_sizes is None:
                remote_sizes = self._remote_sizes(session, page)
            small, large = self._sort_pending(session, page, remote_sizes, outcome)
            del page
            units = interleave(
                self.reader.small_files(session, small), self.reader.large_files(session, large)
            )
            del small, large  # they go with the units as those are consumed
            self.pipeline.run(units, outcome, name="upload")
            if outcome.interrupted:
                return outcome
        if outcome.errors or outcome.changed:
            return outcome
        if context.ledger.pending_files(session.id, limit=1):
            # A file appeared or changed after we started: the next pass picks it up.
            outcome.changed.append("(new files)")
            return outcome
        outcome.manifest_key = write_manifest(context, session)
        return outcome

    def _sort_pending(
        self,
        session: SessionRecord,
        pending: list[FileRecord],
        remote_sizes: dict[str, int],
        outcome: UploadOutcome,
    ) -> tuple[list[FileRecord], list[FileRecord]]:
        """The files of `pending` to send whole and in parts; those S3 already holds are
        settled here and counted in `outcome`."""
        context = self.context
        # One query for the session's recorded uploads (usually none), not one per file.
        uploads = {
            upload.rel_path: upload
            for upload in context.ledger.all_uploads()
            if upload.session_id == session.id
        }
        small: list[FileRecord] = []
        large: list[FileRecord] = []
        for record in pending:
            upload = uploads.get(record.rel_path)
            # An object of this size at the key may already hold the file: with no upload
            # recorded (a lost or new database), and also with one for a file never sent
            # before (a database rolled back to before S3 had it whole: resuming would send
            # it all again). A re-upload of a changed file is not re-read for this: the
            # object there is its older version.
            maybe_there = upload is None or record.uploaded_size is None
            if (
                maybe_there
                and remote_sizes.get(record.key) == record.size
                and self.single_put.already_there(session, record, upload)
            ):
                outcome.files_already_there += 1
                continue
            if record.size < context.settings.upload.multipart_threshold and upload is None:
                small.append(record)
            else:
                large.append(record)
        return small, large

    def _remote_sizes(self, session: SessionRecord, pending: list[FileRecord]) -> dict[str, int]:
        """Sizes of objects already under the session's prefix, when there is anything to
        check: lets a re-run (or a rolled-back database) skip what S3 already holds."""
        if not pending:
            return {}
        return self.context.store.list_keys(session.key_prefix + "/")

    def upload_growing(self, session: SessionRecord, part_size: int) -> UploadOutcome:
        """Send the stable leading parts of files still being appended to, in a session not
        yet complete: whole parts of `part_size` that lie at least one part below the
        current end. Nothing is completed here; the session's upload finishes the files."""
        outcome = UploadOutcome()
        candidates = [
            record
            for record in self.context.ledger.pending_files(session.id)
            if record.size >= 2 * part_size
        ]
        if candidates:
            units = self.reader.growing_files(session, candidates, part_size)
            self.pipeline.run(units, outcome, name="growing")
        return outcome
