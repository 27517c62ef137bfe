"""Direct requests (agent/direct.py) against moto's server on loopback: PutObject and
UploadPart go out without botocore, arrive whole under the right keys, and every answer
that is not a success reaches the same error policy as before, or is handed to botocore."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from agent.direct import DECLINES_BEFORE_OFF, Declined, DirectSender, Target
from agent.errors import PermanentTransferError, RetryableTransferError
from agent.s3errors import PreconditionFailedError
from agent.throttle import ThrottledBody, TokenBucket
from agent.transfer import S3Store, store_from_settings
from tests.chaos_proxy import ChaosProxy
from tests.conftest import Rig
from tests.s3server import Fault, Request, S3TestServer
from tests.test_sync import age, sync, write_session

ODD_NAMES = [
    "a b+c.bin",
    "100%=e&f?g#h.json",
    "ünï-日本語.tif",
    "semi;colon,comma@at!$'()*[]{}.txt",
    "tilde~dash.dat",
]


def store_of(rig: Rig) -> S3Store:
    settings = rig.settings()
    return store_from_settings(settings.destination, settings.upload)


def writes(s3: S3TestServer) -> list[Request]:
    return [r for r in s3.requests if r.operation in ("PutObject", "UploadPart")]


def is_direct(request: Request) -> bool:
    return request.direct


def test_files_and_parts_go_direct_and_arrive_whole(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig()
    files = {f"frame-{n:03}.tif": os.urandom(3000 + n) for n in range(20)}
    files["continuous.dat"] = os.urandom(12 * 1024 * 1024 + 7)
    for name in ODD_NAMES:
        files[name] = os.urandom(100)
    age(write_session(rig, "mouse1/s1", files), 60)

    summary = sync(rig)

    assert summary["sessions_uploaded"] == 1, summary
    sent = writes(s3)
    assert {r.operation for r in sent} == {"PutObject", "UploadPart"}
    assert all(r.direct for r in sent), [(r.operation, r.headers) for r in sent]
    # Everything else (multipart set-up and completion, listings) stays with botocore.
    assert not any(r.direct for r in s3.requests if r not in sent)
    for name, data in files.items():
        key = f"rig-01/ephys/mouse1/s1/{name}"
        body = client.get_object(Bucket=rig.bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest(), name


def test_direct_requests_off_sends_everything_through_botocore(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    rig = make_rig(upload_extra="direct_requests = false")
    age(write_session(rig, "mouse1/s1", {"a.bin": b"a" * 100, "b.bin": b"b" * 200}), 60)

    summary = sync(rig)

    assert summary["sessions_uploaded"] == 1, summary
    assert writes(s3) and not any(r.direct for r in s3.requests)
    body = client.get_object(Bucket=rig.bucket, Key="rig-01/ephys/mouse1/s1/b.bin")["Body"]
    assert body.read() == b"b" * 200


def test_server_errors_meet_the_same_policy(make_rig: Callable[..., Rig], s3: S3TestServer) -> None:
    """A 503 is retried as before (no request sent twice for it); a 412 is a refused
    condition; a 400 RequestTimeout is retried with backoff; a refusal the direct path may
    have caused (403) is asked again through botocore, and botocore's answer is the verdict."""
    store = store_of(make_rig())
    s3.faults.append(Fault("PutObject", 503, "SlowDown", 2))
    assert store.put("k/retried", b"x" * 10, metadata={})
    assert [r.status for r in writes(s3)] == [503, 503, 200]
    assert all(r.direct for r in writes(s3))

    s3.reset()
    with pytest.raises(PreconditionFailedError):
        store.put("k/retried", b"y" * 10, metadata={}, only_if_absent=True)
    assert [(r.status, r.direct) for r in writes(s3)] == [(412, True)]

    s3.reset()
    s3.faults.append(Fault("PutObject", 400, "RequestTimeout", 1))
    store.put("k/slow", b"s" * 10, metadata={})
    assert [(r.status, r.direct) for r in writes(s3)] == [(400, True), (200, True)]

    s3.reset()
    s3.faults.append(Fault("PutObject", 403, "AccessDenied", 2))
    with pytest.raises(PermanentTransferError, match="AccessDenied"):
        store.put("k/denied", b"z" * 10, metadata={})
    assert [(r.status, r.direct) for r in writes(s3)] == [(403, True), (403, False)]


