"""The client side of a TLS link reads every TLS record already received in one go: messages of
every size still arrive whole and in order, over real sockets on loopback with real mutual TLS
(certificates from ``pcapd.certs``), and a read returns more than one record when they wait."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
import trio_websocket

from pcapd.certs import init_certs
from pcapd.transport import streams
from pcapd.transport.tls import client_context, server_context
from pcapd.transport.ws import open_websocket, serve_websocket

RECORD = 16 * 1024


async def test_messages_of_every_size_arrive_whole_when_records_are_read_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = init_certs(tmp_path / "pki")
    server = server_context(pki.agent_cert, pki.agent_key, client_ca=pki.ca_cert)
    client = client_context(ca=pki.ca_cert, certificate=pki.api_client_cert,
                            private_key=pki.api_client_key)
    rng = random.Random(8)
    messages = [rng.randbytes(size) for size in
                (1, 100, RECORD - 1, RECORD, RECORD + 1, 3 * RECORD + 7, 100_000, 1_500_000,
                 *(rng.randrange(1, 400_000) for _ in range(20)))]
    reads: list[int] = []
    real = streams.buffered_records

    def counting(stream: trio.abc.Stream, data: bytes | bytearray,
                 max_bytes: int) -> bytes | bytearray:
        out = real(stream, data, max_bytes)
        reads.append(len(out))
        return out

    monkeypatch.setattr(streams, "buffered_records", counting)

    async def send_all(ws: trio_websocket.WebSocketConnection, peer: str,
                       headers: list[tuple[bytes, bytes]]) -> None:
        for message in messages:
            await ws.send_message(message)
        await ws.get_message()  # until the client has them all

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_websocket, send_all, "127.0.0.1", 0, server)
            port = listeners[0].socket.getsockname()[1]
            async with open_websocket("127.0.0.1", port, ssl_context=client,
                                      server_hostname="pcap-agent.service.cf.internal") as ws:
                got = [await ws.get_message() for _ in messages]
                await ws.send_message("thanks")
            nursery.cancel_scope.cancel()
    assert got == messages
    assert max(reads) > RECORD  # several records in one read
