"""Unit tests for checksums: known vectors, the base64 form S3 expects, incremental equal to
one-shot, and CRC state saved after a part and resumed after a crash."""

from __future__ import annotations

import base64
import hashlib
import io
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.checksums import (
    S3_ALGORITHM_NAMES,
    RunningChecksum,
    Tally,
    digest_b64,
    stream_checksum,
)

ALGORITHMS = ("crc32c", "crc32", "sha256")
CHECK = b"123456789"  # the standard CRC check input


def b64_of_crc(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def test_s3_algorithm_names() -> None:
    assert S3_ALGORITHM_NAMES == {"crc32c": "CRC32C", "crc32": "CRC32", "sha256": "SHA256"}


@pytest.mark.parametrize(
    ("algorithm", "data", "expected"),
    [
        ("crc32c", CHECK, b64_of_crc(0xE3069283)),  # RFC 3720
        ("crc32", CHECK, b64_of_crc(0xCBF43926)),  # ISO-HDLC check value
        ("crc32c", b"", "AAAAAA=="),
        ("crc32", b"", "AAAAAA=="),
        ("crc32c", b"\x00" * 32, b64_of_crc(0x8A9136AA)),  # RFC 3720 B.4
        ("crc32c", b"\xff" * 32, b64_of_crc(0x62A8AB43)),  # RFC 3720 B.4
        ("crc32c", bytes(range(32)), b64_of_crc(0x46DD794E)),  # RFC 3720 B.4
        (
            "sha256",
            b"abc",
            base64.b64encode(
                bytes.fromhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
            ).decode(),
        ),
        ("sha256", b"", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
    ],
)
def test_known_vectors(algorithm: str, data: bytes, expected: str) -> None:
    assert digest_b64(algorithm, data) == expected
    running = RunningChecksum(algorithm)
    running.update(data)
    assert running.value() == expected


def test_crc_is_four_big_endian_bytes_in_base64() -> None:
    value = digest_b64("crc32c", CHECK)
    assert value == "4waSgw=="
    assert len(value) == 8
    assert int.from_bytes(base64.b64decode(value), "big") == 0xE3069283


def test_sha256_is_the_raw_digest_in_base64_not_hex() -> None:
    value = digest_b64("sha256", b"data")
    assert base64.b64decode(value) == hashlib.sha256(b"data").digest()
    assert len(value) == 44


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_memoryview_input_is_accepted(algorithm: str) -> None:
    data = b"x" * 1000 + b"y" * 24
    view = memoryview(data)[100:900]
    assert digest_b64(algorithm, view) == digest_b64(algorithm, data[100:900])
    running = RunningChecksum(algorithm)
    running.update(view)
    assert running.value() == digest_b64(algorithm, data[100:900])


@given(st.lists(st.binary(max_size=300), max_size=12))
def test_incremental_equals_one_shot(chunks: list[bytes]) -> None:
    whole = b"".join(chunks)
    for algorithm in ALGORITHMS:
        running = RunningChecksum(algorithm)
        for chunk in chunks:
            running.update(chunk)
        assert running.value() == digest_b64(algorithm, whole)
        assert running.position == len(whole)


@given(st.binary(max_size=2000), st.data())
def test_crc_resumes_from_saved_state(data: bytes, draw: st.DataObject) -> None:
    cut = draw.draw(st.integers(0, len(data)))
    for algorithm in ("crc32c", "crc32"):
        before = RunningChecksum(algorithm)
        before.update(data[:cut])
        saved = before.save()
        assert saved is not None
        resumed = RunningChecksum.resume(algorithm, saved, cut)
        assert resumed is not None
        assert resumed.position == cut
        resumed.update(data[cut:])
        assert resumed.value() == digest_b64(algorithm, data)
        assert resumed.position == len(data)


def test_saved_crc_state_is_the_decimal_running_value() -> None:
    running = RunningChecksum("crc32")
    running.update(CHECK)
    assert running.save() == str(0xCBF43926)
    assert running.save() == str(zlib.crc32(CHECK))
    assert RunningChecksum("crc32c").save() == "0"


def test_resumed_state_is_exactly_what_was_saved() -> None:
    resumed = RunningChecksum.resume("crc32c", "3808858755", 9)
    assert resumed is not None
    assert (resumed.algorithm, resumed.crc, resumed.position) == ("crc32c", 0xE3069283, 9)
    assert resumed.value() == digest_b64("crc32c", CHECK)


def test_sha256_cannot_be_resumed() -> None:
    running = RunningChecksum("sha256")
    running.update(b"part one")
    assert running.save() is None
    assert RunningChecksum.resume("sha256", "12345", 8) is None


def test_nothing_saved_means_nothing_to_resume() -> None:
    assert RunningChecksum.resume("crc32c", None, 0) is None
    assert RunningChecksum.resume("crc32", None, 100) is None


@pytest.mark.parametrize("algorithm", ["md5", "CRC32C", "crc64nvme", ""])
def test_unknown_algorithm_is_refused(algorithm: str) -> None:
    with pytest.raises(ValueError, match="unknown checksum algorithm"):
        RunningChecksum(algorithm)


def test_value_can_be_read_midway_without_disturbing_the_state() -> None:
    for algorithm in ALGORITHMS:
        running = RunningChecksum(algorithm)
        running.update(b"1234")
        assert running.value() == digest_b64(algorithm, b"1234")
        running.update(b"56789")
        assert running.value() == digest_b64(algorithm, CHECK)


def test_algorithms_give_different_answers() -> None:
    values = {digest_b64(algorithm, CHECK) for algorithm in ALGORITHMS}
    assert len(values) == 3


def test_tally_counts_every_byte_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Tally, "value", 1000)  # bytes hashed earlier in the process
    digest_b64("crc32c", b"x" * 100)
    assert Tally.value == 1100
    running = RunningChecksum("sha256")
    running.update(b"y" * 50)
    running.update(memoryview(b"z" * 7))
    assert Tally.value == 1157


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("chunk", [1, 7, 4096, 8 * 1024**2])
def test_stream_checksum_reads_to_the_end(algorithm: str, chunk: int) -> None:
    data = bytes(range(256)) * 40
    value, size = stream_checksum(io.BytesIO(data), algorithm, chunk=chunk)
    assert (value, size) == (digest_b64(algorithm, data), len(data))


def test_stream_checksum_reads_one_chunk_at_a_time() -> None:
    # Memory stays at one chunk whatever the file's size.
    class Recording(io.BytesIO):
        def __init__(self, data: bytes) -> None:
            super().__init__(data)
            self.sizes: list[int | None] = []

        def read(self, size: int | None = -1) -> bytes:
            self.sizes.append(size)
            return super().read(size)

    handle = Recording(b"r" * 2500)
    assert stream_checksum(handle, "crc32", chunk=1000)[1] == 2500
    assert handle.sizes == [1000, 1000, 1000, 1000]


def test_stream_checksum_of_an_empty_stream() -> None:
    assert stream_checksum(io.BytesIO(b""), "crc32c") == ("AAAAAA==", 0)
