"""Config values: raw TOML values turned into typed ones, and `Table`, which reads one table.

Each converter is given a value as TOML parsed it and returns it typed, or raises ValueError
saying what is wrong and what is allowed; `Table` turns that message into a `ConfigProblem`
for the key and goes on, so that every problem is reported together. The readers of each
table, which put these values into settings, are in agent/config.py.
"""

from __future__ import annotations

import math
import re
import string as ascii_text
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from agent.errors import ConfigProblem
from agent.planning import Layout, template_fields
from agent.throttle import DAY_NAMES

_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # whole name: fullmatch

# Durations beyond this (200 years) are refused: no interval needs them, and waiting much
# longer overflows the platform's timeouts (threading.Event.wait raises OverflowError past
# about 292 years).
MAX_DURATION_DAYS = 73000

# S3's bucket naming rules (AWS's, which MinIO and Ceph RGW follow by default).
_BUCKET_CHARACTERS = frozenset(ascii_text.ascii_lowercase + ascii_text.digits + ".-")
_IPV4_FORMAT = re.compile(r"\d+\.\d+\.\d+\.\d+")
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
# Reserved for aliases that take no uploads. Access point aliases (-s3alias) and directory
# buckets (base--zone-id--x-s3) do take uploads, so they are accepted (the latter in form).
_BUCKET_RESERVED_SUFFIXES = ("--ol-s3", ".mrap", "--table-s3")
_DIRECTORY_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]*--[a-z0-9-]+--x-s3")

# What an HTTP header name may hold (RFC 9110 token): metadata keys become x-amz-meta-<key>.
_TOKEN_CHARACTERS = frozenset(ascii_text.ascii_letters + ascii_text.digits + "!#$%&'*+-.^_`|~")
_PRINTABLE_ASCII = frozenset(chr(code) for code in range(0x20, 0x7F))

_DURATION_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_duration(value: object) -> float:
    """Given int/float seconds or a string like "90s", "5m", "1h", return seconds.

    Raise ValueError with what is allowed otherwise.
    """
    if isinstance(value, bool):
        raise ValueError('expected seconds or a string such as "90s", "5m", "1h"')
    match = _DURATION_PATTERN.match(value) if isinstance(value, str) else None
    if isinstance(value, int | float):
        if isinstance(value, float) and math.isnan(value):
            raise ValueError("must be a finite duration, got nan")
        if value < 0:
            raise ValueError("must not be negative")
        if value == math.inf:
            raise ValueError("must be a finite duration, got inf")
        seconds = float(value) if value <= MAX_DURATION_DAYS * 86400 else math.inf
    elif match:
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(
            f"{value!r} is not a duration; use integer seconds or a number followed by "
            's, m or h, e.g. 90, "90s", "5m", "1h"'
        )
    if seconds > MAX_DURATION_DAYS * 86400:  # inf included: "1e400" digits overflow float
        raise ValueError(f"must be at most {MAX_DURATION_DAYS} days (200 years)")
    return seconds


def parse_size(value: object) -> int:
    """Given integer bytes or a string like "16MiB", "5 GB", return bytes.

    Raise ValueError with what is allowed otherwise.
    """
    if isinstance(value, bool):
        raise ValueError('expected bytes or a string such as "16MiB"')
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        match = _SIZE_PATTERN.match(value)
        if match:
            size = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
            if math.isfinite(size):
                return int(size)
    raise ValueError(
        f"{value!r} is not a size; use integer bytes or a number followed by "
        'KiB, MiB, GiB (or KB, MB, GB), e.g. "16MiB"'
    )


T = TypeVar("T")


class Table:
    """Reads typed keys out of one TOML table, collecting problems instead of raising."""

    def __init__(
        self, data: Mapping[str, Any], where: str, file: str, problems: list[ConfigProblem]
    ) -> None:
        self.data = dict(data)
        self.where = where
        self.file = file
        self.problems = problems
        self.seen: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def problem(self, key: str, message: str) -> None:
        """Record a problem with `key` of this table."""
        self.problems.append(ConfigProblem(self.file, self._key(key), message))

    def get(self, key: str, convert: Callable[[Any], T], default: T) -> T:
        """Return the converted value of `key`, or `default` when absent or invalid."""
        self.seen.add(key)
        if key not in self.data:
            return default
        try:
            return convert(self.data[key])
        except (TypeError, ValueError, OverflowError) as error:
            self.problem(key, str(error))
            return default

    def require(self, key: str, convert: Callable[[Any], T], default: T) -> T:
        """Like `get`, but a missing key is a problem."""
        if key not in self.data:
            self.seen.add(key)
            self.problem(key, "is required")
            return default
        return self.get(key, convert, default)

    def finish(self) -> None:
        """Report every key that was present but not understood."""
        for key in self.data:
            if key not in self.seen:
                allowed = ", ".join(sorted(self.seen))
                self.problem(key, f"unknown key; allowed here: {allowed}")


