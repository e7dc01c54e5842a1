"""WebSocket links over TLS: one protocol session per connection, errors translated once.

trio-websocket does the framing; this module adds what every pcapd link needs: the TLS
handshake under our control (a deadline, the peer's failure logged instead of crashing the
server, the server name checked against a configured name rather than the dialled address),
large receive buffers (the default 4 KiB read size caps a link near 80 MB/s), message size
limits matching the protocol's, and :class:`Link`, which runs a sans-I/O session over the
connection and turns every way a link can fail into :class:`LinkClosed`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import resource
import socket
import ssl
import struct
import termios
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, overload
from weakref import WeakKeyDictionary

import trio
import trio_websocket
from trio_websocket import ConnectionClosed, Endpoint, WebSocketConnection
from wsproto.connection import ConnectionState
from wsproto.events import Ping

from pcapd.errors import PcapdError, RemoteProtocolError
from pcapd.proto import DATA_HEADER_SIZE, MAX_BINARY_MESSAGE, Data, Message
from pcapd.proto.session import InitiatorSession, ResponderSession
from pcapd.transport.groups import open_nursery
from pcapd.transport.http import (
    HTTP_TIMEOUT,
    BadRequest,
    HttpHandler,
    ReplayStream,
    answer_request,
    read_request_head,
)

log = logging.getLogger(__name__)

RECEIVE_BUFFER = 256 * 1024
MAX_MESSAGE = MAX_BINARY_MESSAGE + DATA_HEADER_SIZE
HANDSHAKE_TIMEOUT = 10.0
ACCEPT_RETRY = 0.1
"""Seconds between attempts to accept while the process is out of file descriptors."""
ACCEPT_LOG_INTERVAL = 10.0
"""At most one log line per this many seconds about being unable to accept."""

Headers = list[tuple[bytes, bytes]]
Handler = Callable[[WebSocketConnection, str, Headers], Awaitable[None]]
"""``handler(ws, peer, headers)``: the connection, ``host:port`` of the peer, and the headers of
its handshake request (where a client's Authorization header arrives)."""


class PeerRefused(Exception):
    """A TLS client whose certificate ``serve_websocket``'s ``check_client`` refused."""


async def _pong_while_open(self: WebSocketConnection, event: Ping) -> None:
    """Answer a ping only while the connection is open.

    trio-websocket answers every ping, also one that arrives after our own close frame went
    out; wsproto then raises LocalProtocolError in the connection's reader task, which fails the
    nursery that task runs in — for a served connection, the whole server. Any client could end
    the api with a malformed message and a ping (trio-websocket#184; the fix, #198, is not
    released). A closing connection owes no pong.
    """
    if self._wsproto.state == ConnectionState.OPEN:
        await self._send(event.response())


WebSocketConnection._handle_ping_event = _pong_while_open  # type: ignore[method-assign]


async def _close_socket(stream: trio.abc.Stream) -> None:
    """Close a link's stream for certain, after ``ws.aclose()``.

    ``ws.aclose()`` closes the TCP connection only when it starts the closing handshake itself.
    When the peer closed first — with its close frame (a server ending its link, as an agent
    does after ``end``) or without one (a killed client or api) — the connection is marked
    closed, ``aclose()`` returns at once and the socket stays in CLOSE_WAIT until the garbage
    collector happens to free it: an idle api held dozens. Closing twice is harmless.
    """
    await trio.aclose_forcefully(stream)


class LinkClosed(PcapdError):
    """The peer went away, the connection broke, or the link failed a protocol check."""


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
            except trio.TooSlowError:
                log.warning("handshake from %s timed out after %ss", peer, handshake_timeout)
                await trio.aclose_forcefully(stream)
                nursery.cancel_scope.cancel()
                return
            except PeerRefused as exc:
                log.warning("refused connection from %s: %s", peer, exc)
                await trio.aclose_forcefully(stream)
                nursery.cancel_scope.cancel()
                return
            except BadRequest as exc:  # answered already
                log.warning("bad request from %s: %s", peer, exc)
                await trio.aclose_forcefully(stream)
                nursery.cancel_scope.cancel()
                return
            except (trio.BrokenResourceError, ssl.SSLError, ConnectionClosed,
                    trio_websocket.HandshakeError) as exc:
                log.warning("refused connection from %s: %s", peer, _why(exc))
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
            _SOCKETS[ws] = tcp.socket
            try:
                await handler(ws, peer, headers)
            except Exception:
                # a bug must cost one connection, never the server and everyone else's captures
                log.exception("internal error while serving %s", peer)
            finally:
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True
                    await ws.aclose()
                await _close_socket(stream)
                nursery.cancel_scope.cancel()

    if unix_path is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    else:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(unix_path)
        sock.listen()
        listeners = [trio.SocketListener(sock)]
    task_status.started(listeners)
    await trio.serve_listeners(on_connection, [_PatientListener(lst) for lst in listeners])


class _PatientListener(trio.abc.Listener[trio.SocketStream]):
    """A listener that waits out a full descriptor table instead of failing or flooding logs.

    When ``accept`` fails for want of descriptors (EMFILE: the process's ``RLIMIT_NOFILE``;
    ENFILE: the system's) the connection stays in the kernel's backlog; we try again every
    :data:`ACCEPT_RETRY` seconds, so the server recovers by itself once connections close.
    Trio's own loop does the same but logs a traceback ten times a second; this says once
    (per :data:`ACCEPT_LOG_INTERVAL`) what is wrong and what to do, in pcapd's log.
    """

    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner
        self._refused_since: float | None = None
        self._logged_at = -ACCEPT_LOG_INTERVAL

    async def accept(self) -> trio.SocketStream:
        while True:
            try:
                stream = await self.inner.accept()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    raise
                self._cannot_accept(exc)
                await trio.sleep(ACCEPT_RETRY)
                continue
            if self._refused_since is not None:
                log.warning("%s: accepting connections again after %.1fs",
                            self._where(), trio.current_time() - self._refused_since,
                            extra={"event": "accepting"})
                self._refused_since = None
            return stream

    def _cannot_accept(self, exc: OSError) -> None:
        now = trio.current_time()
        if self._refused_since is None:
            self._refused_since = now
        if now - self._logged_at < ACCEPT_LOG_INTERVAL:
            return
        self._logged_at = now
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.error("%s: cannot accept connections: %s (%s; this process may open %d files): "
                  "new connections wait in the backlog until some close; if this recurs, "
                  "raise the limit (systemd LimitNOFILE=, bpm limits.open_files)",
                  self._where(), exc.strerror, errno.errorcode.get(exc.errno or 0, "?"), soft,
                  extra={"event": "cannot_accept"})

    def _where(self) -> str:
        try:
            name = self.inner.socket.getsockname()
        except OSError:
            return "listener"
        if isinstance(name, tuple):
            return f"port {name[1]}"
        return str(name) or "listener"

    async def aclose(self) -> None:
        await self.inner.aclose()


_ENDPOINTS: WeakKeyDictionary[WebSocketConnection, tuple[Endpoint, Endpoint]] = (
    WeakKeyDictionary())
_SOCKETS: WeakKeyDictionary[WebSocketConnection, trio.socket.SocketType] = WeakKeyDictionary()
"""The TCP (or Unix) socket under each link, for the keepalive's look at the peer's progress."""


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
                watched = _WatchedStream(stream)
                with trio.CancelScope() as handshake:
                    async with trio.open_nursery() as watch:
                        watch.start_soon(_cancel_when_broken, watched, handshake)
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
                _SOCKETS[ws] = tcp.socket
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
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await ws.aclose()
            await _close_socket(stream)
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _rejections(target: str) -> AsyncIterator[None]:
    """trio-websocket raises an HTTP answer to the handshake from its reader task, so it
    leaves the connection's nursery rather than the handshake: translate it there."""
    try:
        yield
    except trio_websocket.ConnectionRejected as exc:
        raise HandshakeRejected(target, exc.status_code or 0, list(exc.headers or [])) from None


class _WatchedStream(trio.abc.Stream):
    """A stream that remembers how it broke.

    With TLS 1.3 a client finishes its handshake before the server has checked the client's
    certificate; the server's refusal arrives as an alert on the first read, inside
    trio-websocket's reader task, which then stops without ending the WebSocket handshake it
    was waiting for. Watching the stream lets :func:`open_websocket` fail at once, with the
    server's reason ("certificate required", "unknown ca"), instead of timing out.
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.error: BaseException | None = None
        self.broken = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self.inner.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.error = exc
            self.broken.set()
            raise
        if not data:
            self.broken.set()
        elif max_bytes is not None and len(data) < max_bytes:
            data = _buffered_records(self.inner, data, max_bytes)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


def _buffered_records(stream: trio.abc.Stream, data: bytes | bytearray,
                      max_bytes: int) -> bytes | bytearray:
    """``data`` plus what the TLS records already received decrypt to, up to ``max_bytes``.

    Trio's ``SSLStream.receive_some`` hands over one TLS record (16 KiB at most) per call, each
    through its retry loop and a checkpoint, and the WebSocket reader runs once per call: a
    100 kB agent batch took seven rounds. The records that are already in the SSL object's
    buffer decrypt without I/O, so they are read here straight away: the api's side of an
    agent link spends a quarter less CPU per MB (4.7 → 3.4 ms/MB; docs/performance.md,
    "Capture"). Only what is buffered: ``SSLWantReadError`` (or any other SSL error, which the
    next ``receive_some`` then reports through trio as usual) ends it. Outgoing TLS data a read
    may produce goes out with trio's next operation on the stream. Without the SSL object (not
    TLS, or another trio) nothing changes.
    """
    ssl_object = getattr(stream, "_ssl_object", None)
    if not isinstance(ssl_object, ssl.SSLObject):
        return data
    parts = [data]
    size = len(data)
    while size < max_bytes:
        try:
            more = ssl_object.read(max_bytes - size)
        except ssl.SSLError:  # SSLWantReadError: nothing more buffered
            break
        if not more:
            break
        parts.append(more)
        size += len(more)
    return b"".join(parts) if len(parts) > 1 else data


async def _cancel_when_broken(stream: _WatchedStream, scope: trio.CancelScope) -> None:
    await stream.broken.wait()
    scope.cancel()


_FRAME_BINARY = 0x82  # FIN, binary opcode (RFC 6455 §5.2)


async def _send_binary(ws: WebSocketConnection, header: bytes, payload: bytes | memoryview
                       ) -> None:
    """One binary WebSocket message ``header + payload``, framed here with one copy (the join).

    trio-websocket's ``send_message`` goes through wsproto, which copies a message four times
    on its way to the stream (``bytearray``, ``header + payload``, ``bytearray`` again, and
    ``bytes +=``): at a few hundred kB a batch that was a fifth of an agent's CPU. A server's
    frames are unmasked and trio-websocket negotiates no extension, so the frame is the RFC's
    header and the bytes; it is written under the connection's send lock, as trio-websocket
    does, and a broken stream ends the connection as there. Anything else (a client, which
    masks; a connection not open) takes trio-websocket's own path.
    """
    impl: Any = ws
    proto = getattr(impl, "_wsproto", None)
    if ws.is_client or proto is None or proto.state is not ConnectionState.OPEN:
        await ws.send_message(header + payload)
        return
    if impl._close_reason:
        raise ConnectionClosed(impl._close_reason)
    size = len(header) + len(payload)
    if size < 126:
        frame = bytes((_FRAME_BINARY, size))
    elif size < 65536:
        frame = struct.pack("!BBH", _FRAME_BINARY, 126, size)
    else:
        frame = struct.pack("!BBQ", _FRAME_BINARY, 127, size)
    data = b"".join((frame, header, payload))
    async with impl._stream_lock:
        try:
            await impl._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await impl._abort_web_socket()
            raise ConnectionClosed(impl._close_reason) from None


class Link:
    """A protocol session running over one WebSocket connection."""

    def __init__(self, ws: WebSocketConnection,
                 session: InitiatorSession | ResponderSession, peer: str) -> None:
        self.ws = ws
        self.session = session
        self.peer = peer
        self.gave_up: str | None = None
        """Why this side closed the link (no pong), for the :class:`LinkClosed` that follows:
        the close code the peer never saw is no explanation."""

    @overload
    async def send(self, msg: Data) -> None: ...
    @overload
    async def send(self, msg: Message) -> None: ...
    async def send(self, msg: Message | Data) -> None:
        try:
            if isinstance(msg, Data):
                await _send_binary(self.ws, self.session.send_data_header(msg), msg.payload)
            else:
                await self.ws.send_message(self.session.send(msg))
        except ConnectionClosed as exc:
            raise LinkClosed(f"{self.peer}: connection closed "
                             f"({self.gave_up or _reason(exc)})") from exc

    async def receive(self) -> Message | Data:
        """The next message; a malformed one is answered with ``error`` and the link closed."""
        try:
            raw = await self.ws.get_message()
        except ConnectionClosed as exc:
            raise LinkClosed(f"{self.peer}: connection closed "
                             f"({self.gave_up or _reason(exc)})") from exc
        try:
            if isinstance(raw, str):
                return self.session.receive_text(raw)
            return self.session.receive_binary(raw)
        except RemoteProtocolError as exc:
            reply = self.session.error_reply(exc)
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                if reply is not None:
                    try:
                        await self.ws.send_message(reply)
                    except ConnectionClosed:
                        pass
                await self.ws.aclose(code=1008, reason="protocol error")
            raise LinkClosed(f"{self.peer}: {exc}") from exc

    async def keepalive(self, interval: float, pong_within: float) -> None:
        """Ping the peer every ``interval``; close the link once the peer has neither answered
        a ping nor made progress for ``pong_within`` seconds.

        This is what notices a peer that vanished without a FIN (power cut, dropped route):
        TCP alone would wait for minutes. A slow reader is not such a peer: our ping queues
        behind the data already on its way, and the pong comes only once the peer has read
        all of it, which at 100 kB/s behind a few MB of socket buffers takes far longer than
        ``pong_within``. So while a pong is due the kernel is asked whether the peer still
        takes our data (:func:`_flow`): the TCP bytes it acknowledged grow while data waits
        for it (for a Unix socket: the queue toward it changes). Only a peer that neither
        answers nor takes anything for ``pong_within`` is given up. Runs until cancelled or
        the link closes.
        """
        sock = _SOCKETS.get(self.ws)
        while True:
            await trio.sleep(interval)
            answered = trio.Event()
            dead = False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ping, answered)
                flow = _flow(sock)
                moved = trio.current_time()  # when the peer last answered or took data
                poll = min(1.0, pong_within / 4)
                while not answered.is_set():
                    left = moved + pong_within - trio.current_time()
                    with trio.move_on_after(max(0.0, min(poll, left))):
                        await answered.wait()
                    if answered.is_set():
                        break
                    now = _flow(sock)
                    if _progressed(flow, now):
                        moved = trio.current_time()
                    flow = now
                    if trio.current_time() - moved >= pong_within:
                        dead = True
                        break
                nursery.cancel_scope.cancel()
            if self.ws.closed is not None:
                return
            if dead:
                log.warning("%s: no pong and no data taken for %ss: closing the link",
                            self.peer, pong_within)
                self.gave_up = f"no answer to pings for {pong_within:g}s"
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True
                    await self.ws.aclose(code=1001, reason="ping timeout")
                return

    async def _ping(self, answered: trio.Event) -> None:
        """One ping; ``answered`` is set when its pong came or the link closed."""
        try:
            await self.ws.ping()
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        answered.set()

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            await self.ws.aclose(code=code, reason=reason)


_TCP_INFO_SIZE = 136
_TCPI_BYTES_ACKED = 120
"""Offset of ``tcpi_bytes_acked`` in Linux's ``struct tcp_info`` (since Linux 4.1)."""


def _flow(sock: trio.socket.SocketType | None) -> tuple[int | None, int] | None:
    """``(bytes the peer acknowledged, bytes queued toward it)`` from the kernel; the first is
    None for a Unix socket, the whole None when the link has no socket (or the kernel will
    not say). Cheap: two system calls, made only while a pong is overdue."""
    if sock is None:
        return None
    try:
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        if sock.family == socket.AF_UNIX:
            return None, queued
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _TCPI_BYTES_ACKED + 8:
        return None
    acked: int = struct.unpack_from("=Q", info, _TCPI_BYTES_ACKED)[0]
    return acked, queued


def _progressed(before: tuple[int | None, int] | None,
                after: tuple[int | None, int] | None) -> bool:
    """Whether the peer took data between two :func:`_flow` samples while data waited for it
    (a ping that waits behind nothing has no excuse)."""
    if before is None or after is None or after[1] <= 0:
        return False
    if after[0] is not None and before[0] is not None:
        return after[0] > before[0]
    return after[1] != before[1]


def _reason(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "no reason given"
    return f"{reason.name}" + (f": {reason.reason}" if reason.reason else "")
