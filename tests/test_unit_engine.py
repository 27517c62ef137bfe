"""Fast tests of the upload engine's pure pieces and of its one pipeline, without a server.

The resume decisions (`reconcile`, `discard_reason`, `resume_point`, `stable_parts`) are
functions of plain records; the pipeline is driven with small units written here, which only
sleep, raise or report what they sent, so the error mapping shared by both passes is seen
on its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.checksums import RunningChecksum
from agent.engine.adoption import (
    LocalPart,
    adoption_candidates,
    adoption_reads,
    listed_matches,
)
from agent.engine.multipart import (
    Reconciliation,
    discard_reason,
    growing_mismatch,
    reconcile,
    resume_point,
    stable_parts,
)
from agent.engine.pipeline import (
    QUEUE_PER_WORKER,
    ByteBudget,
    Changed,
    Pipeline,
    Sent,
    Unit,
    UploadOutcome,
    interleave,
    note_error,
)
from agent.engine.single_put import ABSENT, OURS, SAME, THEIRS, existing_verdict
from agent.errors import (
    FileChangedError,
    PermanentTransferError,
    RetryableTransferError,
    StateDiskError,
    TransferError,
)
from agent.planning import MAX_PARTS, plan_parts
from agent.state import PENDING, FileRecord, PartRecord, UploadRecord
from agent.throttle import Interrupted
from agent.transfer import AGENT_METADATA_MARK, ListedPart, ObjectInfo

MIB = 1024**2


def file_record(rel_path: str = "a.bin", size: int = 12 * MIB, inode: int = 7) -> FileRecord:
    return FileRecord(
        session_id="s",
        rel_path=rel_path,
        size=size,
        mtime_ns=1,
        inode=inode,
        key=f"rig/s/{rel_path}",
        state=PENDING,
        checksum=None,
        checksum_algorithm=None,
        etag=None,
        uploaded_size=None,
        uploaded_mtime_ns=None,
        uploaded_at=None,
        error=None,
    )


def part(number: int, etag: str | None = None, size: int = 5 * MIB) -> PartRecord:
    return PartRecord(number, etag or f"etag-{number}", None, size, None)


def upload_record(
    parts: tuple[PartRecord, ...] = (),
    *,
    size: int = 12 * MIB,
    mtime_ns: int = 1,
    growing: bool = False,
    inode: int | None = 7,
    part_size: int = 5 * MIB,
) -> UploadRecord:
    return UploadRecord(
        upload_id="u",
        session_id="s",
        rel_path="a.bin",
        key="rig/s/a.bin",
        part_size=part_size,
        size=size,
        mtime_ns=mtime_ns,
        checksum_algorithm="crc32c",
        created_at=0.0,
        parts=parts,
        growing=growing,
        inode=inode,
    )


# --- reconcile: the ListParts cross-check -----------------------------------------------------


def test_matching_lists_keep_every_recorded_part() -> None:
    recorded = [part(1), part(2)]
    listed = {1: "etag-1", 2: "etag-2"}
    assert reconcile(recorded, listed, gone=False, planned=3) == Reconciliation()


def test_a_recorded_part_the_server_does_not_list_is_lost() -> None:
    recorded = [part(1), part(2), part(3)]
    assert reconcile(recorded, {1: "etag-1", 3: "etag-3"}, gone=False, planned=3).lost == (2,)


def test_a_recorded_part_listed_with_another_etag_is_lost() -> None:
    recorded = [part(1), part(2)]
    assert reconcile(recorded, {1: "etag-1", 2: "other"}, gone=False, planned=3).lost == (2,)


def test_parts_only_the_server_lists_are_not_ours_to_judge() -> None:
    assert reconcile([part(1)], {1: "etag-1", 2: "x"}, gone=False, planned=3) == Reconciliation()


def test_without_list_parts_the_records_are_trusted() -> None:
    assert reconcile([part(1), part(2)], None, gone=False, planned=3) == Reconciliation()


@pytest.mark.parametrize("recorded", [[], [part(1)], [part(1), part(2)]])
def test_an_upload_the_server_lost_before_every_part_was_sent_restarts(
    recorded: list[PartRecord],
) -> None:
    assert reconcile(recorded, None, gone=True, planned=3) == Reconciliation(restart=True)


def test_an_upload_the_server_lost_after_every_part_carries_on_to_settle() -> None:
    # Complete may have happened before a crash: completing again settles it by a HEAD.
    recorded = [part(1), part(2), part(3, size=2 * MIB)]
    assert reconcile(recorded, None, gone=True, planned=3) == Reconciliation()


@given(
    recorded=st.dictionaries(st.integers(1, 50), st.sampled_from(["a", "b"]), max_size=20),
    listed=st.dictionaries(st.integers(1, 50), st.sampled_from(["a", "b"]), max_size=20),
)
def test_lost_is_exactly_the_recorded_parts_not_listed_alike(
    recorded: dict[int, str], listed: dict[int, str]
) -> None:
    records = [part(number, etag) for number, etag in sorted(recorded.items())]
    decision = reconcile(records, listed, gone=False, planned=50)
    assert not decision.restart
    assert set(decision.lost) == {n for n, etag in recorded.items() if listed.get(n) != etag}
    kept = set(recorded) - set(decision.lost)
    assert all(listed[n] == recorded[n] for n in kept)


# --- whether a recorded upload can carry this version of the file -----------------------------


def test_same_size_and_mtime_carries_on() -> None:
    assert discard_reason(upload_record(), file_record()) is None


def test_a_changed_file_discards_an_ordinary_upload() -> None:
    changed = dataclasses.replace(file_record(), size=13 * MIB)
    assert discard_reason(upload_record(), changed) == "file changed since it started"


def test_an_appended_file_carries_on_a_growing_upload() -> None:
    upload = upload_record((part(1),), size=11 * MIB, growing=True)
    assert discard_reason(upload, file_record(size=20 * MIB)) is None


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (file_record(inode=8), "new inode"),
        (file_record(size=4 * MIB), "shorter"),
    ],
)
def test_a_replaced_or_shortened_file_discards_a_growing_upload(
    record: FileRecord, reason: str
) -> None:
    upload = upload_record((part(1),), size=11 * MIB, growing=True)
    found = discard_reason(upload, record)
    assert found is not None and reason in found


def test_a_growing_upload_cannot_outgrow_the_part_limit() -> None:
    upload = upload_record((part(1, size=MIB),), size=3 * MIB, growing=True, part_size=MIB)
    found = growing_mismatch(upload, file_record(size=(MAX_PARTS + 1) * MIB))
    assert found is not None and "10,000 parts" in found


# --- the growing pass's part planning ---------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [(0, 0), (MIB, 0), (2 * MIB - 1, 0), (2 * MIB, 1), (4 * MIB + 1000, 3), (5 * MIB, 4)],
)
def test_stable_parts_lie_a_part_below_the_end(size: int, expected: int) -> None:
    assert stable_parts(size, MIB) == expected


@given(size=st.integers(0, 10**12), part_size=st.integers(1, 10**9))
def test_stable_parts_never_reach_into_the_last_part(size: int, part_size: int) -> None:
    count = stable_parts(size, part_size)
    assert 0 <= count <= MAX_PARTS - 1
    assert count * part_size <= max(0, size - part_size)


# --- where the running checksum resumes -------------------------------------------------------


def saved_after(data: bytes) -> str | None:
    running = RunningChecksum("crc32c")
    running.update(data)
    return running.save()


def test_resume_after_the_leading_run_of_recorded_parts() -> None:
    data = bytes(range(256)) * 40
    parts = plan_parts(len(data), 1000)
    done = {n: PartRecord(n, "e", None, 1000, saved_after(data[: n * 1000])) for n in (1, 2, 3, 5)}
    start, running = resume_point(parts, done, "crc32c")
    assert start == 3  # part 4 is missing: read from it (part 5 is read, not sent)
    running.update(data[3000:])
    fresh = RunningChecksum("crc32c")
    fresh.update(data)
    assert running.value() == fresh.value()


@pytest.mark.parametrize("case", ["nothing recorded", "from start", "sha256", "not saved"])
def test_resume_from_the_first_byte_when_it_cannot_resume(case: str) -> None:
    parts = plan_parts(3000, 1000)
    saved = None if case == "not saved" else "12345"
    done = {} if case == "nothing recorded" else {1: PartRecord(1, "e", None, 1000, saved)}
    algorithm = "sha256" if case == "sha256" else "crc32c"
    start, running = resume_point(parts, done, algorithm, from_start=case == "from start")
    assert start == 0
    assert running.position == 0


# --- adopting parts the server acknowledged but the ledger never recorded ---------------------


def saved_part(number: int, saved: str | None = "1") -> PartRecord:
    return PartRecord(number, f"etag-{number}", None, 1000, saved)


def test_candidates_are_the_listed_parts_not_recorded() -> None:
    parts = plan_parts(4500, 1000)  # five parts, the last one 500 bytes
    recorded = {1: saved_part(1), 2: saved_part(2)}
    listed = {n: ListedPart(f"e{n}", 1000) for n in (1, 2, 3, 4)} | {5: ListedPart("e5", 500)}
    assert adoption_candidates(parts, recorded, listed) == (3, 4, 5)


def test_a_listed_size_other_than_the_planned_one_rules_a_part_out() -> None:
    parts = plan_parts(4500, 1000)
    listed = {
        3: ListedPart("e3", 999),
        4: ListedPart("e4", None),  # a server that gives no size: the bytes decide
        5: ListedPart("e5", 1000),  # the last part is 500 bytes long
        9: ListedPart("e9", 1000),  # beyond the file's parts
    }
    assert adoption_candidates(parts, {}, listed) == (4,)


def test_candidates_extending_the_leading_run_are_read_alone() -> None:
    parts = plan_parts(6000, 1000)
    recorded = {1: saved_part(1), 2: saved_part(2)}
    reads = adoption_reads(parts, recorded, [3, 4], resumable=True)
    assert [part.number for part in reads] == [3, 4]


def test_a_gap_before_a_candidate_is_read_to_feed_the_running_checksum() -> None:
    parts = plan_parts(8000, 1000)
    # 1-2 and 5 recorded; 3 never arrived; 4 and 7 acknowledged but not recorded.
    recorded = {1: saved_part(1), 2: saved_part(2), 5: saved_part(5)}
    reads = adoption_reads(parts, recorded, [4, 7], resumable=True)
    # 3 is read (not adopted) so 4 knows the bytes before it; 5's record resumes 6, read for 7.
    assert [part.number for part in reads] == [3, 4, 6, 7]


def test_a_record_without_a_running_checksum_is_read_through() -> None:
    parts = plan_parts(4000, 1000)
    recorded = {1: saved_part(1), 2: saved_part(2, saved=None)}
    assert [p.number for p in adoption_reads(parts, recorded, [3], resumable=True)] == [2, 3]


def test_without_a_resumable_checksum_only_the_candidates_are_read() -> None:
    parts = plan_parts(8000, 1000)
    reads = adoption_reads(parts, {1: saved_part(1, None)}, [4, 7], resumable=False)
    assert [part.number for part in reads] == [4, 7]


def test_nothing_is_read_without_candidates() -> None:
    assert adoption_reads(plan_parts(3000, 1000), {}, [], resumable=True) == []


@given(
    states=st.lists(
        st.sampled_from(["saved", "unsaved", "candidate", "gap"]), min_size=1, max_size=30
    ),
)
def test_every_read_part_starts_where_a_known_running_checksum_ends(states: list[str]) -> None:
    """Whatever is recorded, the parts read let the running checksum be carried to the end of
    every candidate: each read part follows the part read just before it, a record that
    saved the running checksum, or the file's start; and no saved record is read."""
    parts = plan_parts(1000 * len(states), 1000)
    recorded = {
        part.number: saved_part(part.number, None if state == "unsaved" else "1")
        for part, state in zip(parts, states, strict=True)
        if state in ("saved", "unsaved")
    }
    candidates = [p.number for p, state in zip(parts, states, strict=True) if state == "candidate"]
    reads = adoption_reads(parts, recorded, candidates, resumable=True)
    numbers = [part.number for part in reads]
    assert set(candidates) <= set(numbers)
    for before, number in itertools.pairwise([0, *numbers]):
        previous = recorded.get(number - 1)
        resumes = previous is not None and previous.running_checksum is not None
        assert number - 1 in (0, before) or resumes, numbers
    assert not [n for n in numbers if n in recorded and recorded[n].running_checksum is not None]


