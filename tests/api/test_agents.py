"""The api's link to one agent: addresses as users read them (IPv6 in brackets), a payload
sorted into the agent's IDB, its packets (checked, counted) and its statistics, a start the
agent refuses raised with the agent's code and words, and the devices of a source never
raising — an agent that refuses, cannot be reached or stays silent is a source with a problem
saying which.

The agent is a stand-in speaking pcapd's protocol (:mod:`pcapd.proto` over
:mod:`pcapd.transport`, plain WebSocket on loopback) scripted per test, so that it can refuse
where a real agent would not; a real agent is linked in tests/api/test_server_links.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection

from pcapd.api.agents import (
    AgentJob,
    AgentLink,
    AgentRefused,
    ask_agent_devices,
    open_agent_capture,
    split_payload,
)
from pcapd.errors import PcapngFormatError
from pcapd.pcapng import (
    encode_enhanced_packet,
    encode_interface_description,
    encode_interface_statistics,
)
from pcapd.proto import (
    AgentTarget,
    CaptureLimits,
    CaptureOptions,
    Data,
    DeviceList,
    End,
    Error,
    Hello,
    Message,
    Source,
    SourceDevices,
    Started,
)
from pcapd.proto.session import ResponderSession
from pcapd.transport.link import Link, LinkClosed
from pcapd.transport.ws import Headers, serve_websocket
from tests.api.resolving import closed_port_url

GUARD = 30
TARGET = AgentTarget(namespace="host", source="router/0")
IDB = encode_interface_description(link_type=1, snaplen=65535)
EPBS = [encode_enhanced_packet(interface_id=0, timestamp=t, data=b"p" * t) for t in (1, 2, 3)]
ISB = encode_interface_statistics(interface_id=0, timestamp=9)


# -- pure: addresses and payloads ----------------------------------------------------------------


@pytest.mark.parametrize(("address", "host", "port"), [
    ("10.0.16.4:9494", "10.0.16.4", 9494),
    ("[fd00::4]:9494", "fd00::4", 9494),
    ("agent.example.com:443", "agent.example.com", 443),
])
def test_an_address_is_read_as_it_is_written(address: str, host: str, port: int) -> None:
    job = AgentJob.at(address, TARGET, "router/0")
    assert (job.host, job.port, job.origin) == (host, port, "router/0")
    assert job.address == address


def test_a_payload_is_sorted_into_interfaces_packets_and_statistics() -> None:
    payload = split_payload(memoryview(IDB + b"".join(EPBS) + ISB), watermark=7)
    assert (payload.interfaces, payload.statistics) == ([IDB], [ISB])
    assert (payload.packets, payload.count) == (b"".join(EPBS), 3)
    assert (payload.watermark, payload.offset) == (7, len(IDB))
    only = split_payload(EPBS[0], watermark=8)
    assert (only.interfaces, only.count, only.statistics, only.offset) == ([], 1, [], 0)
    empty = split_payload(b"", watermark=9)  # a watermark alone: no packets
    assert (empty.packets, empty.count) == (b"", 0)


def test_a_packet_of_another_interface_is_the_agents_fault_with_where() -> None:
    other = encode_enhanced_packet(interface_id=1, timestamp=4, data=b"x")
    with pytest.raises(PcapngFormatError) as fault:
        split_payload(IDB + EPBS[0] + other, watermark=0)
    assert fault.value.offset == len(IDB) + len(EPBS[0])
    bad_idb = b"\x01\x00\x00\x00\x0d\x00\x00\x00" + bytes(8)  # 13 bytes long: no block
    with pytest.raises(PcapngFormatError) as fault:
        split_payload(bad_idb, watermark=0)
    assert str(fault.value) == "bad block length 13 in an agent payload (at byte offset 0)"


# -- over a link ---------------------------------------------------------------------------------


Script = Callable[[Link, Message], Awaitable[None]]
"""What the stand-in agent does with the request after the handshake."""


@asynccontextmanager
async def agent(script: Script, *, welcome: bool = True) -> AsyncIterator[AgentJob]:
    """A stand-in agent on loopback, and the api's job for it."""

    async def handler(ws: WebSocketConnection, peer: str, headers: Headers) -> None:
        link = Link(ws, ResponderSession("agent"), peer)
        try:
            assert isinstance(await link.receive(), Hello)
            if not welcome:
                await link.send(Error(code="PERMISSION_DENIED",
                                      text="this agent takes only the api's certificate"))
                return
            await link.send(link.session.make_welcome("agent-1"))  # type: ignore[union-attr]
            request = await link.receive()
            assert not isinstance(request, Data)
            await script(link, request)
        except LinkClosed:
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        port = int(listeners[0].socket.getsockname()[1])
        yield AgentJob("127.0.0.1", port, TARGET, origin="router/0")
        nursery.cancel_scope.cancel()


