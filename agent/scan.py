"""Filesystem scanning: find session directories and stat their files; open them for reading.

Owns reading the instrument folders (never writes them). Touches neither SQLite nor S3. The
scan uses only `os.scandir` and `lstat`; `open_source` is the one way any module opens a
source file, and `check_unchanged` the one way it re-checks one.

Two hostile facts shape this module. Linux names are bytes, and Python hands names that are
not UTF-8 over as str with lone surrogates, which neither SQLite nor an S3 key can hold: such
names leave here only as `shown_name` (undecodable bytes as \\xNN) with a refusal. And between
a scan and a read, a file can be swapped for a symbolic link to anything the service user
may read: sources are opened with O_NOFOLLOW and the descriptor must be the regular file the
scan saw (same inode and device).
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.errors import FileChangedError
from agent.planning import Layout

# /proc/<pid>/fdinfo "flags" are octal open(2) flags; the low two bits are the access mode.
_WRITE_ACCESS = (os.O_WRONLY, os.O_RDWR)

# O_NOFOLLOW: a symlink in place of the file fails with ELOOP instead of being followed.
# O_NONBLOCK: a FIFO in place of the file would block open() forever; on a regular file it
# changes nothing.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

SYMLINK_REASON = "symbolic link: not followed"
NOT_UTF8_REASON = "name is not valid UTF-8 (shown with \\x escapes); rename it to upload it"
_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "named pipe"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def is_utf8(name: str) -> bool:
    """True if `name` (as os.scandir gives it) is valid UTF-8, i.e. holds no byte that
    Python had to carry as a lone surrogate."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_name(name: str) -> str:
    """`name` as it may be stored, logged and printed: bytes that are not UTF-8 become
    \\xNN escapes. Unchanged for valid UTF-8."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _kind_reason(mode: int) -> str | None:
    """Why an entry that is neither a directory nor a regular file is not uploaded."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return SYMLINK_REASON
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "special file")
    return f"not a regular file ({kind})"


@dataclass(frozen=True, slots=True)
class FileStat:
    """One entry inside a session, as seen by a scan: a regular file, or something the scan
    refuses (a symbolic link, a special file, a name that is not UTF-8) with the reason.
    `rel_path` is always storable text (see `shown_name`)."""

    rel_path: str
    size: int
    mtime_ns: int
    inode: int
    device: int | None = None
    refusal: str | None = None


@dataclass(frozen=True)
class SessionScan:
    """What one stat walk of a session directory found."""

    rel_path: str
    files: tuple[FileStat, ...]
    newest_mtime_ns: int
    excluded: tuple[str, ...]
    unreadable: tuple[str, ...]

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


def real_directory(root: Path, rel_path: str) -> bool:
    """True if every level from `root` down to `root/rel_path` is a directory and none is a
    symbolic link (a session directory swapped for a link counts as gone)."""
    current = root
    for part in rel_path.split("/"):
        current = current / part
        try:
            info = os.lstat(current)
        except OSError:
            return False
        if not stat.S_ISDIR(info.st_mode):
            return False
    return True


def scan_session(root: Path, rel_path: str, exclude: tuple[str, ...]) -> SessionScan:
    """Stat every entry below `root/rel_path`. Symlinks are not followed: they, special
    files and names that are not UTF-8 are listed with a `refusal`, never dropped silently.

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
            # Read as listed, not listed whole first: a folder of 100,000 files would hold
            # 100,000 directory entries beside the records made of them.
            listing = os.scandir(directory)
        except FileNotFoundError:
            continue
        except PermissionError:
            unreadable.append(shown_name(prefix.rstrip("/") or "."))
            continue
        with listing:
            try:
                for entry in listing:
                    rel = f"{prefix}{entry.name}"
                    if is_excluded(rel, exclude):
                        excluded.append(shown_name(rel))
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append((entry.path, rel + "/"))
                            continue
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except PermissionError:
                        unreadable.append(shown_name(rel))
                        continue
                    newest = max(newest, info.st_mtime_ns)
                    refusal = _kind_reason(info.st_mode)
                    if not is_utf8(rel):
                        refusal = refusal or NOT_UTF8_REASON
                    files.append(
                        FileStat(
                            shown_name(rel),
                            info.st_size,
                            info.st_mtime_ns,
                            info.st_ino,
                            info.st_dev,
                            refusal,
                        )
                    )
            except FileNotFoundError:
                pass  # the folder went away while it was read: what was read stands
    files.sort(key=lambda item: item.rel_path)
    # A shown name can equal a real one ("a\\xff" spelled with a backslash); both are refused
    # (the real one for its backslash), and the database needs each path once.
    unique = [
        item
        for index, item in enumerate(files)
        if index == 0 or item.rel_path != files[index - 1].rel_path
    ]
    return SessionScan(rel_path, tuple(unique), newest, tuple(sorted(excluded)), tuple(unreadable))


def _identity_problem(info: os.stat_result, inode: int | None, device: int | None) -> str | None:
    """Why the file behind `info` is not the regular file a scan recorded, or None."""
    reason = _kind_reason(info.st_mode)
    if reason is not None:
        return reason
    if inode is not None and info.st_ino != inode:
        return "replaced by another file (new inode)"
    if device is not None and info.st_dev != device:
        return "replaced by a file on another device"
    return None


@contextmanager
def open_source(
    path: Path | str, *, inode: int | None = None, device: int | None = None
) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """Open a source file for reading; yield (binary handle, fstat of that descriptor).

    The one way the agent opens instrument files. Never follows a symbolic link in place of
    the file, and checks the opened descriptor itself (not the path, which may change after
    the check): it must be a regular file and, where given, have the scanned inode and
    device. Raise FileChangedError otherwise, FileNotFoundError if the file is gone, and any
    other OSError (permission denied, I/O error) as it is.
    """
    try:
        descriptor = os.open(path, _OPEN_FLAGS)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise FileChangedError(str(path), SYMLINK_REASON) from error
        if error.errno in (errno.ENOTDIR, errno.ENXIO):
            raise FileChangedError(str(path), "no longer a regular file") from error
        raise
    try:
        info = os.fstat(descriptor)
        problem = _identity_problem(info, inode, device)
        if problem is not None:
            raise FileChangedError(str(path), problem)
        handle = os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with handle:
        yield handle, info


def check_unchanged(
    path: Path | str,
    *,
    size: int,
    mtime_ns: int,
    inode: int | None = None,
    device: int | None = None,
) -> None:
    """Raise FileChangedError unless `path` is still the regular file a scan recorded (not a
    symbolic link, same inode and device where given) with the same size and mtime."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise FileChangedError(str(path), "no longer there") from error
    problem = _identity_problem(info, inode, device)
    if problem is not None:
        raise FileChangedError(str(path), problem)
    if (info.st_size, info.st_mtime_ns) != (size, mtime_ns):
        raise FileChangedError(str(path))


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
