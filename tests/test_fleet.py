"""The fleet view through the bucket: each daemon's beat object, and `agentctl fleet` judging
every rig found, with a silent rig turning CRITICAL after three beat intervals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent import fleet, health
from tests.conftest import wait_for
from tests.s3server import S3TestServer

NOW = 1_800_000_000.0


def beat_object(state: str = "ok", interval: float = 60.0, **status: Any) -> bytes:
    report = {"state": state, "summary": f"{state} here", "sessions": {"failed": 0}, **status}
    return fleet.beat_body(report, "rig-01", interval, NOW)


# --- judging one beat, pure --------------------------------------------------------------------


def test_a_fresh_beat_keeps_the_rigs_own_verdict() -> None:
    rig = fleet.judge(
        "lab/rig-01/.ingest-agent/agents/rig-01.json", beat_object("warning"), NOW - 100, NOW
    )
    assert rig.code == health.WARNING
    assert rig.summary == "warning here"
    assert rig.name == "rig-01"


def test_a_beat_older_than_three_intervals_is_critical_whatever_it_says() -> None:
    body = beat_object("ok", interval=60)
    assert fleet.judge("k.json", body, NOW - 179, NOW).code == health.OK
    stale = fleet.judge("k.json", body, NOW - 181, NOW)
    assert stale.code == health.CRITICAL
    assert "no beat for 3 min" in stale.summary


def test_an_unreadable_beat_is_unknown_not_a_crash() -> None:
    for body in (b"", b"[1]", b"{not json", json.dumps({"status": {}}).encode()):
        rig = fleet.judge("x/.ingest-agent/agents/rig-9.json", body, NOW, NOW)
        assert rig.code == health.UNKNOWN
        assert rig.name == "rig-9"


def test_the_fleet_is_as_bad_as_its_worst_rig() -> None:
    def rig(code: int) -> fleet.Rig:
        return fleet.Rig("k", "r", code, "", 0.0, {})

    assert fleet.worst([]) == health.UNKNOWN
    assert fleet.worst([rig(health.OK), rig(health.UNKNOWN)]) == health.UNKNOWN
    assert fleet.worst([rig(health.UNKNOWN), rig(health.WARNING)]) == health.WARNING
    assert fleet.worst([rig(health.WARNING), rig(health.CRITICAL), rig(health.OK)]) == 2


def test_beats_are_due_each_interval_and_on_change_but_not_in_a_storm() -> None:
    beater = fleet.Beater.__new__(fleet.Beater)
    beater.interval = 60.0
    beater._last = None
    beater._last_at = float("-inf")
    report = {"state": "ok", "sessions": {"waiting": 1}}
    assert beater.due(report, NOW)
    beater._last, beater._last_at = fleet._fingerprint(report), NOW
    assert not beater.due(report, NOW + 30)
    assert beater.due(report, NOW + 60)
    changed = {"state": "ok", "sessions": {"waiting": 0, "uploaded": 1}}
    assert not beater.due(changed, NOW + fleet.MIN_GAP - 1)
    assert beater.due(changed, NOW + fleet.MIN_GAP)


def test_beat_keys_live_in_the_agents_namespace_under_the_prefix() -> None:
    assert fleet.beat_key("lab/rig-01", "rig-01") == "lab/rig-01/.ingest-agent/agents/rig-01.json"
    assert fleet.beat_key("", "rig-01") == ".ingest-agent/agents/rig-01.json"


# --- three daemons, one bucket -----------------------------------------------------------------


def rig_config(root: Path, name: str, bucket: str, url: str) -> Path:
    source = root / name / "recordings"
    source.mkdir(parents=True)
    config = root / name / "config.toml"
    config.write_text(
        f"""
[agent]
name = "{name}"
state_dir = "{root / name / "state"}"
heartbeat_interval = "1s"
heartbeat_stale = "10s"

[destination]
bucket = "{bucket}"
prefix = "lab/{name}"
endpoint_url = "{url}"
region = "us-east-1"

[fleet]
interval = "1s"

