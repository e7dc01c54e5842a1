"""Binary messages framed by pcapd itself (``_compat.send_binary``, one copy instead of wsproto's
four) are the messages a standard WebSocket reader (wsproto, through trio-websocket) receives:
every length class of the RFC 6455 header, heartbeats, text messages in between, and the
connection's close reported as trio-websocket reports it."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import ConnectionClosed

from pcapd.proto.codec import data_header, decode_binary
from pcapd.transport._compat import send_binary as _send_binary

# payload sizes at the edges of the 7-bit, 16-bit and 64-bit length forms (the 16-byte
# header of a data message counts toward the frame's length)
SIZES = [0, 1, 125 - 16, 126 - 16, 127 - 16, 65535 - 16, 65536 - 16, 65537 - 16, 1_000_000]


async def _pair(nursery: trio.Nursery
                ) -> tuple[trio_websocket.WebSocketConnection, trio_websocket.WebSocketConnection]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    accepted: list[trio_websocket.WebSocketConnection] = []
    done = trio.Event()

    async def accept() -> None:
        request = await trio_websocket.wrap_server_stream(nursery, server_stream,
                                                          max_message_size=2 ** 21)
        accepted.append(await request.accept())
        done.set()

    nursery.start_soon(accept)
    client = await trio_websocket.wrap_client_stream(nursery, client_stream, "agent", "/",
                                                     max_message_size=2 ** 21)
    await done.wait()
    return accepted[0], client


async def test_binary_messages_framed_here_arrive_as_sent() -> None:
    rng = random.Random(16)
    payloads = [rng.randbytes(size) for size in SIZES]
    async with trio.open_nursery() as nursery:
        server, client = await _pair(nursery)
        for mark, payload in enumerate(payloads, start=1):
            await _send_binary(server, data_header(mark, len(payload)), memoryview(payload))
            await server.send_message(f"after {mark}")  # trio-websocket's own framing between
        for mark, payload in enumerate(payloads, start=1):
            data = decode_binary(await client.get_message(), max_size=2 ** 21)
            assert (data.watermark, bytes(data.payload)) == (mark, payload)
            assert await client.get_message() == f"after {mark}"
        nursery.cancel_scope.cancel()


async def test_a_client_side_and_a_closed_connection_behave_as_trio_websocket_does() -> None:
    async with trio.open_nursery() as nursery:
        server, client = await _pair(nursery)
        # a client masks its frames: that is left to wsproto
        await _send_binary(client, data_header(7, 3), b"abc")
        data = decode_binary(await server.get_message())
        assert (data.watermark, bytes(data.payload)) == (7, b"abc")
        await client.aclose()
        with pytest.raises(ConnectionClosed):
            await _send_binary(server, data_header(8, 3), b"def")
        nursery.cancel_scope.cancel()
