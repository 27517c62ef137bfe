"""Direct requests: the agent's two bulk writes, PutObject and UploadPart, sent without
botocore's per-request machinery.

botocore spends about 1.4 ms of Python per request (parameter validation, a dozen event
hooks, serialization, its own signing call, urllib3, response parsing). For a session of
thousands of small files that is most of the agent's CPU (bench/results). A direct request
is one SigV4 signature computed by awscrt (C), one `http.client` request on a connection
kept alive for the next, and the status line and headers read back: about a third of that.

Only the answer the agent expects is handled here. Anything else is handed back:
- a 2xx with its ETag returns its headers;
- an error answer that is the server's verdict on the request (5xx, 429, 412, 501,
  NoSuchUpload, NoSuchKey, any 4xx with S3's XML <Code> but those in `_DECLINED_CODES`) becomes the
  `botocore.exceptions.ClientError` botocore would have raised, so `agent.s3errors` and the
  conditional-write policy see what they always saw;
- a timeout is raised as it is (retryable, as botocore's would be);
- any other answer (a 1xx or 3xx, a refusal this module may have caused: a signature, a
  header, access) and any other failure of the connection raise `Declined`, and the caller
  sends the same request through
  botocore, whose answer is then the one that counts. After `DECLINES_BEFORE_OFF` declines
  in a row that botocore then carried, direct requests are turned off for the process and
  that is said once: a proxy, a certificate or a server this module does not understand
  costs a few requests, never an upload.

Set `[upload] direct_requests = false` to send everything through botocore.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

import botocore.exceptions
import structlog
from awscrt import auth
from awscrt import http as crt_http
from botocore.awsrequest import AWSResponse, HTTPHeaders

from agent import __version__
from agent.checksums import S3_ALGORITHM_NAMES
from agent.throttle import Interrupted, ThrottledBody

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger("agent.direct")

USER_AGENT = f"ingest-agent/{__version__} direct"
DECLINES_BEFORE_OFF = 5
# Refusals that may be this module's own doing (its signature, its headers, its view of the
# endpoint): botocore is asked the same, and its answer counts. Any other error answer with
# S3's XML <Code> is the server's verdict on the request, which botocore would receive as is.
_DECLINED_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "AuthorizationHeaderMalformed",
        "IncompleteSignature",
        "InvalidAccessKeyId",
        "MissingSecurityHeader",
        "XAmzContentSHA256Mismatch",
        "InvalidRequest",
        "InvalidArgument",
        "AccessDenied",
    }
)
_SEND_BLOCK = 1024 * 1024
# botocore's keyword arguments for PutObject and UploadPart that map to one request header.
_HEADER_ARGUMENTS = {
    "ContentType": "Content-Type",
    "StorageClass": "x-amz-storage-class",
    "ACL": "x-amz-acl",
    "IfNoneMatch": "If-None-Match",
    "IfMatch": "If-Match",
    # The checksums the agent sends: ChecksumCRC32C → x-amz-checksum-crc32c, and so on.
    **{f"Checksum{name}": f"x-amz-checksum-{name.lower()}" for name in S3_ALGORITHM_NAMES.values()},
}
# Arguments the request line or body carry, not a header.
_CARRIED_ARGUMENTS = frozenset({"Bucket", "Key", "UploadId", "PartNumber", "ContentLength"})


class Declined(Exception):  # noqa: N818 - a hand-over, not a failure
    """This request is for botocore to send: the direct one failed in a way only botocore
    can judge (a dropped connection, a redirect, an unexpected refusal)."""


BodyOf = Callable[[bytes], ThrottledBody]


class _StaleConnectionError(Exception):
    """A reused connection failed: the server may have closed it while it was idle."""


@dataclass(frozen=True)
class Target:
    """Where requests for one bucket go: scheme, host[:port], and the path before the key
    ("/bucket/" for path-style addressing, "/" for a virtual-hosted bucket)."""

    scheme: str
    netloc: str
    base_path: str

    @classmethod
    def from_url(cls, url: str, probe_key: str) -> Target | None:
        """Learn the target from the URL botocore built for a PutObject of `probe_key`, so
        that the endpoint, the addressing style and the region's host name are its own."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.path.endswith("/" + probe_key):
            return None
        return cls(parts.scheme, parts.netloc, parts.path[: -len(probe_key)])


