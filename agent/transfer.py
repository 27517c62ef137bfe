"""S3 transfer: the only module that talks to S3 (boto3/botocore).

Each S3 call is one small method; every error is classified retryable or permanent by
`agent.s3errors.classify_error`; retryable ones are retried here with exponential backoff and
full jitter, and still-failing ones surface as RetryableTransferError so the caller can mark
the session failed (never a silent give-up). Knows nothing of sessions or their rules.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

import botocore.exceptions
import botocore.session
import structlog
from botocore.config import Config

from agent.checksums import S3_ALGORITHM_NAMES, RunningChecksum
from agent.config import DestinationSettings, UploadSettings
from agent.direct import Declined, DirectSender, headers_for, sender_for
from agent.errors import ConfigError, ConfigProblem, NoSuchUploadError, TransferError
from agent.redact import SECRETS
from agent.s3errors import (
    NOT_IMPLEMENTED_CODES,
    NotImplementedByServerError,
    PreconditionFailedError,
    backoff_delay,
    classify_error,
)
from agent.throttle import Interrupted, ThrottledBody, TokenBucket

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import TagTypeDef

T = TypeVar("T")
Page = TypeVar("Page", bound=Mapping[str, Any])

AGENT_METADATA_MARK = "ingest-agent"

log = structlog.get_logger("agent.transfer")


@dataclass(frozen=True)
class ObjectInfo:
    """What HEAD says of an object."""

    size: int
    etag: str
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class ListedPart:
    """What ListParts says of one part: its ETag, its size where given, and the checksums
    the server holds for it ({our algorithm name: base64 value}; empty unless the upload was
    created with a checksum algorithm and the server keeps them)."""

    etag: str
    size: int | None = None
    checksums: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteUpload:
    """A multipart upload the server reports as open."""

    key: str
    upload_id: str


def _no_expect_for_single_puts(model: Any, params: dict[str, Any], **_: Any) -> None:
    if model.name == "PutObject":
        params.get("headers", {}).pop("Expect", None)


def make_client(destination: DestinationSettings, upload: UploadSettings) -> S3Client:
    """Build the botocore S3 client for `destination`. Our own layer owns retries, and
    checksums are only sent when we pass them (servers that reject the headers stay usable).
    Raise ConfigError if the configured profile is in no AWS config or credentials file.

    botocore's own session, not boto3's: the same credential chain and profile, without
    importing boto3 and s3transfer, which cost every `agentctl sync` about 60 ms of start-up
    (measured: 375 ms against 317 ms from nothing to a client)."""
    session = botocore.session.Session(profile=destination.profile)
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=upload.connect_timeout,
        read_timeout=upload.read_timeout,
        max_pool_connections=upload.concurrency + 4,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if destination.endpoint_url else None,
        user_agent_extra="ingest-agent",
    )
    try:
        client = cast(
            "S3Client",
            session.create_client(
                "s3",
                endpoint_url=destination.endpoint_url,
                region_name=destination.region,
                config=config,
            ),
        )
        credentials = session.get_credentials()
    except botocore.exceptions.ProfileNotFound as error:
        message = (
            f"{error}: add the profile to ~/.aws/config or ~/.aws/credentials (or the files "
            "AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE name), or remove the key"
        )
        # The file is the one `agentctl` was given; it fills in an empty name.
        raise ConfigError([ConfigProblem("", "destination.profile", message)]) from None
    # botocore asks for `100 Continue` before every file-like body: a round trip per small
    # file, only to learn early of a refusal. Single PUTs are below multipart_threshold, so
    # sending such a body in vain costs less than waiting on every one; parts keep it.
    client.meta.events.register_last("before-call.s3", _no_expect_for_single_puts)
    # The client resolved its credentials while being built (environment, profile, role):
    # whichever they are, they are masked in everything the agent logs or prints.
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        SECRETS.add([frozen.access_key, frozen.secret_key, frozen.token])
    return client


class S3Store:
    """One bucket, seen through small S3 operations with retries and a bandwidth limit."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        limiter: TokenBucket | None = None,
        retries: int = 5,
        retry_delay: float = 1.0,
        retry_cap: float = 30.0,
        conditional_writes: str = "auto",
        extra_args: Mapping[str, str] | None = None,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[TransferError, int, float], None] | None = None,
        direct: DirectSender | None = None,
    ) -> None:
        self.client = client
        self.direct = direct
        self.bucket = bucket
        self.limiter = limiter or TokenBucket(0)
        self.retries = retries
        self.retry_delay = retry_delay
        self.retry_cap = retry_cap
        self.stop = stop or threading.Event()
        self.extra_args = dict(extra_args or {})
        self._sleep = sleep
        self._on_retry = on_retry
        self._rng = random.Random()
        # None = not yet known; detected on first use when the mode is "auto".
        self.conditional_writes: bool | None = {"on": True, "off": False}.get(conditional_writes)
        # If-Match (replacing only the object we know) is detected apart from If-None-Match:
        # a server may have one and not the other. Off with conditional writes off.
        self.if_match_supported: bool | None = False if conditional_writes == "off" else None
        self._condition_lock = threading.Lock()
        self.list_parts_supported: bool | None = None
        self.list_uploads_supported: bool | None = None

    # --- the retry loop ---------------------------------------------------------------------

    def _call(self, operation: str, key: str, action: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return action()
            except Interrupted:
                raise
            except Exception as raw:
                if self.stop.is_set():
                    # Halting (stop or pause) aborts the request from inside its body; the
                    # HTTP layer (awscrt when it checksums the stream) may wrap the signal
                    # in its own error. Either way the request was ours to abandon.
                    raise Interrupted() from raw
                error = classify_error(raw, operation, key)
                if not error.retryable or attempt >= self.retries:
                    raise error from raw
                delay = backoff_delay(attempt, self.retry_delay, self.retry_cap, self._rng)
                if self._on_retry is not None:
                    self._on_retry(error, attempt + 1, delay)
                attempt += 1
                if self.stop.wait(delay):
                    raise Interrupted() from raw

    def _body(self, data: bytes) -> ThrottledBody:
        return ThrottledBody(data, self.limiter, self.stop)

    def _send_write(
        self,
        operation: str,
        arguments: Mapping[str, Any],
        data: bytes,
        direct: Callable[[DirectSender, Mapping[str, str]], Mapping[str, str]],
        through_botocore: Callable[[], Any],
    ) -> Any:
        """Send a PutObject or UploadPart (`arguments`, body `data`) as a direct request
        where the sender is on and knows every argument, else through botocore; return an
        answer with its "ETag". A request the direct sender declines goes through botocore,
        whose answer counts (agent/direct.py)."""
        sender = self.direct
        headers = headers_for(arguments) if sender is not None and sender.enabled else None
        if sender is None or headers is None:
            return through_botocore()
        try:
            answer = direct(sender, headers)
        except Declined as declined:
            log.debug("direct_request_declined", key=arguments.get("Key"), reason=str(declined))
            result = through_botocore()
            sender.carried(operation)
            return result
        return {"ETag": answer.get("etag", "")}

    # --- objects ------------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        """Return size, ETag and metadata of the object at `key`, or None if there is none."""

        def action() -> ObjectInfo | None:
            try:
                answer = self.client.head_object(Bucket=self.bucket, Key=key)
            except botocore.exceptions.ClientError as error:
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 404 or error.response.get("Error", {}).get("Code") in (
                    "404",
                    "NoSuchKey",
                    "NotFound",
                ):
                    return None
                raise
            return ObjectInfo(
                size=int(answer["ContentLength"]),
                etag=str(answer.get("ETag", "")).strip('"'),
                metadata=dict(answer.get("Metadata", {})),
            )

        return self._call("HeadObject", key, action)

    def _get_object(self, key: str) -> Any | None:
        """GetObject's answer, or None if there is no object at `key`."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def get_bytes(self, key: str) -> bytes | None:
        """Return a (small) object's bytes, or None if there is none."""

        def action() -> bytes | None:
            answer = self._get_object(key)
            return None if answer is None else bytes(answer["Body"].read())

        return self._call("GetObject", key, action)

    def object_checksum(self, key: str, algorithm: str) -> tuple[int, str] | None:
        """Read an object through once; return (bytes read, its checksum with `algorithm`),
        or None if there is none. Memory stays at one chunk whatever the object's size."""

        def action() -> tuple[int, str] | None:
            answer = self._get_object(key)
            if answer is None:
                return None
            running = RunningChecksum(algorithm)
            size = 0
            for chunk in answer["Body"].iter_chunks(chunk_size=1024**2):
                running.update(chunk)
                size += len(chunk)
            return size, running.value()

        return self._call("GetObject", key, action)

    def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str],
        checksum: tuple[str, str] | None = None,
        only_if_absent: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> str:
        """PUT `data` at `key`; return the ETag. `checksum` is (algorithm, base64 value)
        sent for the server to verify. With `only_if_absent` (If-None-Match: *) or
        `if_match` (the ETag of the object this write may replace), a conditional write
        where the server supports it; raise PreconditionFailedError if the condition fails
        (see `_conditional_write`)."""
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Metadata": dict(metadata),
            "ContentLength": len(data),
            "ContentType": content_type,
            **self.extra_args,
        }
        if checksum is not None:
            arguments[f"Checksum{S3_ALGORITHM_NAMES[checksum[0]]}"] = checksum[1]

        def action() -> str:
            def send(conditions: Mapping[str, str]) -> Any:
                call: dict[str, Any] = {**arguments, **conditions}
                return self._send_write(
                    "PutObject",
                    call,
                    data,
                    lambda sender, headers: sender.put_object(key, data, headers, body=self._body),
                    # A fresh body each time: one that was sent (even in part) is spent.
                    lambda: self.client.put_object(**call, Body=cast(IO[bytes], self._body(data))),
                )

            answer = self._conditional_write(
                "PutObject", key, send, only_if_absent=only_if_absent, if_match=if_match
            )
            return str(answer.get("ETag", "")).strip('"')

        return self._call("PutObject", key, action)

    # --- conditional writes -------------------------------------------------------------------

    def _conditions(self, *, only_if_absent: bool, if_match: str | None) -> dict[str, str]:
        """The condition a write carries, as boto3 arguments: If-Match with the ETag of the
        object it may replace, or If-None-Match: * for a first write; none where the server
        was found (or configured) without that header."""
        if if_match is not None:
            return {"IfMatch": f'"{if_match}"'} if self.if_match_supported is not False else {}
        if only_if_absent and self.conditional_writes is not False:
            return {"IfNoneMatch": "*"}
        return {}

    def _conditional_write(
        self,
        operation: str,
        key: str,
        send: Callable[[Mapping[str, str]], Any],
        *,
        only_if_absent: bool,
        if_match: str | None,
    ) -> Any:
        """Send a write (PutObject, CompleteMultipartUpload) with its condition and return
        the answer. A server that answers the condition header "not implemented" (501) has
        it dropped from now on, said once, and the write goes again without it: the same
        degradation for both writes, so a server lacking the feature costs one request.
        An If-Match on a key with no object (404 NoSuchKey, as AWS answers) raises
        PreconditionFailedError like a 412: either way the object is not the one we knew,
        and the caller's existing-object policy looks at what is there."""
        conditions = self._conditions(only_if_absent=only_if_absent, if_match=if_match)
        try:
            answer = send(conditions)
        except botocore.exceptions.ClientError as error:
            if not conditions:
                raise
            header = "If-Match" if "IfMatch" in conditions else "If-None-Match"
            if self._rejects_condition(error):
                self._condition_unsupported(header, operation, error)
                return send({})
            if header == "If-Match" and self._no_such_key(error):
                raise PreconditionFailedError(
                    operation, key, "NoSuchKey (404): no object holds the ETag recorded for it"
                ) from error
            raise
        if "IfNoneMatch" in conditions and self.conditional_writes is None:
            self.conditional_writes = True
        if "IfMatch" in conditions and self.if_match_supported is None:
            self.if_match_supported = True
        return answer

    def _condition_unsupported(
        self, header: str, operation: str, error: botocore.exceptions.ClientError
    ) -> None:
        """Stop sending `header`: the server does not implement it. Said once per header."""
        with self._condition_lock:
            if header == "If-Match":
                first, self.if_match_supported = self.if_match_supported is not False, False
            else:
                first, self.conditional_writes = self.conditional_writes is not False, False
        if first:
            log.warning(
                "conditional_writes_unsupported",
                header=header,
                operation=operation,
                action=f"the server does not implement {header}: writing without it from now "
                "on; an object another writer puts at one of the agent's keys could be replaced",
                error=str(error),
            )

    @staticmethod
    def _rejects_condition(error: botocore.exceptions.ClientError) -> bool:
        code = error.response.get("Error", {}).get("Code")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in NOT_IMPLEMENTED_CODES or status == 501

    @staticmethod
    def _no_such_key(error: botocore.exceptions.ClientError) -> bool:
        code = error.response.get("Error", {}).get("Code")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code == "NoSuchKey" or (status == 404 and code != "NoSuchUpload")

    # --- multipart ----------------------------------------------------------------------------

    def create_multipart(
        self, key: str, *, metadata: Mapping[str, str], checksum_algorithm: str | None
    ) -> str:
        """Start a multipart upload; return its upload id."""
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Metadata": dict(metadata),
            "ContentType": "application/octet-stream",
            **self.extra_args,
        }
        if checksum_algorithm is not None:
            arguments["ChecksumAlgorithm"] = S3_ALGORITHM_NAMES[checksum_algorithm]
        answer = self._call(
            "CreateMultipartUpload", key, lambda: self.client.create_multipart_upload(**arguments)
        )
        return str(answer["UploadId"])

    def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        data: bytes,
        checksum: tuple[str, str] | None,
    ) -> str:
        """Send one part; return its ETag."""
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            "ContentLength": len(data),
        }
        if checksum is not None:
            arguments[f"Checksum{S3_ALGORITHM_NAMES[checksum[0]]}"] = checksum[1]

        def action() -> str:
            answer = self._send_write(
                "UploadPart",
                arguments,
                data,
                lambda sender, headers: sender.upload_part(
                    key, upload_id, number, data, headers, body=self._body
                ),
                lambda: self.client.upload_part(
                    **arguments, Body=cast(IO[bytes], self._body(data))
                ),
            )
            return str(answer["ETag"]).strip('"')

        return self._call("UploadPart", key, action)

    def tag(self, key: str, tags: Mapping[str, str]) -> None:
        """Replace the object's tags (used for values known only after its bytes were sent,
        such as a multipart object's whole-file checksum)."""
        tag_set: list[TagTypeDef] = [
            {"Key": name, "Value": value} for name, value in sorted(tags.items())
        ]
        self._call(
            "PutObjectTagging",
            key,
            lambda: self.client.put_object_tagging(
                Bucket=self.bucket, Key=key, Tagging={"TagSet": tag_set}
            ),
        )

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str, tuple[str, str] | None]],
        *,
        only_if_absent: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Complete an upload from (number, etag, checksum) parts; return the object's ETag.
        `only_if_absent` and `if_match` make it conditional as for `put`: raise
        PreconditionFailedError if the condition fails (the upload stays open)."""
        listed: list[dict[str, Any]] = []
        for number, etag, checksum in parts:
            entry: dict[str, Any] = {"PartNumber": number, "ETag": f'"{etag}"'}
            if checksum is not None:
                entry[f"Checksum{S3_ALGORITHM_NAMES[checksum[0]]}"] = checksum[1]
            listed.append(entry)

        def send(conditions: Mapping[str, str]) -> Any:
            call: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": key,
                "UploadId": upload_id,
                "MultipartUpload": {"Parts": listed},
                **conditions,
            }
            return self.client.complete_multipart_upload(**call)

        def action() -> str:
            answer = self._conditional_write(
                "CompleteMultipartUpload",
                key,
                send,
                only_if_absent=only_if_absent,
                if_match=if_match,
            )
            return str(answer.get("ETag", "")).strip('"')

        return self._call("CompleteMultipartUpload", key, action)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort an upload; one the server no longer knows counts as aborted."""
        try:
            self._call(
                "AbortMultipartUpload",
                key,
                lambda: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                ),
            )
        except NoSuchUploadError:
            return

    def list_multipart_uploads(self, prefix: str) -> list[RemoteUpload] | None:
        """Every open multipart upload under `prefix` (all pages), or None where the server
        does not implement ListMultipartUploads (501, or 405)."""
        if self.list_uploads_supported is False:
            return None
        uploads: list[RemoteUpload] = []
        pages = self._pages(
            "ListMultipartUploads",
            prefix,
            self.client.list_multipart_uploads,
            {"Bucket": self.bucket, "Prefix": prefix},
            lambda page: {
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            },
        )
        try:
            for page in pages:
                self.list_uploads_supported = True
                uploads.extend(
                    RemoteUpload(str(item["Key"]), str(item["UploadId"]))
                    for item in page.get("Uploads", [])
                )
        except NotImplementedByServerError:
            self.list_uploads_supported = False
            return None
        return uploads

    def list_parts(self, key: str, upload_id: str) -> dict[int, ListedPart] | None:
        """{part number: what the server says of it} for an upload, or None where the
        server does not implement ListParts (501, or 405): detected once, said once, and not
        asked again. Raise NoSuchUploadError if the upload is gone."""
        if self.list_parts_supported is False:
            return None
        parts: dict[int, ListedPart] = {}
        pages = self._pages(
            "ListParts",
            key,
            self.client.list_parts,
            {"Bucket": self.bucket, "Key": key, "UploadId": upload_id},
            lambda page: {"PartNumberMarker": page.get("NextPartNumberMarker", 0)},
        )
        try:
            for page in pages:
                self.list_parts_supported = True
                for item in page.get("Parts", []):
                    parts[int(item["PartNumber"])] = _listed_part(item)
        except NotImplementedByServerError as error:
            log.warning(
                "list_parts_unsupported",
                action="ListParts not supported by the server: resuming from our own records only",
                error=error.reason,
            )
            self.list_parts_supported = False
            return None
        return parts

    def list_keys(self, prefix: str) -> dict[str, int]:
        """{key: size} of every object under `prefix` (all pages)."""
        found: dict[str, int] = {}
        for page in self._pages(
            "ListObjectsV2",
            prefix,
            self.client.list_objects_v2,
            {"Bucket": self.bucket, "Prefix": prefix},
            lambda page: {"ContinuationToken": page["NextContinuationToken"]},
        ):
            for item in page.get("Contents", []):
                found[str(item["Key"])] = int(item["Size"])
        return found

    def _pages(
        self,
        operation: str,
        key: str,
        call: Callable[..., Page],
        arguments: dict[str, Any],
        next_markers: Callable[[Page], dict[str, Any]],
    ) -> Iterator[Page]:
        """Given a listing call and its first arguments, yield every page, each request
        through the retry loop. While a page says it is truncated, the next request adds
        the markers `next_markers` takes from it. Errors (classified) reach the caller."""
        arguments = dict(arguments)
        while True:
            page = self._call(operation, key, lambda: call(**arguments))
            yield page
            if not page.get("IsTruncated"):
                return
            arguments.update(next_markers(page))


