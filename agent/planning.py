"""Planning: object keys, multipart part layout, what is left to send, the manifest.

Pure functions over plain data; no I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MIN_PART_SIZE = 5 * 1024**2
MAX_PART_SIZE = 5 * 1024**3
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024**4
MANIFEST_NAME = "ingest-manifest.json"
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f]")
MANIFEST_FORMAT = "ingest-agent/manifest/1"


@dataclass(frozen=True)
class Part:
    """One part of a multipart upload: 1-based number, byte offset and length."""

    number: int
    offset: int
    length: int


def join_key(*segments: str) -> str:
    """Join key segments with '/', dropping empty ones and stray slashes."""
    return "/".join(segment.strip("/") for segment in segments if segment.strip("/"))


def object_key(session_prefix: str, file_rel_path: str) -> str:
    """The key of one file of a session."""
    return join_key(session_prefix, file_rel_path)


def manifest_key(session_prefix: str) -> str:
    """The key of a session's manifest."""
    return join_key(session_prefix, MANIFEST_NAME)


def part_size_for(size: int, preferred: int) -> int:
    """Given a file size and the configured part size, return the part size to use:
    the preferred one unless the file would need more than 10,000 parts, then the smallest
    whole MiB that fits. Raise ValueError for files S3 cannot hold (over 5 TiB)."""
    if size > MAX_OBJECT_SIZE:
        raise ValueError(f"{size} bytes is larger than the 5 TiB S3 object limit")
    needed = math.ceil(size / MAX_PARTS)
    mebibyte = 1024**2
    needed = math.ceil(needed / mebibyte) * mebibyte
    return min(MAX_PART_SIZE, max(MIN_PART_SIZE, preferred, needed))


def plan_parts(size: int, part_size: int) -> list[Part]:
    """Split `size` bytes into parts of `part_size` (the last may be smaller).
    A zero-byte file still has one (empty) part."""
    if size == 0:
        return [Part(1, 0, 0)]
    count = math.ceil(size / part_size)
    return [
        Part(number, (number - 1) * part_size, min(part_size, size - (number - 1) * part_size))
        for number in range(1, count + 1)
    ]


def multipart_etag(part_etags: Iterable[str]) -> str:
    """The ETag S3-compatible servers give a multipart object: md5 of the parts' binary md5s,
    then '-' and the part count. Lets the agent recognise its own objects without checksums
    support on the server."""
    digests = [bytes.fromhex(etag.strip('"')) for etag in part_etags]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def manifest_entry(
    *,
    rel_path: str,
    key: str,
    size: int,
    mtime_ns: int,
    checksum_algorithm: str | None,
    checksum: str | None,
    etag: str | None,
) -> dict[str, Any]:
    """One uploaded file as the manifest lists it."""
    return {
        "path": rel_path,
        "key": key,
        "size": size,
        "mtime_ns": mtime_ns,
        "checksum": {"algorithm": checksum_algorithm, "value": checksum},
        "etag": etag,
    }


def manifest_head(
    *,
    session: Mapping[str, Any],
    agent_name: str,
    agent_version: str,
    revision: int,
    written_at: str,
    files: int,
    size: int,
) -> dict[str, Any]:
    """The manifest document without its `files` list (see `encode_manifest`)."""
    return {
        "format": MANIFEST_FORMAT,
        "agent": {"name": agent_name, "version": agent_version},
        "revision": revision,
        "written_at": written_at,
        "session": {
            "id": session["id"],
            "source": session["source"],
            "path": session["rel_path"],
            "key_prefix": session["key_prefix"],
            "metadata": session.get("metadata") or {},
        },
        "totals": {"files": files, "bytes": size},
    }


def encode_manifest(head: Mapping[str, Any], entries: Sequence[bytes]) -> bytes:
    """The manifest's bytes: `head` as indented JSON with `files` added last, the list of
    already encoded entries (in path order). Encoding entry by entry keeps a session of
    100,000 files from being held as a document of dicts as well as its text."""
    text = json.dumps(dict(head), indent=1, sort_keys=True)
    if not text.endswith("\n}"):
        raise ValueError("a manifest head must be a non-empty JSON object")
    if not entries:
        return text[:-2].encode() + b',\n "files": []\n}'
    return text[:-2].encode() + b',\n "files": [\n  ' + b",\n  ".join(entries) + b"\n ]\n}"