def headers_for(arguments: Mapping[str, Any]) -> dict[str, str] | None:
    """Given the keyword arguments of a PutObject or UploadPart, return the request headers
    they stand for, or None if one of them is not known here (botocore sends that one)."""
    headers: dict[str, str] = {}
    for name, value in arguments.items():
        if name in _CARRIED_ARGUMENTS or name == "Body":
            continue
        if name == "Metadata":
            for key, text in value.items():
                headers[f"x-amz-meta-{key}"] = str(text)
        elif name in _HEADER_ARGUMENTS:
            headers[_HEADER_ARGUMENTS[name]] = str(value)
        else:
            return None
    if not all(_printable(key) and _printable(value) for key, value in headers.items()):
        return None
    return headers


def _printable(text: str) -> bool:
    return text.isascii() and text.isprintable()


def quote_key(key: str) -> str:
    """A key as botocore writes it in the request path (percent-encoded, '/' and '~' kept)."""
    return urllib.parse.quote(key, safe="/~")


def client_error(
    status: int, reason: str, headers: Mapping[str, str], body: bytes, operation: str
) -> botocore.exceptions.ClientError:
    """The ClientError botocore raises for an S3 error answer: the Code and Message of the
    XML body, or the status itself as the code when there is no body (as botocore does)."""
    code, message = str(status), reason
    if body:
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            pass
        else:
            # "{*}": in S3's namespace or none (servers differ; botocore strips it too).
            code = root.findtext("{*}Code") or code
            message = root.findtext("{*}Message") or message
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": dict(headers)},
    }
    return botocore.exceptions.ClientError(response, operation)


