"""The soak's fault-injecting proxy (`tests/chaos_proxy.py`), against a tiny local HTTP server
that answers as the test S3 server does (one answer per connection, then close). Fast: no S3
server, no agent; the soak itself runs the proxy in front of moto with botocore."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.chaos_proxy import ChaosProxy, FaultRates


@dataclass
class Seen:
    """One request as the upstream server got it."""

    method: str
    path: str
    body: bytes
    expected_length: int


class Upstream:
    """A threaded HTTP/1.1 server that records requests and answers `ok` with a
    Content-Length, closing each connection as werkzeug does."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = self.rfile.read(length)
                except OSError:
                    body = b""
                upstream.seen.append(Seen(self.command, self.path, body, length))
                if len(body) < length:
                    self.close_connection = True
                    return
                answer = f"ok {self.command} {len(body)}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer)

            def do_GET(self) -> None:
                self._handle()

            def do_PUT(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def do_HEAD(self) -> None:
                self._handle()

            def do_DELETE(self) -> None:
                self._handle()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.stop()


@pytest.fixture
def make_proxy(upstream: Upstream) -> Iterator[Any]:
    started: list[ChaosProxy] = []

    def build(rates: FaultRates | None = None, seed: int = 0) -> ChaosProxy:
        proxy = ChaosProxy(upstream.port, rates, seed=seed)
        proxy.start()
        started.append(proxy)
        return proxy

    yield build
    for proxy in started:
        proxy.stop()


def raw_exchange(proxy: ChaosProxy, head: str, body: bytes = b"", *, wait_continue: bool) -> bytes:
    """Send one request over a plain socket, as botocore does with Expect; return all the
    proxy sent back until it closed or went quiet."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(head.encode())
        received = b""
        if wait_continue:
            received = sock.recv(65536)
            if not received.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
                return received
        try:
            sock.sendall(body)
            sock.settimeout(1)
            while data := sock.recv(65536):
                received += data
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
        return received


def test_passes_requests_through_on_one_kept_alive_connection(
    make_proxy: Any, upstream: Upstream
) -> None:
    proxy: ChaosProxy = make_proxy()
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        connection.request("PUT", "/bucket/a%20key?partNumber=2&uploadId=x", body=b"x" * 300_000)
        first = connection.getresponse()
        assert (first.status, first.read()) == (200, b"ok PUT 300000")
        kept = connection.sock
        assert kept is not None
        connection.request("HEAD", "/bucket/a%20key")
        second = connection.getresponse()
        assert (second.status, second.read()) == (200, b"")
        connection.request("GET", "/bucket/a%20key")
        third = connection.getresponse()
        assert (third.status, third.read()) == (200, b"ok GET 0")
        assert connection.sock is kept
    finally:
        connection.close()
    assert [(seen.method, len(seen.body)) for seen in upstream.seen] == [
        ("PUT", 300_000),
        ("HEAD", 0),
        ("GET", 0),
    ]
    assert proxy.requests() == {"UploadPart": 1, "HeadObject": 1, "GetObject": 1}
    assert sum(proxy.counts().values()) == 0


def test_expect_continue_is_answered_then_the_body_forwarded(
    make_proxy: Any, upstream: Upstream
) -> None:
    proxy: ChaosProxy = make_proxy()
    head = (
        "PUT /bucket/key?partNumber=1&uploadId=u HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 5000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    answer = raw_exchange(proxy, head, b"y" * 5000, wait_continue=True)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ")
    assert b"Connection: close" in answer
    assert answer.endswith(b"ok PUT 5000")
    assert [len(seen.body) for seen in upstream.seen] == [5000]


ONLY = {
    "internal_error": FaultRates(internal_error=1.0),
    "service_unavailable": FaultRates(service_unavailable=1.0),
    "slow_down": FaultRates(slow_down=1.0),
}


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("internal_error", 500, "InternalError"),
        ("service_unavailable", 503, "ServiceUnavailable"),
        ("slow_down", 503, "SlowDown"),
    ],
)
def test_error_answers_are_s3_xml_and_never_reach_the_server(
    make_proxy: Any, upstream: Upstream, kind: str, status: int, code: str
) -> None:
    proxy: ChaosProxy = make_proxy(ONLY[kind])
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        for _ in range(2):  # the connection stays usable after an error
            connection.request("PUT", "/bucket/key", body=b"z" * 1000)
            response = connection.getresponse()
            body = response.read()
            assert response.status == status
            assert response.getheader("Content-Type") == "application/xml"
            assert f"<Code>{code}</Code>".encode() in body
    finally:
        connection.close()
    assert upstream.seen == []
    assert proxy.counts()[kind] == 2
    assert proxy.counts_by_operation() == {kind: {"PutObject": 2}}


def test_error_instead_of_continue_closes_the_connection(make_proxy: Any) -> None:
    proxy: ChaosProxy = make_proxy(FaultRates(slow_down=1.0))
    head = (
        "PUT /bucket/key?partNumber=1&uploadId=u HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )
    answer = raw_exchange(proxy, head, wait_continue=True)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"Connection: close" in answer
    assert b"<Code>SlowDown</Code>" in answer


def test_reset_mid_body_cuts_both_connections(make_proxy: Any, upstream: Upstream) -> None:
    proxy: ChaosProxy = make_proxy(FaultRates(reset_mid_body=1.0))
    head = "PUT /bucket/key HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"
    assert raw_exchange(proxy, head, b"b" * 200_000, wait_continue=False) == b""
    assert proxy.counts()["reset_mid_body"] == 1
    time.sleep(0.2)
    # The server got a body cut short (or nothing at all), never a whole one.
    assert all(len(seen.body) < seen.expected_length for seen in upstream.seen)


def test_stalls_delay_and_long_stalls_are_recorded_as_lost_answers(make_proxy: Any) -> None:
    proxy: ChaosProxy = make_proxy(
        FaultRates(long_stall=1.0, long_stall_seconds=(0.3, 0.3)),
    )
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        started = time.monotonic()
        connection.request("PUT", "/bucket/my%20key?partNumber=3&uploadId=u", body=b"p" * 10)
        response = connection.getresponse()
        assert response.status == 200
        response.read()
        assert time.monotonic() - started >= 0.3
    finally:
        connection.close()
    (lost,) = proxy.lost_answers()
    assert (lost.operation, lost.path, lost.part_number, lost.status) == (
        "UploadPart",
        "/bucket/my key",
        3,
        200,
    )
    assert proxy.counts()["long_stall"] == 1


def test_disabled_proxy_injects_nothing(make_proxy: Any, upstream: Upstream) -> None:
    proxy: ChaosProxy = make_proxy(FaultRates(internal_error=1.0))
    proxy.enabled = False
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        connection.request("GET", "/bucket/key")
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    assert sum(proxy.counts().values()) == 0
    assert len(upstream.seen) == 1


def test_the_same_seed_draws_the_same_faults(make_proxy: Any) -> None:
    def statuses(seed: int) -> list[int]:
        proxy: ChaosProxy = make_proxy(FaultRates(internal_error=0.3, slow_down=0.3), seed)
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        result = []
        try:
            for _ in range(20):
                connection.request("GET", "/bucket/key")
                response = connection.getresponse()
                response.read()
                result.append(response.status)
        finally:
            connection.close()
        return result

    first = statuses(7)
    assert first == statuses(7)
    assert {200, 500, 503} <= set(first)


def test_boosted_operations_get_more_faults(make_proxy: Any) -> None:
    proxy: ChaosProxy = make_proxy(FaultRates(internal_error=0.2))
    proxy.boost = {"HeadObject": 10.0}  # 2.0, capped: every HEAD gets a fault
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        for _ in range(10):
            connection.request("HEAD", "/bucket/key")
            response = connection.getresponse()
            response.read()
            assert response.status == 500
    finally:
        connection.close()
    assert proxy.counts_by_operation() == {"internal_error": {"HeadObject": 10}}


def test_rates_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="add up"):
        FaultRates(internal_error=0.6, stall=0.6)
    with pytest.raises(ValueError, match="at least 0"):
        FaultRates(slow_down=-0.1)
