"""WebSocket connections over TLS, served and dialled: the handshakes under our control.

trio-websocket does the framing; this module adds what every pcapd connection needs: the TLS
handshake under our control (a deadline, the peer's failure logged instead of crashing the
server, the server name checked against a configured name rather than the dialled address),
large receive buffers (the default 4 KiB read size caps a link near 80 MB/s), message size
limits matching the protocol's, and plain HTTP on the same port (:mod:`pcapd.transport.http`).
What runs over a connection is a :class:`~pcapd.transport.link.Link`; the listener that waits
out a full descriptor table is :mod:`pcapd.transport.listen`, the client's stream
:mod:`pcapd.transport.streams`.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from weakref import WeakKeyDictionary

import trio
import trio_websocket
from trio_websocket import ConnectionClosed, Endpoint, WebSocketConnection

from pcapd.proto import DATA_HEADER_SIZE, MAX_BINARY_MESSAGE
from pcapd.transport import _compat  # noqa: F401  (the ping patch, before any connection)
from pcapd.transport.groups import open_nursery
from pcapd.transport.http import (
    HTTP_TIMEOUT,
    BadRequest,
    HttpHandler,
    ReplayStream,
    answer_request,
    read_request_head,
)
from pcapd.transport.link import LinkClosed, remember_socket
from pcapd.transport.listen import PatientListener
from pcapd.transport.streams import WatchedStream, cancel_when_broken

log = logging.getLogger(__name__)

RECEIVE_BUFFER = 256 * 1024
MAX_MESSAGE = MAX_BINARY_MESSAGE + DATA_HEADER_SIZE
HANDSHAKE_TIMEOUT = 10.0

Headers = list[tuple[bytes, bytes]]
Handler = Callable[[WebSocketConnection, str, Headers], Awaitable[None]]
"""``handler(ws, peer, headers)``: the connection, ``host:port`` of the peer, and the headers of
its handshake request (where a client's Authorization header arrives)."""


class PeerRefused(Exception):
    """A TLS client whose certificate ``serve_websocket``'s ``check_client`` refused."""


async def _close(ws: WebSocketConnection, stream: trio.abc.Stream) -> None:
    """Close a connection: politely (the closing handshake, 1 s at most), then for certain.

    ``ws.aclose()`` closes the TCP connection only when it starts the closing handshake itself.
    When the peer closed first — with its close frame (a server ending its link, as an agent
    does after ``end``) or without one (a killed client or api) — the connection is marked
    closed, ``aclose()`` returns at once and the socket stays in CLOSE_WAIT until the garbage
    collector happens to free it: an idle api held dozens. Closing twice is harmless.
    """
    with trio.move_on_after(1) as cleanup:
        cleanup.shield = True
        await ws.aclose()
    await trio.aclose_forcefully(stream)


class HandshakeRejected(LinkClosed):
    """The server answered the WebSocket handshake with a plain HTTP status: no pcapd there
    (gorouter's 404 ``unknown_route``), or nothing behind the router (502)."""

    def __init__(self, target: str, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        found = [v for k, v in headers if k.lower() == b"x-cf-routererror"]
        text = found[0].decode(errors="replace")[:200] if found else ""
        self.router_error = "".join(c for c in text if c.isprintable())  # (a peer's words)
        router = f" (X-Cf-Routererror: {self.router_error})" if self.router_error else ""
        super().__init__(f"{target}: answered HTTP {status}{router} instead of a WebSocket")


def describe_peer(stream: trio.abc.Stream) -> str:
    """``host:port`` of the far end of a (TLS over) TCP stream, for log lines and messages."""
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    try:
        host, port, *_ = inner.socket.getpeername()
    except (AttributeError, OSError, ValueError):
        return "unknown peer"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_websocket(handler: Handler, host: str, port: int,
                          ssl_context: ssl.SSLContext | None, *,
                          http_handler: HttpHandler | None = None,
                          handshake_timeout: float = HANDSHAKE_TIMEOUT,
                          http_timeout: float = HTTP_TIMEOUT,
                          unix_path: str | None = None,
                          max_message_size: int = MAX_MESSAGE,
                          check_client: Callable[[bytes | None], str | None] | None = None,
                          task_status: trio.TaskStatus[list[trio.SocketListener]]
                          = trio.TASK_STATUS_IGNORED) -> None:
    """Accept WebSocket connections (over TLS when ``ssl_context``) and run ``handler`` on each.

    A plain HTTP request on the same port (no WebSocket upgrade) is answered by
    ``http_handler`` — see :mod:`pcapd.transport.http`; without one, 404 — and the connection
    closed. A connection that fails its TLS or WebSocket handshake, sends a malformed request,
    or takes longer than ``handshake_timeout`` to get through TLS and its request head, is
    logged and dropped; the server goes on. Reports the listeners (with the bound port, useful
    for port 0) through ``task_status``. With ``unix_path`` it listens on that Unix socket
    instead of TCP (local mode: a link that no capture of a network interface can see, so
    capturing ``lo`` never captures its own output). With ``check_client`` the TLS client's
    certificate (DER) is checked right after the TLS handshake, before anything is read: a
    reason it gives drops the connection (the agent accepts only the api's identity). A
    message over ``max_message_size`` bytes closes the connection (1009) before more of it is
    buffered.
    """

    async def on_connection(tcp: trio.SocketStream) -> None:
        peer = describe_peer(tcp)
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
        async with open_nursery() as nursery:
            try:
                with trio.fail_after(handshake_timeout):
                    if ssl_context is not None:
                        stream = trio.SSLStream(tcp, ssl_context, server_side=True)
                        await stream.do_handshake()
                        if check_client is not None:
                            problem = check_client(stream.getpeercert(binary_form=True))
                            if problem is not None:
                                raise PeerRefused(problem)
                    head = await read_request_head(stream)
                    if head is not None and head.is_websocket:
                        # the head read is handed back first: wsproto parses it from byte 0
                        request = await trio_websocket.wrap_server_stream(
                            nursery, ReplayStream(stream, head.received),
                            max_message_size=max_message_size,
                            receive_buffer_size=RECEIVE_BUFFER)
                        headers = list(request.headers)
                        ws = await request.accept()
            except _DROPPED as exc:
                log.warning(*_dropped(exc, peer, handshake_timeout))
                await trio.aclose_forcefully(stream)
                nursery.cancel_scope.cancel()
                return
            if head is None:  # a TCP health check, or a client that changed its mind
                log.debug("%s closed the connection without a request", peer)
                await trio.aclose_forcefully(stream)
                return
            if not head.is_websocket:
                await answer_request(stream, head, peer, http_handler, http_timeout=http_timeout)
                return
            endpoints = _endpoints(stream)
            if endpoints is not None:
                _ENDPOINTS[ws] = endpoints
            remember_socket(ws, tcp.socket)
            try:
                await handler(ws, peer, headers)
            except Exception:
                # a bug must cost one connection, never the server and everyone else's captures
                log.exception("internal error while serving %s", peer)
            finally:
                await _close(ws, stream)
                nursery.cancel_scope.cancel()

    if unix_path is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    else:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(unix_path)
        sock.listen()
        listeners = [trio.SocketListener(sock)]
    task_status.started(listeners)
    await trio.serve_listeners(on_connection, [PatientListener(lst) for lst in listeners])


_ENDPOINTS: WeakKeyDictionary[WebSocketConnection, tuple[Endpoint, Endpoint]] = (
    WeakKeyDictionary())


def link_endpoints(ws: WebSocketConnection) -> tuple[Endpoint | str, Endpoint | str]:
    """The local and remote TCP endpoints of a link (``ws.local``, ``ws.remote``).

    Use this rather than the attributes: a connection accepted by :func:`serve_websocket`
    reads through a replay stream, on which trio-websocket can only name the endpoints as
    strings; the served connection's real ones are kept here.
    """
    return _ENDPOINTS.get(ws) or (ws.local, ws.remote)


def _endpoints(stream: trio.abc.Stream) -> tuple[Endpoint, Endpoint] | None:
    """As trio-websocket names them, for a (TLS over) TCP stream; None for a Unix socket."""
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    if not isinstance(inner, trio.SocketStream):
        return None
    is_ssl = inner is not stream
    try:
        local, remote = inner.socket.getsockname(), inner.socket.getpeername()
        if not isinstance(local, tuple) or not isinstance(remote, tuple):
            return None
        return Endpoint(local[0], local[1], is_ssl), Endpoint(remote[0], remote[1], is_ssl)
    except (OSError, ValueError):
        return None


_DROPPED = (trio.TooSlowError, PeerRefused, BadRequest, trio.BrokenResourceError, ssl.SSLError,
            ConnectionClosed, trio_websocket.HandshakeError)
"""What ends a served connection before its handler runs: logged and dropped, never raised."""


def _dropped(exc: BaseException, peer: str, timeout: float) -> tuple[object, ...]:
    """The log line (format and arguments) for a connection :data:`_DROPPED` by ``exc``."""
    if isinstance(exc, trio.TooSlowError):
        return "handshake from %s timed out after %ss", peer, timeout
    if isinstance(exc, BadRequest):  # answered already
        return "bad request from %s: %s", peer, exc
    return "refused connection from %s: %s", peer, (
        exc if isinstance(exc, PeerRefused) else _why(exc))


def _why(exc: BaseException) -> str:
    """The innermost reason of a handshake failure, e.g. the SSL alert."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc) or type(exc).__name__


@asynccontextmanager
async def open_websocket(host: str, port: int, *, ssl_context: ssl.SSLContext | None,
                         server_hostname: str | None = None, resource: str = "/",
                         extra_headers: list[tuple[bytes, bytes]] | None = None,
                         connect_timeout: float = HANDSHAKE_TIMEOUT,
                         unix_path: str | None = None,
                         ) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket to ``host:port``; TLS checks the certificate for ``server_hostname``.

    Agents are dialled by address but must present a certificate for the configured
    ``agents.server_name``; that is why the TLS stream is built here rather than by
    trio-websocket, which would check the address. Failures raise :class:`LinkClosed`.
    """
    target = f"{host}:{port}"
    async with _rejections(target), open_nursery() as nursery:
        try:
            with trio.fail_after(connect_timeout):
                tcp = (await trio.open_unix_socket(unix_path) if unix_path is not None
                       else await trio.open_tcp_stream(host, port))
                stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
                if ssl_context is not None:
                    stream = trio.SSLStream(tcp, ssl_context,
                                            server_hostname=server_hostname or host,
                                            https_compatible=True)
                    await stream.do_handshake()
                watched = WatchedStream(stream)
                with trio.CancelScope() as handshake:
                    async with trio.open_nursery() as watch:
                        watch.start_soon(cancel_when_broken, watched, handshake)
                        ws = await trio_websocket.wrap_client_stream(
                            nursery, watched, host, resource,  # type: ignore[arg-type]
                            extra_headers=extra_headers,
                            max_message_size=MAX_MESSAGE, receive_buffer_size=RECEIVE_BUFFER)
                        watch.cancel_scope.cancel()
                if handshake.cancelled_caught:
                    why = _why(watched.error) if watched.error is not None else "closed"
                    hint = (": does the server trust our client certificate?"
                            if ssl_context is not None else "")
                    raise LinkClosed(f"{target}: connection ended during the handshake "
                                     f"({why}){hint}")
                remember_socket(ws, tcp.socket)
        except trio.TooSlowError as exc:
            raise LinkClosed(f"{target}: no answer within {connect_timeout}s") from exc
        except OSError as exc:
            raise LinkClosed(f"{target}: cannot connect: {exc.strerror or exc}") from exc
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            raise LinkClosed(f"{target}: TLS handshake failed: {_why(exc)}") from exc
        except (ConnectionClosed, trio_websocket.HandshakeError) as exc:
            raise LinkClosed(f"{target}: WebSocket handshake failed: {_why(exc)}") from exc
        try:
            yield ws
        finally:
            await _close(ws, stream)
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _rejections(target: str) -> AsyncIterator[None]:
    """trio-websocket raises an HTTP answer to the handshake from its reader task, so it
    leaves the connection's nursery rather than the handshake: translate it there."""
    try:
        yield
    except trio_websocket.ConnectionRejected as exc:
        raise HandshakeRejected(target, exc.status_code or 0, list(exc.headers or [])) from None


