"""Unit tests for the S3 error policy: `classify_error`, `backoff_delay` and the conditional
write fallback test. No server: botocore errors are built the way botocore builds them."""

from __future__ import annotations

import io
import itertools
import random
import socket
import threading
from pathlib import Path

import botocore.exceptions
import pytest
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st

from agent.config import settings_from_mapping
from agent.errors import (
    NoSuchUploadError,
    PermanentTransferError,
    RetryableTransferError,
    TransferError,
)
from agent.s3errors import (
    OPTIONAL_OPERATIONS,
    NotImplementedByServerError,
    PreconditionFailedError,
    backoff_delay,
    classify_error,
)
from agent.transfer import S3Store, make_client


def client_error(
    code: str, status: int = 0, operation: str = "PutObject", message: str = ""
) -> ClientError:
    """A ClientError as botocore raises it for an S3 error response (status 0 = none sent)."""
    if status:
        return ClientError(
            {
                "Error": {"Code": code, "Message": message},
                "ResponseMetadata": {
                    "HTTPStatusCode": status,
                    "RequestId": "r",
                    "HostId": "h",
                    "HTTPHeaders": {},
                    "RetryAttempts": 0,
                },
            },
            operation,
        )
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


def classify(error: BaseException, operation: str = "PutObject") -> TransferError:
    return classify_error(error, operation, "rig/ses/file.bin")


# --- ClientError: codes the module names ------------------------------------------------------

# Each code is given with a 4xx status (or none) so that only the code, not a 5xx status, can
# make it retryable: removing one from the retryable set fails its case.
RETRYABLE_CODES = [
    ("SlowDown", 503),
    ("SlowDown", 0),
    ("Throttling", 400),
    ("ThrottlingException", 400),
    ("RequestTimeout", 400),
    ("RequestTimeTooSkewed", 403),
    ("InternalError", 0),
    ("ServiceUnavailable", 0),
    ("RequestLimitExceeded", 400),
    ("BadDigest", 400),
    ("XAmzContentSHA256Mismatch", 400),
]


@pytest.mark.parametrize(("code", "status"), RETRYABLE_CODES)
def test_transient_server_codes_are_retryable(code: str, status: int) -> None:
    error = classify(client_error(code, status))
    assert type(error) is RetryableTransferError
    assert error.retryable


def test_bad_digest_is_retried_not_given_up() -> None:
    # BadDigest: the body was damaged on the way (a flaky NIC or proxy), and S3 refused it
    # because its checksum did not match. The local file is fine; sending it again fixes it.
    # A permanent classification would fail the whole session over one corrupted packet.
    error = classify(client_error("BadDigest", 400, "UploadPart", "Content-MD5 mismatch"))
    assert isinstance(error, RetryableTransferError)
    assert error.retryable is True
    assert not isinstance(error, PermanentTransferError)


PERMANENT_CODES = [
    ("AccessDenied", 403),
    ("InvalidAccessKeyId", 403),
    ("SignatureDoesNotMatch", 403),
    ("NoSuchBucket", 404),
    ("NoSuchKey", 404),
    ("InvalidRequest", 400),
    ("ExpiredToken", 400),
    ("EntityTooLarge", 400),
    ("InvalidBucketName", 400),
    ("", 0),
    ("SomethingNew", 0),
]


@pytest.mark.parametrize(("code", "status"), PERMANENT_CODES)
def test_request_errors_are_permanent(code: str, status: int) -> None:
    error = classify(client_error(code, status))
    assert type(error) is PermanentTransferError
    assert not error.retryable


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599, 429])
def test_server_side_and_throttling_statuses_are_retryable_whatever_the_code(status: int) -> None:
    error = classify(client_error(str(status), status))
    assert type(error) is RetryableTransferError
    error = classify(client_error("UnheardOfCode", status))
    assert type(error) is RetryableTransferError


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 411, 428, 430, 499])
def test_other_client_statuses_are_permanent(status: int) -> None:
    assert type(classify(client_error("UnheardOfCode", status))) is PermanentTransferError


@pytest.mark.parametrize(("code", "status"), [("NoSuchUpload", 404), ("NoSuchUpload", 0)])
def test_no_such_upload_has_its_own_error(code: str, status: int) -> None:
    error = classify(client_error(code, status, "UploadPart"), "UploadPart")
    assert type(error) is NoSuchUploadError
    assert not error.retryable