def encode_entry(entry: Mapping[str, Any]) -> bytes:
    """One manifest entry as compact JSON."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()


def build_manifest(
    *,
    session: Mapping[str, Any],
    files: Iterable[Mapping[str, Any]],
    agent_name: str,
    agent_version: str,
    revision: int,
    written_at: str,
) -> dict[str, Any]:
    """Given a session row and its uploaded file rows, return the manifest document (the
    same document `encode_manifest` writes, as one dict)."""
    entries = [
        manifest_entry(
            rel_path=row["rel_path"],
            key=row["key"],
            size=row["size"],
            mtime_ns=row["mtime_ns"],
            checksum_algorithm=row["checksum_algorithm"],
            checksum=row["checksum"],
            etag=row["etag"],
        )
        for row in sorted(files, key=lambda row: str(row["rel_path"]))
    ]
    document = manifest_head(
        session=session,
        agent_name=agent_name,
        agent_version=agent_version,
        revision=revision,
        written_at=written_at,
        files=len(entries),
        size=sum(int(entry["size"]) for entry in entries),
    )
    document["files"] = entries
    return document


MAX_KEY_BYTES = 1024


def key_length_reason(key: str) -> str | None:
    """Return why `key` (the whole key: prefix, session path and file) is too long for S3,
    or None if it fits in 1,024 bytes of UTF-8."""
    size = len(key.encode("utf-8", "surrogateescape"))
    if size <= MAX_KEY_BYTES:
        return None
    return (
        f"object key would be {size} bytes; S3 allows {MAX_KEY_BYTES} "
        "(shorten the name, the session path, prefix or key_template)"
    )


def unsafe_name_reason(rel_path: str) -> str | None:
    """Return why a relative path cannot become a safe object key, or None if it can."""
    if _CONTROL_CHARACTERS.search(rel_path):
        return "name holds control characters"
    if "\\" in rel_path:
        return "name holds a backslash"
    if any(segment in ("", ".", "..") for segment in rel_path.split("/")):
        return "name has an empty, '.' or '..' segment"
    try:
        encoded = rel_path.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if len(encoded) > 900:
        return "name is longer than 900 bytes (S3 keys are limited to 1024)"
    return None


# --- layouts and key templates ------------------------------------------------------------------

_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_STRICT_SEGMENT = re.compile(r"[A-Za-z0-9._-]+\Z")
BUILTIN_KEY_FIELDS = ("source", "path", "agent")
DEFAULT_KEY_TEMPLATE = "{source}/{path}"


def template_fields(template: str) -> list[str]:
    """The `{name}` fields of a template, in order. Raise ValueError if it is malformed
    (unbalanced braces, empty or non-identifier names, format specs)."""
    names: list[str] = []
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"{template!r}: {error}") from None
    for _literal, name, spec, conversion in pieces:
        if name is None:
            continue
        if not _FIELD_NAME.match(name) or spec or conversion:
            raise ValueError(
                f"{template!r}: {{{name}}} is not a plain field; use names such as {{subject}}"
            )
        names.append(name)
    return names


@dataclass(frozen=True)
class Layout:
    """A session layout such as "{subject}/{session}": one segment per directory level;
    each `{name}` matches part of a directory name and becomes session metadata."""

    pattern: str
    segments: tuple[re.Pattern[str], ...]
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, pattern: str) -> Layout:
        """Given a layout pattern, return the compiled layout. Raise ValueError with what is
        wrong (empty segments, repeated or malformed fields)."""
        text = pattern.strip("/")
        if not text:
            raise ValueError("must not be empty")
        compiled: list[re.Pattern[str]] = []
        fields: list[str] = []
        for segment in text.split("/"):
            if not segment or segment in (".", ".."):
                raise ValueError(f"{pattern!r} has an empty, '.' or '..' segment")
            regex = ""
            for literal, name, _spec, _conversion in string.Formatter().parse(segment):
                regex += re.escape(literal)
                if name is not None:
                    regex += f"(?P<{name}>.+?)"
            names = template_fields(segment)
            fields.extend(names)
            compiled.append(re.compile(f"{regex}\\Z"))  # \Z: `$` would match before a final newline
        repeated = sorted({name for name in fields if fields.count(name) > 1})
        if repeated:
            raise ValueError(f"{pattern!r} uses {', '.join(repeated)} more than once")
        clash = sorted(set(fields) & set(BUILTIN_KEY_FIELDS))
        if clash:
            raise ValueError(f"{pattern!r}: {', '.join(clash)} is reserved; choose another name")
        return cls(text, tuple(compiled), tuple(fields))

    @property
    def depth(self) -> int:
        """How many directory levels below the source a session lies."""
        return len(self.segments)

    def matches_level(self, level: int, name: str) -> bool:
        """True if a directory called `name` at `level` (1-based) fits the layout."""
        return self.segments[level - 1].match(name) is not None

    def fields_of(self, rel_path: str) -> dict[str, str] | None:
        """The named parts of a session path, or None when it does not fit the layout."""
        parts = rel_path.split("/")
        if len(parts) != len(self.segments):
            return None
        values: dict[str, str] = {}
        for segment, part in zip(self.segments, parts, strict=True):
            match = segment.match(part)
            if match is None:
                return None
            values.update(match.groupdict())
        return values


def render_key_template(template: str, values: Mapping[str, str]) -> str:
    """Fill a key template; raise ValueError naming a field that has no value."""
    missing = [name for name in template_fields(template) if name not in values]
    if missing:
        raise ValueError(f"key_template field {{{missing[0]}}} has no value")
    return join_key(*template.format_map(dict(values)).split("/"))


def template_root(template: str, known: Mapping[str, str]) -> str:
    """The part of every key a template can produce that is fixed by `known` values alone:
    the text up to the first unknown field, cut back to a whole '/' segment."""
    text = ""
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        text += literal
        if name is None:
            continue
        if name not in known:
            return join_key(*text.split("/")[:-1])
        text += known[name]
    return join_key(*text.split("/"))


def strict_name_reason(rel_path: str) -> str | None:
    """Return why a path breaks the strict naming rule (letters, digits, '.', '_', '-' in
    every segment), or None if it keeps it."""
    bad = [segment for segment in rel_path.split("/") if not _STRICT_SEGMENT.match(segment)]
    if not bad:
        return None
    return (
        f"{bad[0]!r} holds characters other than letters, digits, '.', '_' and '-' (strict_names)"
    )
