"""Thousands of idle connections to the api's and an agent's port: timed out or refused, while
the same processes keep serving everyone else; and an api out of file descriptors that waits
for some to close and recovers by itself.

Real processes (the landscape of :mod:`platform_landscape`: an api and two BOSH VMs' agents),
real sockets from this test process: connections that never send a byte, that start a TLS
handshake and stall in it, that send half an HTTP request head. The servers' handshake
deadline (``pcapd.transport.ws.HANDSHAKE_TIMEOUT``) closes each of them; meanwhile ``GET
/status`` answers and a real capture of both VMs runs to its end; afterwards both processes
hold as many descriptors as before.
"""

from __future__ import annotations

import contextlib
import json
import resource
import ssl
from collections.abc import Iterator

import httpx
import pytest
import trio

from pcapd.config.model import DEFAULT_AGENT_SERVER_NAME
from pcapd.proto import (
    BoshTarget,
    CaptureOptions,
    Data,
    End,
    Error,
    InitiatorSession,
    Start,
    Started,
    Stop,
    Welcome,
)
from pcapd.transport.link import Link
from pcapd.transport.ws import HANDSHAKE_TIMEOUT, open_websocket
from tests.e2e.platform_landscape import Landscape, agents, all_idle
from tests.e2e.procs import AGENT_PORT, Figures, wait_until
from tests.fakes import BOB
from tests.netns import send_udp

pytestmark = [pytest.mark.root]

IDLE = 2000
"""Idle connections to each of the api and one agent."""
FD_TOLERANCE = 5


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    with Landscape(tmp_path_factory.mktemp("idle"), cells=0) as built:
        built.deploy_vms("cf", "router", teams=["team-a"])
        yield built


def client_hello() -> bytes:
    """A real TLS ClientHello, as the first flight of a handshake."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing,
                                                server_hostname=DEFAULT_AGENT_SERVER_NAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


STALLS = (b"", client_hello()[:100], b"GET /status HTTP/1.1\r\nHost: pcap\r\nUser-Agent: sl")
"""What an idle client sends before it stops: nothing, half a TLS ClientHello, half a head."""


class IdleClients:
    """Connections that say a little (or nothing), then wait for the server to close them."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed: list[float] = []
        self.all_open = trio.Event()
        self.expected = 0

    async def run(self, nursery: trio.Nursery, address: str, port: int, n: int) -> None:
        self.expected += n
        for i in range(n):
            nursery.start_soon(self._one, address, port, STALLS[i % len(STALLS)])

    async def _one(self, address: str, port: int, stall: bytes) -> None:
        stream = await trio.open_tcp_stream(address, port)
        try:
            if stall:
                await stream.send_all(stall)
            self.opened += 1
            if self.opened == self.expected:
                self.all_open.set()
            with contextlib.suppress(trio.BrokenResourceError):
                while await stream.receive_some(65536):  # an alert or a 4xx, then the close
                    pass
            self.closed.append(trio.current_time())
        finally:
            await trio.aclose_forcefully(stream)


def the_agent(landscape: Landscape) -> tuple[str, int]:
    """The first VM's agent: its address and pid."""
    vm = landscape.vms[0]
    (process,) = [p for host, p in agents(landscape).values() if host is vm]
    return vm.ip, process.popen.pid


async def status(landscape: Landscape) -> int:
    async with httpx.AsyncClient(timeout=HANDSHAKE_TIMEOUT) as http:
        return (await http.get(f"{landscape.api_url}/status")).status_code


async def capture_both_vms(landscape: Landscape) -> End:
    """A user's capture of both VMs through the api: start, 20 packets on each, stop."""
    bob = landscape.uaa.issue(BOB, client_id="bosh_cli", scopes=["openid", "bosh.admin"])
    headers = [(b"authorization", f"bearer {bob}".encode())]
    async with open_websocket("127.0.0.1", landscape.api_port, ssl_context=None,
                              extra_headers=headers) as ws:
        link = Link(ws, InitiatorSession("client"), "api")
        await link.send(link.session.make_hello())  # type: ignore[union-attr]
        assert isinstance(await link.receive(), Welcome)
        await link.send(Start(target=BoshTarget(deployment="cf", groups=["router"]),
                              options=CaptureOptions(device="lo", filter="udp port 9999")))
        started = await link.receive()
        assert isinstance(started, Started) and len(started.sources) == 2, started
        while not isinstance(await link.receive(), Data):  # the header: both capture now
            pass
        for vm in landscape.vms:
            await send_udp(vm.ns, "127.0.0.1", 9999, 20, marker=b"served")
        await link.send(Stop())
        while not isinstance(msg := await link.receive(), End):
            assert not isinstance(msg, Error), msg
        return msg


