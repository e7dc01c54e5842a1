"""The api and its users' links: slow readers kept, stopped readers given up, aborted captures
still accounted for. A real agent and api in-process (mutual TLS on loopback between them), the
users speaking the protocol to the api over real TCP, traffic from a namespace this test made.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from pcapd.agent.server import Agent, serve_agent
from pcapd.api.resolve import LocalResolver
from pcapd.api.server import Api, serve_api
from pcapd.pcapng import EPB, PcapngDecoder
from pcapd.proto import (
    CaptureOptions,
    Data,
    End,
    Error,
    InitiatorSession,
    LocalTarget,
    Start,
    Started,
    Statistics,
    Stop,
    Welcome,
)
from pcapd.transport.link import KEEPALIVE_INTERVAL, KEEPALIVE_STALL, Link
from pcapd.transport.ws import open_websocket
from tests.api.inprocess import in_process_configs
from tests.netns import Netns, netns, send_udp

pytestmark = pytest.mark.root

GIVEN_UP_WITHIN = KEEPALIVE_INTERVAL + KEEPALIVE_STALL
"""The api's own keepalive: a user whose host answers but who takes nothing is given up this
long after its buffers filled, at the latest. A reader at 100 kB/s shows the api progress in
steps: its kernel reopens the TCP window only once a sixteenth of its (autotuned, up to
``tcp_rmem``'s maximum) buffer is free, every 5-15 s."""
READ_RATE = 100_000
"""Bytes per second the slow user reads."""


@asynccontextmanager
async def running_api(tmp: Path, **sections: object) -> AsyncIterator[tuple[Api, int]]:
    """An agent and an api (TCP on loopback: the protocol, /status, /metrics); the api's port."""
    agent_config, api_config = in_process_configs(tmp, **sections)
    async with trio.open_nursery() as nursery:
        agent = await nursery.start(serve_agent, agent_config, Agent(agent_config))
        api = Api(api_config, LocalResolver([("127.0.0.1", agent[0].socket.getsockname()[1],
                                               None)], from_request=True))
        listeners = await nursery.start(partial(serve_api, api))
        yield api, listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def capturing(port: int, ns: Netns) -> AsyncIterator[Link]:
    """A user's link to the api over TCP, its capture of ``ns``'s ``lo`` started."""
    async with open_websocket("127.0.0.1", port, ssl_context=None) as ws:
        link = Link(ws, InitiatorSession("client"), "api")
        await link.send(link.session.make_hello())  # type: ignore[union-attr]
        assert isinstance(await link.receive(), Welcome)
        await link.send(Start(target=LocalTarget(netns=[ns.name]),
                              options=CaptureOptions(device="lo", filter="udp port 9999")))
        assert isinstance(await link.receive(), Started)
        yield link


async def until(check: Callable[[], bool], within: float, what: str) -> None:
    """Poll in-process state that has no event of its own; fail after ``within`` seconds."""
    with trio.move_on_after(within):
        while not check():  # noqa: ASYNC110
            await trio.sleep(0.05)
        return
    raise AssertionError(f"not within {within}s: {what}")


def blocks(data: bytes | bytearray) -> tuple[int, int]:
    """(blocks, packets) of a finished pcapng stream; raises if any block is cut short."""
    decoder = PcapngDecoder()
    decoder.receive_data(bytes(data))
    decoder.receive_data(b"")
    n = packets = 0
    while (raw := decoder.next_raw()) is not None:
        n += 1
        packets += raw.block_type == EPB
    return n, packets


async def flood(ns: Netns, stop: trio.Event) -> None:
    """~2 MB/s of 1000-byte datagrams: twenty times what the slow user reads, and little
    enough CPU that the user (in this same process) is never starved of it."""
    while not stop.is_set():
        await send_udp(ns, "127.0.0.1", 9999, 500, size=1000, marker=b"flood")
        await trio.sleep(0.25)


async def test_a_slow_reader_keeps_its_capture_and_a_stopped_one_is_given_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two users capture a flooded namespace through the api. One reads ~100 kB/s: the api's
    pings wait behind megabytes of socket buffers toward it, far longer than the pong timeout,
    and its progress shows in steps seconds apart, yet it is not taken for dead; it stops,
    reads to ``end`` and has a complete file whose counts add up (the api dropped what did not
    fit, and said so). The other stops reading altogether: its host still answers, and the api
    gives it up one stall time after its buffers filled."""
    caplog.set_level(logging.INFO, logger="pcapd")
    buffer = {"size": 300, "upper_limit": 250, "lower_limit": 150}
    data = bytearray()
    with netns() as ns, trio.fail_after(GIVEN_UP_WITHIN + 60):
        async with running_api(tmp_path, buffer=buffer) as (api, port), \
                capturing(port, ns) as slow, capturing(port, ns) as _stopped:
            done_flooding = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood, ns, done_flooding)
                began, stopped_gone = trio.current_time(), float("inf")
                while trio.current_time() - began < GIVEN_UP_WITHIN + 8:
                    msg = await slow.receive()
                    if isinstance(msg, Data):
                        data += msg.payload
                        ahead = began + len(data) / READ_RATE - trio.current_time()
                        await trio.sleep(max(0.0, ahead))
                    assert not isinstance(msg, End | Error), msg
                    if len(api.captures) == 1:
                        stopped_gone = min(stopped_gone, trio.current_time() - began)
                done_flooding.set()
            assert len(api.captures) == 1, "the slow reader lost its capture"
            # the stopped reader: given up by pings, its capture over (the slow one runs); seen
            # here when the slow one's next message arrives
            assert stopped_gone <= GIVEN_UP_WITHIN + 5, stopped_gone
            slow_rate = len(data) / (trio.current_time() - began)
            await slow.send(Stop())  # from here on it reads as fast as it can
            while not isinstance(msg := await slow.receive(), End):
                if isinstance(msg, Data):
                    data += msg.payload
                assert not isinstance(msg, Error), msg
    totals = msg.totals
    assert msg.reason == "stopped", msg
    assert slow_rate < 2 * READ_RATE, slow_rate
    assert totals.api_dropped > 0, totals  # it could not keep up: counted, not hidden
    assert totals.packets == (totals.written + totals.agent_dropped + totals.api_dropped
                              + totals.discarded), totals
    assert blocks(data)[1] == totals.written
    gave_up = [r.getMessage() for r in caplog.records if "no pong" in r.getMessage()]
    assert len(gave_up) == 1 and "its host answers (it stopped reading)" in gave_up[0], gave_up


async def test_an_aborted_capture_is_audited_and_counted_with_what_it_had(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A user who goes away mid-capture leaves no ``end``: the audit line and the metrics
    still carry the packets and bytes captured so far."""
    caplog.set_level(logging.INFO, logger="pcapd")
    with netns() as ns, trio.fail_after(30):
        async with running_api(tmp_path) as (api, port):
            async with capturing(port, ns) as link:
                await send_udp(ns, "127.0.0.1", 9999, 200, size=300, marker=b"counted")
                while True:  # until the api's statistics show all of them
                    msg = await link.receive()
                    if isinstance(msg, Statistics) and sum(
                            s.packets for s in msg.sources) >= 200 and msg.sources[0].bytes:
                        break
            # the user is gone (the link closed mid-capture): the api aborts the capture
            await until(lambda: not api.captures, 10, "the api ended the capture")
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    (ended,) = [r for r in caplog.records if r.name == "pcapd.api.server"
                and getattr(r, "event", None) == "capture_ended"]
    audit: dict[str, object] = vars(ended)
    assert audit["reason"] == "aborted"
    assert isinstance(audit["packets"], int) and audit["packets"] >= 200, audit
    assert isinstance(audit["bytes"], int) and audit["bytes"] >= 200 * 300, audit
    assert isinstance(audit["written"], int) and audit["written"] >= 200, audit
    assert audit["dropped"] == 0 and audit["dropped_by"] == {"kernel": 0, "agent": 0, "api": 0}
    assert 'pcapd_captures_total{reason="aborted"} 1.0' in metrics
    assert f"pcapd_packets_total {float(audit['packets'])}" in metrics, metrics
    assert f"pcapd_bytes_total {float(audit['bytes'])}" in metrics, metrics

