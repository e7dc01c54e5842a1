"""A protocol session over one WebSocket connection, and the keepalive that notices a dead peer.

:class:`Link` runs a sans-I/O session (:mod:`pcapd.proto.session`) over a connection opened or
accepted by :mod:`pcapd.transport.ws`, and turns every way a link can fail into
:class:`LinkClosed`.
"""

from __future__ import annotations

import logging
from typing import Final, overload
from weakref import WeakKeyDictionary

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from pcapd.errors import PcapdError, RemoteProtocolError
from pcapd.proto import Data, Message
from pcapd.proto.session import InitiatorSession, ResponderSession
from pcapd.transport import _compat  # (also: the ping patch, for every link's connection)
from pcapd.transport.peer_progress import Sample, progressed, sample

log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL: Final = 5.0
"""Seconds between pings on every pcapd link (:meth:`Link.keepalive`)."""
KEEPALIVE_TIMEOUT: Final = 10.0
"""Seconds a peer whose host has stopped answering (a power cut, a dropped route, a laptop
asleep) may leave a ping unanswered before its link is given up."""
KEEPALIVE_STALL: Final = 30.0
"""Seconds a peer whose host still answers may neither answer a ping nor take data before its
link is given up: a reader that stopped reading. Longer than :data:`KEEPALIVE_TIMEOUT` because
a slow reader shows its progress only in steps (:mod:`pcapd.transport.peer_progress`): a
reader at 100 kB/s behind a 32 MB receive buffer, every 5-15 s."""
OWN_STALL: Final = 0.5
"""Seconds the keepalive may wake late before it takes the delay as its own process having
been stalled, and does not count that time against the peer."""


class LinkClosed(PcapdError):
    """The peer went away, the connection broke, or the link failed a protocol check."""


_SOCKETS: WeakKeyDictionary[WebSocketConnection, trio.socket.SocketType] = WeakKeyDictionary()
"""The TCP (or Unix) socket under each link, for the keepalive's look at the peer's progress."""


def remember_socket(ws: WebSocketConnection, sock: trio.socket.SocketType) -> None:
    """Record the socket under ``ws`` (trio-websocket does not expose it) for the keepalive."""
    _SOCKETS[ws] = sock


class Link:
    """A protocol session running over one WebSocket connection."""

    def __init__(self, ws: WebSocketConnection,
                 session: InitiatorSession | ResponderSession, peer: str) -> None:
        self.ws = ws
        self.session = session
        self.peer = peer
        self.gave_up: str | None = None
        """Why this side closed the link (no pong), for the :class:`LinkClosed` that follows:
        the close code the peer never saw is no explanation."""

    @overload
    async def send(self, msg: Data) -> None: ...
    @overload
    async def send(self, msg: Message) -> None: ...
    async def send(self, msg: Message | Data) -> None:
        try:
            if isinstance(msg, Data):
                await _compat.send_binary(self.ws, self.session.send_data_header(msg),
                                          msg.payload)
            else:
                await self.ws.send_message(self.session.send(msg))
        except ConnectionClosed as exc:
            raise LinkClosed(f"{self.peer}: connection closed "
                             f"({self.gave_up or _reason(exc)})") from exc

    async def receive(self) -> Message | Data:
        """The next message; a malformed one is answered with ``error`` and the link closed."""
        try:
            raw = await self.ws.get_message()
        except ConnectionClosed as exc:
            raise LinkClosed(f"{self.peer}: connection closed "
                             f"({self.gave_up or _reason(exc)})") from exc
        try:
            if isinstance(raw, str):
                return self.session.receive_text(raw)
            return self.session.receive_binary(raw)
        except RemoteProtocolError as exc:
            reply = self.session.error_reply(exc)
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                if reply is not None:
                    try:
                        await self.ws.send_message(reply)
                    except ConnectionClosed:
                        pass
                await self.ws.aclose(code=1008, reason="protocol error")
            raise LinkClosed(f"{self.peer}: {exc}") from exc

    async def keepalive(self, interval: float, pong_within: float,
                        stall_within: float = KEEPALIVE_STALL) -> None:
        """Ping the peer every ``interval``; close the link once the peer has neither answered
        a ping nor made progress for ``pong_within`` seconds while its host does not answer
        either, or for ``stall_within`` seconds while it does.

        This is what notices a peer that vanished without a FIN (power cut, dropped route):
        TCP alone would wait for minutes. A slow reader is not such a peer: our ping queues
        behind the data already on its way, and the pong comes only once the peer has read
        all of it, which at 100 kB/s behind a few MB of socket buffers takes far longer than
        ``pong_within``. So while a pong is due the kernel is asked whether the peer still
        takes our data (:mod:`pcapd.transport.peer_progress`): the TCP bytes it acknowledged
        grow while data waits for it (for a Unix socket: the queue toward it changes). They
        grow in steps, seconds apart; while the peer's host answers our retransmissions and
        window probes it is given the longer ``stall_within`` to show the next one, so only
        a reader that stopped reading is given up, and a vanished host still within
        ``pong_within``. Time this process was not running (a wake-up later than
        :data:`OWN_STALL`) does not count: the pong may be sitting unread in our own socket.
        Runs until cancelled or the link closes.
        """
        sock = _SOCKETS.get(self.ws)
        while True:
            await trio.sleep(interval)
            answered = trio.Event()
            dead = False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ping, answered)
                flow = sample(sock)
                moved = trio.current_time()  # when the peer last answered or took data
                poll = min(1.0, pong_within / 4)
                while not answered.is_set():
                    left = moved + _allowed(flow, pong_within, stall_within) - trio.current_time()
                    wake = trio.current_time() + max(0.0, min(poll, left))
                    with trio.move_on_at(wake):
                        await answered.wait()
                    if answered.is_set():
                        break
                    late = trio.current_time() - wake
                    if late > OWN_STALL:
                        # We were not running (a blocked event loop, a starved or suspended
                        # process): the pong may be waiting unread in our own socket. The
                        # time we were away is not the peer's silence.
                        moved += late
                    now = sample(sock)
                    if progressed(flow, now):
                        moved = trio.current_time()
                    flow = now
                    if trio.current_time() - moved >= _allowed(flow, pong_within, stall_within):
                        dead = True
                        break
                nursery.cancel_scope.cancel()
            if self.ws.closed is not None:
                return
            if dead:
                if flow is not None and flow.answering:
                    log.warning("%s: no pong and no data taken for %gs though its host answers "
                                "(it stopped reading): closing the link", self.peer, stall_within)
                    self.gave_up = f"took no data for {stall_within:g}s"
                else:
                    log.warning("%s: no pong and no data taken for %gs: closing the link",
                                self.peer, pong_within)
                    self.gave_up = f"no answer to pings for {pong_within:g}s"
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True
                    await self.ws.aclose(code=1001, reason="ping timeout")
                return

    async def _ping(self, answered: trio.Event) -> None:
        """One ping; ``answered`` is set when its pong came or the link closed."""
        try:
            await self.ws.ping()
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        answered.set()

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            await self.ws.aclose(code=code, reason=reason)


def _allowed(flow: Sample | None, pong_within: float, stall_within: float) -> float:
    """How long a peer may stay silent: longer while its host still answers."""
    return stall_within if flow is not None and flow.answering else pong_within


def _reason(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "no reason given"
    return f"{reason.name}" + (f": {reason.reason}" if reason.reason else "")
