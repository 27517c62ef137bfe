"""End to end through `agentctl sync`, against moto's server on loopback, real folders and a
real SQLite file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.state import State
from tests.conftest import Rig
from tests.s3server import S3TestServer

CONTRACT_SESSION_FIELDS = {
    "id",
    "source",
    "path",
    "state",
    "files",
    "bytes",
    "uploaded_bytes",
    "key_prefix",
    "manifest_key",
    "detected_at",
    "completed_at",
    "uploaded_at",
    "error",
}


def write_session(rig: Rig, rel_path: str, files: dict[str, bytes]) -> Path:
    session = rig.session(rel_path)
    for name, data in files.items():
        path = session / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return session


def age(path: Path, seconds: float) -> None:
    """Make every file and directory under `path` look `seconds` old."""
    stamp = time.time() - seconds
    for item in [path, *path.rglob("*")]:
        os.utime(item, (stamp, stamp))


def sync(rig: Rig, *extra: str) -> dict[str, Any]:
    result = rig.agentctl("sync", "--json", *extra)
    assert result.returncode in (0, 1), result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def sessions(rig: Rig) -> list[dict[str, Any]]:
    result = rig.agentctl("sessions", "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def manifest(client: Any, rig: Rig, key: str) -> dict[str, Any]:
    body = client.get_object(Bucket=rig.bucket, Key=key)["Body"].read()
    document: dict[str, Any] = json.loads(body)
    return document


def test_session_uploads_after_quiet_period_with_exact_bytes_and_manifest(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig(quiet_period="2s", destination_extra='checksum = "sha256"')
    big = os.urandom(13 * 1024**2)  # three parts of 5 MiB: the multipart path
    files = {
        "probe0/continuous.ap.bin": big,
        "probe0/continuous.ap.meta": b"meta=1\n",
        "notes.txt": b"",
        "scratch.tmp": b"excluded",
    }
    session = write_session(rig, "mouse1/2026-11-23_10-00", files)

    first = sync(rig)
    assert first["sessions_uploaded"] == 0 and first["sessions_waiting"] == 1
    assert s3.count("PutObject") == 0 and s3.count("UploadPart") == 0
    assert sessions(rig)[0]["state"] == "waiting"

    time.sleep(2.2)
    second = sync(rig)
    assert second["sessions_uploaded"] == 1
    row = sessions(rig)[0]
    assert row["state"] == "uploaded"
    assert set(row) >= CONTRACT_SESSION_FIELDS
    assert row["uploaded_bytes"] == row["bytes"] == len(big) + 7
    assert row["path"] == str(session)

    prefix = "rig-01/ephys/mouse1/2026-11-23_10-00"
    for name, data in files.items():
        key = f"{prefix}/{name}"
        if name.endswith(".tmp"):
            assert client.list_objects_v2(Bucket=rig.bucket, Prefix=key).get("KeyCount") == 0
            continue
        assert client.get_object(Bucket=rig.bucket, Key=key)["Body"].read() == data
    assert s3.count("UploadPart") == 3

    document = manifest(client, rig, row["manifest_key"])
    listed = {entry["path"]: entry for entry in document["files"]}
    assert set(listed) == {"probe0/continuous.ap.bin", "probe0/continuous.ap.meta", "notes.txt"}
    for name, entry in listed.items():
        assert entry["size"] == len(files[name])
        expected = base64.b64encode(hashlib.sha256(files[name]).digest()).decode()
        assert entry["checksum"] == {"algorithm": "sha256", "value": expected}
    assert document["revision"] == 1
    # The manifest is written after every file.
    puts = [r.path for r in s3.requests if r.operation in ("PutObject", "CompleteMultipartUpload")]
    assert puts[-1].endswith("ingest-manifest.json")


def test_second_sync_sends_nothing_and_late_file_goes_alone(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig(quiet_period="1s")
    session = write_session(rig, "mouse2/s1", {"a.bin": b"a" * 1000, "b.bin": b"b" * 2000})
    age(session, 60)
    assert sync(rig)["sessions_uploaded"] == 1
    s3.reset()

    again = sync(rig)
    assert again["files"] == 0 and again["bytes"] == 0
    assert s3.count("PutObject") == 0 and s3.count("UploadPart") == 0

    (session / "analysis").mkdir()
    (session / "analysis" / "suite2p.npy").write_bytes(b"late result")
    seen = sync(rig)  # the agent saw the change itself: the quiet period starts again
    assert seen["files"] == 0 and seen["sessions_waiting"] == 1
    time.sleep(1.2)
    late = sync(rig)
    assert late["files"] == 1 and late["bytes"] == len(b"late result")
    put_paths = [r.path for r in s3.of("PutObject")]
    assert len(put_paths) == 2
    assert put_paths[0].endswith("/analysis/suite2p.npy")
    assert put_paths[1].endswith("/ingest-manifest.json")
    row = sessions(rig)[0]
    document = manifest(client, rig, row["manifest_key"])
    assert document["revision"] == 2
    assert {entry["path"] for entry in document["files"]} == {
        "a.bin",
        "b.bin",
        "analysis/suite2p.npy",
    }


def test_changed_file_is_sent_again(make_rig: Callable[..., Rig], client: Any) -> None:
    rig = make_rig()
    session = write_session(rig, "mouse3/s1", {"a.bin": b"first"})
    age(session, 60)
    sync(rig)
    (session / "a.bin").write_bytes(b"second version")
    assert sync(rig)["files"] == 0
    time.sleep(1.2)
    assert sync(rig)["files"] == 1
    key = "rig-01/ephys/mouse3/s1/a.bin"
    assert client.get_object(Bucket=rig.bucket, Key=key)["Body"].read() == b"second version"


def test_marker_rule_waits_for_marker(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(source_extra='marker = "transfer_me.flag"')
    session = write_session(rig, "mouse4/s1", {"a.bin": b"x"})
    age(session, 600)
    assert sync(rig)["sessions_uploaded"] == 0
    assert "marker" in sessions(rig)[0]["reason"]
    (session / "transfer_me.flag").touch()
    sync(rig)
    time.sleep(1.2)
    assert sync(rig)["sessions_uploaded"] == 1


def test_dry_run_touches_neither_s3_nor_database(
    make_rig: Callable[..., Rig], s3: S3TestServer
) -> None:
    rig = make_rig()
    s3.reset()  # forget the bucket creation
    session = write_session(rig, "mouse5/s1", {"a.bin": b"x" * 10, "b/c.bin": b"y"})
    age(session, 60)
    result = rig.agentctl("sync", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows[0]["ready"] and rows[0]["files"] == 2 and rows[0]["bytes"] == 11
    assert "rig-01/ephys/mouse5/s1/b/c.bin" in rows[0]["keys"]
    assert s3.requests == []
    assert not rig.state_dir.exists()


def test_status_json_fields_and_stale_heartbeat(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    session = write_session(rig, "mouse6/s1", {"a.bin": b"x"})
    age(session, 60)
    sync(rig)
    result = rig.agentctl("status", "--json")
    status = json.loads(result.stdout)
    assert {"state", "daemon", "sessions", "backlog", "last_error"} <= set(status)
    assert {"running", "pid", "heartbeat_age_s"} <= set(status["daemon"])
    assert set(status["sessions"]) == {"waiting", "ready", "uploading", "uploaded", "failed"}
    assert status["sessions"]["uploaded"] == 1
    # The contract's backlog fields; status may add more (ready_files, eta_s, ...).
    assert {k: status["backlog"][k] for k in ("files", "bytes")} == {"files": 0, "bytes": 0}

    state = State.open(rig.settings().state_db_path)
    state.control.beat(
        pid=4242, hostname="rig", started_at=time.time() - 500, now=time.time() - 300, status="old"
    )
    state.close()
    stale = rig.agentctl("status", "--json")
    assert stale.returncode == 2
    assert json.loads(stale.stdout)["state"] == "critical"
    assert json.loads(stale.stdout)["daemon"]["running"] is False

    state = State.open(rig.settings().state_db_path)
    state.control.beat(
        pid=4242, hostname="rig", started_at=time.time(), now=time.time(), status="ok"
    )
    state.close()
    fresh = rig.agentctl("status")
    assert fresh.returncode == 0, fresh.stdout
    assert fresh.stdout.startswith("OK")


def test_status_without_database_is_unknown(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    result = rig.agentctl("status", "--json")
    assert result.returncode == 3
    assert json.loads(result.stdout)["state"] == "unknown"


def test_unsafe_name_refused_rest_of_session_proceeds(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    rig = make_rig()
    session = write_session(rig, "mouse7/s1", {"good.bin": b"ok", "bad\x01name.bin": b"no"})
    age(session, 60)
    assert sync(rig)["sessions_uploaded"] == 1
    row = sessions(rig)[0]
    document = manifest(client, rig, row["manifest_key"])
    assert [entry["path"] for entry in document["files"]] == ["good.bin"]
    assert document["refused"][0]["path"] == "bad\x01name.bin"