def local_part(data: bytes, algorithm: str = "crc32c") -> LocalPart:
    running = RunningChecksum(algorithm)
    running.update(data)
    return LocalPart(len(data), hashlib.md5(data).hexdigest(), algorithm, running.value())


PART_BYTES = bytes(range(256)) * 4


def test_a_listed_part_with_the_md5_and_size_of_the_local_bytes_matches() -> None:
    local = local_part(PART_BYTES)
    assert listed_matches(ListedPart(local.md5, len(PART_BYTES)), local)
    assert listed_matches(ListedPart(local.md5.upper(), None), local)


@pytest.mark.parametrize(
    "listed",
    [
        ListedPart("0" * 32, len(PART_BYTES)),  # other bytes
        ListedPart(hashlib.md5(PART_BYTES).hexdigest(), len(PART_BYTES) + 1),  # other size
        # The MD5 agrees, the server's own CRC32C does not: any contrary evidence wins.
        ListedPart(hashlib.md5(PART_BYTES).hexdigest(), None, {"crc32c": "AAAAAA=="}),
        # An ETag that is no MD5 (KMS): a matching CRC alone (32 bits) proves nothing.
        ListedPart("f" * 32, None, {"crc32c": local_part(PART_BYTES).checksum}),
    ],
    ids=["other-bytes", "other-size", "other-crc", "crc-only"],
)
def test_a_listed_part_that_differs_or_is_not_proven_is_sent_again(listed: ListedPart) -> None:
    assert not listed_matches(listed, local_part(PART_BYTES))


