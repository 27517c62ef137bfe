"""`agentctl doctor`: against the real S3 server on loopback (moto), with IAM enforced where a
test needs the server to check signatures and policies, on real filesystems (a full and a
read-only tmpfs in a private mount namespace), and its pure verdicts with injected values."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from email.utils import formatdate
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.core import enable_iam_authentication

from agent.config import SourceSettings
from agent.doctor import (
    FAIL,
    OK,
    SKIPPED,
    WARNING,
    Answer,
    Check,
    Systemctl,
    check_inotify,
    check_source,
    check_systemd,
    checksum_verdict,
    clock_verdict,
    conditional_verdict,
    count_directories,
    free_space_verdict,
    inotify_verdict,
    mask_key_id,
    render,
    state_filesystem_verdict,
    systemd_verdict,
    watch_verdict,
)
from agent.redact import SECRETS
from tests.conftest import Rig
from tests.s3server import Fault, S3TestServer

# What the agent needs, as moto names the actions of the requests the doctor makes
# (CreateMultipartUpload is authorised as s3:PutObject, as on AWS).
AGENT_ACTIONS = [
    "s3:ListBucket",
    "s3:GetObject",
    "s3:PutObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
    "s3:ListBucketMultipartUploads",
]
READ_ONLY_ACTIONS = [
    "s3:ListBucket",
    "s3:GetObject",
    "s3:ListMultipartUploadParts",
    "s3:ListBucketMultipartUploads",
]


# --- helpers ----------------------------------------------------------------------------------


def run_doctor(
    rig: Rig, *arguments: str, environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`agentctl doctor` for the rig in a child process, with `environment` added."""
    return subprocess.run(
        [sys.executable, "-m", "agent", "doctor", *arguments, "--config", str(rig.config)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(environment or {})},
        check=False,
    )


def line(output: str, name: str) -> tuple[str, str | None]:
    """The report line of check `name` and the "fix:" line under it (or None)."""
    lines = output.splitlines()
    for index, text in enumerate(lines):
        if text[2:].startswith(f"{name}: "):
            following = lines[index + 1] if index + 1 < len(lines) else ""
            return text, following.strip() if following.startswith("    fix: ") else None
    raise AssertionError(f"no line for {name!r} in:\n{output}")


def failing(output: str, name: str) -> str:
    """The ✘ line of `name`, asserting it has its fix line; return both joined."""
    text, fix = line(output, name)
    assert text.startswith("✘ "), output
    assert fix is not None and len(fix) > len("fix: "), output
    return f"{text}\n{fix}"


