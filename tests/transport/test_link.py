"""A link: dead peers noticed by ping, a slow reader told from a stopped one, malformed input
answered and the link closed, a close that a late ping does not break.

Most run trio-websocket over in-memory streams under Trio's autojump clock, so the keepalive's
timing is asserted in exact virtual seconds; the slow reader runs over real TCP on loopback,
whose buffers and window are what the keepalive reads.
"""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing
import trio_websocket
import wsproto
from wsproto.events import AcceptConnection, Message, Ping, Request

from pcapd.proto import InitiatorSession, ResponderSession
from pcapd.transport.link import Link, LinkClosed
from pcapd.transport.ws import open_websocket, serve_websocket


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
            with pytest.raises(LinkClosed, match="no answer to pings for 10s"):
                await link.receive()
            nursery.cancel_scope.cancel()


async def test_our_own_stall_is_not_taken_for_the_peers_silence(
        autojump_clock: trio.testing.MockClock) -> None:
    """The peer answers each ping 3 s late. While a pong is due our own process stops for
    12 s (a blocked event loop, a starved or suspended process): the pong then sits unread
    in our socket, and the link must not be given up for a silence that was ours."""
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            client_stream, server_stream = trio.testing.memory_stream_pair()
            peer = wsproto.WSConnection(wsproto.ConnectionType.SERVER)

            async def late_answers() -> None:
                while data := await server_stream.receive_some(65536):
                    peer.receive_data(data)
                    for event in peer.events():
                        if isinstance(event, Request):
                            await server_stream.send_all(peer.send(AcceptConnection()))
                        elif isinstance(event, Ping):
                            await trio.sleep(3)
                            await server_stream.send_all(peer.send(event.response()))

            nursery.start_soon(late_answers)
            ws = await trio_websocket.wrap_client_stream(nursery, client_stream, "agent", "/")
            link = Link(ws, InitiatorSession("api"), "agent")
            nursery.start_soon(link.keepalive, 5, 10)
            await trio.sleep(6)  # the first ping went out at 5 s; its pong is due
            autojump_clock.jump(12)  # nothing of ours runs for 12 s
            await trio.sleep(30)  # five more pings, each answered
            assert link.gave_up is None and ws.closed is None
            nursery.cancel_scope.cancel()


async def test_a_ping_after_our_close_frame_is_left_unanswered(
        autojump_clock: trio.testing.MockClock) -> None:
    """Unpatched, trio-websocket's reader task would try to pong in the closing state and fail
    the nursery it runs in (for a served connection: the whole server)."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            link, peer = await link_to_frozen_peer(nursery)

            async def ping_while_we_close() -> None:
                await trio.sleep(0.5)  # our close frame is out; the peer has not read it yet
                await peer.stream.send_all(peer.ws.send(Ping(payload=b"late")))

            nursery.start_soon(ping_while_we_close)
            await link.aclose()  # waits up to 1 s for the peer's close frame
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


async def test_a_slow_reader_is_not_given_up_but_one_that_stops_reading_is() -> None:
    """Real TCP on loopback: the server streams as fast as it can to a client that reads about
    100 kB/s. Its pongs wait behind megabytes of socket buffers, far longer than the pong
    timeout, yet the link stays up while the client keeps reading; once it stops reading
    altogether (its host still answers) the keepalive gives it up about one stall time later."""
    interval, pong_within, stall_within, rate = 0.5, 2.0, 4.0, 100_000
    sent = 0
    gave_up = trio.Event()
    links: list[Link] = []

    async def stream_to(ws: trio_websocket.WebSocketConnection, peer: str,
                        headers: object) -> None:
        nonlocal sent
        link = Link(ws, ResponderSession("api"), peer)
        links.append(link)
        async with trio.open_nursery() as nursery:

            async def keepalive() -> None:
                await link.keepalive(interval, pong_within, stall_within)
                gave_up.set()
                nursery.cancel_scope.cancel()

            nursery.start_soon(keepalive)
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                while True:
                    await ws.send_message(bytes(16384))
                    sent += 16384

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_websocket, stream_to, "127.0.0.1", 0, None)
            port = listeners[0].socket.getsockname()[1]
            async with open_websocket("127.0.0.1", port, ssl_context=None) as ws:
                began, received, backlog = trio.current_time(), 0, 0
                while trio.current_time() - began < 4 * pong_within:
                    received += len(await ws.get_message())
                    backlog = max(backlog, sent - received)
                    await trio.sleep(max(0.0, began + received / rate - trio.current_time()))
                # the pong waited behind more than the pong timeout's worth of reading
                assert backlog > 2 * pong_within * rate, backlog
                assert not gave_up.is_set() and links[0].gave_up is None
                stopped = trio.current_time()
                await gave_up.wait()  # we read nothing from now on
                took = trio.current_time() - stopped
            nursery.cancel_scope.cancel()
    assert stall_within - 1 <= took <= stall_within + interval + 3, took
    assert links[0].gave_up == f"took no data for {stall_within:g}s"
