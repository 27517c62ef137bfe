"""The one driver of an upload pass: the final pass and the growing pass both run on it.

Owns: the byte budget (memory read and not yet sent), the worker pool, what a pass reports
(`UploadOutcome`) and the one mapping from an error to that report. A unit sends itself and
says what it sent; the pipeline never knows S3, files or the ledger (as rclone's multipart
driver never knows the backend whose chunk writer it drives).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from agent.errors import FileChangedError, PermanentTransferError, StateDiskError, TransferError
from agent.state import FileRecord
from agent.throttle import Interrupted

# Units the pipeline lets wait for a worker, per worker (see Pipeline.run).
QUEUE_PER_WORKER = 2


class ByteBudget:
    """Bounds the bytes read into memory and not yet sent."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._condition = threading.Condition()

    def acquire(self, amount: int, stop: threading.Event) -> int:
        """Wait until `amount` bytes fit (capped at capacity); return what was taken.
        Raise Interrupted if `stop` is set while waiting."""
        amount = min(amount, self.capacity)
        with self._condition:
            while self._used + amount > self.capacity:
                if stop.is_set():
                    raise Interrupted()
                self._condition.wait(0.2)
            self._used += amount
        return amount

    def release(self, amount: int) -> None:
        """Give back bytes taken by `acquire`."""
        with self._condition:
            self._used -= amount
            self._condition.notify_all()


@dataclass
class UploadOutcome:
    """What one upload pass of a session did."""

    files_sent: int = 0
    bytes_sent: int = 0
    files_already_there: int = 0
    changed: list[str] = field(default_factory=list)
    errors: list[TransferError] = field(default_factory=list)
    interrupted: bool = False
    manifest_key: str | None = None

    @property
    def complete(self) -> bool:
        """True when every file went up and the manifest was written."""
        return self.manifest_key is not None


@dataclass(frozen=True)
class Sent:
    """What a unit reports as it goes: whole files finished, bytes acknowledged."""

    files: int = 0
    bytes: int = 0


class Unit(Protocol):
    """One thing for a worker to send: a whole small file, a part, or a completion."""

    @property
    def record(self) -> FileRecord:
        """The file this unit belongs to."""
        ...

    @property
    def reserved(self) -> int:
        """Bytes of the budget this unit holds until it is done."""
        ...

    def send(self, note: Callable[[Sent], None]) -> None:
        """Send it; call `note` with what was sent as soon as the server acknowledged it."""
        ...


@dataclass(frozen=True)
class Changed:
    """A file found changed (or gone) while it was read: it stays pending for a later pass."""

    rel_path: str


def note_error(outcome: UploadOutcome, error: BaseException, record: FileRecord) -> bool:
    """Put one error of a unit of `record` into `outcome`; return True if the pass should stop
    sending. A changed file is noted and the pass goes on; a halt is an interruption; any
    other error, a transfer error or not (a disk error of the ledger, a bug), is an error of
    the outcome, so the session fails visibly instead of passing for done."""
    if isinstance(error, FileChangedError):
        outcome.changed.append(record.rel_path)
        return False
    if isinstance(error, Interrupted):
        outcome.interrupted = True
        return True
    if isinstance(error, TransferError):
        outcome.errors.append(error)
    else:
        outcome.errors.append(
            PermanentTransferError("upload", record.key, f"{type(error).__name__}: {error}")
        )
    return True


def interleave(
    *sources: Iterator[Unit | Changed],
) -> Generator[Unit | Changed, None, None]:
    """Take one item from each source in turn until all are exhausted (so small files and
    parts of large files share the workers). Closing it closes every source."""
    active = list(sources)
    try:
        while active:
            for source in list(active):
                try:
                    yield next(source)
                except StopIteration:
                    active.remove(source)
    finally:
        for source in active:
            close = getattr(source, "close", None)
            if close is not None:
                close()


class Pipeline:
    """Sends units from one producer through a pool of workers within a byte budget."""

    def __init__(self, budget: ByteBudget, concurrency: int, stop: threading.Event) -> None:
        self.budget = budget
        self.concurrency = concurrency
        self.stop = stop

    def run(self, items: Iterable[Unit | Changed], outcome: UploadOutcome, *, name: str) -> None:
        """Send every unit `items` yields, noting sends, changed files and errors in
        `outcome`. Stop taking units after the first error or a halt; wait for the units in
        flight either way. The producer's own Interrupted and TransferError end the pass the
        same way; anything else it raises propagates, and so does a StateDiskError of a
        unit's send (once the units in flight are done). A KeyboardInterrupt stops the units in
        flight and drops those queued before it propagates."""
        lock = threading.Lock()
        halted = threading.Event()

        def note(sent: Sent) -> None:
            with lock:
                outcome.files_sent += sent.files
                outcome.bytes_sent += sent.bytes

        # Units queued or being sent, at most QUEUE_PER_WORKER per worker: the byte budget
        # alone let thousands of small files be read ahead (memory growing with the session).
        slots = threading.Semaphore(self.concurrency * QUEUE_PER_WORKER)

        # The state disk full or failing under a worker's record of its send: not the
        # session's fault, so not an error of the outcome (it would fail the session); the
        # pass stops and the error goes up, for the daemon to wait for the disk.
        disk_errors: list[StateDiskError] = []

        def finished(unit: Unit, future: Future[None]) -> None:
            slots.release()
            self.budget.release(unit.reserved)
            if future.cancelled():  # dropped by a Ctrl-C, below: never sent
                return
            error = future.exception()
            if error is None:
                return
            with lock:
                if isinstance(error, StateDiskError):
                    disk_errors.append(error)
                    halted.set()
                elif note_error(outcome, error, unit.record):
                    halted.set()

        iterator = iter(items)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=name) as pool:
            try:
                for item in iterator:
                    if isinstance(item, Changed):
                        with lock:
                            outcome.changed.append(item.rel_path)
                        continue
                    if not self._take_slot(slots, halted):
                        self.budget.release(item.reserved)
                        break
                    future = pool.submit(item.send, note)
                    future.add_done_callback(functools.partial(finished, item))
            except Interrupted:
                with lock:
                    outcome.interrupted = True
            except TransferError as error:
                with lock:
                    outcome.errors.append(error)
            except KeyboardInterrupt:
                # Ctrl-C on `agentctl sync` (the daemon turns SIGINT into a stop instead).
                # Leaving the pool would wait for every unit queued to be sent in full while
                # the operator waits: the units in flight are told to stop, those queued are
                # dropped. What S3 acknowledged is recorded; the next run sends the rest.
                self.stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        if disk_errors:
            raise disk_errors[0]
        if self.stop.is_set():
            outcome.interrupted = True

    def _take_slot(self, slots: threading.Semaphore, halted: threading.Event) -> bool:
        """Wait for a free slot for one more unit; False, holding none, when the pass halts
        (an error) or stops meanwhile."""
        while not slots.acquire(timeout=0.2):
            if halted.is_set() or self.stop.is_set():
                return False
        if halted.is_set() or self.stop.is_set():
            slots.release()
            return False
        return True
