"""Configuration: valid files load; bad ones report every problem at once and create nothing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import load_settings
from agent.config_values import parse_duration, parse_size
from agent.errors import ConfigError
from tests.conftest import Rig, write_config


def test_valid_config_loads(make_rig: object, tmp_path: Path) -> None:
    rig: Rig = make_rig()  # type: ignore[operator]
    settings = rig.settings()
    assert settings.destination.prefix == "rig-01"
    assert settings.sources[0].quiet_period == 1.0
    assert settings.upload.part_size == 5 * 1024**2
    assert "*.tmp" in settings.sources[0].exclude


def test_bad_config_lists_every_problem_and_creates_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "state-must-not-exist"
    config = write_config(
        tmp_path / "bad.toml",
        f"""
[agent]
state_dir = "{state_dir}"
colour = "blue"

[destination]
prefix = "x"

[upload]
concurrency = "four"

[[source]]
name = "ephys"
path = "{tmp_path / "no-such-dir"}"
quiet_period = "5 minutes"
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    text = str(caught.value)
    assert "agent.colour: unknown key" in text
    assert "destination.bucket: is required" in text
    assert "upload.concurrency: expected an integer" in text
    assert "no-such-dir does not exist" in text
    assert "source[0].quiet_period: '5 minutes' is not a duration" in text
    assert all(str(config) in str(problem) for problem in caught.value.problems)
    assert not state_dir.exists()


def test_check_config_cli_exits_2_with_every_problem(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "bad.toml",
        '[destination]\nbucket = 3\n[[source]]\nname = "a b"\npath = "relative"\n',
    )
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "destination.bucket" in result.stderr
    assert "source[0].name" in result.stderr
    assert "source[0].path" in result.stderr


@pytest.mark.parametrize("command", ["sync", "run"])
def test_a_profile_no_aws_file_holds_exits_2_naming_the_file_and_key(
    tmp_path: Path, command: str
) -> None:
    """The profile is only looked up when the S3 client is built, after the file loaded:
    this was a traceback (and, under systemd, a restart loop)."""
    source = tmp_path / "recordings"
    (source / "m1" / "s1").mkdir(parents=True)
    (source / "m1" / "s1" / "a.bin").write_bytes(b"data")
    config = write_config(
        tmp_path / "agent.toml",
        f"""
[agent]
state_dir = "{tmp_path / "state"}"
[destination]
bucket = "some-bucket"
endpoint_url = "http://127.0.0.1:9"
profile = "no-such-profile"
[[source]]
name = "rec"
path = "{source}"
session_depth = 2
""",
    )
    empty = tmp_path / "aws"
    empty.mkdir()
    environment = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(empty / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty / "credentials"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "agent", command, "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=environment,
    )
    assert result.returncode == 2, result.stderr
    assert f"{config}: destination.profile:" in result.stderr
    assert "no-such-profile" in result.stderr
    assert "Traceback" not in result.stderr
    assert (source / "m1" / "s1" / "a.bin").read_bytes() == b"data"


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), ("90s", 90.0), ("5m", 300.0), ("1h", 3600.0), ("1.5m", 90.0), ("250ms", 0.25)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "", "m5", "-3", True, [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match=r"duration|expected|negative"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [(1024, 1024), ("16MiB", 16 * 1024**2), ("5 GB", 5 * 10**9), ("1KiB", 1024), ("2kb", 2000)],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["s", "m", "h"]))
def test_duration_round_trip(value: int, unit: str) -> None:
    factor = {"s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration(f"{value}{unit}") == value * factor


def test_example_config_is_valid(tmp_path: Path) -> None:
    example = (Path(__file__).parent.parent / "config.example.toml").read_text()
    text = example.replace('"/data/recordings"', f'"{tmp_path}"').replace(
        '"/var/lib/ingest-agent"', f'"{tmp_path / "state"}"'
    )
    settings = load_settings(write_config(tmp_path / "example.toml", text))
    assert settings.destination.bucket == "lab-raw"
    assert settings.sources[0].name == "ephys"


def test_upload_windows_and_their_mistakes(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(
        upload_extra="""
[[upload.window]]
start = "07:00"
end = "20:00"
days = ["mon", "tue", "wed", "thu", "fri"]
max_bandwidth = "10MB"

[[upload.window]]
start = "20:00"
end = "07:00"
pause = true
"""
    )
    windows = rig.settings().upload.windows
    assert [(w.start, w.end, w.max_bandwidth, w.pause) for w in windows] == [
        (420, 1200, 10_000_000, False),
        (1200, 420, 0, True),
    ]
    assert windows[0].days == frozenset(range(5))

    rig = make_rig(
        upload_extra='[[upload.window]]\nstart = "25:00"\nend = "07:00"\ndays = ["someday"]\n'
    )
    result = rig.agentctl("check-config")
    assert result.returncode == 2
    assert "upload.window[0].start: '25:00' is not a time of day" in result.stderr
    assert "upload.window[0].days" in result.stderr
