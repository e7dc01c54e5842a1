"""The client's stream under trio-websocket: it remembers how it broke and reads every TLS
record already received in one go."""

from __future__ import annotations

import ssl

import trio

from pcapd.transport._compat import ssl_object


class WatchedStream(trio.abc.Stream):
    """A stream that remembers how it broke.

    With TLS 1.3 a client finishes its handshake before the server has checked the client's
    certificate; the server's refusal arrives as an alert on the first read, inside
    trio-websocket's reader task, which then stops without ending the WebSocket handshake it
    was waiting for. Watching the stream lets :func:`pcapd.transport.ws.open_websocket` fail at
    once, with the server's reason ("certificate required", "unknown ca"), instead of timing out.
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
            data = buffered_records(self.inner, data, max_bytes)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def cancel_when_broken(stream: WatchedStream, scope: trio.CancelScope) -> None:
    await stream.broken.wait()
    scope.cancel()


def buffered_records(stream: trio.abc.Stream, data: bytes | bytearray,
                     max_bytes: int) -> bytes | bytearray:
    """``data`` plus what the TLS records already received decrypt to, up to ``max_bytes``.

    Trio's ``SSLStream.receive_some`` hands over one TLS record (16 KiB at most) per call, each
    through its retry loop and a checkpoint, and the WebSocket reader runs once per call: a
    100 kB agent batch took seven rounds. The records that are already in the SSL object's
    buffer decrypt without I/O, so they are read here straight away: the api's side of an
    agent link spends a quarter less CPU per MB (4.7 → 3.4 ms/MB; docs/performance.md,
    "Capture"). Only what is buffered: ``SSLWantReadError`` (or any other SSL error, which the
    next ``receive_some`` then reports through trio as usual) ends it. Outgoing TLS data a read
    may produce goes out with trio's next operation on the stream. Not TLS: nothing changes.
    """
    tls = ssl_object(stream)
    if tls is None:
        return data
    parts = [data]
    size = len(data)
    while size < max_bytes:
        try:
            more = tls.read(max_bytes - size)
        except ssl.SSLError:  # SSLWantReadError: nothing more buffered
            break
        if not more:
            break
        parts.append(more)
        size += len(more)
    return b"".join(parts) if len(parts) > 1 else data
