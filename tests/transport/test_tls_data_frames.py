"""Data messages that pcapd encrypts and writes to the socket itself (``_compat.send_binary`` over
an agent's TLS link) arrive whole and in order at a standard reader (trio-websocket over trio's
TLS), between trio-websocket's own messages and pings; and a send cancelled while the socket is
full leaves the link whole: later messages, pings and the closing handshake still work.

Real sockets on loopback, real mutual TLS with certificates from ``pcapd.certs``."""

from __future__ import annotations

import random
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

from pcapd.certs import init_certs
from pcapd.proto.codec import data_header, decode_binary
from pcapd.transport import _compat
from pcapd.transport._compat import send_binary
from pcapd.transport.tls import client_context, server_context
from pcapd.transport.ws import open_websocket, serve_websocket

RECORD = 16 * 1024
HEAD = 10 + 16  # a 64-bit-length frame header and the data header
SIZES = [0, 1, RECORD - HEAD - 1, RECORD - HEAD, RECORD - HEAD + 1,
         RECORD - HEAD + _compat.ENCRYPT_PIECE, RECORD - HEAD + _compat.ENCRYPT_PIECE + 1,
         100_000, 1_500_000, (8 << 20) - 16]

Handler = Callable[[trio_websocket.WebSocketConnection], Awaitable[None]]


async def _linked(tmp_path: Path, serve: Handler,
                  read: Callable[[trio_websocket.WebSocketConnection], Awaitable[None]]) -> None:
    """``serve(ws)`` on an agent-like TLS server; ``read(ws)`` on a client connected to it."""
    pki = init_certs(tmp_path / "pki")
    server = server_context(pki.agent_cert, pki.agent_key, client_ca=pki.ca_cert)
    client = client_context(ca=pki.ca_cert, certificate=pki.api_client_cert,
                            private_key=pki.api_client_key)

    async def handler(ws: trio_websocket.WebSocketConnection, peer: str,
                      headers: list[tuple[bytes, bytes]]) -> None:
        await serve(ws)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, server)
            port = listeners[0].socket.getsockname()[1]
            async with open_websocket("127.0.0.1", port, ssl_context=client,
                                      server_hostname="pcap-agent.service.cf.internal") as ws:
                await read(ws)
            nursery.cancel_scope.cancel()


async def test_data_messages_of_every_size_arrive_whole_between_trio_websockets_own(
        tmp_path: Path) -> None:
    rng = random.Random(16)
    payloads = [rng.randbytes(size) for size in SIZES]
    payloads += [rng.randbytes(rng.randrange(1, 400_000)) for _ in range(10)]
    got: list[tuple[int, bytes]] = []
    texts: list[str | bytes] = []

    async def serve(ws: trio_websocket.WebSocketConnection) -> None:
        assert _compat._tls_over_socket(ws._stream) is not None  # the path under test
        for mark, payload in enumerate(payloads, start=1):
            await send_binary(ws, data_header(mark, len(payload)), memoryview(payload))
            await ws.send_message(f"after {mark}")  # trio's SSLStream, between ours
            if mark % 4 == 0:
                await ws.ping()
        await ws.get_message()

    async def read(ws: trio_websocket.WebSocketConnection) -> None:
        for _ in payloads:
            data = decode_binary(await ws.get_message())
            got.append((data.watermark, bytes(data.payload)))
            texts.append(await ws.get_message())
        await ws.send_message("thanks")

    await _linked(tmp_path, serve, read)
    assert got == list(enumerate(payloads, start=1))
    assert texts == [f"after {mark}" for mark in range(1, len(payloads) + 1)]


@pytest.mark.parametrize("next_send", ["pcapd", "trio-websocket"])
async def test_a_send_cancelled_while_the_socket_is_full_leaves_the_link_whole(
        tmp_path: Path, next_send: str) -> None:
    """The records a cancelled send could not write go out before whatever is sent next, by
    pcapd or by trio: the reader sees every message whole, the cancelled one included."""
    rng = random.Random(7)
    big = [rng.randbytes(1_000_000) for _ in range(40)]
    cancelled: list[int] = []
    left_over: list[int] = []
    read_now = trio.Event()

    async def serve(ws: trio_websocket.WebSocketConnection) -> None:
        tls: Any = _compat._tls_over_socket(ws._stream)
        tls.transport_stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        for mark, payload in enumerate(big, start=1):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_when_stuck, scope)
                    await send_binary(ws, data_header(mark, len(payload)), payload)
                    nursery.cancel_scope.cancel()
            if scope.cancelled_caught:
                cancelled.append(mark)
                left_over.append(len(tls._delayed_outgoing or b""))
                break
        read_now.set()
        if next_send == "pcapd":
            await send_binary(ws, data_header(1000, 3), b"end")
            await ws.send_message("text")
        else:
            await ws.send_message("text")
            await send_binary(ws, data_header(1000, 3), b"end")
        await ws.ping()  # answered: the peer still reads our records
        await ws.get_message()

    async def read(ws: trio_websocket.WebSocketConnection) -> None:
        await read_now.wait()  # nothing read until a send was stuck and cancelled
        marks = []
        texts = []
        while len(texts) < 1 or not marks or marks[-1] != 1000:
            message = await ws.get_message()
            if isinstance(message, str):
                texts.append(message)
                continue
            data = decode_binary(message)
            marks.append(data.watermark)
            expected = b"end" if data.watermark == 1000 else big[data.watermark - 1]
            assert bytes(data.payload) == expected
        assert marks == [*range(1, cancelled[0] + 1), 1000]
        assert texts == ["text"]
        await ws.send_message("thanks")

    await _linked(tmp_path, serve, read)
    assert cancelled and left_over[0] > 0  # a send was cut mid-message and its rest kept


async def _cancel_when_stuck(scope: trio.CancelScope) -> None:
    """Cancel ``scope`` once every task waits: the sender then waits for the full socket."""
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    scope.cancel()
