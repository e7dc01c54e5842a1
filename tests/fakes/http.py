"""Shared plumbing of the fakes: a real HTTP(S) server on loopback in a daemon thread.

Each fake subclasses :class:`FakeServer` and implements :meth:`FakeServer.handle`, a plain
function from :class:`Request` to :class:`Response`. The server is a stdlib
``ThreadingHTTPServer`` (HTTP/1.1, keep-alive), so it answers sync tests, Trio tests and child
processes alike. Fakes hold mutable state behind ``self.lock``; tests may change it while the
server runs. Every request is recorded (method, path, status, whether an ``Authorization``
header came — never its value) in ``server.requests``.
"""

from __future__ import annotations

import json
import shutil
import socket
import socketserver
import ssl
import tempfile
import threading
import traceback
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

import trustme


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, list[str]]
    headers: Message
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def form(self) -> dict[str, str]:
        """The body as ``application/x-www-form-urlencoded`` (first value of each key)."""
        parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {key: values[0] for key, values in parsed.items()}

    def bearer(self) -> str | None:
        """The token of an ``Authorization: bearer …`` header (scheme case-insensitive)."""
        value = self.header("Authorization")
        if value is None:
            return None
        scheme, _, token = value.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, document: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(document).encode(), "application/json", headers or {})


def text_response(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, text.encode(), "text/plain", headers or {})


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: str
    status: int
    authorization: bool  # an Authorization header was present (its value is never kept)


@dataclass
class _Injection:
    method: str | None
    path: str
    response: Response
    times: int | None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _HTTPServer

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, not in the accept loop
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=unquote(split.path),
            query=parse_qs(split.query, keep_blank_values=True),
            headers=self.headers,
            body=self._read_body(),
        )
        response = self.server.fake._respond(request, split.query)
        self.send_response(response.status)
        if response.content_type and response.status != 304:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers.items():
            self.send_header(name, value)
        body = b"" if response.status == 304 else response.body
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeServer, ssl_context: ssl.SSLContext | None) -> None:
        self.fake = fake
        self.ssl_context = ssl_context
        super().__init__((fake.host, 0), _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's getfqdn (a DNS lookup)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # peers that vanish mid-request or fail the TLS handshake are not our business


class FakeServer:
    """Base of the fakes: ``with Fake() as fake:`` serves on ``fake.url`` until the block exits."""

    name = "fake"

    def __init__(self, *, tls: trustme.CA | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.tls = tls
        self.lock = threading.RLock()
        self._records: list[RequestRecord] = []
        self._injections: list[_Injection] = []
        self._connections: set[socket.socket] = set()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tmp: Path | None = None
        self.ca_pem_path: Path | None = None  # the CA file to configure clients with (TLS only)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Self:
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.issue_cert(self.host, "localhost").configure_cert(context)
            self._tmp = Path(tempfile.mkdtemp(prefix=f"pcapd-{self.name}-"))
            self.ca_pem_path = self._tmp / "ca.pem"
            self.tls.cert_pem.write_to_path(str(self.ca_pem_path))
        self._server = _HTTPServer(self, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self.lock:
            connections = list(self._connections)
        for conn in connections:  # keep-alive connections would otherwise outlive the server
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{self.name} is not running (use it as a context manager)")
        return self._server.server_port

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    # -- request log and fault injection -------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request served so far, oldest first."""
        with self.lock:
            return list(self._records)

    def count(self, path: str | None = None, method: str | None = None) -> int:
        return sum(1 for r in self.requests
                   if (path is None or r.path == path) and (method is None or r.method == method))

    def clear_requests(self) -> None:
        with self.lock:
            self._records.clear()

    def inject(self, path: str, response: Response, *, method: str | None = None,
               times: int | None = 1) -> None:
        """Answer the next ``times`` requests to ``path`` (None: all of them) with ``response``."""
        with self.lock:
            self._injections.append(_Injection(method, path, response, times))

    def _respond(self, request: Request, query: str) -> Response:
        response = self._injected(request)
        if response is None:
            try:
                response = self.handle(request)
            except Exception:
                response = text_response(500, traceback.format_exc())
        with self.lock:
            self._records.append(RequestRecord(
                request.method, request.path, query, response.status,
                request.header("Authorization") is not None))
        return response

    def _injected(self, request: Request) -> Response | None:
        with self.lock:
            for injection in self._injections:
                if injection.path == request.path and injection.method in (None, request.method):
                    if injection.times is not None:
                        injection.times -= 1
                        if injection.times <= 0:
                            self._injections.remove(injection)
                    return injection.response
        return None

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self.lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def handle(self, request: Request) -> Response:
        raise NotImplementedError