def test_a_sha256_the_server_holds_proves_a_part_whose_etag_is_no_md5() -> None:
    local = local_part(PART_BYTES, "sha256")
    assert listed_matches(ListedPart("f" * 32, None, {"sha256": local.checksum}), local)
    assert not listed_matches(ListedPart("f" * 32, None, {"sha256": "x"}), local)


# --- the existing-object policy (single PUT and multipart Complete) ---------------------------


@pytest.mark.parametrize(
    ("info", "same", "verdict"),
    [
        (None, False, ABSENT),
        (ObjectInfo(5, "e", {AGENT_METADATA_MARK: "other-agent"}), True, SAME),
        (ObjectInfo(5, "e", {AGENT_METADATA_MARK: "me"}), False, OURS),
        (ObjectInfo(5, "e", {AGENT_METADATA_MARK: "other-agent"}), False, THEIRS),
        (ObjectInfo(5, "e", {}), False, THEIRS),
    ],
)
def test_what_is_done_with_an_object_at_the_key(
    info: ObjectInfo | None, same: bool, verdict: str
) -> None:
    assert existing_verdict(info, "me", same=same) == verdict


# --- the pipeline and its one error mapping ---------------------------------------------------


@dataclasses.dataclass
class StepUnit:
    """A unit that waits `delay`, then raises `error` or reports `size` bytes sent."""

    record: FileRecord
    reserved: int = 0
    size: int = 10
    delay: float = 0.0
    error: BaseException | None = None
    sent: threading.Event = dataclasses.field(default_factory=threading.Event)
    tried: threading.Event = dataclasses.field(default_factory=threading.Event)

    def send(self, note: Callable[[Sent], None]) -> None:
        try:
            time.sleep(self.delay)
            if self.error is not None:
                raise self.error
            note(Sent(files=1, bytes=self.size))
            self.sent.set()
        finally:
            self.tried.set()


