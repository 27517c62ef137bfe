"""deploy/ingest-agent.service under a real systemd: install as a lab would (deploy/install.sh,
offline from a wheelhouse), then start (READY), status line, upload with journald fields,
read-only data, the capability choice, the watchdog killing a hung main loop and the restart,
a clean stop and a resume. The tests run in order on one booted container.

Run with `make systemd-test` (root; installs debootstrap and systemd-container). The first
run builds a bookworm root in /var/cache/ingest-agent-test (about a minute); later runs copy
it. Logs of the last run (console, journal) are kept in /var/cache/ingest-agent-test/logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.s3server import S3TestServer
from tests.systemd.machine import CACHE, Machine, booted, build_wheelhouse, cannot_run

pytestmark = [pytest.mark.slow, pytest.mark.systemd]

PROJECT = Path(__file__).resolve().parents[2]
UNIT = "ingest-agent.service"
BUCKET = "lab-raw"
PREFIX = "rig-test"
DATA = "/srv/data/rec"
STATE = "/var/lib/ingest-agent"
FAULT_FILE = f"{STATE}/test-fault-hang"
TEST_WATCHDOG_S = 6
# Only what the test needs changed; everything else is the shipped unit.
TEST_DROP_IN = f"""[Service]
Environment=AGENT_TEST_FAULTS=1
WatchdogSec={TEST_WATCHDOG_S}s
TimeoutStartSec=60s
RestartSec=2s
"""
CAPABILITY_DROP_IN = """[Service]
CapabilityBoundingSet=CAP_SYS_PTRACE CAP_DAC_READ_SEARCH
AmbientCapabilities=CAP_SYS_PTRACE CAP_DAC_READ_SEARCH
"""


@dataclass
class Setup:
    """The booted container with the agent installed, and the S3 server it uploads to."""

    machine: Machine
    s3: S3TestServer
    client: Any
    logs: Path

    def session(self, relative: str, files: dict[str, bytes]) -> str:
        """Write a session as an instrument would (data, then the marker); return its id."""
        directory = self.machine.path(f"{DATA}/{relative}")
        directory.mkdir(parents=True)
        for name, content in files.items():
            (directory / name).write_bytes(content)
        (directory / "transfer_me.flag").write_bytes(b"")
        return f"rec/{relative}"

    def manifest(self, session_id: str) -> dict[str, Any] | None:
        """The session's manifest in the bucket, if it is there."""
        key = f"{PREFIX}/{session_id}/ingest-manifest.json"
        try:
            body = self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        document: dict[str, Any] = json.loads(body)
        return document

    def sessions(self) -> dict[str, dict[str, Any]]:
        """`agentctl sessions --json` inside, by id."""
        output = self.machine.run("agentctl", "sessions", "--json").stdout
        return {entry["id"]: entry for entry in json.loads(output)}

    def unit(self, *properties: str) -> dict[str, str]:
        return self.machine.show(UNIT, *properties)


