"""Events in a real systemd-journald, filtered by SESSION_ID, with no secret in them.

The machine has journald's binary but no systemd running it, so the test starts one in a
private mount namespace (tmpfs over its socket and storage directories), runs the agent
there as systemd would (INVOCATION_ID set, so the journald renderer is chosen), reads the
journal with journalctl, and stops journald. Nothing of the host's /run or /var/log changes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Rig
from tests.s3server import Fault, S3TestServer

JOURNALD = Path("/lib/systemd/systemd-journald")
PLANTED_SECRET = "plantedSecretKey-0123456789abcdef"
PLANTED_TOKEN = "plantedSessionToken-fedcba9876543210"

# Runs inside `unshare --mount`: journald on tmpfs, the agent's command, then journalctl.
SCRIPT = """
set -eu
out="$1"; shift
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/journal /run/log /var/log/journal
mount -t tmpfs tmpfs /run/log
mount -t tmpfs tmpfs /var/log/journal
/lib/systemd/systemd-journald &
journald=$!
trap 'kill $journald; wait $journald || true' EXIT
for _ in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
set +e
"$@" >"$out/stdout" 2>"$out/stderr"
echo $? >"$out/exit"
set -e
sleep 0.5
journalctl --directory=/run/log/journal --no-pager -o json SYSLOG_IDENTIFIER=ingest-agent \
  >"$out/journal.json"
journalctl --directory=/run/log/journal --no-pager -o json \
  "SESSION_ID=ephys/mouse1/2026-11-26_10-00" >"$out/session.json"
journalctl --directory=/run/log/journal --no-pager -o export >"$out/journal.export"
"""


def _can_run_journald() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount tmpfs in a private mount namespace"
    for tool in ("unshare", "journalctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not JOURNALD.exists():
        return f"{JOURNALD} is not installed (Debian package systemd)"
    return None


def read_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.skipif(_can_run_journald() is not None, reason=str(_can_run_journald()))
def test_events_land_in_journald_with_fields_and_without_secrets(
    make_rig: Callable[..., Rig], s3: S3TestServer, tmp_path: Path, client: Any
) -> None:
    rig = make_rig(agent_extra='log_level = "debug"')
    session = rig.session("mouse1/2026-11-26_10-00")
    (session / "a.bin").write_bytes(os.urandom(2000))
    # A name built to forge journal lines: it is refused (control character) and logged.
    (session / "evil\nEVENT=session_uploaded\nSESSION_ID=forged.bin").write_bytes(b"x")
    other = rig.session("mouse2/2026-11-26_11-00")
    (other / "b.bin").write_bytes(os.urandom(100))
    time.sleep(1.5)  # the quiet period
    # Three SlowDown answers in a row: retries are logged as warnings.
    s3.faults.append(Fault("PutObject", 503, "SlowDown", 3))
    out = tmp_path / "journal-run"
    out.mkdir()
    script = tmp_path / "run-with-journald.sh"
    script.write_text(SCRIPT)
    environment = {
        **os.environ,
        "INVOCATION_ID": "0123456789abcdef0123456789abcdef",
        "AWS_SECRET_ACCESS_KEY": PLANTED_SECRET,
        "AWS_SESSION_TOKEN": PLANTED_TOKEN,
    }
    agent = [sys.executable, "-m", "agent", "sync", "--config", str(rig.config)]
    subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", str(script), str(out), *agent],
        env=environment,
        stdin=subprocess.DEVNULL,
        timeout=180,
        check=True,
    )
    assert (out / "exit").read_text().strip() == "0", (out / "stderr").read_text()

    everything = read_entries(out / "journal.json")
    story = read_entries(out / "session.json")
    events = [entry["EVENT"] for entry in story]
    assert "session_ready" in events
    assert "session_uploaded" in events
    assert "manifest_written" in events
    assert {entry["SESSION_ID"] for entry in story} == {"ephys/mouse1/2026-11-26_10-00"}
    for entry in story:
        assert entry["SYSLOG_IDENTIFIER"] == "ingest-agent"
        assert entry["SOURCE"] == "ephys"
        assert entry["CODE_FILE"].endswith(".py")
        assert entry["CODE_FUNC"]
        assert entry["PRIORITY"] in ("3", "4", "6", "7")
    manifest = next(e for e in story if e["EVENT"] == "manifest_written")
    assert manifest["OBJECT_KEY"].startswith("rig-01/ephys/mouse1/2026-11-26_10-00/")
    refused = [e for e in story if e["EVENT"] == "file_refused"]
    assert len(refused) == 1
    assert refused[0]["FILE"] == "evil\\nEVENT=session_uploaded\\nSESSION_ID=forged.bin"
    assert refused[0]["PRIORITY"] == "4"
    # The forged lines stayed inside one field: no entry claims the forged session.
    assert not any(e.get("SESSION_ID") == "forged.bin" for e in everything)
    retries = [e for e in everything if e["EVENT"] == "s3_retry"]
    assert retries and all(e["PRIORITY"] == "4" and "SlowDown" in e["ERROR"] for e in retries)
    # Storm control: three identical SlowDowns in a row give one entry and a summary.
    assert len(retries) == 1
    summary = [e for e in everything if e["EVENT"] == "repeated"]
    assert summary and "x 2 in the last" in summary[0]["MESSAGE"]
    # The objects are there.
    key = "rig-01/ephys/mouse1/2026-11-26_10-00/a.bin"
    assert (
        client.get_object(Bucket=rig.bucket, Key=key)["Body"].read()
        == (session / "a.bin").read_bytes()
    )

    # Nothing anywhere holds the planted credentials: journal, stdout, stderr.
    for name in ("journal.export", "stdout", "stderr"):
        text = (out / name).read_bytes()
        assert PLANTED_SECRET.encode() not in text, name
        assert PLANTED_TOKEN.encode() not in text, name
