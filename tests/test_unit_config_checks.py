"""Unit tests for what the config check refuses beyond types and ranges (issue 12, item 10):
files that cannot be read as TOML, bucket names S3 would reject, metadata that cannot be an
HTTP header, unknown storage classes, unsafe agent names, durations that are not finite or
are 0 where 0 means a busy loop, sources that overlap, a relative state_dir. Each refusal is
a ConfigProblem naming the key, collected with every other one. No server; the only files
are temporary configs and folders."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.cli_output import EXIT_CONFIG
from agent.config import load_settings, settings_from_mapping
from agent.errors import ConfigError
from tests.test_unit_config import minimal


def problems_of(config: dict[str, Any]) -> list[str]:
    """Every problem the check finds in `config`, as "key: message" ([] when valid)."""
    try:
        settings_from_mapping(config, "checks.toml")
    except ConfigError as error:
        return [f"{problem.key}: {problem.message}" for problem in error.problems]
    return []


def refused(config: dict[str, Any], key: str) -> str:
    """The one problem reported for `key` (the test fails when there is none)."""
    found = [text for text in problems_of(config) if text.startswith(f"{key}: ")]
    assert len(found) == 1, problems_of(config)
    return found[0]


# --- 1. a --config that is not a readable TOML file -----------------------------------------


def test_a_directory_as_config_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path)
    (problem,) = caught.value.problems
    assert problem.file == str(tmp_path)
    assert "is a directory" in problem.message and "config.toml" in problem.message


def test_a_file_that_is_not_utf8_names_the_path_and_the_byte(tmp_path: Path) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes('[agent]\nname = "salle-é"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    (problem,) = caught.value.problems
    assert problem.file == str(config)
    assert "not UTF-8" in problem.message and "0xe9" in problem.message
    assert "line 2" in problem.message


def test_a_byte_order_mark_is_named(tmp_path: Path) -> None:
    config = tmp_path / "bom.toml"
    config.write_bytes(b"\xef\xbb\xbf" + b'[destination]\nbucket = "lab-raw"\n')
    with pytest.raises(ConfigError, match="byte order mark"):
        load_settings(config)


def test_check_config_on_a_directory_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--config", str(tmp_path)]) == EXIT_CONFIG
    assert f"{tmp_path}: -: is a directory" in capsys.readouterr().err


# --- 2. bucket names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bucket", "rule"),
    [
        ("ab", "3 to 63 characters"),
        ("a" * 64, "3 to 63 characters"),
        ("Lab-Raw", "lowercase"),
        ("lab_raw", "lowercase letters, digits"),
        ("lab raw", "lowercase letters, digits"),
        ("-lab-raw", "begin and end with a letter or digit"),
        ("lab-raw.", "begin and end with a letter or digit"),
        ("lab..raw", "two adjacent dots"),
        ("192.168.5.4", "IP address"),
        ("xn--lab-raw", "must not start with 'xn--'"),
        ("sthree-lab", "must not start with 'sthree-'"),
        ("amzn-s3-demo-lab", "must not start with 'amzn-s3-demo-'"),
        ("lab--ol-s3", "must not end with '--ol-s3'"),
        ("lab.mrap", "must not end with '.mrap'"),
        ("lab--table-s3", "must not end with '--table-s3'"),
        ("lab--x-s3", "--x-s3"),
        ("arn:aws:s3:eu-west-1:123456789012:accesspoint/lab", "ARN"),
    ],
)
def test_a_bucket_name_s3_would_reject_is_refused_with_the_rule(
    tmp_path: Path, bucket: str, rule: str
) -> None:
    problem = refused(minimal(tmp_path, destination={"bucket": bucket}), "destination.bucket")
    assert rule in problem


@pytest.mark.parametrize(
    "bucket",
    [
        "lab-raw",
        "abc",
        "a" * 63,
        f"test-bucket-{12345}-{0}",
        "bench-123456-catchup-s5cmd-0",
        "demo-lab-raw",
        "lab.raw.2024",
        "10.0.0.1.lab",
        # An access point alias and an S3 Express directory bucket take uploads too.
        "lab-ap-hrzrlukc5m36ft7okagglf3gmwluquse1b-s3alias",
        "lab-raw--usw2-az1--x-s3",
    ],
)
def test_bucket_names_s3_takes_are_accepted(tmp_path: Path, bucket: str) -> None:
    assert problems_of(minimal(tmp_path, destination={"bucket": bucket})) == []


# --- 3. object metadata ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"lab": "Salle B12 — étage 2"}, "percent-encode"),
        ({"lab": "smith\nX-Injected: 1"}, "printable ASCII"),
        ({"lab": "smith\t"}, "printable ASCII"),
        ({"projet-é": "v1"}, "ASCII letters, digits"),
        ({"my project": "v1"}, "ASCII letters, digits"),
        ({"": "v1"}, "must not be empty"),
    ],
)
def test_destination_metadata_that_cannot_be_an_http_header_is_refused(
    tmp_path: Path, metadata: dict[str, str], expected: str
) -> None:
    config = minimal(tmp_path, destination={"metadata": metadata})
    problem = refused(config, "destination.metadata")
    assert expected in problem and "x-amz-meta-" in problem


def test_the_percent_encoding_suggested_is_the_value_encoded(tmp_path: Path) -> None:
    config = minimal(tmp_path, destination={"metadata": {"lab": "étage 2"}})
    assert "'%C3%A9tage 2'" in refused(config, "destination.metadata")


def test_printable_ascii_metadata_is_accepted(tmp_path: Path) -> None:
    metadata = {"project": "visual-cortex", "Lab.Name_2": "Smith & Jones (B12) ~ 100%"}
    settings = settings_from_mapping(minimal(tmp_path, destination={"metadata": metadata}), "m")
    assert settings.destination.metadata == metadata


@pytest.mark.parametrize(
    "metadata", [{"room": "B12\n"}, {"room": "B\x0012"}, {"ro\x1bom": "B12"}, {"room": "\x7f"}]
)
def test_source_metadata_with_control_characters_is_refused(
    tmp_path: Path, metadata: dict[str, str]
) -> None:
    problem = refused(minimal(tmp_path, source={"metadata": metadata}), "source[0].metadata")
    assert "control character" in problem


def test_source_metadata_may_hold_any_printable_text(tmp_path: Path) -> None:
    # It goes into manifests (JSON) and key templates, never into HTTP headers.
    metadata = {"room": "Salle B12 — étage 2", "opérateur": "Zoë"}
    settings = settings_from_mapping(minimal(tmp_path, source={"metadata": metadata}), "m")
    assert settings.sources[0].metadata == metadata


# --- 4. storage classes ---------------------------------------------------------------------


@pytest.mark.parametrize("storage_class", ["STANDARD_INFREQUENT", "COLD", "GLACIER-IR", "IA"])
def test_an_unknown_storage_class_is_refused_naming_the_list(
    tmp_path: Path, storage_class: str
) -> None:
    config = minimal(tmp_path, destination={"storage_class": storage_class})
    problem = refused(config, "destination.storage_class")
    assert "STANDARD_IA" in problem and "DEEP_ARCHIVE" in problem and "EXPRESS_ONEZONE" in problem


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        ("STANDARD_IA", "STANDARD_IA"),
        ("glacier_ir", "GLACIER_IR"),
        ("Deep_Archive", "DEEP_ARCHIVE"),
    ],
)
def test_a_storage_class_is_sent_as_aws_spells_it(tmp_path: Path, written: str, sent: str) -> None:
    config = minimal(tmp_path, destination={"storage_class": written})
    assert settings_from_mapping(config, "sc.toml").destination.storage_class == sent


# --- 5. agent and source names --------------------------------------------------------------


@pytest.mark.parametrize("name", ["rig..01", "rig-01..", "rig-01\n", "rig-01\r\n"])
def test_an_unsafe_agent_name_is_refused(tmp_path: Path, name: str) -> None:
    problem = refused(minimal(tmp_path, agent={"name": name}), "agent.name")
    assert "object keys" in problem


def test_a_source_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    refused(minimal(tmp_path, source={"name": "ephys\n"}), "source[0].name")


@pytest.mark.parametrize("name", [".", "..", "../rig", "rig/01", "rig\x0001", ""])
def test_names_refused_before_stay_refused(tmp_path: Path, name: str) -> None:
    refused(minimal(tmp_path, agent={"name": name}), "agent.name")


# --- 6. durations ---------------------------------------------------------------------------

DURATION_KEYS = [
    ("agent", "rescan_interval"),
    ("agent", "heartbeat_interval"),
    ("agent", "heartbeat_stale"),
    ("upload", "retry_delay"),
    ("upload", "failed_retry_delay"),
    ("upload", "connect_timeout"),
    ("upload", "read_timeout"),
    ("status", "ready_warning"),
    ("status", "stalled_warning"),
    ("metrics", "interval"),
    ("fleet", "interval"),
    ("hooks", "timeout"),
    ("source", "quiet_period"),
    ("source", "min_age"),
    ("source", "poll_interval"),
]


def key_name(table: str, key: str) -> str:
    return f"source[0].{key}" if table == "source" else f"{table}.{key}"


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, "9" * 400 + "s", 10**400], ids=["nan", "inf", "huge", "huge-int"]
)
@pytest.mark.parametrize(("table", "key"), DURATION_KEYS, ids=[".".join(k) for k in DURATION_KEYS])
def test_a_duration_that_is_not_finite_is_refused(
    tmp_path: Path, table: str, key: str, value: object
) -> None:
    problem = refused(minimal(tmp_path, **{table: {key: value}}), key_name(table, key))
    assert "finite" in problem or "at most" in problem


def test_a_duration_of_more_than_200_years_is_refused(tmp_path: Path) -> None:
    problem = refused(minimal(tmp_path, source={"min_age": "73001d"}), "source[0].min_age")
    assert "at most 73000 days" in problem


@pytest.mark.parametrize("value", [0, "0s", "0.5s", "999ms"])
def test_rescan_interval_under_a_second_is_refused(tmp_path: Path, value: object) -> None:
    problem = refused(minimal(tmp_path, agent={"rescan_interval": value}), "agent.rescan_interval")
    assert "at least 1 second" in problem


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("agent", "heartbeat_interval"),
        ("upload", "connect_timeout"),
        ("upload", "read_timeout"),
        ("upload", "failed_retry_delay"),
        ("source", "poll_interval"),
    ],
)
def test_a_zero_interval_or_timeout_is_refused(tmp_path: Path, table: str, key: str) -> None:
    problem = refused(minimal(tmp_path, **{table: {key: "0s"}}), key_name(table, key))
    assert "longer than 0" in problem


def test_zero_stays_allowed_where_it_means_something(tmp_path: Path) -> None:
    config = minimal(
        tmp_path,
        upload={"retry_delay": 0},
        fleet={"interval": 0},
        source={"quiet_period": 0, "min_age": 0},
    )
    assert problems_of(config) == []


# --- 7. overlapping sources -----------------------------------------------------------------


def two_sources(first: Path, second: Path) -> dict[str, Any]:
    config = minimal(first)
    config["source"].append({"name": "scope", "path": str(second)})
    return config


def test_two_sources_on_one_folder_are_refused_naming_both(tmp_path: Path) -> None:
    problem = refused(two_sources(tmp_path, tmp_path), "source[1].path")
    assert "'ephys'" in problem and "'scope'" in problem and "twice" in problem


def test_a_source_inside_another_is_refused_naming_both(tmp_path: Path) -> None:
    inner = tmp_path / "imaging"
    inner.mkdir()
    problem = refused(two_sources(tmp_path, inner), "source[1].path")
    assert "inside" in problem and "'ephys'" in problem and "'scope'" in problem
    # The other way round, the inner one is still the one named.
    problem = refused(two_sources(inner, tmp_path), "source[0].path")
    assert "inside" in problem and "'ephys'" in problem and "'scope'" in problem


def test_a_symlink_to_another_source_is_the_same_folder(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    problem = refused(two_sources(real, tmp_path / "alias"), "source[1].path")
    assert "same folder" in problem


def test_overlap_is_found_before_the_folders_exist(tmp_path: Path) -> None:
    outer = tmp_path / "not-yet"
    config = two_sources(outer, outer / "inner")
    assert any("inside" in text for text in problems_of(config))


def test_sibling_sources_that_share_a_name_prefix_are_accepted(tmp_path: Path) -> None:
    for name in ("data", "data2"):
        (tmp_path / name).mkdir()
    assert problems_of(two_sources(tmp_path / "data", tmp_path / "data2")) == []


# --- 8. relative paths ----------------------------------------------------------------------


@pytest.mark.parametrize("state_dir", ["state", "./state", "~/state", "var/lib/ingest-agent"])
def test_a_relative_state_dir_is_refused(tmp_path: Path, state_dir: str) -> None:
    problem = refused(minimal(tmp_path, agent={"state_dir": state_dir}), "agent.state_dir")
    assert "absolute path" in problem


def test_a_relative_source_path_stays_refused(tmp_path: Path) -> None:
    config = minimal(tmp_path)
    config["source"][0]["path"] = "recordings"
    assert "absolute path" in refused(config, "source[0].path")


# --- every problem together -----------------------------------------------------------------


def test_every_new_refusal_is_reported_together(tmp_path: Path) -> None:
    config = minimal(
        tmp_path,
        agent={"name": "rig..01", "state_dir": "state", "rescan_interval": 0},
        destination={"bucket": "Lab_Raw", "storage_class": "COLD", "metadata": {"é": "v"}},
        source={"quiet_period": math.nan},
    )
    config["source"].append({"name": "scope", "path": str(tmp_path)})
    keys = {text.split(": ", 1)[0] for text in problems_of(config)}
    assert keys == {
        "agent.name",
        "agent.state_dir",
        "agent.rescan_interval",
        "destination.bucket",
        "destination.storage_class",
        "destination.metadata",
        "source[0].quiet_period",
        "source[1].path",
    }