class DirectSender:
    """Sends PutObject and UploadPart to one bucket over kept-alive connections."""

    def __init__(
        self,
        target: Target,
        region: str,
        credentials: Callable[[], tuple[str, str, str | None]],
        *,
        connect_timeout: float,
        read_timeout: float,
        max_idle: int,
        ssl_context: ssl.SSLContext | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.target = target
        self.region = region
        self._credentials = credentials
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl_context = ssl_context
        self._idle: queue.LifoQueue[http.client.HTTPConnection] = queue.LifoQueue(max_idle)
        self._now = now
        self._lock = threading.Lock()
        self._signing: tuple[tuple[str, str, str | None], auth.AwsSigningConfig] | None = None
        # Declines in a row that botocore then carried, per operation: one operation the
        # server refuses must not be hidden by the other's successes.
        self._declines: dict[str, int] = {}
        self.enabled = True

    # --- the requests -----------------------------------------------------------------------

    def put_object(
        self, key: str, data: bytes, headers: Mapping[str, str], *, body: BodyOf
    ) -> Mapping[str, str]:
        """PUT `data` (read through `body(data)`) at `key`; return the answer's headers
        (lower-case names)."""
        return self._send("PutObject", self._path(key), data, headers, body)

    def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        data: bytes,
        headers: Mapping[str, str],
        *,
        body: BodyOf,
    ) -> Mapping[str, str]:
        """Send `data` as part `number` of `upload_id`; return the answer's headers."""
        query = urllib.parse.urlencode(
            {"partNumber": str(number), "uploadId": upload_id}, quote_via=urllib.parse.quote
        )
        return self._send("UploadPart", f"{self._path(key)}?{query}", data, headers, body)

    def carried(self, operation: str) -> None:
        """botocore carried a request of `operation` this sender declined: one more toward
        turning off."""
        with self._lock:
            count = self._declines[operation] = self._declines.get(operation, 0) + 1
            off = self.enabled and count >= DECLINES_BEFORE_OFF
            if off:
                self.enabled = False
        if off:
            log.warning(
                "direct_requests_off",
                operation=operation,
                declines=count,
                action="direct requests kept failing where botocore succeeded: every request "
                "goes through botocore from now on (slower, nothing else changes); set "
                "[upload] direct_requests = false to skip them from the start",
            )
            self.close()

    def close(self) -> None:
        """Close every idle connection (one in use is closed when its request ends)."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def _path(self, key: str) -> str:
        return self.target.base_path + quote_key(key)

    def _send(
        self,
        operation: str,
        path: str,
        data: bytes,
        extra: Mapping[str, str],
        body: BodyOf,
    ) -> Mapping[str, str]:
        headers = crt_http.HttpHeaders(
            [
                ("Host", self.target.netloc),
                ("Content-Length", str(len(data))),
                ("User-Agent", USER_AGENT),
                *extra.items(),
            ]
        )
        request = crt_http.HttpRequest("PUT", path, headers)
        self.sign(request, data, extra)
        try:
            status, reason, answer, text = self._attempt(request, body(data), fresh=False)
        except _StaleConnectionError:
            # A kept-alive connection the server has since closed: once more on a new one,
            # with a new body, paid again (the bytes go out again).
            status, reason, answer, text = self._attempt(request, body(data), fresh=True)
        if 200 <= status < 300 and answer.get("etag"):
            with self._lock:
                self._declines[operation] = 0
            return answer
        verdict = self._verdict(status, reason, answer, text, operation)
        if verdict is None:
            raise Declined(f"HTTP {status} {reason}")
        raise verdict

    @staticmethod
    def _verdict(
        status: int, reason: str, answer: Mapping[str, str], text: bytes, operation: str
    ) -> botocore.exceptions.ClientError | None:
        """The server's verdict on a request that did not succeed, as botocore's ClientError,
        or None where botocore must be asked (a 1xx or 3xx, a 2xx without an ETag, a refusal
        this module may have caused, a 404 other than NoSuchUpload or NoSuchKey (an If-Match
        with no object), an unreadable 4xx)."""
        if status < 400:
            return None
        error = client_error(status, reason, answer, text, operation)
        if status >= 500 or status in (412, 429, 501):
            return error
        code = error.response["Error"]["Code"]
        if code == str(status) or code in _DECLINED_CODES:
            return None
        if status == 404 and code not in ("NoSuchUpload", "NoSuchKey"):
            return None  # NoSuchBucket: the bucket, or this module's view of the endpoint
        return error

    def _attempt(
        self, request: crt_http.HttpRequest, body: ThrottledBody, *, fresh: bool
    ) -> tuple[int, str, dict[str, str], bytes]:
        """One exchange on an idle connection (or a new one if `fresh` or none is idle).
        A timeout is raised as it is: botocore would reach the same verdict (retryable)
        after as long, and asking it again would double the wait the watchdog allows for.
        Any other failure raises `_StaleConnectionError` on a reused connection and
        `Declined` on a new one."""
        connection: http.client.HTTPConnection | None = None
        reused = False
        try:
            connection, reused = self._connection(fresh=fresh)
            return self._exchange(connection, request, body)
        except (Interrupted, TimeoutError):
            if connection is not None:
                connection.close()
            raise
        except (OSError, http.client.HTTPException) as error:
            if connection is not None:
                connection.close()
            if reused:
                raise _StaleConnectionError() from error
            raise Declined(f"{type(error).__name__}: {error}") from error

    def _exchange(
        self, connection: http.client.HTTPConnection, request: crt_http.HttpRequest, body: Any
    ) -> tuple[int, str, dict[str, str], bytes]:
        """Send the signed request with its body; return status, reason, headers and body.
        The connection goes back to the idle pool only after a success read whole, which
        the server keeps open, while direct requests are on; any other answer (a 1xx that
        is not 100 may be followed by the real one) closes it."""
        connection.putrequest("PUT", request.path, skip_host=True, skip_accept_encoding=True)
        for name, value in request.headers:
            connection.putheader(name, value)
        connection.endheaders()
        while block := body.read(_SEND_BLOCK):
            connection.send(block)
        response = connection.getresponse()
        text = response.read()
        answer = {name.lower(): value for name, value in response.getheaders()}
        if 200 <= response.status < 300 and not response.will_close and self.enabled:
            try:
                self._idle.put_nowait(connection)
            except queue.Full:
                connection.close()
        else:
            connection.close()
        return response.status, response.reason, answer, text

    def _connection(self, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (reused) or a new one."""
        if not fresh:
            try:
                return self._idle.get_nowait(), True
            except queue.Empty:
                pass
        if self._ssl_context is not None:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.target.netloc, timeout=self._connect_timeout, context=self._ssl_context
            )
        else:
            connection = http.client.HTTPConnection(
                self.target.netloc, timeout=self._connect_timeout
            )
        connection.connect()
        if connection.sock is not None:
            connection.sock.settimeout(self._read_timeout)
        return connection, False

    def sign(self, request: crt_http.HttpRequest, data: bytes, extra: Mapping[str, str]) -> None:
        """Sign `request` for now. The body is left unsigned (UNSIGNED-PAYLOAD) when a
        checksum header the server verifies covers it, as botocore does over https: signing
        it would read every byte once more. Without one (`server_checksums = false`), its
        SHA-256 is signed, so the server still checks the bytes."""
        covered = any(
            name.lower().startswith("x-amz-checksum-") or name.lower() == "content-md5"
            for name in extra
        )
        config = self._signing_config().replace(
            # awscrt takes the time when a config is made, not when it signs with it.
            date=self._now(),
            signed_body_value=(
                auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD
                if covered
                else hashlib.sha256(data).hexdigest()
            ),
        )
        auth.aws_sign_request(request, config).result()

    def _signing_config(self) -> auth.AwsSigningConfig:
        """The signing settings for the current credentials (refreshed ones get new ones)."""
        current = self._credentials()
        cached = self._signing
        if cached is not None and cached[0] == current:
            return cached[1]
        provider = auth.AwsCredentialsProvider.new_static(*current)
        config = auth.AwsSigningConfig(
            algorithm=auth.AwsSigningAlgorithm.V4,
            signature_type=auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
            credentials_provider=provider,
            region=self.region,
            service="s3",
            signed_body_value=auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD,
            signed_body_header_type=auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
            use_double_uri_encode=False,
            should_normalize_uri_path=False,
        )
        self._signing = (current, config)
        return config


