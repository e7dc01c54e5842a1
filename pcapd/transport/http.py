"""Plain HTTP/1.1 on the WebSocket port: ``/status`` for load balancers, downloads, metrics.

Theory of operation: every connection to a pcapd port opens with an HTTP/1.1 request head,
a WebSocket upgrade or not. :func:`read_request_head` parses that head with h11 — bounded in
size here, in time by the caller's handshake deadline — and keeps every byte it read. An
upgrade goes on to trio-websocket through a :class:`ReplayStream` that hands those bytes back
first, so wsproto parses the handshake from its first byte as if nobody had looked. Anything
else is a plain request: :func:`answer_request` asks the route table for a response and sends
it with h11, then closes (one request per connection, ``Connection: close``: load balancers and
curl open one per probe anyway). The cost is paid once per connection; afterwards each receive
of a WebSocket link is one delegated call, nothing per message.

A response body is bytes, or an async iterable of byte chunks that is sent as it is produced —
with ``Content-Length`` when the handler declares one (h11 then checks the chunks add up to
it), chunked otherwise — so a multi-GB file never sits in memory. Every send must make
progress within a timeout: a client that stops reading is dropped, never waited for.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import msgspec
import trio

from pcapd.proto import StatusReply

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
"""Largest request head (request line and headers) accepted; a longer one is answered 431."""
HTTP_TIMEOUT = 30.0
"""How long a handler may take to produce its response, and each send to make progress."""
MAX_QUERY_FIELDS = 64

Body = bytes | AsyncIterable[bytes]


@dataclass(frozen=True)
class HttpRequest:
    """A plain HTTP request, as a handler sees it (requests carry no body here).

    ``path`` is the target's path as sent, not percent-decoded (a route table should not be
    fooled by ``%2F``; a handler decodes what it means to). ``query`` holds the decoded query
    parameters; a request that repeats one is answered 400 before any handler sees it.
    ``headers`` have lower-cased names; repeated headers are joined with ``", "``.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    peer: str


@dataclass(frozen=True)
class HttpResponse:
    """What a handler answers. A ``body`` that is an async iterable is streamed chunk by chunk
    (declare its length in a ``content-length`` header when known, else it goes chunked); an
    async generator is closed when the connection ends, whether or not it was consumed. Keep
    chunks modest (64 KiB to 1 MiB): each must reach the client within the HTTP timeout."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = b""


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
"""``async handler(request) -> response``: an exception is logged and answered 500."""


def json_response(status: int, value: Any, headers: list[tuple[str, str]] | None = None,
                  ) -> HttpResponse:
    """``value`` (anything msgspec encodes: dicts, lists, structs) as a JSON response."""
    return HttpResponse(status, [("content-type", "application/json"), *(headers or [])],
                        msgspec.json.encode(value))


def error_response(status: int, text: str) -> HttpResponse:
    """``{"error": text}`` with ``status``."""
    return json_response(status, {"error": text})


class HttpRouter:
    """A route table; itself an :data:`HttpHandler`.

    A path ending in ``/`` is a prefix route (``/downloads/`` serves ``/downloads/<id>``);
    any other matches exactly. An exact route wins, then the longest prefix. An unknown path
    is answered 404, a known path with a method it does not take 405 (``HEAD`` is answered
    wherever ``GET`` is, with the headers and no body).
    """

    def __init__(self, routes: Mapping[str, HttpHandler] | None = None) -> None:
        self._routes: dict[str, tuple[HttpHandler, frozenset[str]]] = {}
        for path, handler in (routes or {}).items():
            self.add(path, handler)

    def add(self, path: str, handler: HttpHandler, *, methods: tuple[str, ...] = ("GET",),
            ) -> None:
        """Serve ``path`` (or every path under it, if it ends in ``/``) with ``handler``."""
        if not path.startswith("/"):
            raise ValueError(f"route {path!r} must start with /")
        allowed = set(methods) | ({"HEAD"} if "GET" in methods else set())
        self._routes[path] = (handler, frozenset(allowed))

    def match(self, path: str) -> tuple[HttpHandler, frozenset[str]] | None:
        if path in self._routes and not path.endswith("/"):
            return self._routes[path]
        best = max((p for p in self._routes if p.endswith("/") and path.startswith(p)),
                   key=len, default=None)
        return self._routes[best] if best is not None else None

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        route = self.match(request.path)
        if route is None:
            return error_response(404, "not found")
        handler, allowed = route
        if request.method not in allowed:
            response = error_response(405, f"method {request.method} not allowed")
            response.headers.append(("allow", ", ".join(sorted(allowed))))
            return response
        return await handler(request)


STATUS_FIELDS = ("healthy", "draining", "software", "protocol", "min_protocol", "server_id",
                 "captures")
"""What ``GET /status`` shows of a :class:`StatusReply` — not the running captures' ids: the
api's port faces every user and load balancer, and an id names a capture (and its download)."""


