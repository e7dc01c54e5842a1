"""Run one capture against an api: send the request, write the stream, stop on a signal.

Signals are watched in every phase, as tcpdump does (:func:`interruptible`), also when pcapd
started with SIGINT ignored (a background job of a script). Before the capture has started
(resolving, connecting, starting) SIGINT or SIGTERM ends pcapd at once: :class:`Interrupted`,
exit 130, nothing written. Once it runs, the first one asks the api to stop: agents stop, their
tails and statistics arrive, the file ends complete. A second one gives up at once — the file
still holds only whole blocks, so it opens, but without the final statistics. With
``--upload``, once the capture has ended (its final statistics came) and the api is storing it,
a signal ends pcapd at once: the api finishes storing by itself. A refusal (bad
filter, no instance) raises :class:`CaptureRefused` with the api's words for the CLI's one-line
error.

A capture against a real api starts with the user's access token in the WebSocket handshake
(``extra_headers``) and may outlive it: with a ``token_source`` a task refreshes the token
shortly before each expiry (blocking HTTP, so in a worker thread) and hands the new one to the
api in a ``token`` message. When a refresh cannot succeed the user is told once, and the api
ends the capture when the old token expires.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import trio

from pcapd.client.output import PcapngOutput
from pcapd.client.progress import Progress
from pcapd.errors import Interrupted, PcapdError, ProtocolError
from pcapd.proto import (
    Data,
    End,
    Error,
    InitiatorSession,
    Notice,
    Start,
    Started,
    Statistics,
    Stop,
    Token,
    Welcome,
)
from pcapd.transport.groups import open_nursery
from pcapd.transport.link import Link, LinkClosed
from pcapd.transport.ws import HandshakeRejected, open_websocket

log = logging.getLogger(__name__)

STOP_GRACE = 30.0
"""Seconds to wait for the api's ``end`` after asking it to stop."""
RETRY_INTERVAL = 15.0
"""Seconds between token refreshes that failed on the way (UAA unreachable, 5xx)."""
MIN_REFRESH_INTERVAL = 5.0
"""Seconds at least between two token refreshes, whatever lifetime UAA gives its tokens."""

Headers = list[tuple[bytes, bytes]]


class TokenSource(Protocol):
    """Where fresh access tokens come from (:class:`pcapd.client.credentials.Credentials`)."""

    def refresh_at(self) -> float | None:
        """Wall-clock time at which the current token is due for a refresh; None: never."""

    def expires_at(self) -> float | None:
        """Wall-clock expiry of the current token; None: unknown."""

    def refresh(self) -> str:
        """Blocking: refresh, store, return the new bare access token.

        Raises a PcapdError if it cannot; one whose ``permanent`` attribute is False (UAA
        unreachable) may succeed when tried again.
        """


class CaptureRefused(PcapdError):
    """The api refused or could not start the capture."""


def refusal_text(error: Error) -> str:
    """The one line for an api's ``error``: its code first (``LIMIT_REACHED: …``), the word
    to look up in docs/troubleshooting.md, then the api's own words."""
    return f"{error.code}: {error.text}"


class CaptureInterrupted(PcapdError):
    """The user insisted (a second Ctrl-C): the capture was abandoned without its end."""


class Interrupts:
    """What a signal does in the current phase: end at once, or ask for a graceful stop."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.received = 0
        self.graceful: Callable[[], Awaitable[bool]] | None = None
        """Once the capture runs: ask the api to stop; False if that could not be sent."""
        self.ended: str | None = None
        """Once the capture has ended (its final statistics came) and only the api's ``end``
        is awaited — the api storing an ``--upload`` —: what a signal then leaves behind; it
        ends pcapd at once, as there is nothing left to stop."""
        self.abandoned = False

    async def watch(self, signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            self.received += 1
            if self.ended is None and self.graceful is not None and await self.graceful():
                with trio.move_on_after(STOP_GRACE):  # the api's time to end the capture
                    async for _ in signals:
                        break
            self.abandoned = self.graceful is not None
            self.scope.cancel()
            return


@asynccontextmanager
async def interruptible() -> AsyncIterator[Interrupts]:
    """Watch SIGINT and SIGTERM for the whole block (whatever their disposition was: a shell
    starts background jobs with SIGINT ignored). A signal before ``graceful`` is set cancels
    the block and raises :class:`Interrupted`; after it, the first one calls it, a second one
    cancels the block and raises :class:`CaptureInterrupted`."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_nursery() as nursery:
            interrupts = Interrupts(nursery.cancel_scope)
            nursery.start_soon(interrupts.watch, signals)
            yield interrupts
            nursery.cancel_scope.cancel()
    if interrupts.abandoned:
        raise CaptureInterrupted(interrupts.ended or "stopped at once: the file holds whole "
                                 "packets but not the final statistics")
    if interrupts.received and interrupts.graceful is None:
        raise Interrupted()


