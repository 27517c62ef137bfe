"""Shared fixtures: a real S3 server on loopback, per-test buckets, configs and folders."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from agent.config import Settings, load_settings
from tests.s3server import S3TestServer

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Tests read the agent's logs from stderr and choose journald or sd_notify explicitly; a test
# run started by systemd (a CI unit, a timer) must not send them to its journal instead.
for _variable in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
    os.environ.pop(_variable, None)
_bucket_numbers = itertools.count()
# Fixtures that start a server or a daemon: a test using any of them is end to end, the top of
# the pyramid, and is marked `slow` without having to say so (`pytest -m "not slow"` runs the
# fast layer alone).
SLOW_FIXTURES = frozenset({"s3_server", "iam_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a server fixture `slow`."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    """moto's S3 over HTTP on 127.0.0.1, for the whole test session."""
    server = S3TestServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3TestServer) -> Iterator[S3TestServer]:
    """The server, with its request log and injected faults cleared for this test."""
    s3_server.reset()
    yield s3_server
    s3_server.reset()


@pytest.fixture
def client(s3_server: S3TestServer) -> Any:
    """A plain boto3 client on the test server, to look at what the agent wrote."""
    return boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")


@dataclass
class Rig:
    """A temporary instrument folder, state dir, bucket and config for one test."""

    root: Path
    source: Path
    state_dir: Path
    config: Path
    bucket: str
    prefix: str

    def settings(self) -> Settings:
        """Load the rig's config."""
        return load_settings(self.config)

    def session(self, rel_path: str) -> Path:
        """Create (if needed) and return a session directory under the source."""
        path = self.source / rel_path
        path.mkdir(parents=True, exist_ok=True)
        return path

    def agentctl(self, *arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `python -m agent` with this rig's config in a child process."""
        return subprocess.run(
            [sys.executable, "-m", "agent", *arguments, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )


def write_config(path: Path, text: str) -> Path:
    """Write a config file and return its path."""
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def make_rig(tmp_path: Path, s3_server: S3TestServer, client: Any) -> Callable[..., Rig]:
    """Build a rig; keyword arguments become extra TOML lines per table."""

    def build(
        *,
        source_extra: str = "",
        upload_extra: str = "",
        destination_extra: str = "",
        agent_extra: str = "",
        quiet_period: str = "1s",
        create_bucket: bool = True,
        concurrency: int = 3,
    ) -> Rig:
        bucket = f"test-bucket-{os.getpid()}-{next(_bucket_numbers)}"
        if create_bucket:
            client.create_bucket(Bucket=bucket)
        source = tmp_path / "recordings"
        source.mkdir(exist_ok=True)
        state_dir = tmp_path / "state"
        config = write_config(
            tmp_path / "config.toml",
            f"""
[agent]
name = "test-rig"
state_dir = "{state_dir}"
heartbeat_interval = "1s"
heartbeat_stale = "10s"
{agent_extra}

[destination]
bucket = "{bucket}"
prefix = "rig-01"
endpoint_url = "{s3_server.url}"
region = "us-east-1"
{destination_extra}

[upload]
concurrency = {concurrency}
part_size = "5MiB"
multipart_threshold = "6MiB"
retry_delay = "0.05s"
{upload_extra}

[[source]]
name = "ephys"
path = "{source}"
session_depth = 2
quiet_period = "{quiet_period}"
{source_extra}
""",
        )
        return Rig(tmp_path, source, state_dir, config, bucket, "rig-01")

    return build


def start_daemon(rig: Rig, environment: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `agentctl run` for the rig as a child process (stdin closed, logs captured),
    with `environment` added to this process's."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(rig.config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(environment or {})},
    )


def stop_daemon(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    """SIGTERM the daemon, wait for it, return (exit code, its log)."""
    if process.poll() is None:
        process.terminate()
    try:
        _, errors = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, errors = process.communicate()
    return process.returncode, errors


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    """Poll `predicate` until true or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