def status_route(status: Callable[[], StatusReply]) -> HttpHandler:
    """``GET /status``: the role's status as JSON; 200 when healthy and serving, else 503, so
    a load balancer stops sending new users to a draining api without parsing the body."""

    async def handler(request: HttpRequest) -> HttpResponse:
        reply = status()
        code = 200 if reply.healthy and not reply.draining else 503
        return json_response(code, {name: getattr(reply, name) for name in STATUS_FIELDS},
                             [("cache-control", "no-store")])

    return handler


class BadRequest(Exception):
    """The peer's request head was malformed or too large; it has been answered ``status``.

    The reason is h11's without the offending bytes it quotes (``illegal header line: b'...'``):
    they may hold a token, and this ends up in logs.
    """

    def __init__(self, status: int, reason: str) -> None:
        self.reason = reason.split(":", 1)[0]
        super().__init__(f"HTTP {status}: {self.reason}")
        self.status = status


@dataclass
class RequestHead:
    """A request head read off a connection, with every byte that carried it."""

    conn: h11.Connection
    request: h11.Request
    received: bytes

    @property
    def is_websocket(self) -> bool:
        """``Upgrade: websocket`` and ``Connection: upgrade``; trio-websocket checks the rest."""
        upgrade = connection = False
        for name, value in self.request.headers:
            tokens = {t.strip().lower() for t in value.split(b",")}
            if name == b"upgrade" and b"websocket" in tokens:
                upgrade = True
            elif name == b"connection" and b"upgrade" in tokens:
                connection = True
        return upgrade and connection