def run(units: list[StepUnit | Changed], *, concurrency: int = 1) -> UploadOutcome:
    outcome = UploadOutcome()
    Pipeline(ByteBudget(1000), concurrency, threading.Event()).run(units, outcome, name="test")
    return outcome


UNEXPECTED: list[BaseException] = [
    sqlite3.OperationalError("disk I/O error"),
    RuntimeError("a bug"),
    KeyError("upload"),
]


@pytest.mark.parametrize("error", UNEXPECTED, ids=lambda error: type(error).__name__)
def test_an_unexpected_error_becomes_a_permanent_error_of_the_outcome(
    error: BaseException,
) -> None:
    outcome = run([StepUnit(file_record(), error=error)])
    assert len(outcome.errors) == 1
    (found,) = outcome.errors
    assert isinstance(found, PermanentTransferError)
    assert found.key == "rig/s/a.bin"
    assert type(error).__name__ in str(found)


def test_a_transfer_error_is_kept_as_it_is() -> None:
    error = RetryableTransferError("UploadPart", "rig/s/a.bin", "SlowDown")
    assert run([StepUnit(file_record(), error=error)]).errors == [error]


def test_after_an_error_no_further_unit_is_sent() -> None:
    failing = StepUnit(file_record(), error=RuntimeError("x"))
    later = StepUnit(file_record("b.bin"))

    def produce() -> Iterator[StepUnit]:
        yield failing
        assert failing.tried.wait(5)
        time.sleep(0.2)  # the worker maps the error right after the unit returns
        yield later

    outcome = UploadOutcome()
    Pipeline(ByteBudget(1000), 1, threading.Event()).run(produce(), outcome, name="test")
    assert len(outcome.errors) == 1
    assert not later.tried.is_set()


