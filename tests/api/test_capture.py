"""The api's bounded buffer toward a slow user: drop and count, never grow; the counts add up.

A real agent (in-process, mutual TLS on loopback) captures in a namespace this test made; the
api's output is a user who stops reading. The api must drop beyond its buffer limit, tell the
user CONGESTED with the count, and at the end account for every packet:
``packets == written + agent_dropped + api_dropped``. (The counting itself, and the cut at a
count or size limit, are tested without root in ``test_ledger.py``.)
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import trio

from pcapd.agent.server import Agent, serve_agent
from pcapd.api.agents import AgentJob
from pcapd.api.capture import ApiCapture
from pcapd.api.resolve import Resolution
from pcapd.certs import init_certs
from pcapd.config import local_api_config, parse_agent_config
from pcapd.config.model import AgentListenConfig
from pcapd.pcapng import EPB, PcapngDecoder
from pcapd.proto import (
    AgentTarget,
    CaptureOptions,
    End,
    LocalTarget,
    Notice,
    Start,
    Started,
    Statistics,
)
from pcapd.transport.tls import client_context
from tests.netns import netns, send_udp

pytestmark = pytest.mark.root


class StalledUser:
    """An output whose reader stops reading until told to go on."""

    def __init__(self) -> None:
        self.reading = trio.Event()
        self.started = trio.Event()
        self.congested = trio.Event()
        self.data = bytearray()
        self.messages: list[Started | Notice | Statistics] = []

    async def send_data(self, payload: bytes) -> None:
        if self.started.is_set() and self.data:  # the header got through; then it stalls
            await self.reading.wait()
        self.data += payload

    async def send_message(self, msg: Started | Notice | Statistics) -> None:
        self.messages.append(msg)
        if isinstance(msg, Started):
            self.started.set()
        if isinstance(msg, Notice) and msg.code == "CONGESTED":
            self.congested.set()


async def run_capture(tmp_path: Path, user: StalledUser, traffic: int,
                      **sections: object) -> End:
    """A real agent (in-process, mutual TLS on loopback) capturing ``traffic`` UDP datagrams
    in a fresh namespace for an api whose output is ``user``; the api's ``end``."""
    pki = init_certs(tmp_path / "pki")
    agent_config = msgspec.structs.replace(parse_agent_config({
        "id": "test-agent",
        "tls": {"certificate": str(pki.agent_cert), "private_key": str(pki.agent_key),
                "client_ca": str(pki.ca_cert)},
        "containers": {"netns_dir": "/run/netns"},
    }), listen=AgentListenConfig(address="127.0.0.1", port=0))
    api_config = local_api_config(
        {"certificate": str(pki.api_client_cert), "private_key": str(pki.api_client_key),
         "ca": str(pki.ca_cert)}, str(tmp_path / "store"), **sections)
    with netns() as ns, trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_agent, agent_config, Agent(agent_config))
            port = listeners[0].socket.getsockname()[1]
            job = AgentJob("127.0.0.1", port, AgentTarget(namespace=ns.name, source=ns.name),
                           origin=ns.name)
            start = Start(target=LocalTarget(netns=[ns.name]),
                          options=CaptureOptions(device="lo", filter="udp"))
            tls = client_context(ca=pki.ca_cert, certificate=pki.api_client_cert,
                                 private_key=pki.api_client_key)
            capture = ApiCapture(api_config, "congestion", start, Resolution([job]), user, tls)
            ends: list[End] = []
            finished = trio.Event()

            async def run() -> None:
                ends.append(await capture.run())
                finished.set()

            nursery.start_soon(run)
            await user.started.wait()
            await send_udp(ns, "127.0.0.1", 9999, traffic, size=100, marker=b"flood")
            await user.congested.wait()
            user.reading.set()
            capture.request_stop("stopped", "test")
            await finished.wait()
            nursery.cancel_scope.cancel()
    return ends[0]


def written_packets(user: StalledUser) -> int:
    decoder = PcapngDecoder()
    decoder.receive_data(bytes(user.data))
    decoder.receive_data(b"")
    written = 0
    while (raw := decoder.next_raw()) is not None:
        written += raw.block_type == EPB
    return written


async def test_slow_user_gets_drops_counted_and_the_identity_holds(tmp_path: Path) -> None:
    user = StalledUser()
    end = await run_capture(tmp_path, user, 1000,
                            buffer={"size": 100, "upper_limit": 80, "lower_limit": 40})
    t = end.totals
    congested = [m for m in user.messages if isinstance(m, Notice) and m.code == "CONGESTED"]
    assert congested[0].party == "api" and congested[0].count > 0
    assert t.api_dropped > 0
    assert t.packets == 1000
    assert t.packets == t.written + t.agent_dropped + t.api_dropped + t.discarded
    assert written_packets(user) == t.written
