"""WebSocket links: dead peers noticed by ping, malformed input answered and closed, mTLS.

The link tests run trio-websocket over in-memory streams under Trio's autojump clock, so the
keepalive's timing is asserted in exact virtual seconds; the TLS tests use real sockets on
loopback with real certificates from ``pcapd.certs``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
import trio_websocket
import wsproto
from wsproto.events import AcceptConnection, Message, Request

from pcapd.certs import CertPaths, init_certs
from pcapd.proto import InitiatorSession, ResponderSession
from pcapd.transport.tls import client_context, server_context
from pcapd.transport.ws import Link, LinkClosed, open_websocket, serve_websocket


class FrozenPeer:
    """The far end of a link: shakes hands, then answers nothing (a hung or cut-off host)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)

    async def handshake(self) -> None:
        while True:
            self.ws.receive_data(await self.stream.receive_some(65536))
            for event in self.ws.events():
                if isinstance(event, Request):
                    await self.stream.send_all(self.ws.send(AcceptConnection()))
                    return

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(Message(data=text)))


async def link_to_frozen_peer(nursery: trio.Nursery) -> tuple[Link, FrozenPeer]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    peer = FrozenPeer(server_stream)
    nursery.start_soon(peer.handshake)
    ws = await trio_websocket.wrap_client_stream(nursery, client_stream, "agent", "/")
    return Link(ws, InitiatorSession("api"), "agent"), peer


async def test_keepalive_closes_a_link_whose_peer_went_silent(
        autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            link, _ = await link_to_frozen_peer(nursery)
            start = trio.current_time()
            await link.keepalive(5, 10)
            # noticed after one interval + the pong timeout; then at most 1 s to close politely
            assert trio.current_time() - start == pytest.approx(16)
            with pytest.raises(LinkClosed):
                await link.receive()
            nursery.cancel_scope.cancel()


async def test_malformed_message_is_answered_and_the_link_closed(
        autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            link, peer = await link_to_frozen_peer(nursery)
            await link.send(link.session.make_hello())  # type: ignore[union-attr]
            await peer.send_text('{"type": "welcome", "bogus": 1}')
            with pytest.raises(LinkClosed, match="bogus"):
                await link.receive()
            nursery.cancel_scope.cancel()


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