def test_a_changed_file_is_noted_and_the_pass_goes_on() -> None:
    later = StepUnit(file_record("c.bin"))
    outcome = run(
        [
            StepUnit(file_record("a.bin"), error=FileChangedError("a.bin")),
            Changed("b.bin"),
            later,
        ]
    )
    assert sorted(outcome.changed) == ["a.bin", "b.bin"]
    assert outcome.errors == []
    assert later.sent.is_set()
    assert (outcome.files_sent, outcome.bytes_sent) == (1, 10)


def test_an_interrupted_unit_interrupts_the_pass() -> None:
    outcome = run([StepUnit(file_record(), error=Interrupted())])
    assert outcome.interrupted
    assert outcome.errors == []


@pytest.mark.parametrize(
    ("raised", "interrupted", "errors"),
    [(Interrupted(), True, 0), (PermanentTransferError("ListParts", "k", "no"), False, 1)],
)
def test_the_producers_own_errors_end_the_pass(
    raised: BaseException, interrupted: bool, errors: int
) -> None:
    first = StepUnit(file_record())

    def produce() -> Iterator[StepUnit]:
        yield first
        raise raised

    outcome = UploadOutcome()
    Pipeline(ByteBudget(1000), 1, threading.Event()).run(produce(), outcome, name="test")
    assert first.sent.is_set()
    assert outcome.interrupted is interrupted
    assert len(outcome.errors) == errors