def capture(job: AgentJob) -> AbstractAsyncContextManager[AgentLink]:
    return open_agent_capture(job, capture_id="c" * 32, options=CaptureOptions(device="eth0"),
                              limits=CaptureLimits(), ssl_context=None, server_name="agent",
                              connect_timeout=GUARD)


async def test_a_started_capture_yields_its_payloads_split() -> None:
    async def start(link: Link, request: Message) -> None:
        await link.send(Started(capture_id="c" * 32,
                                sources=[Source(id=0, name="router/0:eth0")]))
        await link.send(Data(payload=IDB + EPBS[0], watermark=5))
        await link.send(End(reason="stopped"))

    with trio.fail_after(GUARD):
        async with agent(start) as job, capture(job) as link:
            assert link.started.sources == [Source(id=0, name="router/0:eth0")]
            payload = await link.receive()
            assert not isinstance(payload, Message)
            assert (payload.interfaces, payload.count, payload.watermark) == ([IDB], 1, 5)
            assert isinstance(await link.receive(), End)


@pytest.mark.parametrize(("answer", "code", "text"), [
    (Error(code="INVALID_REQUEST", text="syntax error in filter expression"),
     "INVALID_REQUEST", "syntax error in filter expression"),
    (End(reason="failed", text="eth0: no such device"),
     "START_CAPTURE_FAILED", "eth0: no such device"),
    (End(reason="failed"), "START_CAPTURE_FAILED", "the agent ended at once"),
])
async def test_a_start_the_agent_refuses_is_raised_with_its_code_and_words(
        answer: Message, code: str, text: str) -> None:
    async def refuse(link: Link, request: Message) -> None:
        await link.send(answer)

    with trio.fail_after(GUARD):
        async with agent(refuse) as job:
            with pytest.raises(AgentRefused) as refused:
                async with capture(job):
                    raise AssertionError("started")
    assert (refused.value.code, refused.value.text) == (code, text)


async def test_an_agent_that_refuses_the_handshake_is_refused_at_once() -> None:
    async def never(link: Link, request: Message) -> None:
        raise AssertionError("no request after a refused handshake")

    with trio.fail_after(GUARD):
        async with agent(never, welcome=False) as job:
            with pytest.raises(AgentRefused) as refused:
                async with capture(job):
                    raise AssertionError("started")
    assert (refused.value.code, refused.value.text) == (
        "PERMISSION_DENIED", "this agent takes only the api's certificate")


async def ask(job: AgentJob, within: float = GUARD) -> SourceDevices:
    return await ask_agent_devices(job, ssl_context=None, server_name="agent", within=within)


async def test_a_sources_devices_carry_the_origin_users_know_it_by() -> None:
    async def answer(link: Link, request: Message) -> None:
        await link.send(DeviceList(sources=[SourceDevices(origin="host", devices=["eth0",
                                                                                  "lo"])]))

    with trio.fail_after(GUARD):
        async with agent(answer) as job:
            assert await ask(job) == SourceDevices(origin="router/0", devices=["eth0", "lo"])


async def test_an_agent_that_refuses_or_cannot_be_reached_is_a_problem_not_an_error() -> None:
    async def refuse(link: Link, request: Message) -> None:
        await link.send(Error(code="INVALID_REQUEST", text="no namespace host here"))

    with trio.fail_after(GUARD):
        async with agent(refuse) as job:
            assert await ask(job) == SourceDevices(origin="router/0",
                                                   problem="no namespace host here")
        async with agent(refuse, welcome=False) as job:
            assert (await ask(job)).problem == "this agent takes only the api's certificate"
        port = int(closed_port_url().rpartition(":")[2])
        gone = await ask(AgentJob("127.0.0.1", port, TARGET, origin="router/0"))
    assert gone.origin == "router/0" and not gone.devices
    assert gone.problem.startswith(f"cannot reach its agent at 127.0.0.1:{port}: ")


@pytest.fixture
def patient_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after half a second of real idleness: long enough for a
    handshake on loopback to finish on real time first."""
    return trio.testing.MockClock(autojump_threshold=0.5)


async def test_a_silent_agent_is_a_problem_after_the_time_given(
        patient_clock: trio.testing.MockClock) -> None:
    async def silent(link: Link, request: Message) -> None:
        await trio.sleep_forever()

    async with agent(silent) as job:
        start = trio.current_time()
        with trio.fail_after(3600):
            found = await ask(job, within=20)
        waited = trio.current_time() - start
    assert 20 <= waited <= 21  # the answer's time, then at most a second to close the link
    assert found == SourceDevices(
        origin="router/0", problem=f"its agent at {job.address} did not answer within 20 s")