async def test_idle_connections_are_timed_out_while_others_are_served(
        landscape: Landscape) -> None:
    api_pid = landscape.api.popen.pid
    agent_ip, agent_pid = the_agent(landscape)
    pids = {"api": api_pid, "agent": agent_pid}
    await wait_until(lambda: all_idle(landscape), 10, "idle before")
    before = {name: Figures.of(pid).fds for name, pid in pids.items()}
    idle = IdleClients()
    with trio.fail_after(HANDSHAKE_TIMEOUT + 25):
        async with trio.open_nursery() as nursery:
            await idle.run(nursery, "127.0.0.1", landscape.api_port, IDLE)
            await idle.run(nursery, agent_ip, AGENT_PORT, IDLE)
            await idle.all_open.wait()
            opened = trio.current_time()
            held = {name: Figures.of(pid).fds - before[name] for name, pid in pids.items()}
            # meanwhile both serve everyone else
            assert await status(landscape) == 200
            end = await capture_both_vms(landscape)
            served = trio.current_time() - opened
        # (the nursery ends when the servers closed every idle connection)
        closed_after = max(idle.closed) - opened

        async def settled() -> bool:
            return all(Figures.of(pid).fds - before[name] <= FD_TOLERANCE
                       for name, pid in pids.items())

        await wait_until(settled, 5, "descriptors back to where they were")
    after = {name: Figures.of(pid).fds for name, pid in pids.items()}
    print(f"\n{IDLE} idle connections each to the api and an agent: held {held} more fds; "
          f"status and a capture served in {served:.1f}s; all closed by the servers "
          f"{closed_after:.1f}s after the last opened; fds before {before}, after {after}")
    assert end.reason == "stopped" and end.totals.written == 40, end
    # both held the silent and the stalled ones till their deadline; what is no request to
    # them they refuse at once (the agent a plaintext head, the plaintext api a ClientHello)
    assert held["api"] >= IDLE * 0.6 and held["agent"] >= IDLE * 0.6, held
    assert len(idle.closed) == 2 * IDLE
    assert closed_after <= HANDSHAKE_TIMEOUT + 3, closed_after
    timed_out = [line for line in landscape.api.lines if "timed out after" in line]
    assert len(timed_out) >= IDLE * 0.6


async def test_an_api_out_of_descriptors_waits_and_recovers(landscape: Landscape) -> None:
    """Its RLIMIT_NOFILE lowered to just above what it holds, the api runs out of descriptors
    under idle connections: it keeps running, says once what is wrong and what to do, and
    once they close it answers the ``GET /status`` that waited meanwhile."""
    api_pid = landscape.api.popen.pid
    limits = resource.prlimit(api_pid, resource.RLIMIT_NOFILE)
    seen = len(landscape.api.lines)
    resource.prlimit(api_pid, resource.RLIMIT_NOFILE,
                     (Figures.of(api_pid).fds + 50, limits[1]))
    idle = IdleClients()
    answer: list[int] = []

    def complaints() -> list[dict[str, object]]:
        events = [json.loads(line) for line in landscape.api.lines[seen:]
                  if line.startswith("{")]
        return [e for e in events if e.get("event") == "cannot_accept"]

    async def complained() -> bool:
        await trio.lowlevel.checkpoint()
        return bool(complaints())

    async def ask() -> None:
        answer.append(await status(landscape))

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as idlers:
                    async with trio.open_nursery() as idle_nursery:
                        await idle.run(idle_nursery, "127.0.0.1", landscape.api_port, 300)
                        await idle.all_open.wait()  # in the api's hands or in its backlog
                        await wait_until(complained, 5, "the api said it cannot accept")
                        nursery.start_soon(ask)  # waits in the backlog meanwhile
                        await trio.sleep(0.5)
                        assert landscape.api.popen.poll() is None
                        assert not answer
                        idlers.cancel()  # the idle clients go away; /status is answered

            async def recovered() -> bool:
                await trio.lowlevel.checkpoint()
                return any("accepting connections again" in line
                           for line in landscape.api.lines[seen:])

            await wait_until(recovered, 5, "the api said it accepts again")
    finally:
        resource.prlimit(api_pid, resource.RLIMIT_NOFILE, limits)
    assert answer == [200]
    (complaint,) = complaints()  # once, not ten times a second
    text = str(complaint["message"])
    assert "Too many open files" in text and "EMFILE" in text, text
    assert "raise the limit" in text and "LimitNOFILE" in text, text
    assert not [line for line in landscape.api.lines[seen:] if "Traceback" in line]

