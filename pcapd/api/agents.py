"""The api's link to one agent: connect over mutual TLS, start, and turn the stream into events.

The agent's stream is pcapng blocks of one interface (id 0): its Interface Description Block
first, Enhanced Packet Blocks with watermarks, an Interface Statistics Block at the end. This
module splits payloads into those kinds and hands the packets on as one checked run (cut into
blocks only when several sources are merged); the merge and the interface-id rewrite happen in
:mod:`pcapd.api.capture`.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec
import trio

from pcapd.errors import CodedError, ProtocolError
from pcapd.pcapng.packets import split_source_blocks
from pcapd.proto import (
    AgentTarget,
    CaptureLimits,
    CaptureOptions,
    Data,
    DeviceList,
    End,
    Error,
    InitiatorSession,
    ListDevices,
    Message,
    RecordSave,
    SourceDevices,
    Start,
    Started,
    Welcome,
)
from pcapd.proto.messages import MAX_NAME, fit_text, source_problem
from pcapd.transport.link import Link, LinkClosed
from pcapd.transport.ws import open_websocket


@dataclass(frozen=True, slots=True)
class AgentJob:
    """One capture the api asks of one agent."""

    host: str
    port: int
    target: AgentTarget
    origin: str
    """How users know this source: ``my-app/2``, ``router/d55b…``, ``a`` (local netns)."""

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def at(cls, address: str, target: AgentTarget, origin: str) -> AgentJob:
        """The job for the agent at ``address`` (``host:port`` or ``[v6]:port``, as
        :attr:`address` writes it)."""
        host, _, port = address.rpartition(":")
        return cls(host.strip("[]"), int(port), target, origin)


@dataclass(frozen=True, slots=True)
class AgentPayload:
    """One binary message from an agent, split by block kind."""

    interfaces: list[bytes]
    """Whole IDBs, forwarded unchanged: they carry no interface id."""
    packets: bytes
    """The Enhanced Packet Blocks, concatenated as the agent sent them: framing checked, every
    one of interface 0. Not cut into blocks: a capture of one source writes them as they are,
    and only the merge of several splits them."""
    count: int
    """How many EPBs ``packets`` holds."""
    statistics: list[bytes]
    watermark: int
    offset: int = 0
    """Where ``packets`` began in the message (for the position in an error)."""


class AgentRefused(CodedError):
    """The agent answered the start with an ``error`` (or ``end`` before ``started``)."""


def split_payload(payload: bytes | memoryview, watermark: int) -> AgentPayload:
    """Sort an agent payload into IDBs, a run of EPBs (checked, counted) and ISBs
    (:func:`~pcapd.pcapng.packets.split_source_blocks`: an agent's interface is id 0). Anything
    else is a protocol fault of the agent: :class:`PcapngFormatError`."""
    blocks = split_source_blocks(bytes(payload), interface_id=0, what="an agent payload")
    return AgentPayload(blocks.interfaces, blocks.packets, blocks.count, blocks.statistics,
                        watermark, blocks.offset)


class AgentLink:
    """A started capture on one agent."""

    def __init__(self, job: AgentJob, link: Link, started: Started) -> None:
        self.job = job
        self.link = link
        self.started = started

    async def receive(self) -> Message | AgentPayload:
        msg = await self.link.receive()
        if isinstance(msg, Data):
            return split_payload(msg.payload, msg.watermark)
        return msg


@asynccontextmanager
async def _open_agent_link(job: AgentJob, *, ssl_context: ssl.SSLContext | None,
                           server_name: str, connect_timeout: float) -> AsyncIterator[Link]:
    """A link to one agent, past the handshake (an ``error`` instead: AgentRefused)."""
    async with open_websocket(job.host, job.port, ssl_context=ssl_context,
                              server_hostname=server_name,
                              connect_timeout=connect_timeout) as ws:
        link = Link(ws, InitiatorSession("api"), f"agent {job.address}")
        await link.send(link.session.make_hello())  # type: ignore[union-attr]
        welcome = await link.receive()
        if isinstance(welcome, Error):
            raise AgentRefused(welcome.code, welcome.text)
        assert isinstance(welcome, Welcome)
        yield link


@asynccontextmanager
async def open_agent_capture(job: AgentJob, *, capture_id: str, options: CaptureOptions,
                             limits: CaptureLimits, ssl_context: ssl.SSLContext | None,
                             server_name: str, connect_timeout: float,
                             save: RecordSave | None = None) -> AsyncIterator[AgentLink]:
    """Connect, shake hands and start the capture on one agent; yield once it has started.

    With ``save`` the agent is asked for a window of a recording's ring instead (a
    ``record_save``, answered exactly as a capture is: ``started``, data, ``end``).

    Raises :class:`LinkClosed` when the agent cannot be reached or the link breaks, and
    :class:`AgentRefused` when it answers the start with an ``error``.
    """
    async with _open_agent_link(job, ssl_context=ssl_context, server_name=server_name,
                                connect_timeout=connect_timeout) as link:
        await link.send(save if save is not None else Start(
            capture_id=capture_id, target=job.target, options=options, limits=limits))
        while True:
            msg = await link.receive()
            if isinstance(msg, Started):
                break
            if isinstance(msg, Error):
                raise AgentRefused(msg.code, msg.text)
            if isinstance(msg, End):
                raise AgentRefused("START_CAPTURE_FAILED", msg.text or "the agent ended at once")
        yield AgentLink(job, link, msg)


open_agent_link = _open_agent_link
"""A link to one agent past the handshake, for requests that are not a capture (the flight
recorder's ``record``, ``list_recordings``, ``record_stop``)."""


async def ask_agent_devices(job: AgentJob, *, ssl_context: ssl.SSLContext | None,
                            server_name: str, within: float) -> SourceDevices:
    """The devices of one source, as its agent sees them (``list_devices``); never raises:
    an agent that cannot answer is a source with a ``problem``."""
    problem = ""
    with trio.move_on_after(within) as scope:
        try:
            async with _open_agent_link(job, ssl_context=ssl_context, server_name=server_name,
                                        connect_timeout=within) as link:
                await link.send(ListDevices(target=job.target))
                answer = await link.receive()
                if isinstance(answer, DeviceList) and answer.sources:
                    return msgspec.structs.replace(answer.sources[0],
                                                   origin=fit_text(job.origin, MAX_NAME))
                problem = answer.text if isinstance(answer, Error) else "no answer"
        except AgentRefused as exc:
            problem = exc.text
        except (LinkClosed, ProtocolError) as exc:
            problem = f"cannot reach its agent at {job.address}: {exc}"
    if scope.cancelled_caught:
        problem = f"its agent at {job.address} did not answer within {within:g} s"
    return source_problem(job.origin, problem)


__all__ = ["AgentJob", "AgentLink", "AgentPayload", "AgentRefused", "LinkClosed",
           "ask_agent_devices", "open_agent_capture", "open_agent_link", "split_payload"]
