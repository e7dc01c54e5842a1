"""The api's limits per user, and what the user is told: a real api and agent in-process
(mutual TLS on loopback), a client speaking the protocol over the api's Unix socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from pcapd.agent.server import Agent, serve_agent
from pcapd.api.resolve import LocalResolver
from pcapd.api.server import Api, serve_api
from pcapd.proto import (
    CaptureOptions,
    End,
    Error,
    InitiatorSession,
    LocalTarget,
    Message,
    Start,
    Started,
    Stop,
)
from pcapd.transport.link import Link
from pcapd.transport.ws import open_websocket
from tests.api.inprocess import in_process_configs
from tests.netns import netns

pytestmark = pytest.mark.root


@asynccontextmanager
async def running_api(tmp: Path, **limits: int) -> AsyncIterator[tuple[Api, str, int]]:
    """An agent and an api; the api on a Unix socket (the protocol) and TCP (plain HTTP)."""
    agent_config, api_config = in_process_configs(tmp, limits=limits)
    async with trio.open_nursery() as nursery:
        agent = await nursery.start(serve_agent, agent_config, Agent(agent_config))
        port = agent[0].socket.getsockname()[1]
        api = Api(api_config, LocalResolver([("127.0.0.1", port, None)], from_request=True))
        socket_path = str(tmp / "api.sock")
        await nursery.start(partial(serve_api, api, unix_path=socket_path))
        http = await nursery.start(partial(serve_api, api))
        yield api, socket_path, http[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def capture(socket_path: str, netns_name: str) -> AsyncIterator[tuple[Link, Message]]:
    """A capture request on its own link; yields the link and the api's first answer."""
    async with open_websocket("local", 0, ssl_context=None, unix_path=socket_path) as ws:
        link = Link(ws, InitiatorSession("client"), "api")
        await link.send(link.session.make_hello())  # type: ignore[union-attr]
        await link.receive()
        await link.send(Start(target=LocalTarget(netns=[netns_name]),
                              options=CaptureOptions(device="lo")))
        yield link, await link.receive()


async def test_one_user_cannot_run_more_than_their_share(tmp_path: Path) -> None:
    with netns() as ns, trio.fail_after(30):
        async with running_api(tmp_path, concurrent_captures_per_user=1) as (_, sock, _):
            async with capture(sock, ns.name) as (first, answer):
                assert isinstance(answer, Started)
                async with capture(sock, ns.name) as (_, refused):
                    assert isinstance(refused, Error) and refused.code == "LIMIT_REACHED"
                    assert "limits.concurrent_captures_per_user" in refused.text
                await first.send(Stop())
                while not isinstance(await first.receive(), End):
                    pass
            async with capture(sock, ns.name) as (again, answer):  # freed: allowed again
                assert isinstance(answer, Started)
                await again.send(Stop())
                while not isinstance(await again.receive(), End):
                    pass


async def test_request_rate_is_bounded_and_metrics_count_it(tmp_path: Path) -> None:
    with netns() as ns, trio.fail_after(30):
        async with running_api(tmp_path, requests_per_minute=2) as (_, sock, http_port):
            for _ in range(2):
                async with capture(sock, ns.name) as (link, answer):
                    assert isinstance(answer, Started)
                    await link.send(Stop())
                    while not isinstance(await link.receive(), End):
                        pass
            async with capture(sock, ns.name) as (_, refused):
                assert isinstance(refused, Error) and refused.code == "LIMIT_REACHED"
                assert "limits.requests_per_minute" in refused.text
                assert "try again in" in refused.text
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{http_port}/metrics")).text
    assert 'pcapd_captures_total{reason="stopped"} 2.0' in metrics
    assert 'pcapd_refusals_total{code="LIMIT_REACHED"} 1.0' in metrics
    assert "pcapd_captures_running 0.0" in metrics
