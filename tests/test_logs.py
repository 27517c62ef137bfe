"""The logging pipeline, in process: journald fields, storm control, plain text, secrets.

The journal sender is replaced by a list here (these are unit tests of our renderer); the
real journald is exercised in tests/test_journald.py.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent import logs
from agent.redact import MASK, SECRETS, SecretRegistry

Entry = dict[str, str]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def json_lines(clock: FakeClock) -> tuple[io.StringIO, structlog.typing.FilteringBoundLogger]:
    """Configure the pipeline for JSON lines into a buffer, storm control on `clock`."""
    stream = io.StringIO()
    logs.configure("info", stream, target="json", storms=logs.StormControl(clock=clock))
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("test")
    return stream, logger


def journal(entries: list[Entry], **options: Any) -> structlog.typing.FilteringBoundLogger:
    """Configure the pipeline for journald with `entries` collecting what would be sent."""

    def send(message: str, **fields: Any) -> None:
        # As systemd.journal.send does: CODE_LINE must be an int.
        fields["CODE_LINE"] = "{:d}".format(fields["CODE_LINE"])
        entries.append({"MESSAGE": message, **fields})

    chosen = logs.configure(
        "debug",
        io.StringIO(),
        target="journald",
        journal_send=send,
        journal_socket=None,
        **options,
    )
    assert chosen == "journald"
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("test")
    return logger


def test_journal_entry_carries_our_fields() -> None:
    entries: list[Entry] = []
    log = journal(entries)
    log.info(
        "file_uploaded",
        session="ephys/mouse1/s1",
        file="a.bin",
        key="rig/ephys/mouse1/s1/a.bin",
        bytes=1024,
        upload_id="u-1",
    )
    log.error("session_failed", session="ephys/mouse1/s1", error="NoSuchBucket (404)")
    uploaded, failed = entries
    assert uploaded["EVENT"] == "file_uploaded"
    assert uploaded["SESSION_ID"] == "ephys/mouse1/s1"
    assert uploaded["SOURCE"] == "ephys"
    assert uploaded["FILE"] == "a.bin"
    assert uploaded["OBJECT_KEY"] == "rig/ephys/mouse1/s1/a.bin"
    assert uploaded["BYTES"] == "1024"
    assert uploaded["UPLOAD_ID"] == "u-1"
    assert uploaded["PRIORITY"] == "6"
    assert uploaded["SYSLOG_IDENTIFIER"] == "ingest-agent"
    assert uploaded["CODE_FILE"].endswith("test_logs.py")
    assert uploaded["CODE_FUNC"] == "test_journal_entry_carries_our_fields"
    assert int(uploaded["CODE_LINE"]) > 0
    assert uploaded["MESSAGE"].startswith("File uploaded: ephys/mouse1/s1, file a.bin")
    assert "\n" not in uploaded["MESSAGE"]
    assert failed["PRIORITY"] == "3"
    assert failed["ERROR"] == "NoSuchBucket (404)"
    for entry in entries:
        for name in entry:
            assert name.isupper() or "_" in name, name
            assert not name.startswith("_")
            assert all(c.isascii() and (c.isalnum() or c == "_") for c in name), name


def test_hostile_file_names_cannot_forge_entries_or_crash() -> None:
    entries: list[Entry] = []
    log = journal(entries)
    forged = "x.bin\nEVENT=session_uploaded\nSESSION_ID=other"
    undecodable = os.fsdecode(b"bad\xff.bin")
    reversed_name = "photo\u202egnp.exe"
    for number, name in enumerate((forged, undecodable, reversed_name)):
        log.warning("file_refused", session="ephys/m/s", file=name, reason=f"test {number}")
    forged_entry, undecodable_entry, reversed_entry = entries
    assert forged_entry["FILE"] == "x.bin\\nEVENT=session_uploaded\\nSESSION_ID=other"
    assert forged_entry["EVENT"] == "file_refused"
    assert forged_entry["SESSION_ID"] == "ephys/m/s"
    assert undecodable_entry["FILE"] == "bad\\xff.bin"
    assert reversed_entry["FILE"] == "photo\\u202egnp.exe"
    for entry in entries:
        for value in entry.values():
            value.encode("utf-8")  # a surrogate would raise here, as journald's sender would
            assert "\n" not in value


def test_journal_unavailable_falls_back_to_stderr_once() -> None:
    stream = io.StringIO()

    def broken(message: str, **fields: str) -> None:
        raise FileNotFoundError(2, "No such file or directory")

    logs.configure("info", stream, target="journald", journal_send=broken, journal_socket=None)
    log = structlog.get_logger("test")
    log.info("first", session="s/1")
    log.info("second", session="s/2")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert "journald unavailable" in lines[0]["message"]
    assert [line.get("event") for line in lines[1:]] == ["first", "second"]
    assert sum("journald unavailable" in line["message"] for line in lines) == 1


def test_storm_of_identical_errors_is_summarised() -> None:
    clock = FakeClock()
    stream, log = json_lines(clock)
    for number in range(3214):
        log.warning("s3_retry", error="SlowDown (503): reduce your request rate", key=f"k{number}")
        clock.now += 0.01
    log.warning("s3_retry", error="InternalError (500)", key="other")  # a different error
    logs.flush_repeats()  # the window has not ended: nothing yet
    clock.now += 60
    logs.flush_repeats()
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["s3_retry", "s3_retry", "repeated"]
    summary = events[2]
    assert summary["count"] == 3213
    assert summary["message"].startswith(
        "SlowDown (503): reduce your request rate x 3,213 in the last 60 s"
    )
    assert summary["level"] == "warning"
    # After the summary the window is closed: the next one is logged in full.
    log.warning("s3_retry", error="SlowDown (503): reduce your request rate", key="again")
    assert json.loads(stream.getvalue().splitlines()[-1])["key"] == "again"


def test_info_events_are_never_suppressed() -> None:
    stream, log = json_lines(FakeClock())
    for _ in range(5):
        log.info("file_uploaded", session="s/1")
    assert len(stream.getvalue().splitlines()) == 5


def test_console_output_escapes_control_characters() -> None:
    stream = io.StringIO()
    logs.configure("info", stream, target="console")
    structlog.get_logger("test").warning("file_refused", file="a\nFORGED line\u202e")
    output = stream.getvalue()
    assert output.count("\n") == 1
    assert "\u202e" not in output
    assert "FORGED line" in output


@pytest.mark.parametrize(
    ("environ", "configured", "expected"),
    [
        ({"INVOCATION_ID": "x"}, "auto", "journald"),
        ({"JOURNAL_STREAM": "8:1"}, "auto", "journald"),
        ({"NOTIFY_SOCKET": "/run/x"}, "auto", "journald"),
        ({}, "auto", "json"),
        ({"INVOCATION_ID": "x"}, "json", "json"),
        ({}, "journald", "journald"),
    ],
)
def test_target_is_chosen_in_one_place(
    environ: dict[str, str], configured: str, expected: str
) -> None:
    assert logs.choose_target(configured, environ, io.StringIO()) == expected


def test_secrets_are_masked_in_every_field() -> None:
    registry = SecretRegistry()
    registry.add_environment(
        {"AWS_SECRET_ACCESS_KEY": "s3cr3t-planted-value", "AWS_ACCESS_KEY_ID": "AKIAPLANTED1"}
    )
    cases = {
        "error with s3cr3t-planted-value inside": f"error with {MASK} inside",
        "Credential=AKIAPLANTED1/20261126": f"Credential={MASK}/20261126",
        "http://user:pa55word@minio:9000/bucket": f"http://{MASK}@minio:9000/bucket",
        "https://b.s3.amazonaws.com/k?X-Amz-Signature=abcdef&X-Amz-Credential=AK%2F1": (
            f"https://b.s3.amazonaws.com/k?X-Amz-Signature={MASK}&X-Amz-Credential={MASK}"
        ),
        "{'Authorization': 'AWS4-HMAC-SHA256 Credential=x, Signature=y'}": (
            f"{{'Authorization': '{MASK}'}}"
        ),
        "aws_secret_access_key = abc123xyz": f"aws_secret_access_key = {MASK}",
        "nothing secret here": "nothing secret here",
    }
    for text, expected in cases.items():
        assert registry.redact(text) == expected


def test_pipeline_masks_environment_secrets() -> None:
    entries: list[Entry] = []
    secret = "planted-secret-0123456789"
    log = journal(entries, environ={"AWS_SECRET_ACCESS_KEY": secret})
    try:
        log.error("upload_failed", error=f"signature {secret} rejected", extra=[secret])
        try:
            raise RuntimeError(f"boom {secret}")
        except RuntimeError:
            log.exception("upload_loop_error")
    finally:
        SECRETS.add([])  # the registry keeps the value; harmless for other tests
    text = json.dumps(entries)
    assert secret not in text
    assert MASK in entries[0]["ERROR"]


def test_final_flush_reports_a_storm_cut_short() -> None:
    clock = FakeClock()
    stream, log = json_lines(clock)
    for _ in range(3):
        log.error("session_failed", error="NoSuchBucket (404)")
    clock.now += 5
    logs.flush_repeats()
    assert len(stream.getvalue().splitlines()) == 1  # the window is still open
    logs.flush_repeats(final=True)
    summary = json.loads(stream.getvalue().splitlines()[-1])
    assert summary["message"].startswith("NoSuchBucket (404) x 2 in the last 5 s")
    assert summary["level"] == "error"


def test_missing_journal_socket_falls_back_to_stderr(tmp_path: Path) -> None:
    # systemd's sender drops entries silently when the socket is missing: look for it first.
    stream = io.StringIO()
    logs.configure("info", stream, target="journald", journal_socket=tmp_path / "no-socket")
    structlog.get_logger("test").warning("session_failed", session="s/1", error="x")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "no journal socket at" in first["message"]
    assert second["event"] == "session_failed"
    assert second["session_id"] == "s/1"


def test_values_of_any_type_are_masked() -> None:
    stream = io.StringIO()
    secret = "planted-secret-any-type-0123"
    logs.configure("info", stream, target="json", environ={"AWS_SECRET_ACCESS_KEY": secret})
    structlog.get_logger("test").error(
        "upload_failed",
        error=RuntimeError(f"rejected {secret}"),
        detail=secret.encode(),
        where=Path(f"/tmp/{secret}"),
        mapping={secret: 1},
        items={secret},
        count=3,
    )
    output = stream.getvalue()
    assert secret not in output
    event = json.loads(output)
    assert event["error"] == "rejected ***"
    assert event["count"] == 3


def test_masking_keeps_the_rest_of_the_line() -> None:
    registry = SecretRegistry()
    registry.add(["testing"])  # too short to be a secret: words stay readable
    text = "X-Amz-Security-Token=abc&X-Amz-Signature=def session=s1 testing"
    assert registry.redact(text) == f"X-Amz-Security-Token={MASK}&X-Amz-Signature={MASK} " + (
        "session=s1 testing"
    )


def test_warnings_without_an_error_text_are_each_logged() -> None:
    stream, log = json_lines(FakeClock())
    for key in ("a", "b", "c"):
        log.warning("orphan_upload_aborted", key=key)
    assert [json.loads(line)["key"] for line in stream.getvalue().splitlines()] == ["a", "b", "c"]
