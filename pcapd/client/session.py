"""Run one capture against an api: send the request, write the stream, stop on a signal.

The first SIGINT/SIGTERM asks the api to stop: agents stop, their tails and statistics arrive,
the file ends complete. A second one gives up at once — the file still holds only whole blocks,
so it opens, but without the final statistics. A refusal (bad filter, no instance) raises
:class:`CaptureRefused` with the api's words for the CLI's one-line error.

A capture against a real api starts with the user's access token in the WebSocket handshake
(``extra_headers``) and may outlive it: with a ``token_source`` a task refreshes the token
shortly before each expiry (blocking HTTP, so in a worker thread) and hands the new one to the
api in a ``token`` message. When a refresh cannot succeed the user is told once, and the api
ends the capture when the old token expires.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import trio

from pcapd.client.output import PcapngOutput
from pcapd.client.progress import Progress
from pcapd.errors import PcapdError, ProtocolError
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
from pcapd.transport.ws import Link, LinkClosed, open_websocket

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


@dataclass(frozen=True, slots=True)
class ApiAddress:
    host: str
    port: int
    resource: str = "/"
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    unix_path: str | None = None
    """Local mode: the embedded api's Unix socket (host and port only label it)."""


@asynccontextmanager
async def open_api_link(api: ApiAddress, extra_headers: Headers | None = None
                        ) -> AsyncIterator[Link]:
    """A link to the api, past the handshake; an api that refuses raises CaptureRefused."""
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
        yield link


async def run_capture(api: ApiAddress, start: Start, output: PcapngOutput,
                      progress: Progress, *, extra_headers: Headers | None = None,
                      token_source: TokenSource | None = None) -> End:
    """Capture until the api ends the capture; returns its ``end``.

    ``extra_headers`` go into the WebSocket handshake (``authorization: bearer …``); with a
    ``token_source`` the token is kept fresh for as long as the capture runs.
    """
    async with open_api_link(api, extra_headers) as link:
        await link.send(start)
        end: End | None = None
        async with open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, link, nursery.cancel_scope, progress)
            if token_source is not None:
                nursery.start_soon(keep_token_fresh, link, token_source, progress)
            end = await _stream(link, output, progress)
            nursery.cancel_scope.cancel()
        if end is None:
            raise CaptureInterrupted("stopped at once: the file holds whole packets but not "
                                     "the final statistics")
        return end


async def _stream(link: Link, output: PcapngOutput, progress: Progress) -> End:
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
                progress.error("the reader of the capture went away: stopping")
                with contextlib.suppress(LinkClosed, PcapdError):
                    await link.send(Stop())
        elif isinstance(msg, Statistics):
            progress.statistics(msg)
        elif isinstance(msg, Notice):
            progress.notice(msg)
        elif isinstance(msg, Started):
            progress.started(msg)
        elif isinstance(msg, End):
            return msg
        elif isinstance(msg, Error):
            raise CaptureRefused(refusal_text(msg))


async def _stop_on_signal(link: Link, scope: trio.CancelScope, progress: Progress) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            break
        progress.error("stopping: waiting for the last packets and statistics "
                       "(press Ctrl-C again to quit at once)")
        try:
            await link.send(Stop())
        except (LinkClosed, PcapdError):
            scope.cancel()
            return
        with trio.move_on_after(STOP_GRACE):
            async for _ in signals:
                break
        scope.cancel()


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