def test_declines_carried_by_botocore_turn_direct_requests_off_once(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    """A server (or a proxy, a certificate) that refuses direct requests and accepts
    botocore's costs a few doubled requests, then none, and is said once."""
    rig = make_rig()
    store = store_of(rig)
    s3.faults.append(Fault("PutObject", 400, "InvalidRequest", 1000, only=is_direct))

    with structlog.testing.capture_logs() as logs:
        for n in range(DECLINES_BEFORE_OFF + 3):
            store.put(f"k/{n}", bytes([n]) * 10, metadata={})

    assert [e["event"] for e in logs].count("direct_requests_off") == 1
    direct = [r for r in writes(s3) if r.direct]
    assert len(direct) == DECLINES_BEFORE_OFF
    assert len(writes(s3)) == 2 * DECLINES_BEFORE_OFF + 3
    for n in range(DECLINES_BEFORE_OFF + 3):
        body = client.get_object(Bucket=rig.bucket, Key=f"k/{n}")["Body"].read()
        assert body == bytes([n]) * 10


@pytest.fixture
def keeping_proxy(s3: S3TestServer) -> Iterator[ChaosProxy]:
    """moto's server closes every connection after one answer; this proxy in front of it
    keeps them alive as AWS and MinIO do, and closes one idle for 0.3 s, as they do later."""
    proxy = ChaosProxy(s3.port, idle_timeout=0.3)
    proxy.start()
    yield proxy
    proxy.stop()


def test_connections_are_kept_and_one_closed_while_idle_is_replaced(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any, keeping_proxy: ChaosProxy
) -> None:
    """The next request finds the kept connection closed by the server's idle timeout and
    goes again on a new one: no error, no request through botocore, nothing turned off."""
    rig = make_rig()
    rig.config.write_text(rig.config.read_text().replace(s3.url, keeping_proxy.url))
    store = store_of(rig)
    assert store.direct is not None
    for n in range(3):
        store.put(f"k/{n}", bytes([n]) * 10, metadata={})
    assert store.direct._idle.qsize() == 1, "one connection, kept for the next request"
    time.sleep(0.6)

    store.put("k/after-idle", b"2" * 10, metadata={})

    assert client.get_object(Bucket=rig.bucket, Key="k/after-idle")["Body"].read() == b"2" * 10
    # The bytes sent on the closed connection and again on the new one are both paid for.
    assert store.limiter.taken == 3 * 10 + 2 * 10
    assert len(writes(s3)) == 4
    assert all(r.direct for r in writes(s3))
    assert store.direct.enabled


def test_a_timeout_is_retried_not_asked_again_through_botocore(
    make_rig: Callable[..., Rig], s3: S3TestServer
) -> None:
    """A server that takes the request and says nothing: the direct request times out and
    that is the verdict (retryable), as botocore's would be. Sending it again through
    botocore at once would double the wait the systemd watchdog allows for a stalled upload."""
    rig = make_rig(upload_extra='read_timeout = "0.5s"\nretries = 0')
    store = store_of(rig)
    s3.hanging.add("PutObject")

    with pytest.raises(RetryableTransferError, match="Timeout"):
        store.put("k/hung", b"h" * 10, metadata={})

    assert [r.direct for r in writes(s3)] == [True]


def test_one_operation_declined_throughout_is_not_hidden_by_the_others_successes(
    make_rig: Callable[..., Rig], s3: S3TestServer
) -> None:
    store = store_of(make_rig())
    upload_id = store.create_multipart("k/big", metadata={}, checksum_algorithm=None)
    s3.faults.append(Fault("UploadPart", 400, "InvalidRequest", 1000, only=is_direct))

    with structlog.testing.capture_logs() as logs:
        for number in range(1, DECLINES_BEFORE_OFF + 2):
            store.put(f"k/small-{number}", b"s" * 10, metadata={})
            store.upload_part("k/big", upload_id, number, b"p" * 10, None)

    assert [e.get("operation") for e in logs if e["event"] == "direct_requests_off"] == [
        "UploadPart"
    ]
    parts = [r for r in writes(s3) if r.operation == "UploadPart"]
    assert sum(r.direct for r in parts) == DECLINES_BEFORE_OFF
    assert len(parts) == 2 * DECLINES_BEFORE_OFF + 1


class ScriptedServer:
    """A loopback server answering each request with the next of `answers` (raw HTTP), then
    closing the connection: the answers moto never gives."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = list(answers)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += connection.recv(65536)
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
                body = head.split(b"\r\n\r\n", 1)[1]
                while len(body) < length:
                    body += connection.recv(65536)
                connection.sendall(self.answers.pop(0))
                time.sleep(0.3)

    def stop(self) -> None:
        self.answers.clear()
        self.listener.close()
        self.thread.join(5)


@pytest.mark.parametrize(
    "answer",
    [
        # An early 1xx (not 100): http.client hands it back as the answer; the real one
        # follows on the same socket and must not become the next request's answer.
        b'HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nETag: "x"\r\n'
        b"Content-Length: 0\r\n\r\n",
        # A success without an ETag: nothing to record as the object's.
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        # A redirect (a bucket in another region).
        b"HTTP/1.1 301 Moved Permanently\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["early-hints", "no-etag", "redirect"],
)
def test_answers_this_module_cannot_judge_are_declined_and_not_kept(answer: bytes) -> None:
    server = ScriptedServer([answer])
    sender = DirectSender(
        Target("http", f"127.0.0.1:{server.port}", "/bucket/"),
        "us-east-1",
        lambda: ("AKIDEXAMPLE", "secret", None),
        connect_timeout=2,
        read_timeout=2,
        max_idle=2,
    )
    try:
        with pytest.raises(Declined):
            sender.put_object(
                "k", b"data", {}, body=lambda data: ThrottledBody(data, TokenBucket(0))
            )
        # Only a connection whose answer was a whole success is used again.
        assert sender._idle.qsize() == (1 if answer.startswith(b"HTTP/1.1 200") else 0)
    finally:
        server.stop()


def test_a_server_without_conditional_puts_is_answered_on_the_direct_path(
    make_rig: Callable[..., Rig], s3: S3TestServer, client: Any
) -> None:
    """501 NotImplemented to If-None-Match is the server's verdict: the header is dropped,
    said once, and the write goes again without it, direct both times."""
    rig = make_rig()
    store = store_of(rig)
    s3.faults.append(Fault("PutObject", 501, "NotImplemented", 1))

    with structlog.testing.capture_logs() as logs:
        store.put("k/plain", b"p" * 10, metadata={}, only_if_absent=True)

    assert [e["event"] for e in logs].count("conditional_writes_unsupported") == 1
    assert store.conditional_writes is False
    sent = writes(s3)
    assert [(r.status, r.direct, "if-none-match" in r.headers) for r in sent] == [
        (501, True, True),
        (200, True, False),
    ]
    assert client.get_object(Bucket=rig.bucket, Key="k/plain")["Body"].read() == b"p" * 10
