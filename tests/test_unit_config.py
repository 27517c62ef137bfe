"""Unit tests for configuration defaults: each is written once, in the settings dataclasses;
a config that leaves a key out gets that default, and config.example.toml states the same
values. No server; the only file read is the example."""

from __future__ import annotations

import re
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.config import (
    DEFAULT_STATE_DIR,
    AgentSettings,
    DestinationSettings,
    FleetSettings,
    HooksSettings,
    MetricsSettings,
    Settings,
    SourceSettings,
    StatusSettings,
    UploadSettings,
    settings_from_mapping,
)

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"
_TABLE = re.compile(r"^\[\[?([\w.]+)\]\]?$")
_ASSIGNMENT = re.compile(r"^(\w+) = ")
_DEFAULT = re.compile(r"\bDefaults?: (.+)$")
# Stated defaults that are not a value a user could write.
_NOT_A_VALUE = {("agent", "name")}  # "the host name"


def minimal(source_path: Path, **tables: dict[str, Any]) -> dict[str, Any]:
    """The smallest valid config: a bucket and one source, plus `tables` (key → values;
    "source" values go into the one source)."""
    source = {"name": "ephys", "path": str(source_path), **tables.pop("source", {})}
    destination = {"bucket": "lab-raw", **tables.pop("destination", {})}
    return {"destination": destination, "source": [source], **tables}


def section(settings: Settings, table: str) -> object:
    """The settings of one table ("source" is the first source)."""
    return settings.sources[0] if table == "source" else getattr(settings, table)


def documented_defaults(text: str) -> list[tuple[str, str, str]]:
    """(table, key, default as written) for every key, commented out or not, whose comment
    says "Default: ...". One statement may cover the next keys in order: 'Defaults: "10s"
    and "120s"'."""
    found: list[tuple[str, str, str]] = []
    table = ""
    stated: list[str] = []
    for line in text.splitlines():
        body = line.lstrip("#").strip()
        if not body:
            stated = []
        elif table_match := _TABLE.match(body):
            table, stated = table_match.group(1), []
        elif key_match := _ASSIGNMENT.match(body):
            if stated:
                found.append((table, key_match.group(1), stated.pop(0)))
        elif default_match := _DEFAULT.search(body):
            stated = default_match.group(1).split(" and ")
    return found


def as_value(text: str) -> object:
    """A stated default as TOML ('"5m"', 'true', '[...]'), else as a bare word ('auto, which
    means ...' is "auto")."""
    head = text.split(",", maxsplit=1)[0]
    for candidate in (text, head):
        try:
            return tomllib.loads(f"value = {candidate.strip().rstrip('.')}")["value"]
        except tomllib.TOMLDecodeError:
            continue
    return head.strip().rstrip(".")


def test_a_minimal_config_takes_every_dataclass_default(tmp_path: Path) -> None:
    settings = settings_from_mapping(minimal(tmp_path), "minimal.toml")
    assert settings.agent == AgentSettings()
    assert settings.agent.name == socket.gethostname()
    assert settings.agent.state_dir == Path(DEFAULT_STATE_DIR)
    assert settings.destination == DestinationSettings(bucket="lab-raw")
    assert settings.upload == UploadSettings()
    assert settings.sources == (SourceSettings(name="ephys", path=tmp_path),)
    assert settings.status == StatusSettings()
    assert settings.metrics == MetricsSettings()
    assert settings.fleet == FleetSettings()
    assert settings.hooks == HooksSettings()


def test_a_layout_sets_the_depth_the_source_would_otherwise_default(tmp_path: Path) -> None:
    layout = {"layout": "{subject}/{date}/{time}", "key_template": "{source}/{path}"}
    settings = settings_from_mapping(minimal(tmp_path, source=layout), "layout.toml")
    assert settings.sources[0].session_depth == 3


def test_the_example_states_defaults_for_most_keys() -> None:
    documented = {(table, key) for table, key, _ in documented_defaults(EXAMPLE.read_text())}
    assert len(documented) >= 35
    assert {
        ("agent", "rescan_interval"),
        ("upload", "retries"),
        ("upload", "retry_delay"),
        ("upload", "connect_timeout"),
        ("upload", "read_timeout"),
        ("source", "exclude"),
        ("source", "min_age"),
        ("hooks", "timeout"),
    } <= documented


@pytest.mark.parametrize(
    ("table", "key", "stated"),
    [
        pytest.param(table, key, stated, id=f"{table}.{key}")
        for table, key, stated in documented_defaults(EXAMPLE.read_text())
        if (table, key) not in _NOT_A_VALUE
    ],
)
def test_the_example_states_the_default_the_code_uses(
    tmp_path: Path, table: str, key: str, stated: str
) -> None:
    defaults = section(settings_from_mapping(minimal(tmp_path), "minimal.toml"), table)
    written = minimal(tmp_path, **{table: {key: as_value(stated)}})
    loaded = section(settings_from_mapping(written, "stated.toml"), table)
    assert getattr(loaded, key) == getattr(defaults, key)


@pytest.mark.parametrize(
    ("upload", "expected"),
    [
        ({}, 64 * 2**20),  # 4 workers x 16 MiB parts
        ({"concurrency": 8}, 128 * 2**20),  # one part per worker
        ({"concurrency": 2}, 64 * 2**20),  # never below the default
        ({"concurrency": 8, "max_memory": "32MiB"}, 32 * 2**20),  # what the operator says
    ],
)
def test_unset_max_memory_holds_one_part_per_worker(
    tmp_path: Path, upload: dict[str, Any], expected: int
) -> None:
    settings = settings_from_mapping(minimal(tmp_path, upload=upload), "memory.toml")
    assert settings.upload.max_memory == expected
