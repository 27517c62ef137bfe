"""A server without ListParts and ListMultipartUploads (issue 12, item 3).

Some S3-compatible servers answer those with 405 MethodNotAllowed or 501 NotImplemented. That
is a missing feature, not a failed upload: resume rests on the agent's own records, orphan
clean-up is skipped, and each is said once, at warning level.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Rig, start_daemon, stop_daemon, wait_for
from tests.s3server import KillAfter, S3TestServer
from tests.test_resume import assert_landed, make_session, recorded_parts


def events(log: str) -> list[dict[str, Any]]:
    """The daemon's JSON log lines."""
    found = []
    for line in log.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


@pytest.mark.parametrize(
    "answer", [(501, "NotImplemented"), (405, "MethodNotAllowed")], ids=["501", "405"]
)
def test_resume_after_kill_on_server_without_list_parts_or_list_uploads(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any, answer: tuple[int, str]
) -> None:
    rig = make_rig(concurrency=1)
    s3.list_parts_supported = False
    s3.list_uploads_supported = False
    s3.missing_answer = answer
    _, data = make_session(rig)

    first = start_daemon(rig)
    kill = KillAfter("UploadPart", 3, pid=first.pid)
    s3.kills.append(kill)
    assert kill.fired.wait(60), "the daemon never sent the third part"
    first.wait(10)
    _, first_log = stop_daemon(first)
    assert first.returncode == -9
    done_before = recorded_parts(rig)
    assert done_before == {1, 2}

    second = start_daemon(rig)
    try:

        def uploaded() -> bool:
            listing = rig.agentctl("sessions", "--json")
            return listing.returncode == 0 and [
                row["state"] for row in json.loads(listing.stdout)
            ] == ["uploaded"]

        assert wait_for(uploaded, timeout=60)
    finally:
        code, second_log = stop_daemon(second)
    assert code == 0, second_log

    sent = Counter(request.part_number for request in s3.of("UploadPart"))
    assert all(sent[number] == 1 for number in done_before), sent
    assert set(sent) == {1, 2, 3, 4}
    assert s3.count("CreateMultipartUpload") == 1
    assert s3.count("ListParts") == 1  # detected once, then not asked again
    s3.list_uploads_supported = True  # for the test's own look at the bucket
    assert_landed(rig, client, data)

    logged = events(first_log) + events(second_log)
    assert logged, second_log
    assert not [e for e in logged if e.get("event") == "recovery_failed"], logged
    assert not [e for e in logged if e.get("level") == "error"], logged
    second_events = events(second_log)
    list_parts_warnings = [e for e in second_events if e.get("event") == "list_parts_unsupported"]
    assert len(list_parts_warnings) == 1, second_events
    assert list_parts_warnings[0]["level"] == "warning"
    assert "own records" in list_parts_warnings[0]["action"]
    orphan_warnings = [e for e in second_events if e.get("event") == "orphan_check_skipped"]
    assert len(orphan_warnings) == 1, second_events
    assert orphan_warnings[0]["level"] == "warning"
    assert "ListMultipartUploads" in orphan_warnings[0]["reason"]


def test_405_on_other_operations_stays_permanent() -> None:
    """MethodNotAllowed means "feature missing" only for the optional listings; elsewhere
    (an object-lock or versioning refusal, say) it is a real, permanent error."""
    import botocore.exceptions  # noqa: PLC0415

    from agent.s3errors import NotImplementedByServerError, classify_error  # noqa: PLC0415

    response: Any = {
        "Error": {"Code": "MethodNotAllowed", "Message": "no"},
        "ResponseMetadata": {"HTTPStatusCode": 405},
    }
    error = botocore.exceptions.ClientError(response, "PutObject")
    assert isinstance(classify_error(error, "ListParts", "k"), NotImplementedByServerError)
    assert isinstance(
        classify_error(error, "ListMultipartUploads", "k"), NotImplementedByServerError
    )
    put = classify_error(error, "PutObject", "k")
    assert not put.retryable and not isinstance(put, NotImplementedByServerError)
