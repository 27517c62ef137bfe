"""Unit tests for planning: object keys, the multipart part layout within S3's limits, the
multipart ETag, which names are refused, layouts, key templates and the manifest document."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.planning import (
    BUILTIN_KEY_FIELDS,
    DEFAULT_KEY_TEMPLATE,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MAX_KEY_BYTES,
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    Layout,
    Part,
    build_manifest,
    encode_entry,
    encode_manifest,
    join_key,
    key_length_reason,
    manifest_entry,
    manifest_head,
    manifest_key,
    multipart_etag,
    object_key,
    part_size_for,
    plan_parts,
    render_key_template,
    strict_name_reason,
    template_fields,
    template_root,
    unsafe_name_reason,
)

MIB = 1024**2
GIB = 1024**3
TIB = 1024**4


# --- S3 limits and keys ---------------------------------------------------------------------


def test_s3_limits() -> None:
    assert (MIN_PART_SIZE, MAX_PART_SIZE, MAX_PARTS) == (5 * MIB, 5 * GIB, 10_000)
    assert MAX_OBJECT_SIZE == 5 * TIB
    assert MAX_KEY_BYTES == 1024


@pytest.mark.parametrize(
    ("segments", "key"),
    [
        (("a", "b", "c"), "a/b/c"),
        (("/a/", "", "b//", "/"), "a/b"),
        (("", "ephys", "m1/s1"), "ephys/m1/s1"),
        (("rig/", "/x"), "rig/x"),
        (("a//b",), "a//b"),  # inner slashes are the caller's business
        (("Xray/", "X", "/boX"), "Xray/X/boX"),  # only slashes are stripped
        ((), ""),
    ],
)
def test_join_key(segments: tuple[str, ...], key: str) -> None:
    assert join_key(*segments) == key


def test_session_object_and_manifest_keys() -> None:
    prefix = join_key("lab/", "ephys", "/mouse1/2026-11-23/")
    assert prefix == "lab/ephys/mouse1/2026-11-23"
    assert object_key(prefix, "probe0/a.bin") == "lab/ephys/mouse1/2026-11-23/probe0/a.bin"
    assert manifest_key(prefix) == "lab/ephys/mouse1/2026-11-23/ingest-manifest.json"
    assert MANIFEST_NAME == "ingest-manifest.json"


# --- part planning --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "preferred", "expected"),
    [
        (0, 8 * MIB, 8 * MIB),
        (1, 8 * MIB, 8 * MIB),
        (1, 0, MIN_PART_SIZE),  # never below S3's minimum
        (100 * MIB, 1 * MIB, MIN_PART_SIZE),
        (100 * MIB, 6 * GIB, MAX_PART_SIZE),  # never above S3's maximum
        (10_000 * 8 * MIB, 8 * MIB, 8 * MIB),  # exactly 10,000 parts is allowed
        (10_000 * 8 * MIB + 1, 8 * MIB, 9 * MIB),  # one byte more: the next whole MiB
        (10_000 * 5 * MIB + 1, 0, 6 * MIB),
        (100 * GIB, 8 * MIB, 11 * MIB),  # 100 GiB / 10,000 = 10.24 MiB
        (MAX_OBJECT_SIZE, 8 * MIB, 525 * MIB),  # 5 TiB / 10,000 = 524.29 MiB
        (MAX_OBJECT_SIZE, 600 * MIB, 600 * MIB),
    ],
)
def test_part_size_for(size: int, preferred: int, expected: int) -> None:
    assert part_size_for(size, preferred) == expected


def test_part_size_for_refuses_objects_over_5_tib() -> None:
    with pytest.raises(ValueError, match="larger than the 5 TiB S3 object limit"):
        part_size_for(MAX_OBJECT_SIZE + 1, 8 * MIB)


def test_zero_byte_file_has_one_empty_part() -> None:
    assert plan_parts(0, 8 * MIB) == [Part(1, 0, 0)]


@pytest.mark.parametrize(
    ("size", "part_size", "expected"),
    [
        (1, 10, [Part(1, 0, 1)]),
        (10, 10, [Part(1, 0, 10)]),
        (11, 10, [Part(1, 0, 10), Part(2, 10, 1)]),
        (30, 10, [Part(1, 0, 10), Part(2, 10, 10), Part(3, 20, 10)]),
        (25, 10, [Part(1, 0, 10), Part(2, 10, 10), Part(3, 20, 5)]),
    ],
)
def test_plan_parts_last_part_takes_the_rest(
    size: int, part_size: int, expected: list[Part]
) -> None:
    assert plan_parts(size, part_size) == expected


def check_plan(size: int, part_size: int) -> None:
    parts = plan_parts(size, part_size)
    assert 1 <= len(parts) <= MAX_PARTS
    assert [part.number for part in parts] == list(range(1, len(parts) + 1))
    assert parts[0].offset == 0
    for before, after in itertools.pairwise(parts):
        assert before.offset + before.length == after.offset
        assert before.length == part_size  # only the last part may be short
        assert MIN_PART_SIZE <= before.length <= MAX_PART_SIZE
    assert parts[-1].offset + parts[-1].length == size
    assert sum(part.length for part in parts) == size
    if size:
        assert 0 < parts[-1].length <= part_size


@given(st.integers(0, MAX_OBJECT_SIZE), st.integers(0, 6 * GIB))
def test_every_plan_covers_the_file_exactly_within_s3_limits(size: int, preferred: int) -> None:
    part_size = part_size_for(size, preferred)
    assert MIN_PART_SIZE <= part_size <= MAX_PART_SIZE
    assert part_size % MIB == 0 or part_size == preferred
    check_plan(size, part_size)


@given(st.integers(1, MAX_OBJECT_SIZE), st.integers(0, 64 * MIB))
def test_a_larger_part_size_is_chosen_only_when_needed_and_minimal(
    size: int, preferred: int
) -> None:
    part_size = part_size_for(size, preferred)
    if part_size > max(MIN_PART_SIZE, preferred):
        # The configured size would have needed more than 10,000 parts, and one MiB less
        # than the chosen size would still need too many.
        assert -(-size // max(MIN_PART_SIZE, preferred)) > MAX_PARTS
        assert -(-size // (part_size - MIB)) > MAX_PARTS
        assert part_size % MIB == 0


@given(st.integers(1, 3000), st.integers(1, 50), st.integers(0, 49))
def test_small_plans_cover_exactly(count: int, part_size: int, rest: int) -> None:
    size = (count - 1) * part_size + min(rest, part_size - 1) + 1
    parts = plan_parts(size, part_size)
    assert len(parts) == count
    assert sum(part.length for part in parts) == size
    assert parts[-1].length == min(rest, part_size - 1) + 1


# --- multipart ETag -------------------------------------------------------------------------


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def test_multipart_etag_is_md5_of_part_digests_and_count() -> None:
    parts = [b"a" * 100, b"b" * 100, b"c" * 7]
    etags = [md5_hex(part) for part in parts]
    joined = b"".join(bytes.fromhex(etag) for etag in etags)
    assert multipart_etag(etags) == f"{md5_hex(joined)}-3"


def test_multipart_etag_ignores_quotes_and_differs_from_single_put() -> None:
    etag = md5_hex(b"hello")
    assert multipart_etag([f'"{etag}"']) == multipart_etag([etag])
    single = multipart_etag([etag])
    assert single.endswith("-1")
    assert single != etag  # one-part multipart object: not the PUT ETag
    assert single == md5_hex(bytes.fromhex(etag)) + "-1"


def test_multipart_etag_depends_on_part_order() -> None:
    first, second = md5_hex(b"1"), md5_hex(b"2")
    assert multipart_etag([first, second]) != multipart_etag([second, first])


def test_multipart_etag_known_value() -> None:
    # Two parts of md5("") each: md5(d41d8cd9...d41d8cd9...) = an independent constant.
    empty = "d41d8cd98f00b204e9800998ecf8427e"
    assert multipart_etag([empty, empty]) == f"{md5_hex(bytes.fromhex(empty * 2))}-2"
    assert multipart_etag([empty, empty]).startswith(md5_hex(bytes.fromhex(empty) * 2))


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a.bin",
        "probe0/continuous.dat",
        "Images/r01c01f01p01-ch1sk1fk1fl1.tiff",
        "with space/and (parens)",
        "ünïcödé/日本語.tif",
        "...a",
        "a..",
        "x" * 900,
    ],
)
def test_safe_names(name: str) -> None:
    assert unsafe_name_reason(name) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bad\nname", "name holds control characters"),
        ("tab\there", "name holds control characters"),
        ("nul\x00", "name holds control characters"),
        ("del\x7f", "name holds control characters"),
        ("unit\x1f", "name holds control characters"),
        ("dir\\file", "name holds a backslash"),
        ("/abs", "name has an empty, '.' or '..' segment"),
        ("trailing/", "name has an empty, '.' or '..' segment"),
        ("a//b", "name has an empty, '.' or '..' segment"),
        ("a/./b", "name has an empty, '.' or '..' segment"),
        ("a/../b", "name has an empty, '.' or '..' segment"),
        ("..", "name has an empty, '.' or '..' segment"),
        ("", "name has an empty, '.' or '..' segment"),
        ("bad\udcff.bin", "name is not valid UTF-8"),  # os.fsdecode of a Latin-1 byte
        ("x" * 901, "name is longer than 900 bytes (S3 keys are limited to 1024)"),
        ("é" * 451, "name is longer than 900 bytes (S3 keys are limited to 1024)"),
    ],
)
def test_unsafe_names(name: str, reason: str) -> None:
    assert unsafe_name_reason(name) == reason


def test_control_characters_are_reported_before_other_problems() -> None:
    assert unsafe_name_reason("a\n/../b\\c") == "name holds control characters"
    assert unsafe_name_reason("a\\b/../c") == "name holds a backslash"


def test_key_length_counts_utf8_bytes() -> None:
    assert key_length_reason("k" * 1024) is None
    assert key_length_reason("é" * 512) is None  # 1,024 bytes
    assert key_length_reason("k" * 1023 + "\udcff") is None  # an escaped byte is one byte
    reason = key_length_reason("é" * 512 + "k")
    assert reason == (
        "object key would be 1025 bytes; S3 allows 1024 "
        "(shorten the name, the session path, prefix or key_template)"
    )


@pytest.mark.parametrize("name", ["a.bin", "Run_01/probe-0/x.tif", "2026-11-23/A.B_c-D"])
def test_strict_names_keep_to_the_portable_set(name: str) -> None:
    assert strict_name_reason(name) is None


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("ok/with space.bin", "with space.bin"),
        ("über/a", "über"),
        ("a/b+c", "b+c"),
        ("a//b", ""),
        ("fine/x:y/z#", "x:y"),  # the first offending segment is named
    ],
)
def test_strict_names_refuse_the_rest(name: str, bad: str) -> None:
    assert strict_name_reason(name) == (
        f"{bad!r} holds characters other than letters, digits, '.', '_' and '-' (strict_names)"
    )


def test_strict_names_refuse_a_trailing_newline() -> None:
    assert strict_name_reason("name\n") is not None


PORTABLE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"


@given(st.text(alphabet=PORTABLE + "/ é+:#\t\\", max_size=30))
def test_a_strict_name_has_only_portable_characters(name: str) -> None:
    expected = all(segment and set(segment) <= set(PORTABLE) for segment in name.split("/"))
    assert (strict_name_reason(name) is None) == expected


# --- templates and layouts ------------------------------------------------------------------


def test_template_fields_in_order() -> None:
    assert template_fields("{source}/{path}") == ["source", "path"]
    assert template_fields("raw/{subject}-{date}_x/{path}") == ["subject", "date", "path"]
    assert template_fields("no fields") == []
    assert template_fields("{{literal}}") == []
    assert template_fields("{{x}}/{source}-{{y}}{path}") == ["source", "path"]
    assert DEFAULT_KEY_TEMPLATE == "{source}/{path}"
    assert BUILTIN_KEY_FIELDS == ("source", "path", "agent")


@pytest.mark.parametrize(
    "template", ["{}", "{0}", "{a:>3}", "{a!r}", "{a.b}", "{a[0]}", "{1a}", "{a-b}"]
)
def test_template_fields_refuse_anything_but_plain_names(template: str) -> None:
    with pytest.raises(ValueError, match="is not a plain field"):
        template_fields(template)


@pytest.mark.parametrize("template", ["{a", "a}", "{a}}"])
def test_template_fields_refuse_unbalanced_braces(template: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(template))):
        template_fields(template)


def test_layout_parse_and_match() -> None:
    layout = Layout.parse("/{subject}/ses-{session}_{run}/")
    assert layout.pattern == "{subject}/ses-{session}_{run}"
    assert layout.depth == 2
    assert layout.fields == ("subject", "session", "run")
    assert layout.matches_level(1, "mouse1")
    assert layout.matches_level(2, "ses-01_a")
    assert not layout.matches_level(2, "session-01_a")
    assert not layout.matches_level(2, "ses-01")
    assert layout.fields_of("mouse1/ses-01_a_b") == {
        "subject": "mouse1",
        "session": "01",
        "run": "a_b",  # fields match as little as they can, left to right
    }
    assert layout.fields_of("mouse1") is None
    assert layout.fields_of("mouse1/ses-01_a/extra") is None
    assert layout.fields_of("mouse1/x-01_a") is None


def test_layout_literals_are_not_regular_expressions() -> None:
    layout = Layout.parse("run.{n}+")
    assert layout.fields_of("run.1+") == {"n": "1"}
    assert layout.fields_of("runX1+") is None
    assert layout.fields_of("run.1") is None
    assert Layout.parse("plain").fields_of("plain") == {}
    assert Layout.parse("plain").fields_of("plainer") is None
    assert Layout.parse("X-{n}/").pattern == "X-{n}"


def test_layout_fields_are_not_empty() -> None:
    layout = Layout.parse("{a}-{b}")
    assert layout.fields_of("-") is None
    assert layout.fields_of("x-") is None
    assert layout.fields_of("x-y") == {"a": "x", "b": "y"}


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "^must not be empty$"),
        ("/", "^must not be empty$"),
        ("{a}//{b}", "empty, '.' or '..' segment"),
        ("{a}/../{b}", "empty, '.' or '..' segment"),
        ("./{a}", "empty, '.' or '..' segment"),
        ("{a}/{a}", "uses a more than once"),
        ("{a}_{b}/{b}-{a}", "uses a, b more than once"),
        ("{source}", "source is reserved"),
        ("{x}/{agent}_{path}", "agent, path is reserved"),
        ("{a:>3}", "is not a plain field"),
    ],
)
def test_layout_parse_refuses(pattern: str, message: str) -> None:
    with pytest.raises(
        ValueError, match=message if message.startswith("^") else re.escape(message)
    ):
        Layout.parse(pattern)


def test_layout_refuses_a_field_name_with_a_newline_as_a_value_error() -> None:
    with pytest.raises(ValueError):
        Layout.parse("{subject\n}")


def test_layout_does_not_match_a_directory_with_a_trailing_newline() -> None:
    assert Layout.parse("{subject}").fields_of("mouse1\n") is None


def test_render_key_template() -> None:
    values = {"source": "ephys", "path": "m1/s1", "agent": "rig-7", "subject": "m1"}
    assert render_key_template("{source}/{path}", values) == "ephys/m1/s1"
    assert render_key_template("/{agent}//{subject}/", values) == "rig-7/m1"
    assert render_key_template("{agent}/{missing_ok}", {**values, "missing_ok": ""}) == "rig-7"
    assert render_key_template("x-{subject}", values) == "x-m1"
    assert render_key_template("{path}", {"path": "{subject}"}) == "{subject}"  # not re-expanded


def test_render_key_template_names_the_missing_field() -> None:
    with pytest.raises(ValueError, match=re.escape("key_template field {date} has no value")):
        render_key_template("{source}/{date}/{time}", {"source": "s"})


@pytest.mark.parametrize(
    ("template", "known", "root"),
    [
        ("{source}/{path}", {"source": "ephys"}, "ephys"),
        ("{source}/{path}", {}, ""),
        ("raw/{source}/{path}", {}, "raw"),
        ("raw-{source}/{path}", {}, ""),  # cut back to a whole segment
        ("{agent}/{source}-x/{path}", {"agent": "rig", "source": "s"}, "rig/s-x"),
        ("{agent}/{source}", {"agent": "rig", "source": "s"}, "rig/s"),
        ("fixed/prefix", {}, "fixed/prefix"),
        ("a/b{x}/c", {}, "a"),
        ("{agent}//{source}/", {"agent": "rig", "source": "s"}, "rig/s"),
        ("raw data/{source}/{path}", {"source": "s"}, "raw data/s"),
        ("lit{{x}}/{source}/{path}", {"source": "s"}, "lit{x}/s"),  # escaped braces
    ],
)
def test_template_root(template: str, known: dict[str, str], root: str) -> None:
    assert template_root(template, known) == root


# --- manifest -------------------------------------------------------------------------------


def file_row(rel_path: str, size: int) -> dict[str, Any]:
    return {
        "rel_path": rel_path,
        "key": f"p/{rel_path}",
        "size": size,
        "mtime_ns": 1_700_000_000_000_000_000 + size,
        "checksum_algorithm": "crc32c",
        "checksum": f"c{size}==",
        "etag": f"e{size}",
        "extra": "not in the manifest",
    }


def test_manifest_document_shape() -> None:
    session = {
        "id": "ephys:m1/s1",
        "source": "ephys",
        "rel_path": "m1/s1",
        "key_prefix": "p",
        "metadata": {"subject": "m1"},
        "state": "uploading",
    }
    document = build_manifest(
        session=session,
        files=[file_row("z.bin", 3), file_row("a/b.bin", 10)],
        agent_name="rig-7",
        agent_version="1.2.3",
        revision=2,
        written_at="2026-11-23T10:00:00Z",
    )
    assert document == {
        "format": MANIFEST_FORMAT,
        "agent": {"name": "rig-7", "version": "1.2.3"},
        "revision": 2,
        "written_at": "2026-11-23T10:00:00Z",
        "session": {
            "id": "ephys:m1/s1",
            "source": "ephys",
            "path": "m1/s1",
            "key_prefix": "p",
            "metadata": {"subject": "m1"},
        },
        "totals": {"files": 2, "bytes": 13},
        "files": [
            {
                "path": "a/b.bin",
                "key": "p/a/b.bin",
                "size": 10,
                "mtime_ns": 1_700_000_000_000_000_010,
                "checksum": {"algorithm": "crc32c", "value": "c10=="},
                "etag": "e10",
            },
            {
                "path": "z.bin",
                "key": "p/z.bin",
                "size": 3,
                "mtime_ns": 1_700_000_000_000_000_003,
                "checksum": {"algorithm": "crc32c", "value": "c3=="},
                "etag": "e3",
            },
        ],
    }
    assert MANIFEST_FORMAT == "ingest-agent/manifest/1"


def test_manifest_of_a_session_without_metadata_or_files() -> None:
    session = {"id": "s", "source": "src", "rel_path": "x", "key_prefix": "k", "metadata": None}
    document = build_manifest(
        session=session, files=[], agent_name="a", agent_version="0", revision=1, written_at="t"
    )
    assert document["session"]["metadata"] == {}
    assert document["totals"] == {"files": 0, "bytes": 0}
    assert document["files"] == []
    no_key = {key: value for key, value in session.items() if key != "metadata"}
    document = build_manifest(
        session=no_key, files=[], agent_name="a", agent_version="0", revision=1, written_at="t"
    )
    assert document["session"]["metadata"] == {}


@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.integers(0, 10**12)), max_size=20))
def test_manifest_files_sorted_and_totalled(rows: list[tuple[str, int]]) -> None:
    files = [file_row(name, size) for name, size in rows]
    session = {"id": "s", "source": "src", "rel_path": "x", "key_prefix": "k"}
    document = build_manifest(
        session=session, files=files, agent_name="a", agent_version="0", revision=1, written_at="t"
    )
    paths = [entry["path"] for entry in document["files"]]
    assert paths == sorted(name for name, _size in rows)
    assert document["totals"] == {"files": len(rows), "bytes": sum(size for _n, size in rows)}


@pytest.mark.parametrize("count", [0, 1, 3])
def test_the_manifest_encoded_entry_by_entry_is_the_built_document(count: int) -> None:
    """The daemon writes the manifest entry by entry (a session of 100,000 files must not be
    held as dicts and text at once); it must parse to the document build_manifest gives."""
    session = {"id": "ephys:m1/s1", "source": "ephys", "rel_path": "m1/s1", "key_prefix": "p"}
    rows = [file_row(f"f{n}.bin", n + 1) for n in range(count)]
    fields = ("rel_path", "key", "size", "mtime_ns", "checksum_algorithm", "checksum", "etag")
    entries = [encode_entry(manifest_entry(**{name: row[name] for name in fields})) for row in rows]
    head = manifest_head(
        session=session,
        agent_name="rig-7",
        agent_version="1.2.3",
        revision=1,
        written_at="2026-11-23T10:00:00Z",
        files=count,
        size=sum(int(row["size"]) for row in rows),
    )
    head["refused"] = [{"path": "bad\\name", "reason": "backslash"}]
    expected = build_manifest(
        session=session,
        files=rows,
        agent_name="rig-7",
        agent_version="1.2.3",
        revision=1,
        written_at="2026-11-23T10:00:00Z",
    )
    expected["refused"] = head["refused"]
    assert json.loads(encode_manifest(head, entries)) == expected
