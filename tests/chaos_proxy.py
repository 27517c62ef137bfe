"""A fault-injecting HTTP proxy in front of the test S3 server, for the soak (`tests/soak.py`).

`tests/s3server.py` injects faults inside the server, after a request has arrived whole. What
a real network and a real S3 also do, and what only something between the two can do, is
here: a connection reset in the middle of a request body, an answer held back for seconds
(shorter than the client's read timeout, or longer, after the server has done the work), and
the ordinary 500 InternalError, 503 ServiceUnavailable and 503 SlowDown answers with S3's XML
error bodies, given before the server sees the request.

It speaks just enough HTTP/1.1 for botocore: keep-alive connections from the client, bodies
with a Content-Length, and `Expect: 100-continue` (which botocore sends for parts), answered
by the proxy itself. Every request goes to the server on a fresh connection (the test server
closes each one after its answer anyway); its answer, always delimited by a Content-Length,
chunked encoding or having no body, is passed back with the client's connection kept alive.

The random choices come from one seeded generator behind a lock. Threads draw from it in
the order requests arrive, so a run is reproducible in its rates and kinds of faults, not in
which request gets which fault.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

from tests.s3server import operation_of

# The kinds of fault, in the order their rates are drawn against.
FAULT_KINDS = (
    "internal_error",
    "service_unavailable",
    "slow_down",
    "reset_mid_body",
    "stall",
    "long_stall",
)
# The error answers: status, S3 error code, message (as S3 words them).
ERROR_ANSWERS = {
    "internal_error": (500, "InternalError", "We encountered an internal error. Please try again."),
    "service_unavailable": (503, "ServiceUnavailable", "Please reduce your request rate."),
    "slow_down": (503, "SlowDown", "Please reduce your request rate."),
}
_REASONS = {500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}
MAX_HEAD = 64 * 1024
CHUNK = 256 * 1024


@dataclass(frozen=True)
class FaultRates:
    """The probability, per request, of each kind of fault (their sum at most 1), and how
    long stalls last. A `stall` is held for less than the client's read timeout and only
    delays; a `long_stall` is held for longer, so the client gives up on an answer the server
    has already acted on."""

    internal_error: float = 0.0
    service_unavailable: float = 0.0
    slow_down: float = 0.0
    reset_mid_body: float = 0.0
    stall: float = 0.0
    long_stall: float = 0.0
    stall_seconds: tuple[float, float] = (0.5, 2.0)
    long_stall_seconds: tuple[float, float] = (6.0, 8.0)

    def __post_init__(self) -> None:
        if any(self.rate(kind) < 0 for kind in FAULT_KINDS) or self.total() > 1:
            raise ValueError("fault rates must be at least 0 and add up to at most 1")

    def rate(self, kind: str) -> float:
        """The rate of one kind."""
        return float(getattr(self, kind))

    def total(self) -> float:
        """The probability that a request gets any fault."""
        return sum(self.rate(kind) for kind in FAULT_KINDS)


@dataclass(frozen=True)
class LostAnswer:
    """A request the server answered while the proxy held the answer past the client's
    timeout: the server acted, the client never heard. The soak uses these to tell parts
    sent again because of a lost answer from parts sent again because of a kill. `path` is
    spelled as the server's request log spells it (WSGI's PATH_INFO)."""

    operation: str
    path: str
    part_number: int | None
    status: int


@dataclass(frozen=True)
class FaultEvent:
    """One fault injected: when (monotonic seconds), which kind, on which request."""

    at: float
    kind: str
    operation: str
    path: str
    part_number: int | None
    upload_id: str | None


@dataclass
class _Request:
    """One request's head, parsed."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    path: str = field(init=False)
    query: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.target)
        # WSGI's PATH_INFO: percent-decoded bytes shown as latin-1, as the server logs it.
        self.path = unquote_to_bytes(parts.path).decode("latin-1")
        self.query = parse_qs(parts.query, keep_blank_values=True)

    @classmethod
    def parse(cls, head: bytes) -> _Request:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        return cls(method, target, version, headers)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def content_length(self) -> int:
        value = self.header("Content-Length")
        return int(value) if value else 0

    @property
    def chunked(self) -> bool:
        return "chunked" in (self.header("Transfer-Encoding") or "").lower()

    @property
    def expects_continue(self) -> bool:
        return (self.header("Expect") or "").lower() == "100-continue"

    @property
    def keep_alive(self) -> bool:
        connection = (self.header("Connection") or "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"

    @property
    def operation(self) -> str:
        return operation_of(self.method, self.path, self.query)

    @property
    def part_number(self) -> int | None:
        values = self.query.get("partNumber")
        return int(values[0]) if values else None

    def forwarded_head(self) -> bytes:
        """The head sent to the server: no Expect (the proxy answered it) and a connection
        closed after one answer."""
        dropped = {"expect", "connection", "keep-alive", "proxy-connection"}
        lines = [f"{self.method} {self.target} {self.version}"]
        lines += [f"{name}: {value}" for name, value in self.headers if name.lower() not in dropped]
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Reader:
    """Buffered reads from a socket: a head up to its blank line, then exact byte counts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def head(self) -> bytes | None:
        """The next head without its blank line; None at a clean end of the stream."""
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD:
                raise ValueError("request head too large")
            data = self.sock.recv(CHUNK)
            if not data:
                if self.buffer.strip():
                    raise ConnectionError("stream ended inside a head")
                return None
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def read(self, most: int) -> bytes:
        """Up to `most` bytes (at least one unless the stream ended)."""
        if self.buffer:
            data, self.buffer = self.buffer[:most], self.buffer[most:]
            return data
        return self.sock.recv(min(most, CHUNK))


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN, as a crashed peer or a middlebox does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def error_answer(status: int, code: str, message: str, *, head_only: bool, close: bool) -> bytes:
    """An S3 error answer: the XML body S3 sends (none to a HEAD, as S3 does)."""
    request_id = os.urandom(8).hex().upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>chaos-proxy</HostId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, code)}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {0 if head_only else len(body)}\r\n"
        f"x-amz-request-id: {request_id}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    ).encode()
    return head if head_only else head + body


class ChaosProxy:
    """The proxy: `start()`, point the client at `url`, `stop()`. Faults are injected while
    `enabled` is true, at `rates`; `counts()` says how many of each kind were."""

    def __init__(
        self,
        upstream_port: int,
        rates: FaultRates | None = None,
        *,
        seed: int = 0,
        boost: dict[str, float] | None = None,
        upstream_host: str = "127.0.0.1",
        idle_timeout: float = 120.0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rates = rates or FaultRates()
        # Operations whose fault rates are multiplied (the total kept at most 1): a run has
        # few parts among many small PUTs, and parts are where resuming is tested.
        self.boost = dict(boost or {})
        self.enabled = True
        self.idle_timeout = idle_timeout
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._by_operation: Counter[tuple[str, str]] = Counter()
        self._requests: Counter[str] = Counter()
        self._lost: list[LostAnswer] = []
        self._events: list[FaultEvent] = []
        self._in_flight = 0
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept, name="chaos-accept", daemon=True)

    # --- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Accept connections in a background thread."""
        self._acceptor.start()

    def stop(self) -> None:
        """Stop accepting, cut every open connection, end stalls, join the threads."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            open_sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(5)
        for thread in threads:
            thread.join(5)

    # --- what happened ------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Faults injected so far, by kind (every kind present)."""
        with self._lock:
            return {kind: self._counts[kind] for kind in FAULT_KINDS}

    def counts_by_operation(self) -> dict[str, dict[str, int]]:
        """Faults injected so far, by kind, then by S3 operation."""
        with self._lock:
            result: dict[str, dict[str, int]] = {}
            for (kind, operation), number in sorted(self._by_operation.items()):
                result.setdefault(kind, {})[operation] = number
            return result

    def requests(self) -> dict[str, int]:
        """Requests received from the client, by S3 operation."""
        with self._lock:
            return dict(self._requests)

    def events(self) -> list[FaultEvent]:
        """Every fault injected, in order: for reading a failure's story."""
        with self._lock:
            return list(self._events)

    def in_flight(self) -> int:
        """Requests being served at this moment (a kill now interrupts them)."""
        with self._lock:
            return self._in_flight

    def lost_answers(self) -> list[LostAnswer]:
        """The answers held past the client's timeout (long stalls), in order."""
        with self._lock:
            return list(self._lost)

    # --- decisions ----------------------------------------------------------------------------

    def _choose(self, operation: str) -> str | None:
        with self._lock:
            self._requests[operation] += 1
            if not self.enabled:
                return None
            total = self.rates.total()
            factor = self.boost.get(operation, 1.0)
            if total * factor > 1:
                factor = 1 / total
            draw = self._rng.random()
            for kind in FAULT_KINDS:
                draw -= self.rates.rate(kind) * factor
                if draw < 0:
                    return kind
            return None

    def _uniform(self, low: float, high: float) -> float:
        with self._lock:
            return self._rng.uniform(low, high)

    def _count(self, kind: str, request: _Request) -> None:
        with self._lock:
            self._counts[kind] += 1
            self._by_operation[(kind, request.operation)] += 1
            self._events.append(
                FaultEvent(
                    time.monotonic(),
                    kind,
                    request.operation,
                    request.path,
                    request.part_number,
                    next(iter(request.query.get("uploadId", [])), None),
                )
            )

    # --- serving ------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            with self._lock:
                self._sockets.add(client)
                self._threads = [item for item in self._threads if item.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(self.idle_timeout)
        reader = _Reader(client)
        try:
            while not self._stopping.is_set():
                head = reader.head()
                if head is None or not self._exchange(client, reader, _Request.parse(head)):
                    return
        except (OSError, ValueError):
            # The client went away (a SIGKILLed agent), timed out, or spoke nonsense: this
            # connection is over, nothing else is.
            return
        finally:
            with self._lock:
                self._sockets.discard(client)
            client.close()

    def _exchange(self, client: socket.socket, reader: _Reader, request: _Request) -> bool:
        """Serve one request; return whether the client's connection stays open."""
        with self._lock:
            self._in_flight += 1
        try:
            return self._serve_one(client, reader, request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _serve_one(self, client: socket.socket, reader: _Reader, request: _Request) -> bool:
        operation = request.operation
        if request.chunked:
            # botocore sends S3 bodies with a Content-Length; anything else is answered
            # plainly rather than guessed at.
            client.sendall(
                error_answer(501, "NotImplemented", "chunked bodies", head_only=False, close=True)
            )
            return False
        kind = self._choose(operation)
        length = request.content_length
        head_only = request.method == "HEAD"
        if kind in ERROR_ANSWERS:
            self._count(kind, request)
            status, code, message = ERROR_ANSWERS[kind]
            if request.expects_continue and length > 0:
                # What S3 does when it refuses before the body: answer instead of
                # `100 Continue`, and close, since the body was never sent.
                client.sendall(error_answer(status, code, message, head_only=False, close=True))
                return False
            self._drain(reader, length)
            client.sendall(
                error_answer(
                    status, code, message, head_only=head_only, close=not request.keep_alive
                )
            )
            return request.keep_alive
        if kind == "reset_mid_body" and length == 0:
            # No body to cut: the connection dies before the request reaches the server.
            self._count(kind, request)
            _reset(client)
            return False
        if request.expects_continue:
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        upstream = socket.create_connection(self.upstream, timeout=60)
        try:
            upstream.sendall(request.forwarded_head())
            if kind == "reset_mid_body":
                cut = int(length * self._uniform(0.05, 0.95))
                if not self._relay(reader, upstream, cut):
                    return False
                self._count(kind, request)
                _reset(client)
                _reset(upstream)
                return False
            if not self._relay(reader, upstream, length):
                return False
            answer = _Reader(upstream)
            status, head = self._answer_head(answer)
            if kind in ("stall", "long_stall"):
                self._count(kind, request)
                low, high = getattr(self.rates, f"{kind}_seconds")
                if kind == "long_stall":
                    with self._lock:
                        self._lost.append(
                            LostAnswer(operation, request.path, request.part_number, status)
                        )
                self._stopping.wait(self._uniform(low, high))
            return self._pass_answer(client, answer, request, status, head)
        finally:
            upstream.close()

    @staticmethod
    def _drain(reader: _Reader, length: int) -> None:
        left = length
        while left > 0:
            data = reader.read(left)
            if not data:
                raise ConnectionError("client ended inside a body")
            left -= len(data)

    @staticmethod
    def _relay(reader: _Reader, upstream: socket.socket, length: int) -> bool:
        """Pass `length` body bytes on; False if the client ended first."""
        left = length
        while left > 0:
            data = reader.read(left)
            if not data:
                return False
            upstream.sendall(data)
            left -= len(data)
        return True

    @staticmethod
    def _answer_head(answer: _Reader) -> tuple[int, list[str]]:
        """The server's final answer head (interim 1xx skipped): status and lines."""
        while True:
            raw = answer.head()
            if raw is None:
                raise ConnectionError("the server closed without answering")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            if status >= 200:
                return status, lines

    @staticmethod
    def _pass_answer(
        client: socket.socket, answer: _Reader, request: _Request, status: int, head: list[str]
    ) -> bool:
        """Send the answer on, keeping the client's connection open when the answer's end is
        known without the server closing; return whether it stays open."""
        headers = {line.partition(":")[0].strip().lower(): line for line in head[1:]}
        length_line = headers.get("content-length")
        bodiless = request.method == "HEAD" or status in (204, 304)
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        delimited = bodiless or length_line is not None or chunked
        keep = delimited and request.keep_alive
        lines = [head[0]]
        lines += [line for line in head[1:] if not line.lower().startswith("connection:")]
        lines.append(f"Connection: {'keep-alive' if keep else 'close'}")
        client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if bodiless:
            return keep
        if length_line is not None and not chunked:
            length = int(length_line.partition(":")[2])
            return ChaosProxy._relay(answer, client, length) and keep
        # Chunked or unknown length: the server ends it by closing, so pass all it sends.
        while data := answer.read(CHUNK):
            client.sendall(data)
        return keep