def string(value: Any) -> str:
    """Given a TOML value, return it if it is a string. Raise ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


def nonempty_string(value: Any) -> str:
    """Given a TOML value, return it if it is a string with more than blanks in it."""
    text = string(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def path(value: Any) -> Path:
    """Given a non-empty string, return it as a Path."""
    return Path(nonempty_string(value))


def boolean(value: Any) -> bool:
    """Given a TOML value, return it if it is true or false. Raise ValueError otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    """Return a converter that accepts integers from `minimum` to `maximum` (if given)."""

    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ValueError(f"must be at least {minimum}{upper}, got {value}")
        return value

    return convert


def spelled_choice(choices: tuple[str, ...], what: str) -> Callable[[Any], str]:
    """Return a converter that accepts one of `choices`, in any case, and returns it spelled
    as in `choices` (what the server expects). `what` names the kind in the refusal."""
    by_lower = {name.lower(): name for name in choices}

    def convert(value: Any) -> str:
        text = string(value)
        if text.lower() not in by_lower:
            raise ValueError(f"{value!r} is not {what}; use one of: {', '.join(choices)}")
        return by_lower[text.lower()]

    return convert


def choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    """Return a converter that accepts one of `choices`, in any case, and returns it lowered."""

    def convert(value: Any) -> str:
        text = string(value).lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of: {', '.join(choices)}")
        return text

    return convert


def string_list(value: Any) -> tuple[str, ...]:
    """Given a TOML list of strings, return it as a tuple. Raise ValueError otherwise."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def string_table(value: Any) -> Mapping[str, str]:
    """Given a TOML table of string values, return it as a dict. Raise ValueError otherwise."""
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise ValueError('expected a table of string values, e.g. { project = "v1" }')
    return dict(value)


def header_metadata(value: Any) -> Mapping[str, str]:
    """Given object metadata, return it if every key and value can be an HTTP header: each
    entry is sent as `x-amz-meta-<key>: <value>`, so keys are header-name (token) characters
    and values printable ASCII. Raise ValueError naming every entry that cannot."""
    table = string_table(value)
    wrong: list[str] = []
    for key, item in table.items():
        header = f"x-amz-meta-{key}"
        if not key:
            wrong.append("a key must not be empty (each key becomes a header x-amz-meta-<key>)")
        elif any(character not in _TOKEN_CHARACTERS for character in key):
            encoded = quote(key, safe="".join(sorted(_TOKEN_CHARACTERS - {"%"})))
            wrong.append(
                f"key {key!r} must hold only ASCII letters, digits and !#$%&'*+-.^_`|~ (it "
                f"becomes the HTTP header {header}); write it in ASCII (e.g. with - or _) "
                f"or percent-encode it ({encoded!r})"
            )
        bad = [character for character in item if character not in _PRINTABLE_ASCII]
        if bad:
            encoded = quote(item, safe="".join(sorted(_PRINTABLE_ASCII - {"%"})))
            wrong.append(
                f"value of {key!r} holds {bad[0]!r}, which cannot go in the HTTP header "
                f"{header}: use printable ASCII only, or percent-encode it ({encoded!r})"
            )
    if wrong:
        raise ValueError("; ".join(wrong))
    return table


def text_metadata(value: Any) -> Mapping[str, str]:
    """Given metadata for manifests and key templates (JSON and UTF-8 keys: any printable
    text), return it if no key or value holds a control character. Raise ValueError naming
    every entry that does."""
    table = string_table(value)
    wrong: list[str] = []
    for key, item in table.items():
        for what, text in ((f"key {key!r}", key), (f"value of {key!r}", item)):
            control = [c for c in text if unicodedata.category(c) == "Cc"]
            if control:
                wrong.append(
                    f"{what} holds the control character {control[0]!r}; remove it (metadata "
                    "goes into manifests and may go into object keys)"
                )
    if wrong:
        raise ValueError("; ".join(wrong))
    return table


def bucket_name(value: Any) -> str:
    """Given a bucket name, return it if S3 would accept it. Raise ValueError naming every
    naming rule it breaks otherwise."""
    text = nonempty_string(value)
    if text.startswith("arn:"):
        raise ValueError(
            f"{value!r} is an ARN; give the bucket's name, or an access point's alias (the "
            "name ending in -s3alias)"
        )
    broken: list[str] = []
    if not 3 <= len(text) <= 63:
        broken.append(f"must be 3 to 63 characters long (is {len(text)})")
    outside = sorted({character for character in text if character not in _BUCKET_CHARACTERS})
    if outside:
        shown = ", ".join(repr(character) for character in outside)
        broken.append(f"may hold only lowercase letters, digits, '.' and '-' (not {shown})")
    if not (text[0].isascii() and text[0].isalnum() and text[-1].isascii() and text[-1].isalnum()):
        broken.append("must begin and end with a letter or digit")
    if ".." in text:
        broken.append("must not contain two adjacent dots")
    if _IPV4_FORMAT.fullmatch(text):
        broken.append("must not be formatted as an IP address")
    broken += [
        f"must not start with {reserved!r} (reserved by S3)"
        for reserved in _BUCKET_RESERVED_PREFIXES
        if text.startswith(reserved)
    ]
    broken += [
        f"must not end with {reserved!r} (reserved by S3)"
        for reserved in _BUCKET_RESERVED_SUFFIXES
        if text.endswith(reserved)
    ]
    if text.endswith("--x-s3") and not _DIRECTORY_BUCKET.fullmatch(text):
        broken.append(
            "ends with '--x-s3', which only directory buckets may, named "
            "base--zone-id--x-s3 (e.g. lab-raw--usw2-az1--x-s3)"
        )
    if broken:
        raise ValueError(f"{value!r} is not a bucket name S3 accepts: it {'; it '.join(broken)}")
    return text


def size_between(minimum: int, maximum: int) -> Callable[[Any], int]:
    """Return a converter that accepts sizes (see `parse_size`) from `minimum` to `maximum`."""

    def convert(value: Any) -> int:
        size = parse_size(value)
        if not minimum <= size <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum} bytes, got {size}")
        return size

    return convert


def prefix(value: Any) -> str:
    """Given a key prefix, return it without outer slashes; refuse empty, . or .. segments."""
    text = string(value).strip("/")
    if any(part in ("", ".", "..") for part in text.split("/")) and text:
        raise ValueError(f"{value!r} has an empty, '.' or '..' segment")
    return text


def source_name(value: Any) -> str:
    """Given a name that becomes part of object keys (a source's or the agent's), return it if
    it is safe there: no '.' or '..', no slash, no control character (not even a final
    newline)."""
    text = string(value)
    if not _NAME_PATTERN.fullmatch(text):
        raise ValueError(
            f"{value!r} must start with a letter or digit and hold only letters, digits, "
            "'.', '_' and '-' (it becomes part of object keys)"
        )
    if ".." in text:
        raise ValueError(f"{value!r} must not contain '..' (it becomes part of object keys)")
    return text


def positive_duration(value: Any) -> float:
    """Like `parse_duration`, but 0 is refused too."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be longer than 0, got {value!r}")
    return seconds


