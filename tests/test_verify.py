"""`agentctl verify`: S3 against the database and the local files, on the loopback server."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Rig
from tests.test_sync import age, sync, write_session

SESSION = "ephys/mouse1/s1"
PREFIX = "rig-01/ephys/mouse1/s1"


def verify(rig: Rig, *extra: str) -> tuple[int, dict[str, Any]]:
    result = rig.agentctl("verify", "--json", *extra)
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, report


def problems(report: dict[str, Any]) -> dict[str, str]:
    return {d["key"]: d["problem"] for d in report["differences"]}


def uploaded_rig(make_rig: Callable[..., Rig]) -> tuple[Rig, Path]:
    rig = make_rig()
    session = write_session(
        rig,
        "mouse1/s1",
        {
            "small.json": b'{"probe": 1}',
            "big.ap.bin": os.urandom(11 * 1024**2),  # three parts of 5 MiB
            "notes.txt": b"fine",
        },
    )
    age(session, 60)
    assert sync(rig)["sessions_uploaded"] == 1
    return rig, session


def test_verify_matches_after_upload_including_read_back(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    rig, _session = uploaded_rig(make_rig)

    code, report = verify(rig, "--download")

    assert code == 0
    assert report["differences"] == []
    assert report["files"] == 3
    # Local files and objects were each read once: twice (11 MiB + 16 bytes).
    assert report["bytes_read"] == 2 * (11 * 1024**2 + 12 + 4)
    # The multipart object's whole-file checksum, unknown at its creation, is in its tags.
    state = rig.settings().state_db_path
    tags = client.get_object_tagging(Bucket=rig.bucket, Key=f"{PREFIX}/big.ap.bin")["TagSet"]
    recorded = json.loads(rig.agentctl("sessions", "--json").stdout)[0]
    assert state.exists() and recorded["state"] == "uploaded"
    manifest = json.loads(
        client.get_object(Bucket=rig.bucket, Key=recorded["manifest_key"])["Body"].read()
    )
    big = next(entry for entry in manifest["files"] if entry["path"] == "big.ap.bin")
    assert {"Key": "agent-checksum", "Value": big["checksum"]["value"]} in tags
    human = rig.agentctl("verify", SESSION)
    assert human.returncode == 0
    assert "S3 matches" in human.stdout


def test_verify_reports_each_difference_and_exits_1(
    make_rig: Callable[..., Rig], client: Any
) -> None:
    rig, session = uploaded_rig(make_rig)
    # Replaced in S3 by someone else; deleted in S3; rotted locally with size and mtime kept.
    client.put_object(Bucket=rig.bucket, Key=f"{PREFIX}/small.json", Body=b'{"probe": 2}')
    client.delete_object(Bucket=rig.bucket, Key=f"{PREFIX}/notes.txt")
    big = session / "big.ap.bin"
    stat = big.stat()
    with big.open("r+b") as handle:
        handle.seek(7 * 1024**2)
        handle.write(b"\xff" * 16)
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    code, report = verify(rig)

    assert code == 1
    found = problems(report)
    assert "(object replaced?)" in found[f"{PREFIX}/small.json"]
    assert found[f"{PREFIX}/notes.txt"] == "object missing in S3"
    assert "local bytes have crc32c" in found[f"{PREFIX}/big.ap.bin"]
    assert len(found) == 3

    # --quick trusts size and mtime, so the rotted local file goes unnoticed.
    code, report = verify(rig, "--quick")
    assert code == 1
    assert f"{PREFIX}/big.ap.bin" not in problems(report)


def test_verify_manifest_and_files_gone_locally(make_rig: Callable[..., Rig], client: Any) -> None:
    rig, session = uploaded_rig(make_rig)
    (session / "notes.txt").unlink()  # freeing local disk after upload is not a difference

    code, report = verify(rig)
    assert code == 0
    assert report["local_unchecked"] == 1

    client.delete_object(Bucket=rig.bucket, Key=f"{PREFIX}/ingest-manifest.json")
    code, report = verify(rig)
    assert code == 1
    assert problems(report) == {f"{PREFIX}/ingest-manifest.json": "manifest missing in S3"}


def test_verify_unknown_session_names_it(make_rig: Callable[..., Rig]) -> None:
    rig, _session = uploaded_rig(make_rig)
    result = rig.agentctl("verify", "ephys/nobody/never")
    assert result.returncode == 2
    assert "ephys/nobody/never" in result.stderr
