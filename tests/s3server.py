"""A real S3 server for tests: moto's WSGI application served over HTTP on 127.0.0.1, behind
a thin middleware that logs requests and can inject what no server does on demand: 5xx
answers, a missing ListParts, ListMultipartUploads or If-None-Match (answered 501 or 405, as
real servers do), and a process kill right after the server has done a request's work (to
simulate a crash before the client records it)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from moto import backends as moto_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


def operation_of(method: str, path: str, query: dict[str, list[str]]) -> str:
    """Name the S3 operation of a request, as the tests count them. The agent's fleet beats
    (keys under `.ingest-agent/agents/`) are named apart, e.g. BeatPutObject, so counts and
    faults meant for session data are not consumed by them."""
    if "/.ingest-agent/agents/" in path:
        return "Beat" + operation_of(method, path.replace("/.ingest-agent/agents/", "/"), query)
    key = path.strip("/").count("/") >= 1
    if method == "PUT" and "partNumber" in query:
        return "UploadPart"
    if method == "PUT" and "tagging" in query:
        return "PutObjectTagging"
    if method == "PUT" and key:
        return "PutObject"
    if method == "POST" and "uploads" in query:
        return "CreateMultipartUpload"
    if method == "POST" and "uploadId" in query:
        return "CompleteMultipartUpload"
    if method == "DELETE" and "uploadId" in query:
        return "AbortMultipartUpload"
    if method == "GET" and "uploadId" in query:
        return "ListParts"
    if method == "GET" and "uploads" in query:
        return "ListMultipartUploads"
    if method == "HEAD" and key:
        return "HeadObject"
    if method == "GET" and key:
        return "GetObject"
    if method == "GET":
        return "ListObjects"
    return f"{method} {path}"


@dataclass
class Request:
    """One request the server received."""

    operation: str
    path: str
    query: dict[str, list[str]]
    status: int | None = None
    at: float = field(default_factory=time.monotonic)
    # The headers tests look at: If-Match, If-None-Match and User-Agent (lower-case names).
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def direct(self) -> bool:
        """Whether the agent sent this as a direct request (agent/direct.py), not botocore."""
        return "direct" in self.headers.get("user-agent", "")

    @property
    def part_number(self) -> int | None:
        """The part number of an UploadPart."""
        values = self.query.get("partNumber")
        return int(values[0]) if values else None


@dataclass
class Fault:
    """Answer the next `times` requests of `operation` with an error instead of serving them."""

    operation: str
    status: int
    code: str
    times: int
    # Only requests this accepts get the fault (None: every request of the operation).
    only: Callable[[Request], bool] | None = None


@dataclass
class KillAfter:
    """After the `nth` request of `operation` is served, SIGKILL `pid` before answering;
    or call `action` (for a test that changes a file mid-upload)."""

    operation: str
    nth: int
    pid: int | None = None
    action: Callable[[], None] | None = None
    seen: int = 0
    fired: threading.Event = field(default_factory=threading.Event)


def list_moto_modules_once() -> None:
    """moto lists its own package directory (a listdir and an isdir per entry, about 200) on
    every request, to find the backend a host names: about a third of its CPU per small PUT,
    measured. The list cannot change while a server runs, so it is read once here. Every
    client of the server meets the same speed-up (tests, and every tool `make bench` runs)."""
    if getattr(moto_backends.list_of_moto_modules, "read_once", False):
        return
    modules = tuple(moto_backends.list_of_moto_modules())

    def listed() -> Iterable[str]:
        return modules

    listed.read_once = True  # type: ignore[attr-defined]
    moto_backends.list_of_moto_modules = listed


class S3TestServer:
    """moto on a free loopback port, with a request log and fault injection."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.kills: list[KillAfter] = []
        self.list_parts_supported = True
        self.list_uploads_supported = True
        # What a server answers to an operation it lacks: (501, "NotImplemented") or, as some
        # S3-compatible servers do, (405, "MethodNotAllowed").
        self.missing_answer = (501, "NotImplemented")
        self.conditional_writes_supported = True
        # Operations answered only after `hang_released` is set (or 60 s): a server that
        # accepts the connection and then says nothing.
        self.hanging: set[str] = set()
        self.hang_released = threading.Event()
        # (monotonic time, bytes) for every chunk of request body the server read.
        self.received: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        list_moto_modules_once()
        self._moto = DomainDispatcherApplication(create_backend_app)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self._app, threaded=True, request_handler=MotoRequestHandler
        )
        self.port = int(self._server.server_port)
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and join the thread."""
        self.hang_released.set()
        self._server.shutdown()
        self._thread.join(10)

    def reset(self) -> None:
        """Forget requests and injected behaviour (not the stored objects)."""
        with self._lock:
            self.requests.clear()
            self.received.clear()
            self.faults.clear()
            self.kills.clear()
            self.list_parts_supported = True
            self.list_uploads_supported = True
            self.missing_answer = (501, "NotImplemented")
            self.conditional_writes_supported = True
            self.hanging.clear()
        self.hang_released.set()
        self.hang_released = threading.Event()

    def count(self, operation: str) -> int:
        """How many requests of `operation` were received."""
        with self._lock:
            return sum(1 for request in self.requests if request.operation == operation)

    def completed(self, operation: str) -> list[Request]:
        """The requests of `operation` the server answered with success."""
        with self._lock:
            return [
                request
                for request in self.requests
                if request.operation == operation
                and request.status is not None
                and 200 <= request.status < 300
            ]

    def of(self, operation: str) -> list[Request]:
        """The requests of `operation`, in order."""
        with self._lock:
            return [request for request in self.requests if request.operation == operation]

    @staticmethod
    def _error(start_response: StartResponse, status: int, code: str) -> Iterable[bytes]:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>injected by the test server</Message></Error>"
        ).encode()
        start_response(
            f"{status} {code}",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def _app(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        operation = operation_of(method, path, query)
        request = Request(operation, path, query)
        for name in ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_USER_AGENT"):
            if name in environ:
                request.headers[name[5:].lower().replace("_", "-")] = str(environ[name])
        environ["wsgi.input"] = _CountingInput(environ["wsgi.input"], self)
        if operation in self.hanging:
            with self._lock:
                self.requests.append(request)
            self.hang_released.wait(60)
            return self._error(start_response, 503, "SlowDown")
        with self._lock:
            self.requests.append(request)
            for fault in self.faults:
                if (
                    fault.operation == operation
                    and fault.times > 0
                    and (fault.only is None or fault.only(request))
                ):
                    fault.times -= 1
                    request.status = fault.status
                    return self._error(start_response, fault.status, fault.code)
            kill = None
            for candidate in self.kills:
                if candidate.operation == operation and not candidate.fired.is_set():
                    candidate.seen += 1
                    if candidate.seen == candidate.nth:
                        kill = candidate
        if (operation == "ListParts" and not self.list_parts_supported) or (
            operation == "ListMultipartUploads" and not self.list_uploads_supported
        ):
            request.status = self.missing_answer[0]
            return self._error(start_response, *self.missing_answer)
        if not self.conditional_writes_supported:
            environ.pop("HTTP_IF_NONE_MATCH", None)
        if kill is None:

            def noting(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
                request.status = int(status.split(maxsplit=1)[0])
                return start_response(status, headers, *rest)

            return self._moto(environ, noting)  # type: ignore[no-any-return]
        # Let moto do the work and drain its answer, then crash the client before it hears.
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(self._moto(environ, capture))
        if kill.pid is not None:
            os.kill(kill.pid, signal.SIGKILL)
        if kill.action is not None:
            kill.action()
        kill.fired.set()
        start_response(captured["status"], captured["headers"])
        return [body]


class _CountingInput:
    """A request body stream that notes when and how many bytes the server read."""

    def __init__(self, stream: Any, server: S3TestServer) -> None:
        self._stream = stream
        self._server = server

    def _note(self, data: bytes) -> bytes:
        if data:
            with self._server._lock:
                self._server.received.append((time.monotonic(), len(data)))
        return data

    def read(self, *size: int) -> bytes:
        return self._note(self._stream.read(*size))

    def readline(self, *size: int) -> bytes:
        return self._note(self._stream.readline(*size))

    def __iter__(self) -> Any:
        return (self._note(line) for line in self._stream)
