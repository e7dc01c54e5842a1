"""Plain HTTP on the WebSocket port: /status, streamed bodies, refusals, slow clients.

The route and parsing tests are plain synchronous ones; the rest serve real sockets on
loopback (TCP, TLS with certificates from ``pcapd.certs``, a Unix socket) and speak to them
with an h11 client, so the framing each response claims is checked by a second parser.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
import trio_websocket

from pcapd.certs import CertPaths, init_certs
from pcapd.proto import (
    MIN_COMPATIBLE_VERSION,
    PROTOCOL_VERSION,
    SOFTWARE,
    InitiatorSession,
    ResponderSession,
    StatusReply,
)
from pcapd.transport.http import (
    BadRequest,
    HttpHandler,
    HttpRequest,
    HttpResponse,
    HttpRouter,
    ReplayStream,
    RequestHead,
    error_response,
    parse_request,
    read_request_head,
    status_route,
)
from pcapd.transport.link import Link
from pcapd.transport.tls import client_context, server_context
from pcapd.transport.ws import link_endpoints, open_websocket, serve_websocket

SERVER_NAME = "pcap-agent.service.cf.internal"
MiB = 1024 * 1024


# --- pure parts ------------------------------------------------------------------------------

def head_of(raw: bytes) -> RequestHead:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return RequestHead(conn, event, raw)


@pytest.mark.parametrize(("headers", "websocket"), [
    (b"Upgrade: websocket\r\nConnection: Upgrade\r\n", True),
    (b"upgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\n", True),
    (b"Upgrade: websocket\r\n", False),
    (b"Connection: upgrade\r\nUpgrade: h2c\r\n", False),
    (b"", False),
])
def test_a_websocket_upgrade_is_told_from_a_plain_request(headers: bytes,
                                                          websocket: bool) -> None:
    head = head_of(b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert head.is_websocket is websocket


def test_a_request_splits_into_path_query_and_lower_cased_headers() -> None:
    head = head_of(b"GET /downloads/abc%2F..?expires=17&token=a%2Bb&empty= HTTP/1.1\r\n"
                   b"Host: x\r\nX-Thing: 1\r\nx-thing: 2\r\n\r\n")
    request = parse_request(head.request, "peer")
    assert request == HttpRequest(
        method="GET", path="/downloads/abc%2F..",
        query={"expires": "17", "token": "a+b", "empty": ""},
        headers={"host": "x", "x-thing": "1, 2"}, peer="peer")


def test_a_repeated_query_parameter_is_refused() -> None:
    head = head_of(b"GET /d?token=a&token=b HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(ValueError, match="repeated"):
        parse_request(head.request, "peer")


def test_routes_match_exactly_or_by_the_longest_prefix() -> None:
    async def a(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200)

    async def b(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200)

    async def c(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200)

    router = HttpRouter({"/status": a, "/downloads/": b})
    router.add("/downloads/special/", c, methods=("GET", "POST"))
    assert router.match("/status") == (a, {"GET", "HEAD"})
    assert router.match("/status/") is None
    assert router.match("/statusx") is None
    assert router.match("/downloads/1234") == (b, {"GET", "HEAD"})
    assert router.match("/downloads/special/1") == (c, {"GET", "HEAD", "POST"})
    assert router.match("/downloads") is None
    with pytest.raises(ValueError, match="must start with /"):
        router.add("status", a)


async def test_a_replay_stream_returns_the_bytes_read_first() -> None:
    with trio.fail_after(5):
        left, right = trio.testing.memory_stream_pair()
        replay = ReplayStream(right, b"0123456789")
        await left.send_all(b"later")
        assert await replay.receive_some(4) == b"0123"
        assert await replay.receive_some() == b"456789"
        assert await replay.receive_some() == b"later"
        await replay.send_all(b"back")
        assert await left.receive_some() == b"back"
        await replay.aclose()
        assert await left.receive_some() == b""


# --- served over real sockets ----------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("pki") / "certs")


class FakeService:
    def __init__(self) -> None:
        self.draining = False

    def status(self) -> StatusReply:
        return StatusReply(healthy=True, draining=self.draining, software=SOFTWARE,
                           protocol=PROTOCOL_VERSION, min_protocol=MIN_COMPATIBLE_VERSION,
                           server_id="api-0", captures=2, capture_ids=["a" * 32, "b" * 32])


async def welcome(ws: trio_websocket.WebSocketConnection, peer: str,
                  headers: list[tuple[bytes, bytes]]) -> None:
    link = Link(ws, ResponderSession("api"), peer)
    await link.receive()
    await link.send(link.session.make_welcome("api-0"))  # type: ignore[union-attr]


@dataclass
class Server:
    port: int
    ssl_context: ssl.SSLContext | None = None  # the client's, when TLS

    async def connect(self, *, rcvbuf: int | None = None) -> trio.abc.Stream:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # a small window: the server cannot run far ahead of us
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", self.port))
        tcp = trio.SocketStream(sock)
        if self.ssl_context is None:
            return tcp
        tls = trio.SSLStream(tcp, self.ssl_context, server_hostname=SERVER_NAME)
        await tls.do_handshake()
        return tls

    async def hello(self) -> str:
        async with open_websocket("127.0.0.1", self.port, ssl_context=self.ssl_context,
                                  server_hostname=SERVER_NAME) as ws:
            link = Link(ws, InitiatorSession("client"), "api")
            await link.send(link.session.make_hello())  # type: ignore[union-attr]
            return type(await link.receive()).__name__


async def start_server(nursery: trio.Nursery, http: HttpHandler | None, *,
                       tls: CertPaths | None = None, handler: object = welcome,
                       **kwargs: float) -> Server:
    server_ctx = client_ctx = None
    if tls is not None:
        server_ctx = server_context(tls.agent_cert, tls.agent_key, client_ca=tls.ca_cert)
        client_ctx = client_context(ca=tls.ca_cert, certificate=tls.api_client_cert,
                                    private_key=tls.api_client_key)
    listeners = await nursery.start(
        lambda task_status: serve_websocket(handler, "127.0.0.1", 0, server_ctx,  # type: ignore[arg-type]
                                            http_handler=http, task_status=task_status,
                                            **kwargs))
    return Server(listeners[0].socket.getsockname()[1], client_ctx)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    chunks: list[int]

    def json(self) -> object:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


async def request(stream: trio.abc.Stream, target: str, method: str = "GET",
                  pause_after_first: float = 0.0) -> Reply:
    """One request, its response read with h11; asserts the server then closes."""
    conn = h11.Connection(h11.CLIENT)
    await stream.send_all(conn.send(h11.Request(method=method, target=target,
                                                headers=[("Host", "pcapd")]))
                          + (conn.send(h11.EndOfMessage()) or b""))
    status, headers, body, chunks = 0, {}, bytearray(), []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            if pause_after_first and body:
                await trio.sleep(pause_after_first)
                pause_after_first = 0
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
            chunks.append(len(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
    assert headers["connection"] == "close"
    assert await stream.receive_some(1) == b""  # one request per connection
    await stream.aclose()
    return Reply(status, headers, bytes(body), chunks)


async def raw_exchange(stream: trio.abc.Stream, data: bytes) -> tuple[int, bytes]:
    """Send ``data`` as it is; the status and body of what comes back before the close."""
    await stream.send_all(data)
    received = bytearray()
    while chunk := await stream.receive_some(65536):
        received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


STATUS_KEYS = {"healthy", "draining", "software", "protocol", "min_protocol", "server_id",
               "captures"}


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "mutual-tls"])
async def test_status_and_websocket_share_the_port(tls: bool, pki: CertPaths) -> None:
    service = FakeService()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, HttpRouter({"/status": status_route(
                service.status)}), tls=pki if tls else None)
            reply = await request(await server.connect(), "/status")
            assert reply.status == 200
            assert reply.headers["cache-control"] == "no-store"
            assert reply.json() == {
                "healthy": True, "draining": False, "software": SOFTWARE,
                "protocol": PROTOCOL_VERSION, "min_protocol": MIN_COMPATIBLE_VERSION,
                "server_id": "api-0", "captures": 2}  # no capture ids on an open endpoint
            assert await server.hello() == "Welcome"
            assert await server.hello() == "Welcome"

            service.draining = True  # a load balancer needs no JSON to see it
            reply = await request(await server.connect(), "/status")
            assert reply.status == 503
            assert set(reply.json()) == STATUS_KEYS  # type: ignore[arg-type]

            head = await request(await server.connect(), "/status", method="HEAD")
            assert head.status == 503 and head.body == b""
            assert int(head.headers["content-length"]) == len(reply.body)
            nursery.cancel_scope.cancel()


async def test_status_on_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_websocket(
                welcome, "", 0, None, unix_path=path, task_status=task_status,
                http_handler=HttpRouter({"/status": status_route(FakeService().status)})))
            reply = await request(await trio.open_unix_socket(path), "/status")
            assert reply.status == 200
            nursery.cancel_scope.cancel()


async def test_a_served_link_keeps_its_tcp_endpoints(pki: CertPaths) -> None:
    """The agent leaves its own link out of host captures by these endpoints."""
    seen: list[tuple[object, object]] = []

    async def record(ws: trio_websocket.WebSocketConnection, peer: str,
                     headers: list[tuple[bytes, bytes]]) -> None:
        seen.append(link_endpoints(ws))
        await welcome(ws, peer, headers)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, None, tls=pki, handler=record)
            assert await server.hello() == "Welcome"
            nursery.cancel_scope.cancel()
    ((local, remote),) = seen
    assert isinstance(local, trio_websocket.Endpoint)
    assert isinstance(remote, trio_websocket.Endpoint)
    assert (str(local.address), local.port, local.is_ssl) == ("127.0.0.1", server.port, True)
    assert str(remote.address) == "127.0.0.1" and remote.port != server.port


async def test_a_streamed_body_is_produced_as_it_is_sent() -> None:
    piece, pieces = 64 * 1024, 256  # 16 MiB
    produced: list[int] = []

    async def download(request: HttpRequest) -> HttpResponse:
        async def body() -> AsyncIterator[bytes]:
            for i in range(pieces):
                produced.append(i)
                yield bytes([i % 256]) * piece

        length = [("content-length", str(piece * pieces))] if request.query.get("length") else []
        return HttpResponse(200, [("content-type", "application/octet-stream"), *length],
                            body())

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, HttpRouter({"/downloads/": download}))
            for target in ("/downloads/x?length=1", "/downloads/x"):
                produced.clear()
                stream = await server.connect(rcvbuf=64 * 1024)
                reply = await request(stream, target, pause_after_first=0.3)
                assert len(reply.body) == piece * pieces
                assert reply.body[::piece] == bytes(i % 256 for i in range(pieces))
                assert len(produced) == pieces
                if "length" in target:
                    assert reply.headers["content-length"] == str(piece * pieces)
                else:
                    assert reply.headers["transfer-encoding"] == "chunked"
            nursery.cancel_scope.cancel()


async def test_a_streamed_body_waits_for_its_reader() -> None:
    """While the client reads nothing, the handler is a few pieces ahead, not all 16 MiB."""
    produced: list[int] = []

    async def download(request: HttpRequest) -> HttpResponse:
        async def body() -> AsyncIterator[bytes]:
            for i in range(256):
                produced.append(i)
                yield b"x" * 65536

        return HttpResponse(200, [("content-length", str(256 * 65536))], body())

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, HttpRouter({"/d": download}))
            stream = await server.connect(rcvbuf=64 * 1024)
            await stream.send_all(b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n")
            await trio.sleep(0.5)  # the server sends all it can; the socket buffers fill
            assert 0 < len(produced) < 64  # at most the kernel's buffers ahead (<4 MiB of 16)
            received = 0
            while data := await stream.receive_some(1 << 20):
                received += len(data)
            assert len(produced) == 256 and received > 256 * 65536
            nursery.cancel_scope.cancel()


async def test_refusals(caplog: pytest.LogCaptureFixture) -> None:
    async def status(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, body=b"ok")

    async def broken(request: HttpRequest) -> HttpResponse:
        raise RuntimeError("bug")

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, HttpRouter({"/status": status,
                                                             "/broken": broken}))
            reply = await request(await server.connect(), "/nowhere")
            assert (reply.status, reply.json()) == (404, {"error": "not found"})

            reply = await request(await server.connect(), "/status", method="DELETE")
            assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD"

            reply = await request(await server.connect(), "/status?a=1&a=2")
            assert reply.status == 400

            with caplog.at_level(logging.DEBUG, logger="pcapd.transport"):
                reply = await request(await server.connect(), "/broken?token=SECRET")
                assert (reply.status, reply.json()) == (500, {"error": "internal error"})
                assert "internal error while answering GET /broken from" in caplog.text

                code, body = await raw_exchange(await server.connect(), b"HELLO THERE\r\n\r\n")
                assert code == 400 and b"error" in body
                code, body = await raw_exchange(
                    await server.connect(),
                    b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization Bearer SECRET\r\n\r\n")
                assert code == 400 and b"SECRET" not in body
                assert "bad request from 127.0.0.1" in caplog.text
            assert "SECRET" not in caplog.text  # what the peer sent is not quoted in logs

            huge = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
            code, _ = await raw_exchange(await server.connect(), huge)
            assert code == 431

            # an upgrade to anything but WebSocket is a plain request
            code, body = await raw_exchange(await server.connect(), (
                b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"))
            assert (code, body) == (200, b"ok")

            assert await server.hello() == "Welcome"  # and the server goes on
            nursery.cancel_scope.cancel()


async def test_without_routes_every_plain_request_is_not_found() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, None)
            reply = await request(await server.connect(), "/status")
            assert (reply.status, reply.json()) == (404, {"error": "not found"})
            nursery.cancel_scope.cancel()


async def test_a_body_failing_midway_cuts_the_response_short() -> None:
    async def download(request: HttpRequest) -> HttpResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 1000
            raise OSError("disk gone")

        return HttpResponse(200, body=body())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, HttpRouter({"/d": download}))
            with pytest.raises(h11.RemoteProtocolError):  # no last chunk: the client knows
                await request(await server.connect(), "/d")
            assert await server.hello() == "Welcome"
            nursery.cancel_scope.cancel()


async def test_a_client_that_stops_reading_is_dropped_and_the_body_closed() -> None:
    closed = trio.Event()

    async def download(request: HttpRequest) -> HttpResponse:
        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 65536
            finally:
                closed.set()

        return HttpResponse(200, body=body())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, HttpRouter({"/d": download}), http_timeout=0.5)
            stream = await server.connect(rcvbuf=64 * 1024)
            await stream.send_all(b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n")
            start = trio.current_time()
            await closed.wait()
            assert trio.current_time() - start < 3
            nursery.cancel_scope.cancel()


async def test_a_slow_head_is_dropped_at_the_handshake_timeout() -> None:
    service = FakeService()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, status_route(service.status),
                                        handshake_timeout=1.0)
            slow = await server.connect()
            start = trio.current_time()
            await slow.send_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")  # and never the end
            reply = await request(await server.connect(), "/status")  # served meanwhile
            assert reply.status == 200
            assert trio.current_time() - start < 0.5
            try:
                assert await slow.receive_some(100) == b""
            except trio.BrokenResourceError:
                pass  # a reset is as good as a close
            assert 0.9 < trio.current_time() - start < 3
            nursery.cancel_scope.cancel()


async def test_an_error_response_is_plain_json() -> None:
    response = error_response(404, "not found")
    assert response.body == b'{"error":"not found"}'
    assert response.headers == [("content-type", "application/json")]


@pytest.mark.parametrize(("extra", "why"), [(20, "request head too long"),
                                          (400, "Receive buffer too long")])
async def test_a_head_over_the_limit_is_answered_431(extra: int, why: str) -> None:
    """Read in pieces of the limit: a head may end in the read that crosses it (our check) or
    still be waiting for more (h11's); both are refused."""
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 + extra) + b"\r\n\r\n"
    with trio.fail_after(5):
        client, server = trio.testing.memory_stream_pair()
        await client.send_all(head)
        with pytest.raises(BadRequest, match=f"431: {why}"):
            await read_request_head(server, max_size=100)
        answer = await client.receive_some()
        assert answer.startswith(b"HTTP/1.1 431 ")
