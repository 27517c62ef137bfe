"""Files uploaded while they grow (`upload_while_growing`): stable leading parts go up
during acquisition; an appended file completes without re-sending them; a rewritten file's
early upload is discarded. A real daemon, real inotify, moto on loopback."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tests.conftest import Rig, start_daemon, stop_daemon, wait_for
from tests.s3server import S3TestServer
from tests.test_daemon import state_of

MIB = 1024**2
SESSION = "ephys/mouse1/s1"
KEY = "rig-01/ephys/mouse1/s1/continuous.ap.bin"


def growing_rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig(
        quiet_period="2s",
        agent_extra='rescan_interval = "1h"',
        source_extra='upload_while_growing = true\ngrowing_part_size = "5MiB"',
        concurrency=2,
    )


def part_numbers(s3: S3TestServer) -> list[int]:
    return sorted(request.part_number or 0 for request in s3.completed("UploadPart"))


def test_appended_file_sends_early_parts_once_and_completes(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = growing_rig(make_rig)
    daemon = start_daemon(rig)
    written = b""
    try:
        assert wait_for(lambda: rig.agentctl("status").returncode == 0, timeout=30)
        session = rig.session("mouse1/s1")
        with (session / "continuous.ap.bin").open("wb") as recording:
            chunk = os.urandom(12 * MIB)
            recording.write(chunk)
            recording.flush()
            written += chunk
            # One whole part lies a part below the end: it goes up while recording goes on.
            assert wait_for(lambda: part_numbers(s3) == [1], timeout=30)
            assert state_of(rig, SESSION) == "waiting"
            chunk = os.urandom(8 * MIB + 12345)
            recording.write(chunk)
            written += chunk
        assert wait_for(lambda: state_of(rig, SESSION) == "uploaded", timeout=60)
    finally:
        code, log = stop_daemon(daemon)
    assert code == 0, log
    assert "growing_parts_sent" in log
    assert part_numbers(s3) == [1, 2, 3, 4, 5]  # 20 MiB + a tail: no part sent twice
    assert s3.count("CreateMultipartUpload") == 1
    assert s3.count("AbortMultipartUpload") == 0
    assert client.get_object(Bucket=rig.bucket, Key=KEY)["Body"].read() == written


def test_rewritten_file_discards_its_early_upload(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = growing_rig(make_rig)
    daemon = start_daemon(rig)
    try:
        assert wait_for(lambda: rig.agentctl("status").returncode == 0, timeout=30)
        session = rig.session("mouse1/s1")
        path = session / "continuous.ap.bin"
        with path.open("wb") as recording:
            recording.write(os.urandom(12 * MIB))
            recording.flush()
            assert wait_for(lambda: part_numbers(s3) == [1], timeout=30)
            # A header rewritten at the start (same inode), then more data: not an append.
            recording.seek(0)
            recording.write(b"HEADER" * 1000)
            recording.seek(0, os.SEEK_END)
            recording.write(os.urandom(3 * MIB))
        assert wait_for(lambda: state_of(rig, SESSION) == "uploaded", timeout=60)
    finally:
        code, log = stop_daemon(daemon)
    assert code == 0, log
    assert "growing_upload_discarded" in log
    assert s3.count("AbortMultipartUpload") >= 1
    assert client.get_object(Bucket=rig.bucket, Key=KEY)["Body"].read() == path.read_bytes()
    assert client.list_multipart_uploads(Bucket=rig.bucket).get("Uploads", []) == []