def wait_for(what: str, probe: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Poll `probe` until it returns something true; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    reason = cannot_run()
    if reason:
        pytest.skip(f"real-systemd test: {reason}")
    logs = CACHE / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    wheelhouse = tmp_path_factory.mktemp("wheelhouse")
    build_wheelhouse(PROJECT, wheelhouse)
    s3 = S3TestServer()
    s3.start()
    client = boto3.client(
        "s3",
        endpoint_url=s3.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=BUCKET)
    try:
        with booted(logs, PROJECT, wheelhouse) as machine:
            try:
                install = machine.run(
                    "/root/src/deploy/install.sh", "--wheelhouse", "/root/wheelhouse", timeout=600
                )
                (logs / "install.log").write_text(install.stdout + install.stderr)
                configure(machine, s3.url)
                yield Setup(machine, s3, client, logs)
            finally:
                journal = machine.run(
                    "journalctl", "--no-pager", "-o", "short-precise", check=False
                )
                (logs / "journal.txt").write_text(journal.stdout)
    finally:
        s3.stop()


def configure(machine: Machine, endpoint: str) -> None:
    """What a lab does after install.sh: config, credentials, the data folder; plus the test
    drop-in (short watchdog, the fault switch)."""
    machine.write(
        "/etc/ingest-agent/config.toml",
        f"""[agent]
name = "rig-test"
heartbeat_interval = "1s"
rescan_interval = "30s"

[destination]
bucket = "{BUCKET}"
prefix = "{PREFIX}"
endpoint_url = "{endpoint}"
region = "us-east-1"

[[source]]
name = "rec"
path = "{DATA}"
session_depth = 2
quiet_period = "2s"
marker = "transfer_me.flag"
""",
    )
    environment = machine.path("/etc/ingest-agent/environment")
    environment.write_text(
        environment.read_text() + "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n"
    )
    # The data folder belongs to the service user, so only the unit's sandbox keeps the
    # service from writing there.
    machine.run("install", "-d", "-o", "ingest-agent", "-g", "ingest-agent", "/srv/data", DATA)
    machine.write(f"/etc/systemd/system/{UNIT}.d/test.conf", TEST_DROP_IN)
    machine.run("systemctl", "daemon-reload")


def test_install_is_offline_and_uses_debians_systemd_python(setup: Setup) -> None:
    machine = setup.machine
    where = machine.run(
        "/opt/ingest-agent/bin/python",
        "-c",
        "import importlib.metadata as m, systemd.journal;"
        "print(m.distribution('systemd-python').locate_file(''), systemd.journal.__file__)",
    ).stdout.split()
    assert where[0] == "/usr/lib/python3/dist-packages", where
    assert where[1].startswith("/usr/lib/python3/dist-packages/systemd/"), where
    assert not list(machine.path("/opt/ingest-agent/lib").glob("python3*/site-packages/systemd"))
    assert (machine.path("/etc/ingest-agent/environment").stat().st_mode & 0o777) == 0o600
    # Idempotent: a second run keeps the config and credentials and succeeds.
    config = machine.path("/etc/ingest-agent/config.toml").read_text()
    machine.run("/root/src/deploy/install.sh", "--wheelhouse", "/root/wheelhouse", timeout=600)
    assert machine.path("/etc/ingest-agent/config.toml").read_text() == config
    assert "AWS_ACCESS_KEY_ID=testing" in machine.path("/etc/ingest-agent/environment").read_text()
    machine.write(f"/etc/systemd/system/{UNIT}.d/test.conf", TEST_DROP_IN)
    machine.run("systemctl", "daemon-reload")


def test_unit_verifies_clean_and_exposure_is_low(setup: Setup) -> None:
    verify = setup.machine.run("systemd-analyze", "verify", f"/etc/systemd/system/{UNIT}")
    assert verify.stdout.strip() == "" and verify.stderr.strip() == "", verify
    security = setup.machine.run("systemd-analyze", "security", UNIT, check=False)
    (setup.logs / "security.txt").write_text(security.stdout)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", security.stdout)
    assert found, security.stdout
    print(f"systemd-analyze security: {found.group(1)} {found.group(2)}")
    assert float(found.group(1)) <= 2.0, security.stdout


def test_start_returns_once_ready_and_status_line_shows(setup: Setup) -> None:
    machine = setup.machine
    started = machine.run("systemctl", "start", UNIT, check=False, timeout=120)
    assert started.returncode == 0, (
        "systemctl start failed (Type=notify: no READY=1 within TimeoutStartSec?)\n"
        + machine.run("systemctl", "status", UNIT, "--no-pager", check=False).stdout
    )
    unit = setup.unit("ActiveState", "SubState", "Type", "StatusText", "WatchdogUSec")
    assert unit["Type"] == "notify"
    assert (unit["ActiveState"], unit["SubState"]) == ("active", "running"), unit
    assert unit["WatchdogUSec"] == f"{TEST_WATCHDOG_S}s", unit
    # READY=1 came only after the start-up reconcile.
    entries = machine.journal("-u", UNIT)
    reconciled = [e for e in entries if e.get("EVENT") == "reconcile_finished"]
    ready = [
        e for e in entries if e.get("_PID") == "1" and e.get("MESSAGE", "").startswith("Started")
    ]
    assert reconciled and ready, "no reconcile_finished event, or no 'Started' from systemd"
    assert int(reconciled[-1]["__REALTIME_TIMESTAMP"]) <= int(ready[-1]["__REALTIME_TIMESTAMP"])
    wait_for("a STATUS= line", lambda: setup.unit("StatusText")["StatusText"], 10)
    status = machine.run("systemctl", "status", UNIT, "--no-pager", check=False).stdout
    (setup.logs / "status.txt").write_text(status)
    assert re.search(r'^\s*Status: ".+"$', status, re.MULTILINE), status


def test_session_is_uploaded_and_journal_has_its_fields(setup: Setup) -> None:
    data = os.urandom(20_000_000)  # above the 16 MiB multipart threshold: parts, CRC32C
    session_id = setup.session("mouse1/2026-01-01_10-00", {"rec.bin": data, "meta.json": b"{}"})
    manifest = wait_for("the manifest", lambda: setup.manifest(session_id), 60)
    keys = {entry["key"] for entry in manifest["files"]}
    assert f"{PREFIX}/{session_id}/rec.bin" in keys, manifest
    uploaded = setup.client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{session_id}/rec.bin")
    assert uploaded["ContentLength"] == len(data)

    entries = wait_for(
        "journal entries of the session",
        lambda: setup.machine.journal("-u", UNIT, f"SESSION_ID={session_id}"),
        10,
    )
    assert all(entry.get("SESSION_ID") == session_id for entry in entries)
    assert all(entry.get("EVENT") for entry in entries), entries
    events = {entry["EVENT"] for entry in entries}
    assert "session_uploaded" in events, events
    object_keys = {entry["OBJECT_KEY"] for entry in entries if "OBJECT_KEY" in entry}
    assert f"{PREFIX}/{session_id}/rec.bin" in object_keys, object_keys
    assert all(entry.get("PRIORITY") for entry in entries)
    by_event = setup.machine.journal("-u", UNIT, "EVENT=session_uploaded")
    assert any(entry.get("SESSION_ID") == session_id for entry in by_event)


def test_data_is_read_only_for_the_service(setup: Setup) -> None:
    machine = setup.machine
    session = machine.path(f"{DATA}/mouse1/2026-01-01_10-00")
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in session.iterdir()}
    main_pid = setup.unit("MainPID")["MainPID"]
    assert main_pid != "0"
    # In the service's own mount namespace, as the service user that owns the folder,
    # writing fails: the unit mounts it read-only.
    probe = [
        "setpriv", "--reuid=ingest-agent", "--regid=ingest-agent", "--init-groups",
        "touch", f"{DATA}/probe",
    ]  # fmt: skip
    inside_service = machine.run("nsenter", "-t", main_pid, "-m", "--", *probe, check=False)
    assert inside_service.returncode != 0
    assert "Read-only file system" in inside_service.stderr, inside_service
    # The same user outside the sandbox could (so the sandbox is what stops it).
    machine.run(*probe)
    machine.run("rm", f"{DATA}/probe")
    # Its state directory stays writable.
    machine.run("nsenter", "-t", main_pid, "-m", "--", *probe[:-1], f"{STATE}/probe")
    machine.run("rm", f"{STATE}/probe")
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in session.iterdir()}
    assert after == before


