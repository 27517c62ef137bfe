"""S3 errors classified: which answers are worth another try, which mean a missing optional
feature, which are final; and the backoff between tries. Pure over botocore's exceptions."""

from __future__ import annotations

import random

import botocore.exceptions

from agent.errors import (
    NoSuchUploadError,
    PermanentTransferError,
    RetryableTransferError,
    TransferError,
)

_RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "RequestLimitExceeded",
        "BadDigest",  # bytes damaged on the way: sending again fixes it
        "XAmzContentSHA256Mismatch",
    }
)
NOT_IMPLEMENTED_CODES = frozenset({"NotImplemented", "501"})
# Some S3-compatible servers answer an operation they lack with 405 MethodNotAllowed. Only for
# the optional listings does that mean "feature missing"; elsewhere (an object-lock or a
# versioning refusal) 405 stays a permanent error of the request.
_METHOD_NOT_ALLOWED_CODES = frozenset({"MethodNotAllowed", "405"})
OPTIONAL_OPERATIONS = frozenset({"ListParts", "ListMultipartUploads"})
_RETRYABLE_EXCEPTIONS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    ConnectionError,
    TimeoutError,
)


class NotImplementedByServerError(PermanentTransferError):
    """The server does not implement an optional feature (ListParts, If-None-Match...)."""


class PreconditionFailedError(PermanentTransferError):
    """A conditional write found an object already at the key (HTTP 412)."""


def classify_error(error: BaseException, operation: str, key: str) -> TransferError:
    """Given an exception from botocore, return the agent's classified error for it."""
    if isinstance(error, TransferError):
        return error
    if isinstance(error, botocore.exceptions.ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code", ""))
        message = str(info.get("Message", "")) or code
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        reason = f"{code} ({status}): {message}" if status else f"{code}: {message}"
        if code == "NoSuchUpload":
            return NoSuchUploadError(operation, key, reason)
        if code in NOT_IMPLEMENTED_CODES or status == 501:
            return NotImplementedByServerError(operation, key, reason)
        if operation in OPTIONAL_OPERATIONS and (
            code in _METHOD_NOT_ALLOWED_CODES or status == 405
        ):
            return NotImplementedByServerError(operation, key, reason)
        if code in ("PreconditionFailed", "412") or status == 412:
            return PreconditionFailedError(operation, key, reason)
        if code in _RETRYABLE_CODES or status >= 500 or status == 429:
            return RetryableTransferError(operation, key, reason)
        return PermanentTransferError(operation, key, reason)
    if isinstance(
        error, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return PermanentTransferError(
            operation, key, f"{error}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile"
        )
    if isinstance(error, _RETRYABLE_EXCEPTIONS):
        return RetryableTransferError(operation, key, f"{type(error).__name__}: {error}")
    if isinstance(error, botocore.exceptions.BotoCoreError):
        return PermanentTransferError(operation, key, f"{type(error).__name__}: {error}")
    return PermanentTransferError(operation, key, f"{type(error).__name__}: {error}")


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0, min(cap, base * (2**attempt)))
