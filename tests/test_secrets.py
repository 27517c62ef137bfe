"""A planted secret appears nowhere: logs, status, sessions, manifests, objects, database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import DestinationSettings, UploadSettings
from agent.redact import redact
from agent.state import State
from agent.transfer import make_client
from tests.conftest import Rig, stop_daemon, wait_for
from tests.s3server import Fault, S3TestServer

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEY0000001",
    "AWS_SECRET_ACCESS_KEY": "plantedSecretKey-0123456789abcdef",
    "AWS_SESSION_TOKEN": "plantedSessionToken-fedcba9876543210",
}


def run(rig: Rig, *arguments: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *arguments, "--config", str(rig.config)],
        capture_output=True,
        env={**os.environ, **SECRETS},
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_planted_credentials_appear_nowhere(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig(agent_extra='log_level = "debug"')
    session = rig.session("mouse1/2026-11-26_12-00")
    (session / "a.bin").write_bytes(os.urandom(7 * 1024 * 1024))  # multipart
    (session / "b.txt").write_text("notes")
    # Failures first (retried, then a failed session with its error recorded), then success.
    # Twice: a 403 to a direct request is asked again through botocore (agent/direct.py).
    s3.faults.append(Fault("PutObject", 403, "AccessDenied", 2))
    s3.faults.append(Fault("UploadPart", 503, "SlowDown", 3))
    outputs: list[bytes] = []
    daemon = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(rig.config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **SECRETS},
        text=True,
    )
    try:
        assert wait_for(lambda: b'"failed": 1' in run(rig, "status", "--json").stdout, 60)
        for command in (("status",), ("status", "--json"), ("sessions",), ("sessions", "--json")):
            result = run(rig, *command)
            outputs += [result.stdout, result.stderr]
        assert run(rig, "retry", "ephys/mouse1/2026-11-26_12-00").returncode == 0
        assert wait_for(lambda: b'"uploaded": 1' in run(rig, "status", "--json").stdout, 60)
    finally:
        code, errors = stop_daemon(daemon)
    assert code == 0, errors
    outputs.append(errors.encode())
    for command in (("status", "--json"), ("sessions", "--json"), ("verify", "--download")):
        result = run(rig, *command)
        outputs += [result.stdout, result.stderr]
    assert b"AccessDenied" in b"".join(outputs)  # the failure was reported...
    for path in rig.state_dir.iterdir():
        outputs.append(path.read_bytes())
    for item in client.list_objects_v2(Bucket=rig.bucket)["Contents"]:
        outputs.append(client.get_object(Bucket=rig.bucket, Key=item["Key"])["Body"].read())
        head = client.head_object(Bucket=rig.bucket, Key=item["Key"])
        outputs.append(repr(head.get("Metadata")).encode())
    everything = b"\n".join(outputs)
    for name, value in SECRETS.items():
        assert value.encode() not in everything, f"{name} leaked"  # ...without any secret


def test_endpoint_url_with_userinfo_is_refused_without_echoing_it(
    make_rig: Callable[..., Rig], tmp_path: Path
) -> None:
    rig = make_rig()
    text = rig.config.read_text()
    rig.config.write_text(
        text.replace('endpoint_url = "http://', 'endpoint_url = "http://minio:pa55w0rd-x@')
    )
    result = rig.agentctl("check-config")
    assert result.returncode == 2
    assert "endpoint_url" in result.stderr
    assert "user:password@" in result.stderr
    assert "pa55w0rd-x" not in result.stderr + result.stdout


def test_status_and_sessions_mask_a_secret_inside_a_recorded_error(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(create_bucket=False)
    session = rig.session("mouse1/2026-11-26_13-00")
    (session / "a.bin").write_bytes(b"data")
    time.sleep(1.2)
    assert run(rig, "sync").returncode == 1  # no such bucket: the session fails
    state = State.open(rig.settings().state_db_path)
    try:
        # Failed again, along the life cycle (failed → uploading → failed), with a worse error.
        state.sessions.move("ephys/mouse1/2026-11-26_13-00", "uploading")
        state.sessions.fail(
            "ephys/mouse1/2026-11-26_13-00",
            f"AccessDenied: signature of {SECRETS['AWS_SECRET_ACCESS_KEY']} via "
            "https://u:p4ss@host/x?X-Amz-Signature=abc",
            time.time() + 3600,
        )
    finally:
        state.close()
    printed = b""
    for command in (("status",), ("status", "--json"), ("sessions",), ("sessions", "--json")):
        result = run(rig, *command)
        printed += result.stdout + result.stderr
    assert b"AccessDenied: signature of ***" in printed
    for secret in (SECRETS["AWS_SECRET_ACCESS_KEY"], "p4ss", "X-Amz-Signature=abc"):
        assert secret.encode() not in printed


def test_credentials_from_a_profile_are_masked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[lab]\naws_access_key_id = AKIAPROFILEKEY000001\n"
        "aws_secret_access_key = profileSecret-0123456789abcdef\n"
    )
    for name in SECRETS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    make_client(
        DestinationSettings(bucket="b", profile="lab", endpoint_url="http://127.0.0.1:9"),
        UploadSettings(),
    )
    text = "signed with profileSecret-0123456789abcdef by AKIAPROFILEKEY000001"
    assert redact(text) == "signed with *** by ***"
