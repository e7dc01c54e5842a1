"""Serving and dialling WebSocket connections: mutual TLS, old TLS refused, sockets closed.

Real sockets on loopback with real certificates from ``pcapd.certs``. The link over such a
connection (keepalive, malformed input) is tested in ``test_link.py``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
import trio_websocket
import wsproto
from wsproto.events import Request

from pcapd.certs import CertPaths, init_certs
from pcapd.proto import InitiatorSession, ResponderSession
from pcapd.transport.link import Link, LinkClosed
from pcapd.transport.tls import client_context, server_context
from pcapd.transport.ws import open_websocket, serve_websocket


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("pki") / "certs")


async def echo_hello(ws: trio_websocket.WebSocketConnection, peer: str,
                     headers: list[tuple[bytes, bytes]]) -> None:
    link = Link(ws, ResponderSession("agent"), peer)
    await link.receive()
    await link.send(link.session.make_welcome("test-agent"))  # type: ignore[union-attr]


async def handshake_with(port: int, ctx: ssl.SSLContext) -> str:
    async with open_websocket("127.0.0.1", port, ssl_context=ctx,
                              server_hostname="pcap-agent.service.cf.internal") as ws:
        link = Link(ws, InitiatorSession("api"), "agent")
        await link.send(link.session.make_hello())  # type: ignore[union-attr]
        welcome = await link.receive()
        return type(welcome).__name__


async def test_mutual_tls_refuses_strangers_and_keeps_serving(pki: CertPaths,
                                                              tmp_path: Path) -> None:
    stranger = init_certs(tmp_path / "stranger")
    server = server_context(pki.agent_cert, pki.agent_key, client_ca=pki.ca_cert)
    member = client_context(ca=pki.ca_cert, certificate=pki.api_client_cert,
                            private_key=pki.api_client_key)
    anonymous = client_context(ca=pki.ca_cert)
    foreign = client_context(ca=pki.ca_cert, certificate=stranger.api_client_cert,
                             private_key=stranger.api_client_key)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_websocket, echo_hello, "127.0.0.1", 0, server)
            port = listeners[0].socket.getsockname()[1]
            for refused in (anonymous, foreign):
                with pytest.raises(LinkClosed, match="client certificate"), trio.fail_after(2):
                    await handshake_with(port, refused)
            assert await handshake_with(port, member) == "Welcome"
            nursery.cancel_scope.cancel()


async def test_tls_below_1_2_is_refused(pki: CertPaths) -> None:
    server = server_context(pki.agent_cert, pki.agent_key, client_ca=pki.ca_cert)
    old = client_context(ca=pki.ca_cert, certificate=pki.api_client_cert,
                         private_key=pki.api_client_key)
    old.minimum_version = ssl.TLSVersion.TLSv1_1  # deprecated, still offered by old peers
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_websocket, echo_hello, "127.0.0.1", 0, server)
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(LinkClosed, match="TLS handshake failed"):
                await handshake_with(port, old)
            nursery.cancel_scope.cancel()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_links_close_their_sockets_whoever_closes_first() -> None:
    """trio-websocket leaves the socket open when the peer closed first, with a close frame or
    without one, until the connection object is garbage: here every one is kept alive (as a
    traceback or a reference cycle keeps them in a real process)."""
    kept: list[trio_websocket.WebSocketConnection] = []

    async def handler(ws: trio_websocket.WebSocketConnection, peer: str,
                      headers: object) -> None:
        kept.append(ws)
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            await ws.get_message()  # "bye": the server closes first; else the client did

    gc.collect()  # what earlier tests left to the collector goes now, not in the middle
    gc.disable()
    try:
        await _whoever_closes_first(handler, kept)
    finally:
        gc.enable()


async def _whoever_closes_first(handler: object,
                                kept: list[trio_websocket.WebSocketConnection]) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            port = listeners[0].socket.getsockname()[1]
            before = open_fds()
            for _ in range(5):
                async with open_websocket("127.0.0.1", port, ssl_context=None) as ws:
                    kept.append(ws)
                    await ws.send_message("bye")  # the server closes first
                    with pytest.raises(trio_websocket.ConnectionClosed):
                        await ws.get_message()
                async with open_websocket("127.0.0.1", port, ssl_context=None) as ws:
                    kept.append(ws)  # the client closes first
                stream = await trio.open_tcp_stream("127.0.0.1", port)  # no close frame
                client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
                await stream.send_all(client.send(Request(host="x", target="/")))
                await stream.receive_some(65536)
                await stream.aclose()
            with trio.move_on_after(5):  # the server closes its side of the last ones
                while open_fds() != before:  # noqa: ASYNC110 (no event to wait for)
                    await trio.sleep(0.01)
            assert open_fds() == before
            nursery.cancel_scope.cancel()

