"""The systemd check: is the agent's unit installed, enabled and running."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.doctor.checks import FAIL, OK, SKIPPED, WARNING, Check, _duration

UNIT = "ingest-agent.service"
SYSTEMD_RUN_DIR = Path("/run/systemd/system")


def parse_properties(text: str) -> dict[str, str]:
    """`systemctl show` output (Key=Value lines) → {Key: Value}."""
    properties: dict[str, str] = {}
    for line in text.splitlines():
        key, equals, value = line.partition("=")
        if equals:
            properties[key.strip()] = value.strip()
    return properties


def systemd_verdict(properties: Mapping[str, str]) -> Check:
    """Given LoadState, UnitFileState, ActiveState (and SubState) of the unit, say whether
    the service is installed, enabled and running."""
    name = "systemd unit"
    load = properties.get("LoadState", "")
    enabled = properties.get("UnitFileState", "")
    active = properties.get("ActiveState", "")
    sub = properties.get("SubState", "")
    if load == "not-found":
        return Check(
            name,
            WARNING,
            f"{UNIT} is not installed",
            "install it with deploy/install.sh (README, Running as a service), unless the "
            "agent runs under another supervisor",
        )
    if load == "masked":
        return Check(name, FAIL, f"{UNIT} is masked: it cannot start", "systemctl unmask " + UNIT)
    if load != "loaded":
        return Check(
            name,
            FAIL,
            f"{UNIT} does not load (LoadState={load or '?'})",
            f"systemd-analyze verify /etc/systemd/system/{UNIT}",
        )
    if active == "failed":
        return Check(
            name,
            FAIL,
            f"{UNIT} installed, {enabled}, failed",
            f"journalctl -u {UNIT} -e shows why; then systemctl restart {UNIT}",
        )
    if enabled not in ("enabled", "enabled-runtime", "linked", "linked-runtime", "alias"):
        return Check(
            name,
            WARNING,
            f"{UNIT} installed but {enabled or 'not enabled'}: it does not start at boot; "
            f"now {active}",
            f"systemctl enable --now {UNIT}",
        )
    if active != "active":
        return Check(
            name,
            WARNING,
            f"{UNIT} installed, enabled, {active or 'state unknown'}",
            f"systemctl start {UNIT}",
        )
    return Check(name, OK, f"{UNIT} installed, enabled, active ({sub or 'running'})")


@dataclass(frozen=True)
class Systemctl:
    """How to ask systemd (the command and a time limit), passed in for tests."""

    run_dir: Path = SYSTEMD_RUN_DIR
    command: Sequence[str] = field(default=("systemctl",))
    timeout: float = 5.0


def check_systemd(systemctl: Systemctl | None = None) -> Check:
    """The unit's state, where systemd is running; a skipped line where it is not."""
    systemctl = systemctl or Systemctl()
    if not systemctl.run_dir.is_dir():
        return Check(
            "systemd unit",
            SKIPPED,
            f"systemd is not running here (no {systemctl.run_dir}): the unit was not checked",
        )
    try:
        result = subprocess.run(
            [
                *systemctl.command,
                "show",
                "-p",
                "LoadState,UnitFileState,ActiveState,SubState",
                UNIT,
            ],
            capture_output=True,
            text=True,
            timeout=systemctl.timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Check(
            "systemd unit",
            WARNING,
            f"systemctl did not answer within {_duration(systemctl.timeout)}",
            "systemctl status " + UNIT,
        )
    except OSError as error:
        return Check("systemd unit", WARNING, f"cannot run systemctl: {error}")
    if result.returncode != 0:
        return Check(
            "systemd unit",
            WARNING,
            f"systemctl show failed (exit {result.returncode}): {result.stderr.strip()}",
            "systemctl status " + UNIT,
        )
    return systemd_verdict(parse_properties(result.stdout))