def sender_for(
    client: S3Client,
    bucket: str,
    *,
    connect_timeout: float,
    read_timeout: float,
    max_idle: int,
) -> DirectSender | None:
    """A direct sender for `bucket` as `client` reaches it, or None where this module would
    not send what botocore sends (another signature version, no credentials, a proxy, TLS
    verification turned off); the reason is logged at debug level."""
    reason = _unsupported(client)
    target = None
    if reason is None:
        probe = "ingest-agent-probe"
        url = _put_object_url(client, bucket, probe)
        target = Target.from_url(url, probe) if url is not None else None
        reason = None if target is not None else f"endpoint not understood: {url}"
    if reason is not None or target is None:
        log.debug("direct_requests_unused", reason=reason)
        return None
    if _proxied(target):
        log.debug("direct_requests_unused", reason="a proxy is configured")
        return None
    context = None
    if target.scheme == "https":
        verify = getattr(getattr(client, "_endpoint", None), "http_session", None)
        verify = getattr(verify, "_verify", True)
        if verify is False:
            log.debug("direct_requests_unused", reason="TLS verification is off")
            return None
        try:
            context = ssl.create_default_context(
                cafile=verify if isinstance(verify, str) else _default_ca_bundle()
            )
        except (OSError, ssl.SSLError) as error:
            # botocore reports it on every request, as it always did: the daemon stays up.
            log.debug("direct_requests_unused", reason=f"CA bundle: {error}")
            return None
    signer_credentials = client._request_signer._credentials  # type: ignore[attr-defined]

    def credentials() -> tuple[str, str, str | None]:
        frozen = signer_credentials.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key, frozen.token

    return DirectSender(
        target,
        str(client.meta.region_name),
        credentials,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_idle=max_idle,
        ssl_context=context,
    )


def _unsupported(client: S3Client) -> str | None:
    """Why this module cannot send for `client`, or None."""
    config = client.meta.config
    signature = getattr(config, "signature_version", None)
    if signature not in (None, "s3v4", "v4"):
        return f"signature version {signature}"
    if not client.meta.region_name:
        return "no region"
    signer = getattr(client, "_request_signer", None)
    if getattr(signer, "_credentials", None) is None:
        return "no credentials"
    if getattr(config, "proxies", None):
        return "a proxy is configured"
    if getattr(config, "client_cert", None) is not None:
        return "a client certificate is configured"
    return None


class _NoBody:
    """The raw stream of an empty answer."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield b""


def _put_object_url(client: S3Client, bucket: str, key: str) -> str | None:
    """The URL botocore would send a PutObject of `key` to, learnt without sending it: a
    `before-send` handler (botocore's documented way to answer a request in its place) notes
    the URL and answers 200. A presigned URL is not the same: botocore presigns for the
    global endpoint where it sends to the region's."""
    seen: list[str] = []

    def answer(request: Any, **_: Any) -> Any:
        seen.append(str(request.url))
        return AWSResponse(str(request.url), 200, HTTPHeaders(), _NoBody())

    event, handler_id = "before-send.s3.PutObject", "ingest-agent-direct-probe"
    client.meta.events.register_first(event, answer, unique_id=handler_id)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    except Exception as error:  # whatever stops the probe, botocore sends everything
        log.debug("direct_requests_unused", reason=f"{type(error).__name__}: {error}")
        return None
    finally:
        client.meta.events.unregister(event, unique_id=handler_id)
    return seen[0] if seen else None


def _proxied(target: Target) -> bool:
    """Whether a proxy from the environment applies to the endpoint."""
    proxies = urllib.request.getproxies()
    if target.scheme not in proxies:
        return False
    host = target.netloc.rsplit(":", 1)[0] if ":" in target.netloc else target.netloc
    return not urllib.request.proxy_bypass(host)


def _default_ca_bundle() -> str | None:
    """The CA bundle botocore uses when none is configured (certifi's, or its own)."""
    from botocore.httpsession import get_cert_path  # noqa: PLC0415

    found = get_cert_path(True)
    return found if isinstance(found, str) and os.path.exists(found) else None
