"""Unit tests for agent/direct.py without a server: the headers a direct request carries, the
paths it writes (checked against the URL botocore itself presigns for the same key), the
errors it hands to the taxonomy, and where it refuses to be used."""

from __future__ import annotations

import hashlib
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from awscrt import http as crt_http
from botocore.config import Config
from hypothesis import given
from hypothesis import strategies as st

from agent.direct import DirectSender, Target, client_error, headers_for, quote_key, sender_for
from agent.errors import NoSuchUploadError, RetryableTransferError
from agent.s3errors import PreconditionFailedError, classify_error

ODD_KEYS = [
    "rig/a b/c+d.bin",
    "rig/100%/e=f&g?h#i.json",
    "rig/ünï/日本語/ファイル.tif",
    "rig/semi;colon,comma@at!$'()*[]{}.txt",
    "rig/tilde~dash-under_score.dat",
    "rig/double//slash",
]


def client(endpoint: str | None = None, **config: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(**config),
    )


def presigned_path(s3: Any, bucket: str, key: str) -> str:
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": key})
    return str(urllib.parse.urlsplit(url).path)


@pytest.mark.parametrize("key", ODD_KEYS)
def test_a_key_is_written_in_the_path_as_botocore_writes_it(key: str) -> None:
    s3 = client("http://127.0.0.1:9", s3={"addressing_style": "path"})
    sender = sender_for(s3, "bucket", connect_timeout=1, read_timeout=1, max_idle=1)
    assert sender is not None
    assert sender.target.base_path + quote_key(key) == presigned_path(s3, "bucket", key)


@given(st.text(min_size=1, max_size=40).filter(lambda text: "\x00" not in text))
def test_any_key_is_quoted_as_botocore_quotes_it(key: str) -> None:
    s3 = client("http://127.0.0.1:9", s3={"addressing_style": "path"})
    assert "/bucket/" + quote_key(key) == presigned_path(s3, "bucket", key)


def test_the_target_follows_botocores_addressing() -> None:
    path_style = sender_for(
        client("http://127.0.0.1:9", s3={"addressing_style": "path"}),
        "bucket",
        connect_timeout=1,
        read_timeout=1,
        max_idle=1,
    )
    assert path_style is not None
    assert path_style.target == Target("http", "127.0.0.1:9", "/bucket/")
    aws = sender_for(client(), "bucket", connect_timeout=1, read_timeout=1, max_idle=1)
    assert aws is not None
    assert aws.target == Target("https", "bucket.s3.eu-west-1.amazonaws.com", "/")
    assert Target.from_url("http://host/bucket/other?x=1", "probe") is None


def test_headers_stand_for_every_argument_or_for_none() -> None:
    arguments = {
        "Bucket": "b",
        "Key": "k",
        "ContentLength": 3,
        "ContentType": "application/octet-stream",
        "Metadata": {"ingest-agent": "1", "mtime": "1700000000"},
        "StorageClass": "STANDARD_IA",
        "ACL": "bucket-owner-full-control",
        "IfNoneMatch": "*",
        "ChecksumCRC32C": "AAAAAA==",
    }
    assert headers_for(arguments) == {
        "Content-Type": "application/octet-stream",
        "x-amz-meta-ingest-agent": "1",
        "x-amz-meta-mtime": "1700000000",
        "x-amz-storage-class": "STANDARD_IA",
        "x-amz-acl": "bucket-owner-full-control",
        "If-None-Match": "*",
        "x-amz-checksum-crc32c": "AAAAAA==",
    }
    # An argument this module does not know goes through botocore, as does a value that is
    # not printable ASCII (botocore's own encoding rules apply to it there).
    assert headers_for({**arguments, "ServerSideEncryption": "aws:kms"}) is None
    assert headers_for({**arguments, "Metadata": {"name": "ünï"}}) is None
    assert headers_for({**arguments, "Metadata": {"name": "a\nb"}}) is None


