"""Filesystem scanning: find session directories and stat their files.

Owns reading the instrument folders (never writes them). Touches neither SQLite nor S3.
Only `os.scandir` and `stat` are used: no file is opened here.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.planning import Layout

# /proc/<pid>/fdinfo "flags" are octal open(2) flags; the low two bits are the access mode.
_WRITE_ACCESS = (os.O_WRONLY, os.O_RDWR)


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


@functools.lru_cache(maxsize=64)
def _exclude_matcher(patterns: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    # One compiled regex for all patterns: scans call this for every file, millions of times.
    if not patterns:
        return re.compile(r"(?!)").match
    return re.compile("|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in patterns)).match


def is_excluded(rel_path: str, patterns: tuple[str, ...]) -> bool:
    """Return True if the base name or the relative path matches one of `patterns`."""
    match = _exclude_matcher(patterns)
    name = rel_path.rsplit("/", 1)[-1]
    return match(name) is not None or (name != rel_path and match(rel_path) is not None)


def find_sessions(
    root: Path, depth: int, exclude: tuple[str, ...], layout: Layout | None = None
) -> Iterator[str]:
    """Yield the relative paths ("subject/2026-11-23_10-00") of directories exactly
    `depth` levels below `root`, skipping hidden and excluded directories and, given a
    layout, directories that do not fit it."""

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
            if layout is not None and not layout.matches_level(level, entry.name):
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


def open_for_writing(directory: Path, *, ignore_pid: int | None = None) -> dict[str, int] | None:
    """Files under `directory` that some process holds open for writing, as {relative path:
    pid}, read from /proc. Return None when that cannot be known (no /proc). Processes whose
    descriptors this user may not read are skipped: run as root, or with CAP_SYS_PTRACE, to
    see every writer."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    base = os.path.realpath(directory).rstrip("/") + "/"
    writers: dict[str, int] = {}
    try:
        pids = [entry.name for entry in os.scandir(proc) if entry.name.isdigit()]
    except OSError:
        return None
    for pid_text in pids:
        pid = int(pid_text)
        if pid == ignore_pid:
            continue
        fd_dir = f"/proc/{pid_text}/fd"
        try:
            descriptors = os.listdir(fd_dir)
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(f"{fd_dir}/{descriptor}")
            except OSError:
                continue
            if not target.startswith(base):
                continue
            try:
                with open(f"/proc/{pid_text}/fdinfo/{descriptor}", encoding="ascii") as info:
                    flags = next(
                        (int(line.split()[1], 8) for line in info if line.startswith("flags:")),
                        0,
                    )
            except (OSError, ValueError, IndexError):
                continue
            if flags & 0o3 in _WRITE_ACCESS:
                writers.setdefault(target[len(base) :], pid)
    return writers