@dataclass(frozen=True, slots=True)
class ApiAddress:
    host: str
    port: int
    resource: str = "/"
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    unix_path: str | None = None
    """Local mode: the embedded api's Unix socket (host and port only label it)."""
    url: str = ""
    """The api as the user gave it (or as derived), for messages."""
    origin: str = ""
    """Where that URL came from (``--api``, ``PCAPD_API``, ``your cf target``)."""

    @property
    def shown(self) -> str:
        return self.url or f"{self.host}:{self.port}"


def rejection_text(api: ApiAddress, exc: HandshakeRejected) -> str:
    """One line for an HTTP answer instead of a WebSocket: gorouter's 404 ``unknown_route``
    (pcapd is not deployed there, or a wrong ``--api``), a 502 (the api is down)."""
    router = f", X-Cf-Routererror: {exc.router_error}" if exc.router_error else ""
    origin = f" (from {api.origin})" if api.origin else ""
    if exc.status == 404:
        hint = "is pcapd deployed there? use --api URL or PCAPD_API for another address"
    elif exc.status in (502, 503, 504):
        hint = ("the api behind it does not answer: is pcapd's api running? try again, or "
                "ask your operator")
    else:
        hint = "is this a pcapd api? use --api URL or PCAPD_API for another address"
    return f"{api.shown}{origin} answered HTTP {exc.status}{router}, not pcapd: {hint}"


def unreachable_text(api: ApiAddress, exc: LinkClosed) -> str:
    """One line for an api that could not be reached (nothing listens, no such name, a
    timeout, a certificate not trusted): the URL and where it came from, the socket's or the
    TLS library's reason, and what to try."""
    origin = f" (from {api.origin})" if api.origin else ""
    reason = str(exc).removeprefix(f"{api.host}:{api.port}: ").removeprefix("cannot connect: ")
    inner = _socket_reason(exc)
    if inner is not None:
        reason = inner
    if "TLS handshake failed" in reason:
        hint = ("a private CA: --cacert CA_FILE; an api without TLS: http://; or -k on a "
                "test installation")
    else:
        hint = ("is the address right, and pcapd's api running there? use --api URL or "
                "PCAPD_API for another address")
    return f"cannot connect to {api.shown}{origin}: {reason}: {hint}"