def test_open_file_check_sees_other_users_only_with_the_capability_drop_in(setup: Setup) -> None:
    machine = setup.machine
    drop_in = f"/etc/systemd/system/{UNIT}.d/open-files.conf"
    writer = "agent-test-writer"

    def start_writer(relative: str) -> str:
        """A root process holding a session's file open for writing, then the marker."""
        path = f"{DATA}/{relative}"
        machine.run("mkdir", "-p", path)
        machine.run(
            "systemd-run", f"--unit={writer}", "--", "sh", "-c", f"exec sleep 600 > {path}/data.bin"
        )
        wait_for("the writer", lambda: machine.path(f"{path}/data.bin").exists(), 10)
        machine.run("touch", f"{path}/transfer_me.flag")
        return f"rec/{relative}"

    # With the shipped unit (no capabilities) root's writer is invisible: the quiet period
    # alone decides, and the session goes up.
    session_id = start_writer("mouse3/default")
    wait_for("the session uploaded", lambda: setup.manifest(session_id), 30)
    machine.run("systemctl", "stop", writer)
    # With the documented drop-in (and ProtectProc=invisible kept), the writer is seen.
    machine.write(drop_in, CAPABILITY_DROP_IN)
    try:
        machine.run("systemctl", "daemon-reload")
        machine.run("systemctl", "restart", UNIT, timeout=120)
        session_id = start_writer("mouse3/with-capability")
        wait_for(
            "the session held back as open for writing",
            lambda: "open for writing" in str(setup.sessions().get(session_id, {}).get("reason")),
            30,
        )
        time.sleep(4)  # beyond the quiet period: still held back
        assert setup.sessions()[session_id]["state"] == "waiting"
        machine.run("systemctl", "stop", writer)
        wait_for("the session uploaded once closed", lambda: setup.manifest(session_id), 40)
    finally:
        machine.run("systemctl", "stop", writer, check=False)
        machine.path(drop_in).unlink()
        machine.run("systemctl", "daemon-reload")
        machine.run("systemctl", "restart", UNIT, timeout=120)


