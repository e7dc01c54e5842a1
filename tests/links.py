"""Speaking pcapd's protocol from a test: a user's link to an api, the api's link to an agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from pcapd.config.model import DEFAULT_AGENT_SERVER_NAME
from pcapd.proto import (
    Data,
    InitiatorSession,
    ListRecordings,
    Message,
    RecordingList,
    Status,
    StatusReply,
    Welcome,
)
from pcapd.transport.link import Link
from pcapd.transport.tls import client_context
from pcapd.transport.ws import open_websocket


@asynccontextmanager
async def api_link(port: int, token: str | None, host: str = "127.0.0.1"
                   ) -> AsyncIterator[Link]:
    """A user's link to the api at ``host:port`` (plain WebSocket), past hello and welcome;
    ``token`` goes in the handshake's Authorization header."""
    headers = [(b"authorization", f"bearer {token}".encode())] if token else None
    async with open_websocket(host, port, ssl_context=None, extra_headers=headers) as ws:
        link = Link(ws, InitiatorSession("client"), "api")
        await link.send(link.session.make_hello())  # type: ignore[union-attr]
        assert isinstance(await link.receive(), Welcome)
        yield link


async def agent_answer(address: str, port: int, request: Message, *, ca: Path,
                       certificate: Path, private_key: Path) -> Message | Data:
    """The agent at ``address:port``'s answer to ``request``, asked over mutual TLS as the api
    asks, presenting ``certificate``: what runs on the agent, not what the api says."""
    ctx = client_context(ca=ca, certificate=certificate, private_key=private_key)
    with trio.fail_after(10):
        async with open_websocket(address, port, ssl_context=ctx,
                                  server_hostname=DEFAULT_AGENT_SERVER_NAME) as ws:
            link = Link(ws, InitiatorSession("api"), "agent")
            await link.send(link.session.make_hello())  # type: ignore[union-attr]
            await link.receive()
            await link.send(request)
            return await link.receive()


async def agent_status(address: str, port: int, *, ca: Path, certificate: Path,
                       private_key: Path) -> StatusReply:
    """The agent's status."""
    reply = await agent_answer(address, port, Status(), ca=ca, certificate=certificate,
                               private_key=private_key)
    assert isinstance(reply, StatusReply), reply
    return reply


async def agent_recordings(address: str, port: int, *, ca: Path, certificate: Path,
                           private_key: Path) -> RecordingList:
    """Every recording the agent knows (armed, held, or ended lately)."""
    reply = await agent_answer(address, port, ListRecordings(), ca=ca,
                               certificate=certificate, private_key=private_key)
    assert isinstance(reply, RecordingList), reply
    return reply
