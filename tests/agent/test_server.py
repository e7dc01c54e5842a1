"""The agent's own checks before libpcap sees a request: namespaces it hosts, containers of
the right app, its limits — spoken to over the real protocol and real mutual TLS."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

import msgspec
import pytest
import trio

from pcapd.agent.server import Agent, serve_agent
from pcapd.certs import CertPaths, init_certs
from pcapd.config import AgentConfig, parse_agent_config
from pcapd.config.model import AgentListenConfig
from pcapd.proto import (
    AgentTarget,
    CaptureOptions,
    Error,
    InitiatorSession,
    Message,
    Start,
    Started,
    Stop,
)
from pcapd.transport.link import Link
from pcapd.transport.tls import client_context
from pcapd.transport.ws import open_websocket
from tests.netns import netns, netns_dir

pytestmark = pytest.mark.root


def config(pki: CertPaths, netns_dir: Path, store: Path | None, **limits: int) -> AgentConfig:
    containers: dict[str, str] = {"netns_dir": str(netns_dir)}
    if store is not None:
        containers["metadata_store"] = str(store)
    parsed = parse_agent_config({
        "id": "cell/0", "containers": containers, "limits": limits,
        "tls": {"certificate": str(pki.agent_cert), "private_key": str(pki.agent_key),
                "client_ca": str(pki.ca_cert)}})
    return msgspec.structs.replace(parsed, listen=AgentListenConfig(address="127.0.0.1", port=0))


@asynccontextmanager
async def agent(cfg: AgentConfig) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_agent, cfg, Agent(cfg))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def agent_link(pki: CertPaths, port: int) -> AsyncIterator[Link]:
    """A link to the agent as the api opens it (mutual TLS), past ``hello``."""
    ctx = client_context(ca=pki.ca_cert, certificate=pki.api_client_cert,
                         private_key=pki.api_client_key)
    async with open_websocket("127.0.0.1", port, ssl_context=ctx,
                              server_hostname="pcap-agent.service.cf.internal") as ws:
        link = Link(ws, InitiatorSession("api"), "agent")
        await link.send(link.session.make_hello())  # type: ignore[union-attr]
        await link.receive()
        yield link


async def start(pki: CertPaths, port: int, namespace: str, app_guid: str | None) -> Message:
    """Ask the agent for a capture; its first answer (then stop it politely)."""
    async with agent_link(pki, port) as link:
        await link.send(Start(capture_id=uuid.uuid4().hex, target=AgentTarget(
            namespace=namespace, app_guid=app_guid, source="app/0"),
            options=CaptureOptions(device="lo")))
        answer = await link.receive()
        if isinstance(answer, Started):
            await link.send(Stop())
        return answer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("pki") / "certs")


async def test_container_of_the_named_app_is_captured_others_refused(
        pki: CertPaths, tmp_path: Path) -> None:
    with netns() as mine, netns() as other, netns() as elsewhere, ExitStack() as stack:
        cells = stack.enter_context(netns_dir(tmp_path / "cell", mine, other))
        store = tmp_path / "store.json"
        store.write_text(json.dumps({
            mine.name: {"handle": mine.name, "ip": "10.255.0.2",
                        "metadata": {"app_id": "app-1", "container_workload": "app"}},
            other.name: {"handle": other.name, "ip": "10.255.0.3",
                         "metadata": {"app_id": "app-2", "container_workload": "app"}}}))
        with trio.fail_after(30):
            async with agent(config(pki, cells, store)) as port:
                assert isinstance(await start(pki, port, mine.name, "app-1"), Started)
                wrong_app = await start(pki, port, other.name, "app-1")
                assert isinstance(wrong_app, Error)
                assert wrong_app.code == "PERMISSION_DENIED"
                assert "does not belong to app app-1" in wrong_app.text
                outside = await start(pki, port, elsewhere.name, "app-1")
                assert isinstance(outside, Error) and outside.code == "INSTANCE_UNAVAILABLE"
                tricks = await start(pki, port, "../netns", "app-1")
                assert isinstance(tricks, Error) and "refused" in tricks.text


async def test_concurrency_limit_is_reported(pki: CertPaths, tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with agent(config(pki, tmp_path, None, concurrent_captures=1,
                                max_snaplen=100)) as port, agent_link(pki, port) as link:
            await link.send(Start(capture_id="first", target=AgentTarget(
                namespace="host", source="vm/0"), options=CaptureOptions(
                    device="lo", snaplen=100)))
            assert isinstance(await link.receive(), Started)
            second = await start(pki, port, "host", None)
            assert isinstance(second, Error) and second.code == "LIMIT_REACHED"
            assert "limits.concurrent_captures" in second.text
