"""Config values: raw TOML values turned into typed ones, and `Table`, which reads one table.

Each converter is given a value as TOML parsed it and returns it typed, or raises ValueError
saying what is wrong and what is allowed; `Table` turns that message into a `ConfigProblem`
for the key and goes on, so that every problem is reported together. The readers of each
table, which put these values into settings, are in agent/config.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import ConfigProblem
from agent.planning import Layout, template_fields
from agent.throttle import DAY_NAMES

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

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
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_PATTERN.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(
        f"{value!r} is not a duration; use integer seconds or a number followed by "
        's, m or h, e.g. 90, "90s", "5m", "1h"'
    )


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
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
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
        except (TypeError, ValueError) as error:
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
    """Given a name that becomes part of object keys, return it if it is safe there."""
    text = string(value)
    if not _NAME_PATTERN.match(text):
        raise ValueError(
            f"{value!r} must start with a letter or digit and hold only letters, digits, "
            "'.', '_' and '-' (it becomes part of object keys)"
        )
    return text


def positive_duration(value: Any) -> float:
    """Like `parse_duration`, but 0 is refused too."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be longer than 0, got {value!r}")
    return seconds


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
