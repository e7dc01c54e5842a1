"""Clients that attack the api before authenticating, and the measures of what it does meanwhile.

Shared by ``tests/e2e/test_intake.py`` and ``bench/intake_bench.py``. The raw WebSocket client
speaks through wsproto (the library trio-websocket is built on) so it can do what a well-behaved
client library will not: bind a chosen source address (another "peer"), send a message in
fragments and never finish it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    RejectConnection,
    Request,
    TextMessage,
)

from pcapd.proto import (
    BoshTarget,
    CaptureOptions,
    InitiatorSession,
    Start,
    Target,
    encode,
)
from pcapd.transport.link import Link
from pcapd.transport.ws import open_websocket

COSTLY_FILTER = " or ".join(f"port {i}" for i in range(1, 301))
"""300 ``or`` terms (3.4 KiB): libpcap's optimiser took 39 s over it, GIL held."""


class RawWebSocket:
    """A client WebSocket over a TCP connection from ``source`` (an address on lo)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.closed: CloseConnection | None = None
        self.gone = False
        """The server closed or reset the TCP connection."""

    @classmethod
    async def connect(cls, port: int, source: str = "127.0.0.1",
                      headers: list[tuple[bytes, bytes]] | None = None) -> RawWebSocket:
        sock = trio.socket.socket()
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
        raw = cls(trio.SocketStream(sock))
        await raw.send(Request(host="pcap-api", target="/", extra_headers=headers or []))
        while True:
            for event in await raw.events():
                if isinstance(event, AcceptConnection):
                    return raw
                if isinstance(event, RejectConnection):
                    raise AssertionError(f"handshake refused: {event.status_code}")

    async def send(self, event: Request | Message | CloseConnection) -> None:  # type: ignore[type-arg]
        await self.stream.send_all(self.ws.send(event))

    async def send_text(self, text: str, *, finished: bool = True) -> bool:
        """Send (a fragment of) a text message; False when the server has gone."""
        try:
            await self.send(TextMessage(data=text, message_finished=finished))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.gone = True
            return False
        return True

    async def events(self) -> list[object]:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.gone = True
            self.ws.receive_data(None)
        else:
            self.ws.receive_data(data)
        found = list(self.ws.events())
        for event in found:
            if isinstance(event, CloseConnection):
                self.closed = event
        return found

    async def wait_closed(self) -> CloseConnection | None:
        """Read until the server closes; its close frame (None: closed without one)."""
        while self.closed is None and not self.gone:
            await self.events()
        return self.closed

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def hello_over(raw: RawWebSocket) -> None:
    """The protocol's ``hello``, as any client sends first."""
    session = InitiatorSession("client")
    await raw.send_text(encode(session.make_hello()))


def close_code(event: CloseConnection | None) -> int | None:
    return int(event.code) if event is not None else None


def close_reason(event: CloseConnection | None) -> str:
    return (event.reason or "") if event is not None else ""


@asynccontextmanager
async def link_to_api(port: int, token: str | None) -> AsyncIterator[Link]:
    """A protocol link to the api (after ``hello``/``welcome``), with ``token`` if given."""
    headers = [(b"authorization", f"bearer {token}".encode())] if token else None
    async with open_websocket("127.0.0.1", port, ssl_context=None, extra_headers=headers) as ws:
        link = Link(ws, InitiatorSession("client"), "api")
        await link.send(link.session.make_hello())  # type: ignore[union-attr]
        await link.receive()
        yield link


def bosh_start(filter: str = "", *, deployment: str = "cf", group: str = "router",
               target: Target | None = None) -> Start:
    return Start(target=target or BoshTarget(deployment=deployment, groups=[group]),
                 options=CaptureOptions(device="lo", filter=filter))


@dataclass
class StatusLatency:
    """``GET /status`` of the api, asked again and again: each answer's latency in seconds."""

    url: str
    samples: list[float] = field(default_factory=list)
    failures: int = 0

    async def run(self, interval: float = 0.05) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            while True:
                began = time.perf_counter()
                try:
                    reply = await http.get(f"{self.url}/status")
                    ok = reply.status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.samples.append(time.perf_counter() - began)
                self.failures += not ok
                await trio.sleep(interval)

    def percentile(self, p: float) -> float:
        if len(self.samples) < 2:
            return self.samples[0] if self.samples else float("nan")
        return statistics.quantiles(self.samples, n=100, method="inclusive")[int(p) - 1]

    @property
    def worst(self) -> float:
        return max(self.samples, default=float("nan"))


@asynccontextmanager
async def sampling_status(url: str) -> AsyncIterator[StatusLatency]:
    """Sample ``/status`` latency while the body runs."""
    latency = StatusLatency(url)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(latency.run)
        await trio.sleep(0.2)  # a few samples of the idle api first
        yield latency
        nursery.cancel_scope.cancel()


async def unfinished_message(port: int, source: str, size: int, *,
                             chunk: int = 64 << 10) -> RawWebSocket:
    """Connect from ``source``, say hello, then send ``size`` bytes of one text message that
    never ends; returns the connection (whatever the server did with it) for inspection."""
    raw = await RawWebSocket.connect(port, source)
    await hello_over(raw)
    sent = 0
    while sent < size and await raw.send_text("x" * min(chunk, size - sent), finished=False):
        sent += chunk
    return raw


__all__ = [
    "COSTLY_FILTER",
    "RawWebSocket",
    "StatusLatency",
    "bosh_start",
    "close_code",
    "close_reason",
    "hello_over",
    "link_to_api",
    "sampling_status",
    "unfinished_message",
]
