"""What `agentctl` imports at start: every start is paid by the rig's CPU, and a no-op sync
must stay well under a second."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import sys
import agent.cli, agent.state
print("numpy at start:", "numpy" in sys.modules)
import numpy
print("numpy later:", numpy.MARK)
"""


def test_numpy_is_not_imported_by_the_agent_but_still_importable(tmp_path: Path) -> None:
    """sqlite_utils imports numpy when it is installed (about 0.2 s on a lab computer);
    the agent hides it while sqlite_utils loads, and only then. A stand-in numpy on the
    path shows both."""
    fake = tmp_path / "numpy"
    fake.mkdir()
    (fake / "__init__.py").write_text('MARK = "the real one"\n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["numpy at start: False", "numpy later: the real one"]
