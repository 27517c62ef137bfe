"""Prometheus metrics (HTTP listener and node-exporter textfile) and the `on_uploaded` hook,
against the daemon and the S3 server on loopback."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import settings_from_mapping
from agent.hooks import Hooks
from agent.state import SessionRecord
from tests.conftest import Rig, start_daemon, stop_daemon, wait_for
from tests.s3server import Fault, S3TestServer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def write_session(rig: Rig, rel_path: str, sizes: dict[str, int]) -> int:
    folder = rig.session(rel_path)
    for name, size in sizes.items():
        (folder / name).write_bytes(os.urandom(size))
    old = time.time() - 60
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (old, old))
    return sum(sizes.values())


def add_tables(rig: Rig, text: str) -> None:
    with rig.config.open("a", encoding="utf-8") as handle:
        handle.write("\n" + text + "\n")


def session_states(rig: Rig) -> dict[str, str]:
    result = rig.agentctl("sessions", "--json")
    return {row["id"]: row["state"] for row in json.loads(result.stdout or "[]")}


@pytest.mark.slow
def test_metrics_endpoint_and_textfile_count_what_was_uploaded(
    make_rig: Any, s3: S3TestServer, tmp_path: Path
) -> None:
    rig = make_rig()
    port = free_port()
    textfile = tmp_path / "collector" / "ingest_agent.prom"
    textfile.parent.mkdir()
    add_tables(
        rig,
        f'[metrics]\nlisten = "127.0.0.1:{port}"\ntextfile = "{textfile}"\ninterval = "1s"',
    )
    size = write_session(rig, "mouse1/s1", {"a.bin": 1000, "b.bin": 2000, "big.bin": 7 << 20})
    size += write_session(rig, "mouse1/s2", {"c.bin": 3000})
    # One part refused once: one retry (the fleet beat's PutObject is not the store's).
    s3.faults.append(Fault("UploadPart", 503, "SlowDown", times=1))
    daemon = start_daemon(rig)
    try:
        assert wait_for(lambda: list(session_states(rig).values()) == ["uploaded"] * 2, 60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            served = samples(answer.read().decode())
        assert served[("ingest_files_uploaded_total", ())] == 4
        assert served[("ingest_bytes_uploaded_total", ())] == size
        assert served[("ingest_sessions_uploaded_total", ())] == 2
        assert served[("ingest_sessions", (("state", "uploaded"),))] == 2
        assert served[("ingest_backlog_files", ())] == 0
        assert served[("ingest_retries_total", (("kind", "retryable"),))] == 1
        assert served[("ingest_session_upload_seconds_count", ())] == 2
        assert served[("ingest_bytes_sent_total", ())] >= size
        assert served[("ingest_paused", ())] == 0
        assert served[("ingest_status", ())] == 0
        assert served[("ingest_agent_info", (("agent", "test-rig"), ("version", "0.1.0")))] == 1
        assert time.time() - served[("ingest_heartbeat_timestamp_seconds", ())] < 30

        def textfile_caught_up() -> bool:
            if not textfile.exists():
                return False
            written = samples(textfile.read_text(encoding="utf-8"))
            return written.get(("ingest_files_uploaded_total", ())) == 4

        assert wait_for(textfile_caught_up, timeout=10)
        # Written atomically: nothing but the .prom file is ever left in the directory.
        assert [p.name for p in textfile.parent.iterdir()] == ["ingest_agent.prom"]
    finally:
        code, _ = stop_daemon(daemon)
    assert code == 0
    with pytest.raises(OSError):  # the listener is closed with the daemon
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


@pytest.mark.slow
def test_a_port_already_taken_is_logged_and_uploads_go_on(make_rig: Any) -> None:
    rig = make_rig()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        add_tables(rig, f'[metrics]\nlisten = "127.0.0.1:{port}"')
        write_session(rig, "mouse1/s1", {"a.bin": 10})
        daemon = start_daemon(rig)
        try:
            assert wait_for(lambda: session_states(rig) == {"ephys/mouse1/s1": "uploaded"}, 30)
        finally:
            _, log = stop_daemon(daemon)
    assert "metrics_listen_failed" in log
    assert f"127.0.0.1:{port}" in log


# --- the on_uploaded hook ------------------------------------------------------------------------


def record(session_id: str = "ephys/mouse1/s1") -> SessionRecord:
    return SessionRecord(
        id=session_id,
        source="ephys",
        rel_path="mouse1/s1",
        path="/data/recordings/mouse1/s1",
        state="uploaded",
        files=1,
        bytes=1,
        uploaded_bytes=1,
        key_prefix="rig-01/ephys/mouse1/s1",
        manifest_key=None,
        manifest_revision=1,
        metadata={},
        fingerprint="",
        detected_at=0.0,
        last_change_at=0.0,
        completed_at=0.0,
        uploaded_at=0.0,
        error=None,
        reason=None,
        attempts=0,
        next_attempt_at=None,
        local_missing=False,
    )


def hooks_for(
    tmp_path: Path, command: str | list[str], timeout: str = "10s"
) -> tuple[Hooks, list[str | None]]:
    (tmp_path / "src").mkdir(exist_ok=True)
    settings = settings_from_mapping(
        {
            "agent": {"name": "rig-01", "state_dir": str(tmp_path / "state")},
            "destination": {"bucket": "lab-raw", "prefix": "rig-01"},
            "hooks": {"on_uploaded": command, "timeout": timeout},
            "source": [{"name": "ephys", "path": str(tmp_path / "src")}],
        },
        "config.toml",
    )
    results: list[str | None] = []
    return Hooks(settings, results.append), results


def test_the_hook_gets_the_sessions_facts_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "hook.out"
    hooks, results = hooks_for(tmp_path, f"env | grep ^INGEST_ | sort > {out}")
    hooks.session_uploaded(record(), "rig-01/ephys/mouse1/s1/manifest.json")
    hooks.wait(10)
    assert results == [None]
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert seen["INGEST_SESSION_ID"] == "ephys/mouse1/s1"
    assert seen["INGEST_KEY_PREFIX"] == "rig-01/ephys/mouse1/s1"
    assert seen["INGEST_MANIFEST_KEY"] == "rig-01/ephys/mouse1/s1/manifest.json"
    assert seen["INGEST_BUCKET"] == "lab-raw"
    assert seen["INGEST_SESSION_PATH"] == "/data/recordings/mouse1/s1"


def test_a_failing_hook_is_reported_with_its_exit_code_and_output(tmp_path: Path) -> None:
    hooks, results = hooks_for(tmp_path, "echo 'queue is down' >&2; exit 3")
    hooks.session_uploaded(record(), None)
    hooks.wait(10)
    assert results == ["ephys/mouse1/s1: exit 3: queue is down"]


def test_a_hook_past_its_time_is_killed_and_reported(tmp_path: Path) -> None:
    hooks, results = hooks_for(tmp_path, ["sleep", "30"], timeout="0.5s")
    hooks.session_uploaded(record(), None)
    assert results == []  # returned while the hook runs: uploads never wait for it
    hooks.wait(10)
    assert results == ["ephys/mouse1/s1: did not finish within 0.5 s and was killed"]


def test_a_hook_that_cannot_start_is_reported(tmp_path: Path) -> None:
    hooks, results = hooks_for(tmp_path, [str(tmp_path / "no-such-program")])
    hooks.session_uploaded(record(), None)
    hooks.wait(10)
    assert results[0] is not None
    assert "cannot start" in results[0]
    assert "no-such-program" in results[0]


def test_a_hook_that_leaves_a_job_behind_succeeds_and_its_group_dies_at_timeout(
    tmp_path: Path,
) -> None:
    # Exit 0 with a job in the background: a success (the agent waits for the process, not
    # for its output to close).
    hooks, results = hooks_for(tmp_path, "sleep 30 & exit 0")
    hooks.session_uploaded(record(), None)
    assert hooks.wait(10)
    assert results == [None]
    # Past its time, the whole process group goes, background jobs included.
    pid_file = tmp_path / "child.pid"
    hooks, results = hooks_for(tmp_path, f"sleep 30 & echo $! > {pid_file}; wait", "1s")
    hooks.session_uploaded(record(), None)
    assert hooks.wait(10)
    assert results == ["ephys/mouse1/s1: did not finish within 1 s and was killed"]
    child = int(pid_file.read_text())
    assert wait_for(lambda: not Path(f"/proc/{child}").exists() or _zombie(child), timeout=5)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_a_chatty_hook_keeps_only_the_end_of_its_output(tmp_path: Path) -> None:
    # 20 MB of output: kept in a temporary file, not in the agent's memory; the end is shown.
    hooks, results = hooks_for(
        tmp_path, "head -c 20000000 /dev/zero | tr '\\0' x; echo; echo last words; exit 1"
    )
    hooks.session_uploaded(record(), None)
    assert hooks.wait(30)
    assert results[0] is not None
    assert results[0].endswith("last words")
    assert len(results[0]) < 600


def test_hooks_run_one_at_a_time_without_the_agents_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "agent-secret-value")
    log = tmp_path / "runs.log"
    hooks, results = hooks_for(
        tmp_path,
        f'echo "start $INGEST_SESSION_ID ${{AWS_SECRET_ACCESS_KEY:-none}}" >> {log}; '
        f'sleep 0.3; echo "end $INGEST_SESSION_ID" >> {log}',
    )
    for number in range(3):
        hooks.session_uploaded(record(f"ephys/mouse1/s{number}"), None)
    assert hooks.wait(30)
    assert results == [None, None, None]
    lines = log.read_text().splitlines()
    assert lines == [
        line
        for number in range(3)
        for line in (f"start ephys/mouse1/s{number} none", f"end ephys/mouse1/s{number}")
    ]


@pytest.mark.slow
def test_the_daemon_runs_the_hook_without_waiting_and_status_shows_its_failure(
    make_rig: Any, tmp_path: Path
) -> None:
    rig = make_rig()
    marker = tmp_path / "hook-ran"
    # The hook sleeps far longer than uploads take, then fails: both sessions are uploaded
    # while the first one's hook still runs; the second's waits its turn.
    add_tables(
        rig,
        f'[hooks]\non_uploaded = "echo $INGEST_SESSION_ID >> {marker}; sleep 8; '
        f'echo no queue >&2; exit 2"\ntimeout = "20s"',
    )
    write_session(rig, "mouse1/s1", {"a.bin": 100})
    write_session(rig, "mouse1/s2", {"b.bin": 100})
    daemon = start_daemon(rig)
    try:
        assert wait_for(lambda: set(session_states(rig).values()) == {"uploaded"}, 30)
        assert wait_for(marker.exists, 10)
        status = json.loads(rig.agentctl("status", "--json").stdout)
        assert status["hooks"]["last_failure"] is None  # the first hook is still sleeping
        assert len(marker.read_text().split()) == 1  # one at a time
        assert wait_for(
            lambda: (
                json.loads(rig.agentctl("status", "--json").stdout)["hooks"]["last_failure"]
                is not None
            ),
            20,
        )
        status = json.loads(rig.agentctl("status", "--json").stdout)
        assert "exit 2: no queue" in status["hooks"]["last_failure"]
        assert "hook on_uploaded last failed" in rig.agentctl("status").stdout
        assert wait_for(lambda: len(marker.read_text().split()) == 2, 10)
    finally:
        _, log = stop_daemon(daemon)
    assert '"event": "hook_failed"' in log