[[source]]
name = "ephys"
path = "{source}"
quiet_period = "1s"
""",
        encoding="utf-8",
    )
    return config


def run_fleet(bucket: str, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`agentctl fleet` from a machine with no config, as from a laptop."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "fleet",
            "--bucket",
            bucket,
            "--endpoint-url",
            url,
            "--config",
            "/nonexistent/config.toml",
            *extra,
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def fleet_json(bucket: str, url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    result = run_fleet(bucket, url, "--json", *extra)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.mark.slow
def test_three_rigs_appear_and_a_killed_one_turns_critical(
    tmp_path: Path, s3: S3TestServer, client: Any
) -> None:
    bucket = f"fleet-{os.getpid()}"
    client.create_bucket(Bucket=bucket)
    names = ("rig-01", "rig-02", "rig-03")
    daemons = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "run",
                "--config",
                str(rig_config(tmp_path, name, bucket, s3.url)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in names
    }
    try:

        def all_ok() -> bool:
            code, found = fleet_json(bucket, s3.url)
            return code == 0 and sorted(r["name"] for r in found["rigs"]) == list(names)

        assert wait_for(all_ok, timeout=40, interval=0.5)
        _, found = fleet_json(bucket, s3.url, "--prefix", "lab")
        assert [r["state"] for r in found["rigs"]] == ["ok"] * 3
        assert {r["version"] for r in found["rigs"]} == {"0.1.0"}

        daemons["rig-02"].send_signal(signal.SIGKILL)
        daemons["rig-02"].wait(10)

        def rig_02_critical() -> bool:
            code, found = fleet_json(bucket, s3.url)
            states = {r["name"]: r["state"] for r in found["rigs"]}
            return code == 2 and states == {"rig-01": "ok", "rig-02": "critical", "rig-03": "ok"}

        assert wait_for(rig_02_critical, timeout=30, interval=0.5)
        _, found = fleet_json(bucket, s3.url)
        assert found["rigs"][0]["name"] == "rig-02"  # worst first
        assert "no beat for" in found["rigs"][0]["summary"]

        # A clean stop is said at once, not found by silence.
        daemons["rig-03"].terminate()
        assert daemons["rig-03"].wait(30) == 0
        _, found = fleet_json(bucket, s3.url)
        states = {r["name"]: (r["state"], r["summary"]) for r in found["rigs"]}
        assert states["rig-03"][0] == "critical"
        assert "daemon stopped" in states["rig-03"][1]
    finally:
        for daemon in daemons.values():
            if daemon.poll() is None:
                daemon.terminate()
                daemon.wait(30)


def test_fleet_with_no_beats_is_unknown(s3: S3TestServer, client: Any) -> None:
    bucket = f"empty-fleet-{os.getpid()}"
    client.create_bucket(Bucket=bucket)
    code, found = fleet_json(bucket, s3.url)
    assert code == health.UNKNOWN
    assert found["rigs"] == []


@pytest.mark.slow
def test_a_hung_server_does_not_hold_up_the_stop(
    tmp_path: Path, s3: S3TestServer, client: Any
) -> None:
    # Beats get no answer at all: the daemon must still stop cleanly, abandoning the hung
    # beat at once and its last one after two seconds (waiting out the client's 15 s read
    # timeout twice would take most of the contract's 30 s, with nothing left for uploads).
    bucket = f"hung-fleet-{os.getpid()}"
    client.create_bucket(Bucket=bucket)
    s3.hanging.add("BeatPutObject")
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--config",
            str(rig_config(tmp_path, "rig-01", bucket, s3.url)),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: s3.count("BeatPutObject") >= 1, timeout=20)
    finally:
        daemon.terminate()
        asked = time.monotonic()
        try:
            code: int | None = daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            code = None
        stopped_in = time.monotonic() - asked
    assert code == 0
    assert stopped_in < 12


def test_garbage_beats_make_only_their_rig_unknown(s3: S3TestServer, client: Any) -> None:
    bucket = f"garbage-fleet-{os.getpid()}"
    client.create_bucket(Bucket=bucket)
    good = json.loads(beat_object("ok", interval=3600))
    objects = {
        "good": good,
        "string-backlog": {**good, "status": {**good["status"], "backlog": "lots"}},
        "escape": {**good, "name": "evil\x1b[2J\x1b]0;owned\x07", "version": "\x1b[31mred"},
    }
    for name, body in objects.items():
        key = f"lab/{name}/.ingest-agent/agents/{name}.json"
        client.put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())
    deep = b"[" * 100_000 + b"]" * 100_000  # deeper than Python's JSON decoder goes
    client.put_object(Bucket=bucket, Key="lab/deep/.ingest-agent/agents/deep.json", Body=deep)
    huge = "lab/huge/.ingest-agent/agents/huge.json"
    client.put_object(Bucket=bucket, Key=huge, Body=b" " * (fleet.MAX_BEAT_SIZE + 1))

    code, found = fleet_json(bucket, s3.url)
    states = {r["key"].split("/")[1]: r["state"] for r in found["rigs"]}
    assert states == {
        "good": "ok",
        "string-backlog": "ok",  # its odd field is dropped, its verdict stands
        "deep": "unknown",
        "escape": "ok",
        "huge": "unknown",
    }
    assert code == health.UNKNOWN
    text = run_fleet(bucket, s3.url)
    assert text.returncode == health.UNKNOWN, text.stderr
    assert "\x1b" not in text.stdout
    assert "evil\\x1b[2J" in text.stdout