def _socket_reason(exc: BaseException) -> str | None:
    """The socket's own words (``Connection refused``, ``Name or service not known``) under
    trio's ``all attempts to connect to … failed``; None if there are none."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BaseExceptionGroup):
            seen = seen.exceptions[0] if seen.exceptions else None
            continue
        if isinstance(seen, OSError) and seen.strerror:  # trio's: "Error connecting to …: …"
            return os.strerror(seen.errno) if isinstance(seen.errno, int) and seen.errno > 0 \
                and not isinstance(seen, socket.gaierror) else seen.strerror
        seen = seen.__cause__
    return None


@asynccontextmanager
async def open_api_link(api: ApiAddress, extra_headers: Headers | None = None
                        ) -> AsyncIterator[Link]:
    """A link to the api, past the handshake; an api that refuses, or cannot be reached,
    raises CaptureRefused (one line: :func:`rejection_text`, :func:`unreachable_text`)."""
    welcomed = False
    try:
        async with open_websocket(api.host, api.port, ssl_context=api.ssl_context,
                                  server_hostname=api.server_hostname,
                                  resource=api.resource, extra_headers=extra_headers,
                                  unix_path=api.unix_path) as ws:
            link = Link(ws, InitiatorSession("client"), f"api {api.host}:{api.port}")
            await link.send(link.session.make_hello())  # type: ignore[union-attr]
            welcome = await link.receive()
            if isinstance(welcome, Error):
                raise CaptureRefused(refusal_text(welcome))
            assert isinstance(welcome, Welcome)
            welcomed = True
            yield link
    except HandshakeRejected as exc:
        raise CaptureRefused(rejection_text(api, exc)) from None
    except LinkClosed as exc:
        if welcomed or api.unix_path is not None:
            raise
        raise CaptureRefused(unreachable_text(api, exc)) from exc


async def run_capture(api: ApiAddress, start: Start, output: PcapngOutput,
                      progress: Progress, *, extra_headers: Headers | None = None,
                      token_source: TokenSource | None = None,
                      interrupts: Interrupts | None = None) -> End:
    """Capture until the api ends the capture; returns its ``end``.

    ``extra_headers`` go into the WebSocket handshake (``authorization: bearer …``); with a
    ``token_source`` the token is kept fresh for as long as the capture runs.
    ``interrupts`` (of :func:`interruptible` around the whole command) switches to a graceful
    stop once the api says the capture runs; without it a block of its own is watched here.
    """
    if interrupts is None:
        async with interruptible() as own:
            return await run_capture(api, start, output, progress, extra_headers=extra_headers,
                                     token_source=token_source, interrupts=own)
    progress.asked = start.limits
    async with open_api_link(api, extra_headers) as link:
        await link.send(start)
        async with open_nursery() as nursery:
            if token_source is not None:
                nursery.start_soon(keep_token_fresh, link, token_source, progress)
            end = await _stream(link, output, progress, interrupts, storing=start.upload)
            nursery.cancel_scope.cancel()
        return end


def _graceful_stop(link: Link, progress: Progress) -> Callable[[], Awaitable[bool]]:
    async def stop() -> bool:
        progress.error("stopping: waiting for the last packets and statistics "
                       "(press Ctrl-C again to quit at once)")
        try:
            with trio.move_on_after(STOP_GRACE):
                await link.send(Stop())
                return True
        except (LinkClosed, PcapdError):
            pass
        return False

    return stop


STORING = ("the capture has ended: the api is storing it (Ctrl-C stops waiting; "
           "`pcapd captures list` shows it once stored)")
LEFT_STORING = ("stopped waiting: the capture has ended and the api goes on storing it; "
                "`pcapd captures list` shows it once stored")


async def _stream(link: Link, output: PcapngOutput, progress: Progress,
                  interrupts: Interrupts, *, storing: bool = False) -> End:
    """The api's messages until its ``end``; ``storing``: an ``--upload``, whose ``end``
    comes once the api has stored the capture (a stalled store must not hold the user: after
    the final statistics a signal ends pcapd at once, see :class:`Interrupts`)."""
    reader_gone = False
    while True:
        try:
            msg = await link.receive()
        except LinkClosed as exc:
            raise CaptureRefused(f"lost the connection to the api: {exc}") from exc
        if isinstance(msg, Data):
            if reader_gone:
                continue
            try:
                await output.write(msg.payload)
            except BrokenPipeError:
                # `| tshark -c N` or a closed Wireshark: a normal way to end, not an error
                reader_gone = True
                progress.reader_gone()
                with contextlib.suppress(LinkClosed, PcapdError):
                    await link.send(Stop())
        elif isinstance(msg, Statistics):
            progress.statistics(msg)
            if msg.final and storing:
                interrupts.ended = LEFT_STORING
                progress.note(STORING)
        elif isinstance(msg, Notice):
            progress.notice(msg)
        elif isinstance(msg, Started):
            interrupts.graceful = _graceful_stop(link, progress)
            progress.started(msg)
        elif isinstance(msg, End):
            return msg
        elif isinstance(msg, Error):
            raise CaptureRefused(refusal_text(msg))


async def keep_token_fresh(link: Link, source: TokenSource, progress: Progress, *,
                           clock: Callable[[], float] = time.time,
                           retry_interval: float = RETRY_INTERVAL) -> None:
    """Refresh the access token before each expiry and send it to the api, until cancelled.

    ``clock`` is the wall clock the token's expiry is measured on. A permanent failure (the
    refresh token expired or was revoked) or one that outlasts the token ends the task with one
    line to the user; the capture goes on until the api ends it.
    """
    pause = 0.0
    while True:
        due = source.refresh_at()
        if due is None:
            return
        await trio.sleep(max(pause, due - clock()))
        pause = MIN_REFRESH_INTERVAL
        try:
            # abandon: a refresh in flight must not hold up the end of the capture
            token = await trio.to_thread.run_sync(source.refresh, abandon_on_cancel=True)
        except PcapdError as exc:
            expires = source.expires_at()
            transient = not getattr(exc, "permanent", True)
            if transient and expires is not None and clock() + retry_interval < expires:
                log.warning("could not refresh the access token (%s): trying again in %gs",
                            exc, retry_interval)
                pause = retry_interval
                continue
            when = "" if expires is None else \
                f" at {time.strftime('%H:%M:%S', time.localtime(expires))}"
            progress.error(f"could not refresh your access token: {exc}; the api ends the "
                           f"capture when the current token expires{when}")
            return
        try:
            await link.send(Token(token=token))
        except (LinkClosed, ProtocolError):
            return  # the capture is over (or the link is): nothing left to renew
