"""The README's first command: `agentctl demo` runs the whole path on an embedded default (its
own S3 server on loopback, a simulated instrument) and stops everything it started."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_demo_uploads_its_sessions_and_leaves_nothing_behind(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--sessions", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^local S3 server: http://127\.0\.0\.1:\d+", out, re.MULTILINE)
    manifests = re.findall(r"s3://demo-lab-raw/\S+/ingest-manifest\.json", out)
    # stderr too: the agent's thread reports its own failures there.
    assert len(manifests) == 2, out + result.stderr  # one per session, written last
    assert "Traceback" not in result.stderr
    assert "Warning" not in result.stderr, result.stderr  # e.g. watchdog's RuntimeWarnings
    (folder,) = re.findall(r"instrument folders: (\S+)/ephys", out)
    assert not Path(folder).exists()  # its temporary folder is removed
    assert out.rstrip().endswith(
        "everything it started is stopped and its temporary folder removed"
    )