def test_watchdog_kills_a_hung_main_loop_and_systemd_restarts_it(setup: Setup) -> None:
    machine = setup.machine
    before = setup.unit("NRestarts", "MainPID", "ActiveState")
    assert before["ActiveState"] == "active", before
    fault = machine.path(FAULT_FILE)
    fault.write_text("loop\n")
    machine.run("chown", "ingest-agent:ingest-agent", FAULT_FILE)

    def restarted() -> dict[str, str] | None:
        now = setup.unit("NRestarts", "MainPID", "ActiveState", "SubState")
        moved = int(now["NRestarts"]) > int(before["NRestarts"])
        fresh = now["MainPID"] not in ("0", before["MainPID"])
        return now if moved and fresh and now["SubState"] == "running" else None

    after = wait_for("a watchdog kill and restart", restarted, TEST_WATCHDOG_S + 60)
    assert not fault.exists(), "the daemon should delete the fault file when it takes it"
    messages = [str(e.get("MESSAGE")) for e in machine.journal("-u", UNIT, "_PID=1")]
    assert any("Watchdog timeout" in message for message in messages), messages[-20:]
    assert after["ActiveState"] == "active"
    # The restarted agent goes on.
    session_id = setup.session("mouse2/2026-01-02_09-00", {"a.dat": b"x" * 1000})
    wait_for("the second session uploaded", lambda: setup.manifest(session_id), 60)


def test_stop_is_clean_quick_and_resumable(setup: Setup) -> None:
    machine = setup.machine
    started = time.monotonic()
    machine.run("systemctl", "stop", UNIT, timeout=120)
    took = time.monotonic() - started
    assert took < 40, f"stop took {took:.1f} s (TimeoutStopSec=40s)"
    unit = setup.unit("ActiveState", "Result", "ExecMainStatus")
    assert unit["ActiveState"] == "inactive" and unit["Result"] == "success", unit
    status = json.loads(machine.run("agentctl", "status", "--json", check=False).stdout)
    assert status["daemon"]["running"] is False, status
    assert "without stopping cleanly" not in status["summary"], status
    assert status["sessions"]["uploading"] == 0, status
    # Resumable: it starts again from the same state and reports healthy.
    machine.run("systemctl", "start", UNIT, timeout=120)
    wait_for(
        "status OK after the restart",
        lambda: machine.run("agentctl", "status", check=False).returncode == 0,
        20,
    )
    machine.run("systemctl", "stop", UNIT, timeout=120)


def test_uninstall_keeps_config_and_state_unless_purged(setup: Setup) -> None:
    machine = setup.machine
    data = machine.path(DATA)
    before = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in data.rglob("*"))
    machine.run("systemctl", "start", UNIT, timeout=120)
    machine.run("/root/src/deploy/uninstall.sh")
    assert machine.run("systemctl", "is-active", UNIT, check=False).stdout.strip() != "active"
    assert not machine.path(f"/etc/systemd/system/{UNIT}").exists()
    assert not machine.path("/opt/ingest-agent").exists()
    assert not machine.path("/usr/local/bin/agentctl").exists()
    assert machine.path("/etc/ingest-agent/config.toml").exists()
    assert machine.path(f"{STATE}/state.db").exists()
    machine.run("id", "ingest-agent")
    machine.run("/root/src/deploy/uninstall.sh", "--purge")
    assert not machine.path("/etc/ingest-agent").exists()
    assert not machine.path(STATE).exists()
    assert machine.run("id", "ingest-agent", check=False).returncode != 0
    after = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in data.rglob("*"))
    assert after == before, "uninstalling touched source data"