def duration_at_least(minimum: float) -> Callable[[Any], float]:
    """Return a converter like `parse_duration` that refuses less than `minimum` seconds."""

    def convert(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < minimum:
            unit = "second" if minimum == 1 else "seconds"
            raise ValueError(f"must be at least {minimum:g} {unit}, got {value!r}")
        return seconds

    return convert


def listen_address(value: Any) -> tuple[str, int]:
    """Given "HOST:PORT" (IPv6 hosts in brackets or not), return (host, port)."""
    text = string(value).strip()
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'{value!r} must be HOST:PORT, e.g. "127.0.0.1:9464"')
    return host, int(port)


def command(value: Any) -> tuple[str, ...]:
    """Given a command line string (run by /bin/sh) or a list of arguments, return argv."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("must not be empty")
        return ("/bin/sh", "-c", value)
    argv = string_list(value)
    if not argv or not argv[0]:
        raise ValueError("must be a command line string or a non-empty list of arguments")
    return argv


def layout(value: Any) -> Layout:
    """Given a layout pattern, return the parsed `Layout`."""
    return Layout.parse(string(value))


def key_template(value: Any) -> str:
    """Given a key template, return it without outer slashes if its fields parse."""
    text = nonempty_string(value).strip("/")
    template_fields(text)
    return text


def days(value: Any) -> frozenset[int]:
    """Given a non-empty list of day names ("mon", "Friday"), return weekday numbers."""
    names = string_list(value)
    unknown = [name for name in names if name.lower()[:3] not in DAY_NAMES]
    if unknown or not names:
        raise ValueError(f'expected day names such as ["mon", "fri"], got {value!r}')
    return frozenset(DAY_NAMES.index(name.lower()[:3]) for name in names)