def test_every_units_budget_is_given_back_whatever_happened() -> None:
    budget = ByteBudget(100)
    stop = threading.Event()
    units: list[StepUnit] = []
    for index, error in enumerate([None, RuntimeError("x"), None]):
        units.append(
            StepUnit(file_record(f"{index}.bin"), reserved=budget.acquire(30, stop), error=error)
        )
    Pipeline(budget, 2, stop).run(units, UploadOutcome(), name="test")
    stop.set()
    assert budget.acquire(100, stop) == 100  # would raise Interrupted if any were still held


def test_error_mapping_says_when_to_stop() -> None:
    outcome = UploadOutcome()
    record = file_record()
    assert note_error(outcome, FileChangedError("a"), record) is False
    assert note_error(outcome, Interrupted(), record) is True
    assert note_error(outcome, TransferError("PutObject", "k", "no"), record) is True
    assert note_error(outcome, ValueError("bad"), record) is True
    assert outcome.changed == ["a.bin"]
    assert outcome.interrupted
    assert [type(error) for error in outcome.errors] == [TransferError, PermanentTransferError]


def test_interleave_takes_one_from_each_source_in_turn() -> None:
    def source(*names: str) -> Iterator[Unit | Changed]:
        yield from (Changed(name) for name in names)

    merged = list(interleave(source("a1", "a2", "a3"), source("b1")))
    assert merged == [Changed("a1"), Changed("b1"), Changed("a2"), Changed("a3")]


def test_closing_interleave_closes_its_sources() -> None:
    closed: list[str] = []

    def source(name: str) -> Iterator[Unit | Changed]:
        try:
            while True:
                yield Changed(name)
        finally:
            closed.append(name)

    merged = interleave(source("a"), source("b"))
    next(merged)
    next(merged)  # both sources started, each suspended inside its try
    merged.close()
    assert sorted(closed) == ["a", "b"]


def test_the_producer_never_runs_far_ahead_of_the_workers() -> None:
    """Thousands of small files fit the byte budget at once; still, only a few units may wait
    for a worker, so memory does not grow with the session (it did: every file was read ahead
    of the senders)."""
    produced = finished = 0
    ahead: list[int] = []
    lock = threading.Lock()

    class Counted(StepUnit):
        def send(self, note: Callable[[Sent], None]) -> None:
            nonlocal finished
            super().send(note)
            with lock:
                finished += 1

    def units() -> Iterator[StepUnit | Changed]:
        nonlocal produced
        for number in range(300):
            with lock:
                produced += 1
                ahead.append(produced - finished)
            yield Counted(file_record(f"f{number}.bin"), delay=0.0005)

    outcome = UploadOutcome()
    Pipeline(ByteBudget(10**9), 2, threading.Event()).run(units(), outcome, name="test")
    assert outcome.files_sent == 300
    # Two workers: at most 2 x QUEUE_PER_WORKER queued or sending, and one being produced.
    assert max(ahead) <= 2 * QUEUE_PER_WORKER + 1


def test_a_full_state_disk_under_a_send_stops_the_pass_and_goes_up_not_into_the_outcome() -> None:
    """A worker's record of its send failing on a full state disk is not the session's fault:
    the pass stops, the units in flight finish, and the error goes up (the daemon then waits
    for the disk) instead of failing the session as one of its errors."""
    full = StateDiskError("state.db: database or disk is full")
    later = [StepUnit(file_record(f"b{number}.bin"), delay=0.01) for number in range(20)]
    units: list[StepUnit | Changed] = [StepUnit(file_record("a.bin"), error=full), *later]
    outcome = UploadOutcome()
    with pytest.raises(StateDiskError):
        Pipeline(ByteBudget(1000), 1, threading.Event()).run(units, outcome, name="test")
    assert outcome.errors == []
    # The pass stopped: only what was already queued behind the failing unit was sent.
    assert sum(unit.tried.is_set() for unit in later) <= QUEUE_PER_WORKER
