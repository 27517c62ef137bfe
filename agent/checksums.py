"""File checksums computed incrementally from the same bytes that are uploaded.

CRC32C (via awscrt, the `botocore[crt]` runtime), CRC32 (zlib) and SHA-256 (hashlib). A CRC's
running state is just its value, so it can be stored after each part and resumed from after a
crash; SHA-256 cannot, and a resumed upload re-reads the file from its start to compute it.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from awscrt import checksums as crt_checksums

S3_ALGORITHM_NAMES = {"crc32c": "CRC32C", "crc32": "CRC32", "sha256": "SHA256"}


def _crc(algorithm: str, data: bytes | memoryview, previous: int) -> int:
    if algorithm == "crc32c":
        return int(crt_checksums.crc32c(data, previous))
    return zlib.crc32(data, previous)


def _crc_b64(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode()


class Tally:
    """Bytes hashed in this process so far. The daemon reads it as evidence that the uploader
    makes progress while it only reads local files (a resume re-reading a large file, the
    already-in-S3 check), which sends nothing. A lost increment between threads only blurs
    the figure."""

    value = 0


def digest_b64(algorithm: str, data: bytes | memoryview) -> str:
    """Return the base64 checksum of `data` as S3 expects it in a checksum header."""
    Tally.value += len(data)
    if algorithm == "sha256":
        return base64.b64encode(hashlib.sha256(data).digest()).decode()
    return _crc_b64(_crc(algorithm, data, 0))


@dataclass
class RunningChecksum:
    """A whole-file checksum fed part by part, in order."""

    algorithm: str
    crc: int = 0
    position: int = 0
    _sha: hashlib._Hash | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.algorithm not in S3_ALGORITHM_NAMES:
            raise ValueError(f"unknown checksum algorithm {self.algorithm!r}")
        if self.algorithm == "sha256":
            self._sha = hashlib.sha256()

    @classmethod
    def resume(cls, algorithm: str, saved: str | None, position: int) -> RunningChecksum | None:
        """Rebuild the state saved by `save()` after `position` bytes, or None if this
        algorithm cannot be resumed (SHA-256) or nothing was saved."""
        if algorithm == "sha256" or saved is None:
            return None
        return cls(algorithm, crc=int(saved), position=position)

    def update(self, data: bytes | memoryview) -> None:
        """Feed the next bytes of the file."""
        if self._sha is not None:
            self._sha.update(data)
        else:
            self.crc = _crc(self.algorithm, data, self.crc)
        self.position += len(data)
        Tally.value += len(data)

    def save(self) -> str | None:
        """The resumable state after the bytes fed so far (None for SHA-256)."""
        return None if self._sha is not None else str(self.crc)

    def value(self) -> str:
        """The checksum so far, base64 as S3 writes it (hex for SHA-256 is not used)."""
        if self._sha is not None:
            return base64.b64encode(self._sha.digest()).decode()
        return _crc_b64(self.crc)


def stream_checksum(handle: BinaryIO, algorithm: str, chunk: int = 8 * 1024**2) -> tuple[str, int]:
    """Given an open binary stream, read it to its end; return (base64 checksum, bytes
    read). The caller opens it (source files only through `scan.open_source`)."""
    running = RunningChecksum(algorithm)
    while block := handle.read(chunk):
        running.update(block)
    return running.value(), running.position