def _listed_part(item: Mapping[str, Any]) -> ListedPart:
    """One entry of a ListParts page as a ListedPart."""
    size = item.get("Size")
    checksums = {
        algorithm: str(item[f"Checksum{name}"])
        for algorithm, name in S3_ALGORITHM_NAMES.items()
        if item.get(f"Checksum{name}")
    }
    return ListedPart(
        etag=str(item["ETag"]).strip('"'),
        size=int(size) if size is not None else None,
        checksums=checksums,
    )


def store_from_settings(
    destination: DestinationSettings,
    upload: UploadSettings,
    *,
    stop: threading.Event | None = None,
    on_retry: Callable[[TransferError, int, float], None] | None = None,
) -> S3Store:
    """Build the S3 store the settings describe (client, bandwidth cap, retries, extras)."""
    extra: dict[str, str] = {}
    if destination.storage_class:
        extra["StorageClass"] = destination.storage_class
    if destination.acl:
        extra["ACL"] = destination.acl
    client = make_client(destination, upload)
    direct = (
        sender_for(
            client,
            destination.bucket,
            connect_timeout=upload.connect_timeout,
            read_timeout=upload.read_timeout,
            max_idle=upload.concurrency + 4,
        )
        if upload.direct_requests
        else None
    )
    return S3Store(
        client,
        destination.bucket,
        limiter=TokenBucket(upload.max_bandwidth),
        retries=upload.retries,
        retry_delay=upload.retry_delay,
        conditional_writes=destination.conditional_writes,
        extra_args=extra,
        stop=stop,
        on_retry=on_retry,
        direct=direct,
    )
