"""Session detection beyond the basics: layouts and key templates, strict names, files still
open for writing, required files under the polling observer, inotify queue overflow, and a
session directory deleted after upload. Real folders, real SQLite, moto on loopback."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent.service import Daemon
from tests.conftest import Rig, start_daemon, stop_daemon, wait_for
from tests.s3server import S3TestServer
from tests.test_daemon import state_of
from tests.test_sync import age, manifest, sessions, sync, write_session

QUEUE_SYSCTL = Path("/proc/sys/fs/inotify/max_queued_events")


def keys_in(client: Any, bucket: str) -> set[str]:
    """Session data keys (the daemon's fleet beat under .ingest-agent/ left out)."""
    listing = client.list_objects_v2(Bucket=bucket)
    return {
        item["Key"] for item in listing.get("Contents", []) if "/.ingest-agent/" not in item["Key"]
    }


def test_layout_fields_become_metadata_and_key_template_places_objects(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    rig = make_rig(
        source_extra="\n".join(
            [
                'layout = "{subject}/{date}_{time}"',
                'key_template = "{instrument}/{subject}/{date}/{time}"',
                'metadata = { instrument = "np2" }',
            ]
        )
    )
    fits = write_session(rig, "mouse1/2026-11-23_10-00", {"a.ap.bin": b"a" * 10})
    stray = write_session(rig, "mouse1/notes", {"readme.txt": b"not a session"})
    age(fits, 60)
    age(stray, 60)

    summary = sync(rig)

    assert summary["sessions_uploaded"] == 1
    assert keys_in(client, rig.bucket) == {
        "rig-01/np2/mouse1/2026-11-23/10-00/a.ap.bin",
        "rig-01/np2/mouse1/2026-11-23/10-00/ingest-manifest.json",
    }
    (row,) = sessions(rig)  # the directory that does not fit the layout is not a session
    assert row["metadata"] == {
        "instrument": "np2",
        "subject": "mouse1",
        "date": "2026-11-23",
        "time": "10-00",
    }
    document = manifest(client, rig, row["manifest_key"])
    assert document["session"]["metadata"]["subject"] == "mouse1"


def test_key_template_that_would_merge_sessions_is_refused(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(
        source_extra='layout = "{subject}/{session}"\nkey_template = "{subject}/{colour}"'
    )
    result = rig.agentctl("check-config")
    assert result.returncode == 2
    assert "source[0].key_template" in result.stderr
    assert "{colour} is not a field" in result.stderr

    rig = make_rig(source_extra='layout = "{subject}/{session}"\nkey_template = "{subject}"')
    result = rig.agentctl("check-config")
    assert result.returncode == 2
    assert "two sessions would share keys" in result.stderr


def test_strict_names_refuse_offending_files_with_reason(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    rig = make_rig(source_extra="strict_names = true")
    session = write_session(
        rig, "mouse2/s1", {"r01c01f01p01-ch1.tiff": b"ok", "plate map (1).csv": b"bad"}
    )
    age(session, 60)

    dry = rig.agentctl("sync", "--dry-run")
    assert dry.returncode == 0
    assert "refused 'plate map (1).csv'" in dry.stdout

    assert sync(rig)["sessions_uploaded"] == 1
    document = manifest(client, rig, sessions(rig)[0]["manifest_key"])
    assert [entry["path"] for entry in document["files"]] == ["r01c01f01p01-ch1.tiff"]
    (refusal,) = document["refused"]
    assert refusal["path"] == "plate map (1).csv"
    assert "strict_names" in refusal["reason"]


def test_file_open_for_writing_holds_the_session_back(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    rig = make_rig()
    session = write_session(rig, "mouse3/s1", {"meta.json": b"{}"})
    with (session / "movie.avi").open("wb") as writer:
        writer.write(b"frame" * 100)
        writer.flush()
        age(session, 60)  # quiet by its times, but a writer still holds the file

        assert sync(rig)["sessions_uploaded"] == 0
        (row,) = sessions(rig)
        assert row["state"] == "waiting"
        assert "still open for writing: movie.avi" in row["reason"]
        assert keys_in(client, rig.bucket) == set()

    assert sync(rig)["sessions_uploaded"] == 1


def test_polling_observer_sees_new_session_and_required_files_rule_waits(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    rig = make_rig(
        quiet_period="1s",
        agent_extra='rescan_interval = "1h"',
        source_extra='watch = "poll"\npoll_interval = "0.2s"\nrequired = ["*.ap.bin", "*.meta"]',
    )
    daemon = start_daemon(rig)
    try:
        assert wait_for(lambda: rig.agentctl("status").returncode == 0, timeout=30)
        # Created after start-up and with rescans an hour apart: only polling can see it.
        session = write_session(rig, "mouse4/s1", {"probe0.meta": b"meta"})
        assert wait_for(lambda: state_of(rig, "ephys/mouse4/s1") == "waiting", timeout=20)
        row = next(r for r in sessions(rig) if r["id"] == "ephys/mouse4/s1")
        assert "*.ap.bin" in row["reason"]
        assert keys_in(client, rig.bucket) == set()

        (session / "probe0.ap.bin").write_bytes(b"x" * 1000)
        assert wait_for(lambda: state_of(rig, "ephys/mouse4/s1") == "uploaded", timeout=30)
    finally:
        code, log = stop_daemon(daemon)
    assert code == 0, log
    assert "rig-01/ephys/mouse4/s1/probe0.ap.bin" in keys_in(client, rig.bucket)


def test_session_deleted_after_upload_is_marked_and_left_in_s3(
    make_rig: Callable[..., Rig], client: Any, s3: S3TestServer
) -> None:
    rig = make_rig()
    session = write_session(rig, "mouse5/s1", {"a.bin": b"a", "b.bin": b"b"})
    age(session, 60)
    assert sync(rig)["sessions_uploaded"] == 1
    before = keys_in(client, rig.bucket)

    for item in session.iterdir():
        item.unlink()
    session.rmdir()
    s3.reset()
    result = rig.agentctl("sync", "--json")

    assert result.returncode == 0, result.stderr
    (row,) = sessions(rig)
    assert row["state"] == "uploaded"
    assert row["local_missing"] is True
    assert keys_in(client, rig.bucket) == before
    assert s3.count("PutObject") == 0
    assert s3.count("DeleteObject") == 0


@pytest.fixture
def small_inotify_queue() -> Iterator[Callable[[], None]]:
    """Shrink the kernel's inotify queue for instances created until the returned function
    is called (the limit is read when an instance is created), and restore it after."""
    try:
        original = QUEUE_SYSCTL.read_text()
        QUEUE_SYSCTL.write_text("16")
    except OSError:
        pytest.skip("fs.inotify.max_queued_events is not writable here (needs root)")

    def restore() -> None:
        QUEUE_SYSCTL.write_text(original)

    try:
        yield restore
    finally:
        restore()


def test_inotify_queue_overflow_is_logged_once_and_triggers_a_rescan(
    make_rig: Callable[..., Rig], small_inotify_queue: Callable[[], None]
) -> None:
    rig = make_rig(agent_extra='rescan_interval = "1h"', source_extra='watch = "inotify"')
    stop = threading.Event()
    daemon = Daemon(rig.settings(), stop=stop)
    with structlog.testing.capture_logs() as logs:
        runner = threading.Thread(target=daemon.run, name="daemon-under-test")
        runner.start()
        try:
            assert wait_for(lambda: any(e["event"] == "watching" for e in logs), timeout=30)
            small_inotify_queue()
            session = rig.session("mouse6/s1")
            for number in range(3000):  # far more events than a 16-event queue holds
                (session / f"tile{number:04}.tif").write_bytes(b"t")
            assert wait_for(
                lambda: sum(e["event"] == "reconcile_finished" for e in logs) >= 2, timeout=30
            )
        finally:
            stop.set()
            runner.join(60)
    assert not runner.is_alive()
    overflow_errors = [
        e for e in logs if e["event"] == "inotify_queue_overflow" and e["log_level"] == "error"
    ]
    assert len(overflow_errors) == 1
    assert "max_queued_events" in overflow_errors[0]["hint"]
