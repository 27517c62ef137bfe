"""The daemon's way into a damaged state database: set the file aside, start a new one.

A damaged database (a truncated copy, a disk fault, a foreign file) cannot be repaired in
place, and a daemon that only refused it would be restarted by systemd into the same refusal
forever while the rig's data waits. What the database held can be found again: the sources
are still there, and every object the agent wrote carries its checksum, so the scan after a
rebuild recognises what S3 already holds and sends it no second time (the engine's
existing-object check). The damaged file is kept, never deleted, for whoever wants to look.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from agent.errors import StateDamagedError
from agent.state import State

# Set in the new database while it is rebuilt: {"moved_to", "reason", "at"} as JSON. Status
# is CRITICAL while it is set; the daemon clears it once nothing is left to send.
REBUILT_FLAG = "state_rebuilt"


def companions(path: Path) -> list[Path]:
    """The database file and its WAL and shared-memory files, those that exist."""
    return [
        candidate
        for candidate in (
            path,
            path.with_name(path.name + "-wal"),
            path.with_name(path.name + "-shm"),
        )
        if candidate.exists()
    ]


def set_aside(path: Path, now: float) -> Path:
    """Rename the database and its companions to `<name>.damaged-<UTC time>[-wal|-shm]` in
    the same directory (a rename: nothing is copied or lost) and return the new main path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    serial = 1
    while target.exists():
        serial += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{serial}")
    for item in companions(path):
        os.rename(item, target.with_name(target.name + item.name[len(path.name) :]))
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the renames survive a power loss before the new file exists
    finally:
        os.close(directory)
    return target


def open_or_rebuild(path: Path, now: float) -> tuple[State, StateDamagedError | None, Path | None]:
    """Open the database at `path`; if it is damaged, set it aside and start a new one,
    flagged as rebuilt. Return the state, and the damage and where the file went (None when
    the database was sound). Other StateErrors (a full disk, no permission) propagate: moving
    the file would not help them."""
    try:
        return State.open(path), None, None
    except StateDamagedError as damage:
        moved_to = set_aside(path, now)
        state = State.open(path)
        state.control.set_flag(
            REBUILT_FLAG,
            json.dumps({"moved_to": str(moved_to), "reason": str(damage), "at": now}),
            now,
        )
        return state, damage, moved_to