async def read_request_head(stream: trio.abc.Stream, *, max_size: int = MAX_HEAD,
                            ) -> RequestHead | None:
    """The first request head on ``stream``; None if the peer closed before sending one.

    A malformed head is answered 400, one over ``max_size`` bytes 431 (h11's hints), and
    raised as :class:`BadRequest`. The caller bounds the time (a deadline around this call).
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_size)
    received = bytearray()
    while True:
        bad: BadRequest | None = None
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            bad = BadRequest(exc.error_status_hint, str(exc))
        else:
            if isinstance(event, h11.Request) and (
                    len(received) - len(conn.trailing_data[0]) > max_size):
                # h11 bounds the head it still waits for; one that came whole is bounded here
                bad = BadRequest(431, "request head too long")
        if bad is not None:  # raised out here: no h11 error (quoting the peer) in its context
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                try:
                    await _send(stream, conn, _error_events(bad.status, bad.reason))
                except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                    pass
            raise bad
        if event is h11.NEED_DATA:
            data = await stream.receive_some(max_size)
            received += data
            conn.receive_data(bytes(data))  # b"" tells h11 the peer closed
        elif isinstance(event, h11.Request):
            return RequestHead(conn, event, bytes(received))
        else:  # ConnectionClosed: nothing came
            return None


def parse_request(request: h11.Request, peer: str) -> HttpRequest:
    """The handler's view of a request; :class:`ValueError` for a query it cannot take."""
    target = urlsplit(request.target.decode("ascii"))
    pairs = parse_qsl(target.query, keep_blank_values=True, strict_parsing=False,
                      max_num_fields=MAX_QUERY_FIELDS)
    query = dict(pairs)
    if len(query) != len(pairs):
        raise ValueError("a query parameter is repeated")
    headers: dict[str, str] = {}
    for name, value in request.headers:
        key, text = name.decode("ascii"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return HttpRequest(method=request.method.decode("ascii"), path=target.path or "/",
                       query=query, headers=headers, peer=peer)


async def answer_request(stream: trio.abc.Stream, head: RequestHead, peer: str,
                         handler: HttpHandler | None, *, http_timeout: float = HTTP_TIMEOUT,
                         ) -> None:
    """Answer the plain request ``head`` with ``handler`` (404 for everything when None), then
    close ``stream``. Never raises: failures are logged and cost this connection only.

    ``http_timeout`` bounds each step, not the whole answer (a large download takes as long as
    it takes): the handler producing its response, and every send making progress.
    """
    method = head.request.method.decode("ascii", "replace")
    path = head.request.target.decode("ascii", "replace").partition("?")[0]
    what = f"{method} {path} from {peer}"  # never the query: a download's holds its token
    body: Body = b""
    clean = False
    try:
        response = await _respond(handler, head.request, peer, what, http_timeout)
        body = response.body
        events: list[h11.Event] = [h11.Response(status_code=response.status,
                                                headers=_response_headers(response))]
        if isinstance(body, bytes):
            if method != "HEAD" and body:
                events.append(h11.Data(data=body))
            await _send(stream, head.conn, [*events, h11.EndOfMessage()], http_timeout)
        else:
            await _send(stream, head.conn, events, http_timeout)
            if method != "HEAD":
                async for chunk in body:
                    if chunk:
                        await _send(stream, head.conn, [h11.Data(data=chunk)], http_timeout)
            await _send(stream, head.conn, [h11.EndOfMessage()], http_timeout)
        log.debug("%s: %d", what, response.status)
        clean = True
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.info("%s: the client went away (%s)", what, exc)
    except trio.TooSlowError:
        log.warning("%s: the client read nothing for %ss: dropped", what, http_timeout)
    except Exception:
        # the status line is out: all we can do is cut the body short, which the client sees
        log.exception("internal error while sending the response to %s", what)
    finally:
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("internal error while closing the response body of %s", what)
            if clean:
                await stream.aclose()
        if not clean or cleanup.cancelled_caught:
            await trio.aclose_forcefully(stream)


async def _respond(handler: HttpHandler | None, request: h11.Request, peer: str, what: str,
                   within: float) -> HttpResponse:
    try:
        parsed = parse_request(request, peer)
    except (ValueError, UnicodeDecodeError) as exc:
        return error_response(400, str(exc))
    if handler is None:
        return error_response(404, "not found")
    try:
        with trio.fail_after(within):
            return await handler(parsed)
    except trio.TooSlowError:
        log.error("handler for %s gave no response within %ss", what, within)
    except Exception:
        log.exception("internal error while answering %s", what)
    return error_response(500, "internal error")


def _response_headers(response: HttpResponse) -> list[tuple[str, str]]:
    headers = [(k.lower(), v) for k, v in response.headers if k.lower() != "connection"]
    if isinstance(response.body, bytes):
        headers = [(k, v) for k, v in headers if k != "content-length"]
        headers.append(("content-length", str(len(response.body))))
    headers.append(("connection", "close"))
    return headers


def _error_events(status: int, text: str) -> list[h11.Event]:
    response = error_response(status, text)
    assert isinstance(response.body, bytes)
    return [h11.Response(status_code=status, headers=_response_headers(response)),
            h11.Data(data=response.body), h11.EndOfMessage()]


async def _send(stream: trio.abc.Stream, conn: h11.Connection, events: list[h11.Event],
                within: float = HTTP_TIMEOUT) -> None:
    data = b"".join(conn.send(event) or b"" for event in events)
    with trio.fail_after(within):
        await stream.send_all(data)


class ReplayStream(trio.abc.Stream):
    """``inner``, whose first bytes received are ``replay`` (already read off it)."""

    def __init__(self, inner: trio.abc.Stream, replay: bytes) -> None:
        self.inner = inner
        self._replay = memoryview(replay)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self._replay:
            return await self.inner.receive_some(max_bytes)
        await trio.lowlevel.checkpoint()
        size = len(self._replay) if max_bytes is None else max_bytes
        data, self._replay = bytes(self._replay[:size]), self._replay[size:]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


def metrics_route(metrics: Any) -> HttpHandler:
    """``GET /metrics``: the Prometheus text exposition of a :class:`pcapd.metrics.Metrics`."""

    async def handler(request: HttpRequest) -> HttpResponse:
        content_type, body = metrics.exposition()
        return HttpResponse(200, [("content-type", content_type),
                                  ("cache-control", "no-store")], body)

    return handler
