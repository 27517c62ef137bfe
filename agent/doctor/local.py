"""The machine's side of the doctor: the state directory (writable, local, with room),
each source (readable, how it is watched) and the inotify watch limit."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from agent.config import SourceSettings
from agent.doctor.checks import FAIL, OK, SKIPPED, WARNING, Check, _duration, _user, skipped
from agent.units import human_bytes
from agent.watch import NETWORK_FILESYSTEMS, choose_mode, filesystem_type

MIN_FREE_BYTES = 100 * 1024**2
WATCH_COUNT_CAP = 200_000
SUGGESTED_MIN_WATCHES = 1_048_576
MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")


# --- the state directory -------------------------------------------------------------------


def _existing(path: Path) -> Path:
    """`path` itself or its nearest existing ancestor (where it would be created)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def try_write(directory: Path, size: int = 64 * 1024) -> OSError | None:
    """Create, fill, fsync and delete a temporary file in `directory`; return the error
    that stopped it, or None."""
    try:
        handle, name = tempfile.mkstemp(prefix=".doctor-", suffix=".tmp", dir=directory)
    except OSError as error:
        return error
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(b"\0" * size)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as error:
        return error
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
    return None


def state_write_verdict(state_dir: Path, where: Path, error: OSError | None) -> Check:
    """Given the result of writing a temporary file in `where` (the state dir, or the
    existing ancestor it would be created in), say whether the agent can keep state."""
    created = "" if where == state_dir else f" (does not exist yet; would be created in {where})"
    move = "or set [agent] state_dir to a writable local directory"
    if error is None:
        return Check("state dir", OK, f"{state_dir}: writable{created}")
    if error.errno == errno.EROFS:
        return Check(
            "state dir",
            FAIL,
            f"{state_dir}: on a read-only filesystem{created}",
            f"remount it read-write (mount -o remount,rw), {move}",
        )
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return Check(
            "state dir",
            FAIL,
            f"{state_dir}: the filesystem is full ({error.strerror}){created}",
            f"free space on it, {move}",
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return Check(
            "state dir",
            FAIL,
            f"{state_dir}: not writable by {_user()}{created}",
            f"chown it to the agent's user (chown -R ingest-agent {state_dir}), {move}",
        )
    return Check("state dir", FAIL, f"{state_dir}: {error.strerror or error}{created}", move)


def state_filesystem_verdict(state_dir: Path, fstype: str | None) -> Check:
    """Given the type of the filesystem holding the state dir, say whether SQLite is safe
    there (its locking is unreliable on network filesystems)."""
    local = "set [agent] state_dir to a local directory (default /var/lib/ingest-agent)"
    if fstype is None:
        return Check("state dir filesystem", WARNING, "type unknown (/proc/self/mounts?)")
    if fstype in NETWORK_FILESYSTEMS:
        return Check(
            "state dir filesystem",
            FAIL,
            f"{fstype}: a network filesystem; SQLite's locking is unreliable there and the "
            "state database can be corrupted",
            local,
        )
    if fstype == "fuse" or fstype.startswith("fuse."):
        return Check(
            "state dir filesystem",
            WARNING,
            f"{fstype}: a FUSE filesystem; SQLite's locking depends on its implementation",
            local,
        )
    if fstype in ("tmpfs", "ramfs"):
        return Check(
            "state dir filesystem",
            WARNING,
            f"{fstype}: emptied at reboot; the agent then starts without its records (it "
            "recognises what S3 already holds, but unfinished uploads start over)",
            local,
        )
    return Check("state dir filesystem", OK, f"{fstype} (local)")


def free_space_verdict(state_dir: Path, free: int, minimum: int = MIN_FREE_BYTES) -> Check:
    """Given the bytes free for this user on the state dir's filesystem, say whether the
    database has room to grow."""
    shown = f"{human_bytes(free)} free ({free} bytes)"
    if free < minimum:
        return Check(
            "state dir free space",
            FAIL,
            f"{state_dir}: only {shown}; the database needs at least {human_bytes(minimum)}",
            "free space on that filesystem, or set [agent] state_dir on one with room",
        )
    return Check("state dir free space", OK, shown)


def state_dir_checks(state_dir: Path) -> list[Check]:
    """The state dir: writable (or creatable), on a local filesystem, with free space."""
    where = _existing(state_dir)
    if where == state_dir and not state_dir.is_dir():
        return [
            Check(
                "state dir",
                FAIL,
                f"{state_dir} exists and is not a directory",
                "remove it, or set [agent] state_dir to a directory",
            ),
            *skipped(["state dir filesystem", "state dir free space"], "not a directory"),
        ]
    checks = [
        state_write_verdict(state_dir, where, try_write(where)),
        state_filesystem_verdict(state_dir, filesystem_type(where)),
    ]
    try:
        stats = os.statvfs(where)
    except OSError as error:
        checks.append(Check("state dir free space", WARNING, f"statvfs failed: {error}"))
    else:
        checks.append(free_space_verdict(state_dir, stats.f_bavail * stats.f_frsize))
    return checks


# --- sources ----------------------------------------------------------------------------------


def watch_verdict(
    source: SourceSettings, fstype: str | None, mode: str, rescan_interval: float
) -> Check:
    """Given a readable source, its filesystem type and the watch mode the agent will use,
    say how new sessions are noticed."""
    name = f"source {source.name}"
    where = f"{source.path}: readable directory on {fstype or 'an unknown filesystem'}"
    rescan = f"the rescan every {_duration(rescan_interval)}"
    network = fstype in NETWORK_FILESYSTEMS
    if mode == "off":
        return Check(name, OK, f'{where}; not watched (watch = "off"): found by {rescan}')
    if mode == "poll":
        why = (
            " (a network filesystem: inotify cannot see other machines' writes)"
            if network and source.watch == "auto"
            else ""
        )
        return Check(name, OK, f"{where}; polled every {_duration(source.poll_interval)}{why}")
    if network:
        return Check(
            name,
            WARNING,
            f'{where}; watch = "inotify" on a network filesystem: other machines\' writes '
            f"raise no event and are found only by {rescan}",
            'set watch = "auto" (or "poll") for this source',
        )
    return Check(name, OK, f"{where}; watched with inotify")


def check_source(source: SourceSettings, rescan_interval: float) -> Check:
    """A source: exists, is a directory, is listable by this user; how it is watched."""
    name = f"source {source.name}"
    path = source.path
    try:
        if not path.exists():
            return Check(
                name,
                FAIL,
                f"{path} does not exist",
                "create it, mount the share it lives on, or correct [[source]] path",
            )
        if not path.is_dir():
            return Check(
                name,
                FAIL,
                f"{path} is not a directory",
                "point [[source]] path at the folder the instrument writes into",
            )
        with os.scandir(path) as entries:
            next(entries, None)
    except PermissionError:
        return Check(
            name,
            FAIL,
            f"{path} is not readable by {_user()}",
            f"grant read and search access, e.g. setfacl -R -m u:{_user()}:rX {path} "
            "(and setfacl -R -d -m for new sessions), or a group",
        )
    except OSError as error:
        return Check(
            name,
            FAIL,
            f"{path}: {error.strerror or error}",
            "check the mount (a stale network share?)",
        )
    return watch_verdict(source, filesystem_type(path), choose_mode(source), rescan_interval)


# --- inotify ----------------------------------------------------------------------------------


def count_directories(roots: Iterable[Path], cap: int) -> tuple[int, bool]:
    """Count directories under `roots` (themselves included, symbolic links not followed),
    stopping at `cap`. Return (count, whether the count is complete)."""
    count = 0
    pending = [str(root) for root in roots]
    while pending:
        if count >= cap:
            return count, False
        directory = pending.pop()
        count += 1
        try:
            with os.scandir(directory) as entries:
                pending.extend(
                    entry.path for entry in entries if entry.is_dir(follow_symlinks=False)
                )
        except OSError:
            continue  # unreadable: it cannot be watched either
    return count, True


def suggested_watches(needed: int) -> int:
    """A max_user_watches with room: the next power of two over twice the need, at least
    1048576 (each watch costs about 1 KiB of kernel memory)."""
    suggestion = SUGGESTED_MIN_WATCHES
    while suggestion < 2 * needed:
        suggestion *= 2
    return suggestion


def inotify_verdict(needed: int, complete: bool, limit: int | None) -> Check:
    """Given the directories to watch (and whether counting finished) and the kernel's
    per-user limit, say whether inotify can watch them all."""
    counted = f"{needed} " if complete else f"at least {needed} "
    counted += "directory" if needed == 1 else "directories"
    suggestion = suggested_watches(needed)
    fix = (
        f"sysctl -w fs.inotify.max_user_watches={suggestion}, and keep it: echo "
        f"fs.inotify.max_user_watches={suggestion} > /etc/sysctl.d/60-ingest-agent.conf"
    )
    if limit is None:
        return Check(
            "inotify watches",
            WARNING,
            f"{counted} to watch; limit unknown ({MAX_USER_WATCHES} unreadable)",
        )
    said = f"{counted} to watch, fs.inotify.max_user_watches = {limit}"
    if needed > limit:
        return Check(
            "inotify watches",
            FAIL,
            f"{said}: too many; the agent falls back to polling (new sessions are noticed later)",
            fix,
        )
    if not complete:
        return Check(
            "inotify watches", WARNING, f"{said}: stopped counting; may not be enough", fix
        )
    if needed > 0.8 * limit:
        return Check(
            "inotify watches",
            WARNING,
            f"{said}: close to the limit, which every program of this user shares",
            fix,
        )
    return Check("inotify watches", OK, said)


def read_watch_limit(path: Path = MAX_USER_WATCHES) -> int | None:
    """The kernel's fs.inotify.max_user_watches, or None where it cannot be read."""
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def check_inotify(
    sources: Sequence[SourceSettings],
    *,
    limit_path: Path = MAX_USER_WATCHES,
    cap: int = WATCH_COUNT_CAP,
) -> Check:
    """Directories under every inotify-watched source versus the per-user watch limit."""
    watched = [s for s in sources if s.path.is_dir() and choose_mode(s) == "inotify"]
    if not watched:
        return Check("inotify watches", SKIPPED, "no source is watched with inotify")
    limit = read_watch_limit(limit_path)
    needed, complete = count_directories(
        (source.path for source in watched), min(limit + 1, cap) if limit else cap
    )
    return inotify_verdict(needed, complete, limit)
