"""The agent's error tree. Library code raises these; only the CLI and the service turn
them into messages and exit codes."""

from __future__ import annotations

from dataclasses import dataclass


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a configuration file: where, and what to do about it."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class ConfigError(AgentError):
    """The configuration is invalid. Carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


class StateError(AgentError):
    """The state database cannot be opened, migrated or written."""


class StateDamagedError(StateError):
    """The state database file is damaged or is not a database: only moving it aside helps."""


class StateDiskError(StateError):
    """The state database's disk is full or failing: writes resume when space returns."""


class TransferError(AgentError):
    """An S3 operation failed. `retryable` says whether trying again may succeed."""

    retryable: bool = False

    def __init__(self, operation: str, key: str, reason: str) -> None:
        self.operation = operation
        self.key = key
        self.reason = reason
        super().__init__(f"{operation} {key}: {reason}")


class RetryableTransferError(TransferError):
    """Server busy, throttled, timed out or connection reset: worth another try."""

    retryable = True


class PermanentTransferError(TransferError):
    """Access denied, no such bucket, invalid request: retrying will not help."""

    retryable = False


class NoSuchUploadError(PermanentTransferError):
    """The server no longer knows a multipart upload id (aborted, expired or completed)."""


class FileChangedError(AgentError):
    """A local file is not the one the scan saw: its size or mtime changed while it was being
    read, or the path now leads elsewhere (a symbolic link, another inode or device, not a
    regular file). It is never uploaded as it is; the next scan looks at it again."""

    def __init__(self, path: str, reason: str = "changed while it was being uploaded") -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")