def test_an_error_answer_becomes_the_client_error_botocore_raises() -> None:
    body = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Reduce</Message></Error>"
    error = client_error(503, "Service Unavailable", {"x-amz-request-id": "1"}, body, "PutObject")
    assert error.response["Error"] == {"Code": "SlowDown", "Message": "Reduce"}
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert isinstance(classify_error(error, "PutObject", "k"), RetryableTransferError)
    bare = client_error(412, "Precondition Failed", {}, b"", "PutObject")
    assert bare.response["Error"] == {"Code": "412", "Message": "Precondition Failed"}
    assert isinstance(classify_error(bare, "PutObject", "k"), PreconditionFailedError)
    garbled = client_error(500, "Internal Server Error", {}, b"<Error><Code>", "UploadPart")
    assert garbled.response["Error"]["Code"] == "500"


def test_no_sender_where_it_would_not_send_what_botocore_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def sender(s3: Any) -> DirectSender | None:
        return sender_for(s3, "bucket", connect_timeout=1, read_timeout=1, max_idle=1)

    assert sender(client(signature_version="s3")) is None
    assert sender(client(proxies={"https": "http://proxy:3128"})) is None
    monkeypatch.setenv("https_proxy", "http://proxy:3128")
    assert sender(client()) is None
    monkeypatch.setenv("no_proxy", "amazonaws.com")
    assert sender(client()) is not None
    unverified = boto3.client(
        "s3",
        region_name="eu-west-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        verify=False,
    )
    assert sender(unverified) is None


def path_sender(now: Any = None, **config: Any) -> DirectSender:
    s3 = client("http://127.0.0.1:9", s3={"addressing_style": "path"}, **config)
    sender = sender_for(s3, "bucket", connect_timeout=1, read_timeout=1, max_idle=1)
    assert sender is not None
    if now is not None:
        sender._now = now
    return sender


def signed(sender: DirectSender, data: bytes, extra: dict[str, str]) -> dict[str, str]:
    request = crt_http.HttpRequest("PUT", "/bucket/k", crt_http.HttpHeaders([("Host", "h")]))
    sender.sign(request, data, extra)
    return {name.lower(): value for name, value in request.headers}


def test_every_request_is_signed_at_its_own_time() -> None:
    """awscrt fixes a signing config's time when the config is made: a sender that kept
    one would sign every request of a long-running daemon with its start time, and S3
    refuses requests signed more than 15 minutes ago (RequestTimeTooSkewed)."""
    times = iter(
        [datetime(2026, 12, 5, 10, 0, 0, tzinfo=UTC), datetime(2026, 12, 5, 11, 30, 0, tzinfo=UTC)]
    )
    sender = path_sender(now=lambda: next(times))
    first = signed(sender, b"x", {"x-amz-checksum-crc32c": "AAAAAA=="})
    second = signed(sender, b"x", {"x-amz-checksum-crc32c": "AAAAAA=="})
    assert first["x-amz-date"] == "20261205T100000Z"
    assert second["x-amz-date"] == "20261205T113000Z"


def test_the_body_is_signed_unless_a_checksum_header_covers_it() -> None:
    sender = path_sender()
    data = b"bytes the server must check"
    covered = signed(sender, data, {"x-amz-checksum-crc32c": "AAAAAA=="})
    assert covered["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    # server_checksums = false: no checksum header, so the signature carries the SHA-256.
    bare = signed(sender, data, {"Content-Type": "application/octet-stream"})
    assert bare["x-amz-content-sha256"] == hashlib.sha256(data).hexdigest()


def test_a_ca_bundle_that_cannot_be_read_leaves_the_requests_to_botocore() -> None:
    s3 = boto3.client(
        "s3",
        region_name="eu-west-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        verify="/nonexistent/ca-bundle.pem",
    )
    assert sender_for(s3, "b", connect_timeout=1, read_timeout=1, max_idle=1) is None


def test_an_error_in_s3s_namespace_keeps_its_code() -> None:
    body = (
        b'<Error xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Code>NoSuchUpload</Code>'
        b"<Message>gone</Message></Error>"
    )
    error = client_error(404, "Not Found", {}, body, "UploadPart")
    assert isinstance(classify_error(error, "UploadPart", "k"), NoSuchUploadError)
