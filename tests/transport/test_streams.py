"""The client's stream under trio-websocket: it remembers how it broke (so a refusal the server
sends after the TLS handshake ends the wait at once), and it reads every TLS record already
received in one go: messages of every size still arrive whole and in order, over real sockets
on loopback with real mutual TLS (certificates from ``pcapd.certs``), a read returns more than
one record when they wait, and never more than was asked for."""

from __future__ import annotations

import random
import socket
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
import trio_websocket
import trustme

from pcapd.certs import init_certs
from pcapd.transport import streams
from pcapd.transport.streams import WatchedStream, buffered_records, cancel_when_broken
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


async def test_a_reset_connection_is_remembered_and_raised() -> None:
    """The peer resets the connection (a Unix socket closed with our data unread): the read
    raises as it would unwatched, and the stream keeps the error and says it broke."""
    ours, theirs = socket.socketpair()
    stream = WatchedStream(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
    with trio.fail_after(5):
        await stream.send_all(b"never read")
        theirs.close()
        with pytest.raises(trio.BrokenResourceError):
            await stream.receive_some(100)
    assert stream.broken.is_set() and isinstance(stream.error, trio.BrokenResourceError)
    await stream.aclose()


async def test_the_end_of_the_stream_cancels_the_scope_waiting_on_it() -> None:
    """What lets ``open_websocket`` stop waiting for a handshake the server will never
    finish: a closed stream (no error) cancels the scope at once."""
    ours, theirs = trio.testing.memory_stream_pair()
    stream = WatchedStream(ours)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as waiting:
                nursery.start_soon(cancel_when_broken, stream, waiting)
                await theirs.send_all(b"hello")
                assert await stream.receive_some(100) == b"hello"
                assert not stream.broken.is_set()
                await theirs.aclose()
                assert await stream.receive_some(100) == b""
                await trio.sleep_forever()
    assert waiting.cancelled_caught and stream.broken.is_set() and stream.error is None


async def test_a_stream_that_is_not_tls_is_read_as_it_comes() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        await theirs.send_all(b"abc")
        data = await ours.receive_some(2)
        await theirs.send_all(b"def")
        assert buffered_records(ours, data, 100) is data  # nothing buffered to add


async def test_a_read_takes_the_buffered_records_up_to_max_bytes_and_no_more() -> None:
    """Five records wait decrypted-to-be in the TLS object: one read of ``RECORD + 100``
    returns exactly that many bytes (the rest of the second record stays for the next read),
    and the reads together are what was sent, in order."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("agent.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_end, server_end = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_end, client_ctx, server_hostname="agent.test")
    server = trio.SSLStream(server_end, server_ctx, server_side=True)
    sent = random.Random(5).randbytes(5 * RECORD)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(server.do_handshake)
        await server.send_all(sent)
        watched = WatchedStream(client)
        reads = []
        got = b""
        while len(got) < len(sent):
            data = await watched.receive_some(RECORD + 100)
            reads.append(len(data))
            got += data
    assert got == sent
    assert max(reads) == RECORD + 100 and all(n <= RECORD + 100 for n in reads)
