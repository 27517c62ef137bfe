"""Filesystem scanning: find session directories and stat their files.

Owns reading the instrument folders (never writes them). Touches neither SQLite nor S3.
Only `os.scandir` and `stat` are used: no file is opened here.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileStat:
    """One regular file inside a session, as seen by a scan."""

    rel_path: str
    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class SessionScan:
    """What one stat walk of a session directory found."""

    rel_path: str
    files: tuple[FileStat, ...]
    newest_mtime_ns: int
    excluded: tuple[str, ...]
    unreadable: tuple[str, ...]

    @property
    def total_bytes(self) -> int:
        """Sum of the sizes of every (not excluded) file."""
        return sum(item.size for item in self.files)

    def fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        """A value that changes whenever any file appears, vanishes, grows or is touched."""
        return tuple((item.rel_path, item.size, item.mtime_ns) for item in self.files)


def is_excluded(rel_path: str, patterns: tuple[str, ...]) -> bool:
    """Return True if the base name or the relative path matches one of `patterns`."""
    name = rel_path.rsplit("/", 1)[-1]
    return any(
        fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(rel_path, pattern)
        for pattern in patterns
    )


def find_sessions(root: Path, depth: int, exclude: tuple[str, ...]) -> Iterator[str]:
    """Yield the relative paths ("subject/2026-11-23_10-00") of directories exactly
    `depth` levels below `root`, skipping hidden and excluded directories."""

    def walk(directory: Path, prefix: str, level: int) -> Iterator[str]:
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            rel = f"{prefix}{entry.name}"
            if is_excluded(rel, exclude):
                continue
            if level == depth:
                yield rel
            else:
                yield from walk(Path(entry.path), rel + "/", level + 1)

    yield from walk(root, "", 1)


def scan_session(root: Path, rel_path: str, exclude: tuple[str, ...]) -> SessionScan:
    """Stat every regular file below `root/rel_path`. Symlinks are not followed.

    Directory mtimes count toward `newest_mtime_ns`, so deletions and renames count as change.
    A session directory that vanished yields an empty scan.
    """
    base = root / rel_path
    files: list[FileStat] = []
    excluded: list[str] = []
    unreadable: list[str] = []
    newest = 0
    pending: list[tuple[str, str]] = [(str(base), "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            newest = max(newest, os.stat(directory).st_mtime_ns)
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        except PermissionError:
            unreadable.append(prefix.rstrip("/") or ".")
            continue
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            if is_excluded(rel, exclude):
                excluded.append(rel)
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, rel + "/"))
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except PermissionError:
                unreadable.append(rel)
                continue
            newest = max(newest, info.st_mtime_ns)
            files.append(FileStat(rel, info.st_size, info.st_mtime_ns, info.st_ino))
    files.sort(key=lambda item: item.rel_path)
    return SessionScan(rel_path, tuple(files), newest, tuple(sorted(excluded)), tuple(unreadable))


def stat_file(path: Path) -> tuple[int, int] | None:
    """Return (size, mtime_ns) of `path`, or None if it no longer exists."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_size, info.st_mtime_ns