@pytest.mark.parametrize(
    ("code", "status"),
    [("NotImplemented", 501), ("NotImplemented", 0), ("501", 0), ("UnheardOfCode", 501)],
)
@pytest.mark.parametrize("operation", ["PutObject", "ListParts", "PutObjectRetention"])
def test_not_implemented_means_feature_missing_never_retry(
    code: str, status: int, operation: str
) -> None:
    # 501 is >= 500 but must not be retried: the server will never implement it.
    error = classify(client_error(code, status, operation), operation)
    assert type(error) is NotImplementedByServerError
    assert not error.retryable


@pytest.mark.parametrize("operation", sorted(OPTIONAL_OPERATIONS))
@pytest.mark.parametrize(
    ("code", "status"), [("MethodNotAllowed", 405), ("MethodNotAllowed", 0), ("405", 0), ("X", 405)]
)
def test_method_not_allowed_on_optional_listings_means_feature_missing(
    operation: str, code: str, status: int
) -> None:
    error = classify(client_error(code, status, operation), operation)
    assert type(error) is NotImplementedByServerError


@pytest.mark.parametrize("operation", ["PutObject", "PutObjectRetention", "GetBucketVersioning"])
def test_method_not_allowed_elsewhere_stays_a_plain_permanent_error(operation: str) -> None:
    error = classify(client_error("MethodNotAllowed", 405, operation), operation)
    assert type(error) is PermanentTransferError


def test_optional_operations_are_the_two_listings() -> None:
    assert frozenset({"ListParts", "ListMultipartUploads"}) == OPTIONAL_OPERATIONS


@pytest.mark.parametrize(
    ("code", "status"), [("PreconditionFailed", 412), ("PreconditionFailed", 0), ("412", 0)]
)
def test_precondition_failed_is_its_own_permanent_error(code: str, status: int) -> None:
    error = classify(client_error(code, status))
    assert type(error) is PreconditionFailedError
    assert not error.retryable


def test_status_412_alone_is_precondition_failed() -> None:
    assert type(classify(client_error("UnheardOfCode", 412))) is PreconditionFailedError


def test_reason_names_code_status_and_message() -> None:
    error = classify(client_error("SlowDown", 503, message="Please reduce your request rate."))
    assert error.reason == "SlowDown (503): Please reduce your request rate."
    assert error.operation == "PutObject"
    assert error.key == "rig/ses/file.bin"
    assert str(error) == (
        "PutObject rig/ses/file.bin: SlowDown (503): Please reduce your request rate."
    )


def test_reason_without_status_or_message_falls_back_to_the_code() -> None:
    assert classify(client_error("AccessDenied")).reason == "AccessDenied: AccessDenied"


def test_a_classified_error_passes_through_unchanged() -> None:
    original = RetryableTransferError("UploadPart", "k", "already classified")
    assert classify(original) is original
    permanent = PermanentTransferError("UploadPart", "k", "no")
    assert classify(permanent) is permanent


# --- other exceptions -----------------------------------------------------------------------

NETWORK_ERRORS: list[BaseException] = [
    botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
    botocore.exceptions.ConnectionClosedError(endpoint_url="http://127.0.0.1:9"),
    botocore.exceptions.ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
    botocore.exceptions.ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"),
    botocore.exceptions.ResponseStreamingError(error="connection reset"),
    botocore.exceptions.IncompleteReadError(actual_bytes=10, expected_bytes=20),
    ConnectionResetError(104, "Connection reset by peer"),
    ConnectionRefusedError(111, "Connection refused"),
    BrokenPipeError(32, "Broken pipe"),
    TimeoutError("timed out"),
]


@pytest.mark.parametrize("raw", NETWORK_ERRORS, ids=lambda raw: type(raw).__name__)
def test_network_failures_are_retryable(raw: BaseException) -> None:
    error = classify(raw)
    assert type(error) is RetryableTransferError
    assert error.reason == f"{type(raw).__name__}: {raw}"


@pytest.mark.parametrize(
    "raw",
    [
        botocore.exceptions.NoCredentialsError(),
        botocore.exceptions.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_KEY"),
    ],
    ids=lambda raw: type(raw).__name__,
)
def test_missing_credentials_are_permanent_with_a_hint(raw: BaseException) -> None:
    error = classify(raw)
    assert type(error) is PermanentTransferError
    assert error.reason.startswith(str(raw))
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile" in error.reason


@pytest.mark.parametrize(
    "raw",
    [
        botocore.exceptions.ParamValidationError(report="Invalid bucket name"),
        botocore.exceptions.NoRegionError(),
        ValueError("bad argument"),
        OSError(5, "Input/output error"),  # a local read error, not the network
        KeyError("ETag"),
    ],
    ids=lambda raw: type(raw).__name__,
)
def test_anything_else_is_permanent(raw: BaseException) -> None:
    error = classify(raw)
    assert type(error) is PermanentTransferError
    assert error.reason == f"{type(raw).__name__}: {raw}"


