"""Run one capture against an api: send the request, write the stream, stop on a signal.

The first SIGINT/SIGTERM asks the api to stop: agents stop, their tails and statistics arrive,
the file ends complete. A second one gives up at once — the file still holds only whole blocks,
so it opens, but without the final statistics. A refusal (bad filter, no instance) raises
:class:`CaptureRefused` with the api's words for the CLI's one-line error.
"""

from __future__ import annotations

import contextlib
import signal
import ssl
from dataclasses import dataclass

import trio

from pcapd.client.output import PcapngOutput
from pcapd.client.progress import Progress
from pcapd.errors import PcapdError
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
    Welcome,
)
from pcapd.transport.groups import open_nursery
from pcapd.transport.ws import Link, LinkClosed, open_websocket

STOP_GRACE = 30.0
"""Seconds to wait for the api's ``end`` after asking it to stop."""


class CaptureRefused(PcapdError):
    """The api refused or could not start the capture."""


class CaptureInterrupted(PcapdError):
    """The user insisted (a second Ctrl-C): the capture was abandoned without its end."""


@dataclass(frozen=True, slots=True)
class ApiAddress:
    host: str
    port: int
    resource: str = "/"
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None


async def run_capture(api: ApiAddress, start: Start, output: PcapngOutput,
                      progress: Progress) -> End:
    """Capture until the api ends the capture; returns its ``end``."""
    async with open_websocket(api.host, api.port, ssl_context=api.ssl_context,
                              server_hostname=api.server_hostname,
                              resource=api.resource) as ws:
        link = Link(ws, InitiatorSession("client"), f"api {api.host}:{api.port}")
        await link.send(link.session.make_hello())  # type: ignore[union-attr]
        welcome = await link.receive()
        if isinstance(welcome, Error):
            raise CaptureRefused(welcome.text)
        assert isinstance(welcome, Welcome)
        await link.send(start)
        end: End | None = None
        async with open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, link, nursery.cancel_scope, progress)
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
            raise CaptureRefused(msg.text)


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
