"""What every part of the upload engine is handed, and the few values they derive from it.

Owns: the collaborators of one engine (settings, upload ledger, S3 store, clock), the object
metadata the agent writes, the per-request checksum header, and where a file of a session is
on disk. Makes no S3 call and writes nothing to the ledger itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config import Settings
from agent.scan import check_unchanged
from agent.state import FileRecord, Ledger, SessionRecord
from agent.transfer import AGENT_METADATA_MARK, S3Store


@dataclass(frozen=True)
class EngineContext:
    """The settings, upload ledger, S3 store and clock that one engine works with."""

    settings: Settings
    ledger: Ledger
    store: S3Store
    clock: Callable[[], float]

    @property
    def algorithm(self) -> str:
        """The checksum algorithm the agent records for every file."""
        return self.settings.destination.checksum

    @property
    def agent_name(self) -> str:
        """This agent's name, as written in the metadata of its objects."""
        return self.settings.agent.name

    def metadata(self, record: FileRecord, **extra: str) -> dict[str, str]:
        """Given a file, return the metadata of the object that carries it, with `extra`."""
        metadata = dict(self.settings.destination.metadata)
        metadata.update(
            {
                AGENT_METADATA_MARK: self.agent_name,
                "agent-mtime-ns": str(record.mtime_ns),
                "agent-checksum-algorithm": self.algorithm,
            }
        )
        metadata.update(extra)
        return metadata

    def header(self, value: str | None) -> tuple[str, str] | None:
        """Given a checksum, return the (algorithm, value) for the server to verify, or None
        where server checksums are off or there is no value."""
        if self.settings.destination.server_checksums and value is not None:
            return (self.algorithm, value)
        return None


def source_path(session: SessionRecord, record: FileRecord) -> Path:
    """Given a session and one of its files, return the file's path on disk."""
    return Path(session.path) / record.rel_path


def check_record_unchanged(path: Path, record: FileRecord) -> None:
    """Raise FileChangedError unless `path` is still the file `record` describes."""
    check_unchanged(
        path,
        size=record.size,
        mtime_ns=record.mtime_ns,
        inode=record.inode,
        device=record.device,
    )