# --- the conditional-write fallback ---------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [("NotImplemented", 501), ("NotImplemented", 0), ("501", 0), ("UnheardOfCode", 501)],
)
def test_a_server_without_conditional_writes_is_recognised(code: str, status: int) -> None:
    assert S3Store._rejects_condition(client_error(code, status)) is True


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("PreconditionFailed", 412),  # the condition worked: an object is there
        ("MethodNotAllowed", 405),
        ("InvalidArgument", 400),
        ("AccessDenied", 403),
        ("InternalError", 500),
        ("", 0),
    ],
)
def test_other_refusals_are_not_a_missing_feature(code: str, status: int) -> None:
    assert S3Store._rejects_condition(client_error(code, status)) is False


# --- backoff --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "bound"),
    [
        (0, 1.0, 30.0, 1.0),
        (1, 1.0, 30.0, 2.0),
        (3, 0.5, 30.0, 4.0),
        (4, 1.0, 30.0, 16.0),
        (5, 1.0, 30.0, 30.0),  # 32 capped
        (60, 1.0, 30.0, 30.0),
        (100, 2.0, 7.5, 7.5),
    ],
)
def test_backoff_is_full_jitter_up_to_the_capped_exponential(
    attempt: int, base: float, cap: float, bound: float
) -> None:
    # The same seed must give exactly uniform(0, bound): pins both the formula and the jitter.
    expected = random.Random(1234).uniform(0, bound)
    assert backoff_delay(attempt, base, cap, random.Random(1234)) == expected


def test_backoff_spreads_over_the_whole_interval() -> None:
    rng = random.Random(7)
    samples = [backoff_delay(3, 1.0, 30.0, rng) for _ in range(2000)]
    assert min(samples) >= 0.0
    assert max(samples) <= 8.0
    assert min(samples) < 0.1  # full jitter reaches down to zero
    assert max(samples) > 7.9
    assert 3.5 < sum(samples) / len(samples) < 4.5


def test_backoff_grows_with_attempts_until_the_cap() -> None:
    means = []
    for attempt in range(8):
        rng = random.Random(99)
        samples = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(500)]
        means.append(sum(samples) / len(samples))
    assert all(later > earlier for earlier, later in itertools.pairwise(means[:6]))
    assert 13.0 < means[6] < 17.0  # 2**6 = 64, capped at 30: mean about 15
    assert means[6] == pytest.approx(means[7])  # same seed, same cap: same draws


@given(
    st.integers(0, 100),
    st.floats(0.001, 60.0),
    st.floats(0.0, 600.0),
    st.integers(0, 2**32 - 1),
)
def test_backoff_never_exceeds_either_limit(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    delay = backoff_delay(attempt, base, cap, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2**attempt)


def test_single_puts_do_not_wait_for_100_continue_but_parts_do(tmp_path: Path) -> None:
    """A bare HTTP server on loopback records each request's head: `Expect: 100-continue`
    cost a round trip per small file; parts keep it (a refusal before 16 MiB are sent)."""
    heads: list[str] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve() -> None:
        for _ in range(2):
            connection, _address = listener.accept()
            with connection:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += connection.recv(65536)
                heads.append(data.split(b"\r\n\r\n")[0].decode())
                if b"Expect: 100-continue" in data:
                    connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                connection.sendall(
                    b'HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: "e"\r\n'
                    b"Connection: close\r\n\r\n"
                )

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    settings = settings_from_mapping(
        {
            "destination": {
                "bucket": "lab-raw",
                "endpoint_url": f"http://127.0.0.1:{listener.getsockname()[1]}",
            },
            "source": [{"name": "ephys", "path": str(tmp_path)}],
        },
        "expect.toml",
    )
    client = make_client(settings.destination, settings.upload)
    client.put_object(Bucket="lab-raw", Key="k", Body=io.BytesIO(b"small file"))
    client.upload_part(Bucket="lab-raw", Key="k", UploadId="u", PartNumber=1, Body=io.BytesIO(b"p"))
    server.join(10)
    listener.close()
    put, part = heads
    assert put.startswith("PUT /lab-raw/k HTTP/1.1") and "Expect:" not in put
    assert "partNumber=1" in part.splitlines()[0] and "Expect: 100-continue" in part