def bucket_is_empty(client: Any, bucket: str) -> None:
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.fixture
def iam_user(s3: S3TestServer) -> Callable[[list[str]], tuple[str, str]]:
    """Make an IAM user on the test server allowed `actions`; return (key id, secret)."""
    iam = boto3.client("iam", endpoint_url=s3.url, region_name="us-east-1")

    def make(actions: list[str]) -> tuple[str, str]:
        name = f"doctor-{uuid.uuid4().hex[:12]}"
        iam.create_user(UserName=name)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
        }
        iam.put_user_policy(UserName=name, PolicyName="agent", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    return make


def enforced() -> AbstractContextManager[None]:
    """moto's IAM mode: inside `with enforced():` the server checks every request's access
    key, recomputes its signature and applies the user's policies, as a real server does
    (moto's own switch, INITIAL_NO_AUTH_ACTION_COUNT = 0, restored on exit). The server
    runs in this process, so the switch is the process-wide setting."""
    return enable_iam_authentication()


# --- against the server -------------------------------------------------------------------------


def test_good_setup_passes_and_leaves_nothing_behind(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig()
    result = rig.agentctl("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (
        "credentials",
        "endpoint",
        "bucket",
        "bucket writable",
        "multipart",
        "checksums",
        "conditional writes",
        "ListParts",
        "ListMultipartUploads",
        "clock",
        "state dir",
        "state dir free space",
        "source ephys",
        "inotify watches",
    ):
        text, _ = line(result.stdout, name)
        assert text.startswith("✔ "), result.stdout
    assert "from env" in line(result.stdout, "credentials")[0]
    assert "echoed" in line(result.stdout, "checksums")[0]
    assert "412" in line(result.stdout, "conditional writes")[0]
    # The probes really happened, and were all cleaned up.
    assert s3.completed("PutObject") and s3.completed("CreateMultipartUpload")
    assert s3.completed("AbortMultipartUpload")
    assert s3.of("PutObject")[0].path.startswith(f"/{rig.bucket}/rig-01/.ingest-agent/doctor/")
    bucket_is_empty(client, rig.bucket)


def test_json_report_in_a_versioned_bucket_keeps_no_probe_version(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig()
    client.put_bucket_versioning(Bucket=rig.bucket, VersioningConfiguration={"Status": "Enabled"})
    result = rig.agentctl("doctor", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert {check["name"] for check in report["checks"]} >= {"credentials", "clock", "state dir"}
    assert all(set(check) >= {"name", "ok", "detail", "fix"} for check in report["checks"])
    versions = client.list_object_versions(Bucket=rig.bucket)
    assert versions.get("Versions", []) == [] and versions.get("DeleteMarkers", []) == []


def test_least_privilege_policy_passes_under_enforced_iam(
    make_rig: Callable[..., Rig],
    iam_user: Callable[[list[str]], tuple[str, str]],
    client: Any,
) -> None:
    rig = make_rig()
    key_id, secret = iam_user([*AGENT_ACTIONS, "s3:DeleteObject"])
    with enforced():
        result = run_doctor(
            rig, environment={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✘" not in result.stdout and "! " not in result.stdout, result.stdout
    assert mask_key_id(key_id) in line(result.stdout, "credentials")[0]
    assert key_id not in result.stdout and secret not in result.stdout
    bucket_is_empty(client, rig.bucket)


def test_wrong_secret_key_is_named_and_never_printed(
    make_rig: Callable[..., Rig],
    iam_user: Callable[[list[str]], tuple[str, str]],
) -> None:
    rig = make_rig()
    key_id, _ = iam_user(AGENT_ACTIONS)
    wrong = "wrongSecretKey-0123456789abcdefghij"
    with enforced():
        result = run_doctor(
            rig, environment={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": wrong}
        )
        as_json = run_doctor(
            rig,
            "--json",
            environment={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": wrong},
        )
    assert result.returncode == 1, result.stdout + result.stderr
    text = failing(result.stdout, "credentials")
    assert "SignatureDoesNotMatch" in text and "secret" in text
    assert "AWS_SECRET_ACCESS_KEY" in text  # where to fix it: the source was env
    assert line(result.stdout, "bucket writable")[0].startswith("- ")
    for output in (result.stdout + result.stderr, as_json.stdout + as_json.stderr):
        assert wrong not in output
    checks = {check["name"]: check for check in json.loads(as_json.stdout)["checks"]}
    assert checks["credentials"]["ok"] is False and checks["credentials"]["fix"]


def test_unknown_access_key_id_is_named(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    with enforced():
        result = run_doctor(
            rig,
            environment={
                "AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000",
                "AWS_SECRET_ACCESS_KEY": "someSecretKey-0123456789",
            },
        )
    assert result.returncode == 1
    text = failing(result.stdout, "credentials")
    assert "InvalidAccessKeyId" in text and "AKIA…000" in text
    assert "does not know this access key id" in text


def test_no_credentials_or_a_missing_profile(make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make_rig()
    nowhere = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    result = run_doctor(rig, environment=nowhere)
    assert result.returncode == 1
    assert "none found" in failing(result.stdout, "credentials")
    assert line(result.stdout, "bucket")[0].startswith("- ")
    rig.config.write_text(
        rig.config.read_text().replace("[destination]\n", '[destination]\nprofile = "lab"\n')
    )
    result = run_doctor(rig, environment=nowhere)
    assert result.returncode == 1
    assert "profile 'lab'" in failing(result.stdout, "credentials")


def test_missing_bucket_is_named_with_its_fix(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(create_bucket=False)
    result = rig.agentctl("doctor")
    assert result.returncode == 1
    text = failing(result.stdout, "bucket")
    assert rig.bucket in text and "NoSuchBucket" in text and "aws s3 mb" in text
    assert line(result.stdout, "credentials")[0].startswith("✔ ")
    assert line(result.stdout, "bucket writable")[0].startswith("- ")


def test_read_only_policy_is_named(
    make_rig: Callable[..., Rig],
    iam_user: Callable[[list[str]], tuple[str, str]],
    client: Any,
) -> None:
    rig = make_rig()
    key_id, secret = iam_user(READ_ONLY_ACTIONS)
    with enforced():
        result = run_doctor(
            rig, environment={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
        )
    assert result.returncode == 1
    assert line(result.stdout, "credentials")[0].startswith("✔ ")
    text = failing(result.stdout, "bucket writable")
    assert "PutObject denied" in text and "read-only" in text and "s3:PutObject" in text
    assert "CreateMultipartUpload denied" in failing(result.stdout, "multipart")
    bucket_is_empty(client, rig.bucket)


def test_put_allowed_delete_denied_names_the_probe_left_behind(
    make_rig: Callable[..., Rig],
    iam_user: Callable[[list[str]], tuple[str, str]],
    client: Any,
) -> None:
    rig = make_rig()
    key_id, secret = iam_user(AGENT_ACTIONS)  # no s3:DeleteObject
    with enforced():
        result = run_doctor(
            rig, environment={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
        )
    # The agent never deletes, so the policy is fine: a warning, not a failure.
    assert result.returncode == 0, result.stdout
    text, fix = line(result.stdout, "bucket writable")
    assert text.startswith("! ") and "left behind" in text and fix is not None
    left = [item["Key"] for item in client.list_objects_v2(Bucket=rig.bucket)["Contents"]]
    assert len(left) == 1 and left[0].startswith("rig-01/.ingest-agent/doctor/test-rig-")
    assert (
        f"s3://{rig.bucket}/{left[0]}" in text and f"aws s3 rm s3://{rig.bucket}/{left[0]}" in fix
    )
    assert client.list_multipart_uploads(Bucket=rig.bucket).get("Uploads", []) == []
    client.delete_object(Bucket=rig.bucket, Key=left[0])


def test_unreachable_endpoint_is_named_within_seconds(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    text = rig.config.read_text()
    rig.config.write_text(
        text.replace('endpoint_url = "http://127.0.0.1:', f'endpoint_url = "{url}" #')
    )
    started = time.monotonic()
    result = rig.agentctl("doctor")
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert url in failing(result.stdout, "endpoint")
    assert line(result.stdout, "bucket")[0].startswith("- ")
    assert line(result.stdout, "state dir")[0].startswith("✔ ")  # the local checks still run


def test_missing_server_features_say_what_the_agent_does(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig()
    s3.list_parts_supported = False
    s3.list_uploads_supported = False
    s3.missing_answer = (405, "MethodNotAllowed")
    s3.conditional_writes_supported = False  # the server ignores If-None-Match
    result = rig.agentctl("doctor")
    assert result.returncode == 0, result.stdout  # the agent copes: warnings
    parts, _ = line(result.stdout, "ListParts")
    assert parts.startswith("! ") and "own record of finished parts" in parts
    uploads, fix = line(result.stdout, "ListMultipartUploads")
    assert uploads.startswith("! ") and fix is not None and "AbortIncompleteMultipartUpload" in fix
    conditional, fix = line(result.stdout, "conditional writes")
    assert conditional.startswith("! ") and "would be replaced" in conditional and fix
    s3.reset()  # the server lists uploads again
    bucket_is_empty(client, rig.bucket)


def test_server_refusing_the_clock_fails_the_clock_check(
    make_rig: Callable[..., Rig], s3: S3TestServer
) -> None:
    # moto does not check request times; the answer a real server gives is injected (the
    # doctor retries it once, as the agent would, so both attempts get it).
    rig = make_rig()
    s3.faults.append(Fault("ListObjects", 403, "RequestTimeTooSkewed", 2))
    result = rig.agentctl("doctor")
    assert result.returncode == 1
    assert "RequestTimeTooSkewed" in failing(result.stdout, "clock")
    assert "not checked: the server refused the local clock" in line(result.stdout, "bucket")[0]


# --- configuration and sources ----------------------------------------------------------------


def test_bad_config_exits_2_like_other_commands(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.source.rmdir()
    result = rig.agentctl("doctor")
    assert result.returncode == 2
    assert "configuration invalid" in result.stderr and str(rig.source) in result.stderr
    assert "create it or fix the path" in result.stderr
    as_json = rig.agentctl("doctor", "--json")
    assert as_json.returncode == 2
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["checks"][0]["name"] == "config"
    assert report["checks"][0]["fix"]


def test_source_missing_or_not_a_directory(tmp_path: Path) -> None:
    missing = check_source(SourceSettings(name="ephys", path=tmp_path / "gone"), 300)
    assert missing.status == FAIL and "does not exist" in missing.detail and missing.fix
    file = tmp_path / "a-file"
    file.write_text("x")
    not_directory = check_source(SourceSettings(name="ephys", path=file), 300)
    assert not_directory.status == FAIL and "not a directory" in not_directory.detail
    assert not_directory.fix
    fine = check_source(SourceSettings(name="ephys", path=tmp_path), 300)
    assert fine.status == OK and "inotify" in fine.detail


def _drop_dac() -> list[str] | None:
    """A command prefix that runs a child as root without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, so permission bits apply to it; None where that is not possible."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.skipif(_drop_dac() is None, reason="needs root and setpriv to drop DAC capabilities")
def test_unreadable_source_even_for_root(tmp_path: Path, make_rig: Callable[..., Rig]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    prefix = _drop_dac()
    assert prefix is not None
    program = (
        "import json, sys; from pathlib import Path; from agent.config import SourceSettings; "
        "from agent.doctor import check_source; "
        "print(json.dumps(check_source(SourceSettings(name='ephys', path=Path(sys.argv[1])), "
        "300).as_json()))"
    )
    result = subprocess.run(
        [*prefix, sys.executable, "-c", program, str(locked)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    check = json.loads(result.stdout)
    assert check["ok"] is False and "not readable by root" in check["detail"]
    assert "setfacl" in check["fix"]
    # Through the CLI the config's own validation sees it first: exit 2, like check-config.
    rig = make_rig()
    rig.config.write_text(rig.config.read_text().replace(str(rig.source), str(locked)))
    cli = subprocess.run(
        [*prefix, sys.executable, "-m", "agent", "doctor", "--config", str(rig.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 2 and "not readable by this user" in cli.stderr


def test_watch_mode_follows_the_filesystem(tmp_path: Path) -> None:
    auto = SourceSettings(name="scope", path=tmp_path)
    polled = watch_verdict(auto, "nfs4", "poll", 300)
    assert polled.status == OK and "polled every 30 s" in polled.detail
    assert "network filesystem" in polled.detail
    forced = SourceSettings(name="scope", path=tmp_path, watch="inotify")
    blind = watch_verdict(forced, "cifs", "inotify", 300)
    assert blind.status == WARNING and blind.fix and "poll" in blind.fix
    off = watch_verdict(SourceSettings(name="scope", path=tmp_path, watch="off"), "ext4", "off", 60)
    assert off.status == OK and "rescan every 1 min" in off.detail
    assert watch_verdict(auto, "ext4", "inotify", 300).detail.endswith("watched with inotify")


# --- the state directory ----------------------------------------------------------------------

# Runs inside `unshare --mount`: a small tmpfs over the state dir, filled or read-only.
MOUNT_SCRIPT = """
set -eu
state="$1"; mode="$2"; shift 2
mkdir -p "$state"
if [ "$mode" = full ]; then
  mount -t tmpfs -o size=1m tmpfs "$state"
  dd if=/dev/zero of="$state/filler" bs=64k 2>/dev/null || true
else
  mount -t tmpfs -o ro,size=512m tmpfs "$state"
fi
exec "$@"
"""


@cache
def _cannot_mount() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs in a private mount namespace"
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "t", "/mnt"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"unshare --mount with mount -t tmpfs is not permitted here: {probe.stderr}"
    return None


def doctor_on_mounted_state(rig: Rig, mode: str) -> dict[str, dict[str, Any]]:
    reason = _cannot_mount()
    if reason is not None:
        pytest.skip(reason)
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            MOUNT_SCRIPT,
            "sh",
            str(rig.state_dir),
            mode,
            sys.executable,
            "-m",
            "agent",
            "doctor",
            "--json",
            "--config",
            str(rig.config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    return {check["name"]: check for check in json.loads(result.stdout)["checks"]}


def test_state_dir_on_a_full_filesystem(make_rig: Callable[..., Rig]) -> None:
    checks = doctor_on_mounted_state(make_rig(), "full")
    assert checks["state dir"]["ok"] is False and "full" in checks["state dir"]["detail"]
    assert "free space" in checks["state dir"]["fix"]
    space = checks["state dir free space"]
    assert space["ok"] is False and "only" in space["detail"] and space["fix"]
    assert checks["bucket writable"]["ok"] is True  # only the state dir is wrong


def test_state_dir_on_a_read_only_filesystem(make_rig: Callable[..., Rig]) -> None:
    checks = doctor_on_mounted_state(make_rig(), "ro")
    state = checks["state dir"]
    assert state["ok"] is False and "read-only" in state["detail"]
    assert "remount" in state["fix"] and "state_dir" in state["fix"]
    assert checks["state dir free space"]["ok"] is True  # 512 MiB free, just not writable


def test_state_filesystem_and_space_verdicts() -> None:
    state = Path("/var/lib/ingest-agent")
    for network in ("nfs", "nfs4", "cifs", "fuse.sshfs"):
        verdict = state_filesystem_verdict(state, network)
        assert verdict.status == FAIL and "SQLite" in verdict.detail and verdict.fix
    assert state_filesystem_verdict(state, "ext4").status == OK
    assert state_filesystem_verdict(state, "xfs").status == OK
    assert state_filesystem_verdict(state, "tmpfs").status == WARNING
    low = free_space_verdict(state, 50 * 1024**2)
    assert low.status == FAIL and "52428800 bytes" in low.detail and low.fix
    assert free_space_verdict(state, 200 * 1024**2).status == OK


# --- pure verdicts ------------------------------------------------------------------------------


def test_clock_skew_verdict_with_injected_times() -> None:
    server = 1_800_000_000.0
    date = formatdate(server, usegmt=True)
    assert clock_verdict(date, server + 0.2, server + 0.4).status == OK
    drifting = clock_verdict(date, server + 90, server + 90.5)
    assert drifting.status == WARNING and "1 min 30 s ahead of" in drifting.detail
    ahead = clock_verdict(date, server + 301, server + 301.2)
    assert ahead.status == FAIL and "ahead of" in ahead.detail
    assert ahead.fix is not None and "timedatectl set-ntp true" in ahead.fix
    behind = clock_verdict(date, server - 3600.2, server - 3599.8)
    assert behind.status == FAIL and "1 h behind" in behind.detail
    assert clock_verdict(date, server + 299, server + 299.5).status == WARNING
    assert clock_verdict(None, server, server).status == WARNING


def test_inotify_count_verdict() -> None:
    assert inotify_verdict(100, True, 8192).status == OK
    close = inotify_verdict(7000, True, 8192)
    assert close.status == WARNING and close.fix
    over = inotify_verdict(8193, False, 8192)
    assert over.status == FAIL and "at least 8193" in over.detail
    assert over.fix is not None and "fs.inotify.max_user_watches=1048576" in over.fix
    assert "/etc/sysctl.d/" in over.fix
    huge = inotify_verdict(3_000_000, True, 1_048_576)
    assert huge.fix is not None and "max_user_watches=8388608" in huge.fix
    unknown = inotify_verdict(10, True, None)
    assert unknown.status == WARNING


def test_inotify_counting_is_bounded(tmp_path: Path) -> None:
    for index in range(12):
        (tmp_path / "mouse" / f"session-{index}" / "raw").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "mouse")  # not followed
    assert count_directories([tmp_path], 1000) == (26, True)
    assert count_directories([tmp_path], 5) == (5, False)
    assert count_directories([tmp_path], 26) == (26, True)
    limit = tmp_path / "max_user_watches"
    limit.write_text("10\n")
    source = SourceSettings(name="ephys", path=tmp_path)
    verdict = check_inotify([source], limit_path=limit)
    assert verdict.status == FAIL and "at least 11 directories" in verdict.detail
    limit.write_text("100000\n")
    assert check_inotify([source], limit_path=limit).status == OK
    polled = SourceSettings(name="ephys", path=tmp_path, watch="poll")
    assert check_inotify([polled], limit_path=limit).status == SKIPPED


def test_server_answer_verdicts() -> None:
    refused = Answer(None, code="NotImplemented", status=501, message="not here")
    assert conditional_verdict("auto", refused).status == WARNING
    bad_request = Answer(None, code="InvalidArgument", status=400)
    rejected = conditional_verdict("auto", bad_request)
    assert rejected.status == FAIL and rejected.fix and 'conditional_writes = "off"' in rejected.fix
    assert conditional_verdict("auto", Answer(None, code="PreconditionFailed", status=412)).ok
    assert conditional_verdict("off", None).status == SKIPPED
    no_checksums = checksum_verdict("crc32c", "AAAAAA==", bad_request, True)
    assert no_checksums.status == FAIL
    assert no_checksums.fix and "server_checksums = false" in no_checksums.fix
    silent = checksum_verdict("crc32c", "AAAAAA==", Answer({"ETag": "x"}), True)
    assert silent.status == WARNING


# --- systemd ------------------------------------------------------------------------------------


def test_systemd_absent_is_skipped_not_failed(tmp_path: Path) -> None:
    check = check_systemd(Systemctl(run_dir=tmp_path / "no-systemd"))
    assert check.status == SKIPPED and check.ok and "not running" in check.detail


def test_systemd_unit_states(tmp_path: Path) -> None:
    good = {"LoadState": "loaded", "UnitFileState": "enabled", "ActiveState": "active"}
    assert systemd_verdict(good).status == OK
    assert systemd_verdict({**good, "ActiveState": "failed"}).status == FAIL
    disabled = systemd_verdict({**good, "UnitFileState": "disabled"})
    assert disabled.status == WARNING and disabled.fix and "enable --now" in disabled.fix
    missing = systemd_verdict({"LoadState": "not-found", "ActiveState": "inactive"})
    assert missing.status == WARNING and "not installed" in missing.detail
    # systemctl's own output format, through a stand-in for the systemctl program.
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(
        "#!/bin/sh\nprintf 'LoadState=loaded\\nUnitFileState=enabled\\n"
        "ActiveState=failed\\nSubState=failed\\n'\n"
    )
    systemctl.chmod(0o755)
    check = check_systemd(Systemctl(run_dir=tmp_path, command=(str(systemctl),)))
    assert check.status == FAIL and "journalctl" in (check.fix or "")
    slow = tmp_path / "slow-systemctl"
    slow.write_text("#!/bin/sh\nexec sleep 10\n")
    slow.chmod(0o755)
    hung = check_systemd(Systemctl(run_dir=tmp_path, command=(str(slow),), timeout=0.3))
    assert hung.status == WARNING and "did not answer" in hung.detail


def test_rendering_masks_secrets_and_prints_fixes() -> None:
    secret = "renderedSecret-0123456789abcdef"
    SECRETS.add([secret])
    lines = render(
        [
            Check("credentials", FAIL, f"bad {secret}", "fix it"),
            Check("clock", OK, "fine"),
            Check("ListParts", WARNING, "missing", "a lifecycle rule"),
        ]
    )
    assert lines == [
        "✘ credentials: bad ***",
        "    fix: fix it",
        "✔ clock: fine",
        "! ListParts: missing",
        "    fix: a lifecycle rule",
    ]


def test_rendering_for_a_terminal_without_unicode() -> None:
    lines = render([Check("credentials", OK, "AKIA…XYZ (from env), accepted")], ascii_only=True)
    assert lines == ["ok credentials: AKIA...XYZ (from env), accepted"]
