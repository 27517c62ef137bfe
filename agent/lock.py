"""One agent per state directory: an exclusive `flock` held for the process's life.

Two daemons on one state database would both upload the same files (twice the traffic, the
bandwidth cap doubled, Complete racing Complete). The kernel drops the lock when the process
ends, however it ends, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from agent.errors import AgentError

LOCK_NAME = "agent.lock"


class AlreadyRunningError(AgentError):
    """Another process holds the state directory's lock."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(
            f"another agent ({holder}) already uses {path.parent}; "
            "stop it first (systemctl stop ingest-agent), or give this one its own state_dir"
        )


class LockError(AgentError):
    """The lock file cannot be created or opened (permissions, a symlink, a read-only disk)."""

    def __init__(self, path: Path, error: OSError) -> None:
        self.path = path
        super().__init__(
            f"cannot lock {path}: {error.strerror or error}; the state directory must be a "
            "writable local directory owned by the agent's user (not a symbolic link)"
        )


class StateLock:
    """The held lock. `release` (or process exit) frees it."""

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._descriptor: int | None = descriptor

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def _holder(descriptor: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(descriptor, 200, 0).decode("ascii", "replace").strip()
        if text:
            return text
    return "pid unknown"


def acquire(state_dir: Path, role: str) -> StateLock:
    """Take the exclusive lock of `state_dir` (created if missing) for `role` ("daemon",
    "sync"). Raise AlreadyRunningError naming the holder's pid and role if it is taken, and
    LockError if the lock file cannot be opened at all."""
    path = state_dir / LOCK_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        raise LockError(path, error) from error
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(descriptor)
        os.close(descriptor)
        raise AlreadyRunningError(path, holder) from None
    except BaseException:
        os.close(descriptor)
        raise
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{role} pid {os.getpid()}\n".encode("ascii"), 0)
    return StateLock(path, descriptor)
