"""The uploader thread: due sessions one after another, then the early parts of growing
files; it stops between sessions at a halt (stop, pause) and survives any error."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog

from agent.errors import StateDiskError
from agent.notify import Pulse
from agent.state import SessionRecord

log = structlog.get_logger("agent.worker")

# How long the idle thread sleeps between looks at the queue when nobody wakes it.
IDLE_WAIT = 2.0


class Uploads(Protocol):
    """What the worker needs of Ingest."""

    def due_sessions(self) -> list[SessionRecord]: ...

    def upload(self, record: SessionRecord) -> Any: ...

    def growing_sessions(self) -> list[SessionRecord]: ...

    def upload_growing(self, record: SessionRecord) -> Any: ...

    def recover_sessions(self) -> None: ...


class UploadWorker:
    """Runs `Uploads` in its own thread. `pulse` tells the watchdog guard it is alive: idle,
    or busy with progress. `hang` (test faults only) hangs it as a never-ending S3 call would."""

    def __init__(
        self,
        uploads: Uploads,
        *,
        stop: threading.Event,
        halt: threading.Event,
        pulse: Pulse,
        on_disk_trouble: Callable[[StateDiskError], None] = lambda error: None,
    ) -> None:
        self.uploads = uploads
        self.on_disk_trouble = on_disk_trouble
        self.stop = stop
        self.halt = halt
        self.pulse = pulse
        self.hang = threading.Event()
        self._wake = threading.Event()
        # Set when the state disk failed under an upload: the session may still be recorded
        # as uploading, and is made ready again (here, in this thread) before the next round.
        self._recover = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (a daemon thread: a hung S3 call cannot keep the process up)."""
        self._thread = threading.Thread(target=self.run, name="uploader", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for work now rather than at the next idle timeout."""
        self._wake.set()

    def died(self) -> bool:
        """Whether the thread was started and has ended (it never should before a stop)."""
        return self._thread is not None and not self._thread.is_alive()

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """The thread's loop, until `stop`."""
        while not self.stop.is_set():
            self.pulse.idle()
            self._wake.wait(IDLE_WAIT)
            self._wake.clear()
            if self.hang.is_set():
                self.pulse.busy()
                threading.Event().wait()  # hung on purpose, like an S3 call that never ends
            try:
                self.round()
            except StateDiskError as error:
                # Not this thread's to report: the daemon pauses uploads until the disk
                # can be written again, and says so once.
                self._recover = True
                self.on_disk_trouble(error)
                self.stop.wait(IDLE_WAIT)
            except Exception:
                # E.g. the database busy or full while listing due sessions: the thread
                # must outlive it (if it died, the watchdog pings would stop).
                log.exception("upload_loop_error", error="listing sessions to upload failed")
                self.stop.wait(IDLE_WAIT)

    def round(self) -> None:
        """Upload every due session, then send early parts of growing ones; stop at a halt."""
        passes: Sequence[tuple[Callable[[], list[SessionRecord]], Callable[[SessionRecord], Any]]]
        passes = (
            (self.uploads.due_sessions, self.uploads.upload),
            (self.uploads.growing_sessions, self.uploads.upload_growing),
        )
        if self.halt.is_set():
            return
        if self._recover:
            self.uploads.recover_sessions()
            self._recover = False
        for sessions_of, upload in passes:
            for record in sessions_of():
                if self.stop.is_set() or self.halt.is_set():
                    return
                self.pulse.busy()
                try:
                    upload(record)
                except StateDiskError:
                    raise
                except Exception:
                    log.exception("upload_loop_error", session=record.id)
                self.pulse.beat()
