"""Faults, end to end: what pcapd does when a part of it vanishes or stops cooperating.

Real processes in the landscape of :mod:`platform_landscape` (one per module): an agent host that
goes silent without a FIN (and stays away past ``agents.reconnect_grace``, or comes back within
it), a client killed mid-capture, users who never read, a peer that pings into the api's close,
a hundred captures in a row, the api killed mid-capture. Each test checks three things: nothing
hangs (every wait is bounded), nothing leaks (no capture left on the api or any agent — asked
over the api's ``GET /status`` and each agent's mutual-TLS protocol ``status`` — no process of
ours left, no descriptor growth, no socket left in CLOSE_WAIT), and the user is told what
happened (the message code on the client's stderr, the exit status, a file that still opens).

An agent *process* killed and restarted mid-capture is in ``test_agents.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import wsproto
from wsproto.events import AcceptConnection, Ping, Request, TextMessage

from pcapd.pcapng import EPB, PcapngDecoder
from pcapd.proto import (
    BoshTarget,
    CaptureOptions,
    CfTarget,
    Data,
    End,
    Error,
    InitiatorSession,
    Notice,
    Start,
    Started,
    Stop,
    Welcome,
)
from pcapd.transport.link import KEEPALIVE_INTERVAL, KEEPALIVE_STALL, KEEPALIVE_TIMEOUT, Link
from pcapd.transport.ws import open_websocket
from tests.e2e.platform_landscape import (
    Landscape,
    Process,
    agent_captures,
    agents,
    all_idle,
    api_captures,
    developer_tokens,
    start_process,
)
from tests.e2e.procs import PCAPD, Figures, StreamedCapture, streamed_capture, wait_until
from tests.fakes import ALICE, BOB
from tests.netns import Host, ip, send_udp
from tests.readers import run_tool, tshark_fields

pytestmark = [pytest.mark.root, pytest.mark.tools]

PING_DEADLINE = KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT
"""Seconds after which a peer whose host vanished is given up, at the latest."""
STALL_DEADLINE = KEEPALIVE_INTERVAL + KEEPALIVE_STALL
"""Seconds after which a peer whose host answers but which takes nothing is given up."""
RECONNECT_GRACE = 5.0
"""``agents.reconnect_grace`` here: short, so that giving a silent agent up fits in a test."""
FD_TOLERANCE = 5


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    # one user runs a hundred captures here: lift the per-user request rate
    limits = {"requests_per_minute": 100000, "concurrent_captures_per_user": 20}
    settings = {"limits": limits, "agents": {"reconnect_grace": RECONNECT_GRACE}}
    with Landscape(tmp_path_factory.mktemp("faults"), api_settings=settings) as built:
        built.deploy_app("my-app", instances=2)
        built.deploy_vms("cf", "router", teams=["team-a"])
        yield built


@pytest.fixture(autouse=True)
def nothing_left_behind(landscape: Landscape) -> Iterator[None]:
    """After each test: no child process of ours but the landscape's own."""
    yield
    ours = {p.popen.pid for p in landscape.processes}
    assert [pid for pid in child_pids() if pid not in ours] == []


# --- looking at processes, the api and the agents ----------------------------------------------


def child_pids() -> list[int]:
    """Live (not zombie) children of this process, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == os.getpid() and state != "Z":
            found.append(int(entry))
    return found


def bosh_env(landscape: Landscape) -> dict[str, str]:
    token, refresh = landscape.uaa.issue_pair(BOB, client_id="bosh_cli",
                                              scopes=["openid", "bosh.admin"])
    return landscape.bosh_env(token, refresh)


def restart_api(landscape: Landscape) -> None:
    """A new api process on the same port and config (after a test killed it)."""
    if landscape.api.popen.poll() is None:
        return
    landscape.api = start_process("api", [PCAPD, "api", "--config",
                                          str(landscape.tmp / "api.json")])
    landscape.processes.append(landscape.api)


@asynccontextmanager
async def api_link(landscape: Landscape, token: str) -> AsyncIterator[Link]:
    """A protocol link to the api as a user, past ``hello``/``welcome``."""
    headers = [(b"authorization", f"bearer {token}".encode())]
    async with open_websocket("127.0.0.1", landscape.api_port, ssl_context=None,
                              extra_headers=headers) as ws:
        link = Link(ws, InitiatorSession("client"), "api")
        await link.send(link.session.make_hello())  # type: ignore[union-attr]
        assert isinstance(await link.receive(), Welcome)
        yield link


def count_packets(data: bytes | bytearray) -> int:
    """Enhanced packet blocks in a (possibly growing) pcapng stream."""
    decoder = PcapngDecoder()
    decoder.receive_data(bytes(data))
    n = 0
    while (raw := decoder.next_raw()) is not None:
        n += raw.block_type == EPB
    return n


def whole_blocks(data: bytes | bytearray) -> int:
    """Blocks in a finished pcapng file; raises if any block is cut short."""
    decoder = PcapngDecoder()
    decoder.receive_data(bytes(data))
    decoder.receive_data(b"")  # end of input: a torn block is an error now
    n = 0
    while decoder.next_raw() is not None:
        n += 1
    return n


def payloads(path: Path, interface: str) -> list[bytes]:
    return [bytes.fromhex(data) for name, data in
            tshark_fields(path, "frame.interface_name", "data.data") if name == interface]


def accounted(lines: list[str]) -> bool:
    """The user's summary line adds up: captured = written + dropped by the agents and api."""
    found = [re.search(r"(\d+) packets? written .*; captured (\d+), dropped \d+ \(kernel \d+, "
                       r"agent (\d+), api (\d+)\)", line) for line in lines]
    written, captured, agent, api = (int(n) for n in [m for m in found if m][-1].groups())
    return captured == written + agent + api


# --- 1. an agent host unreachable without FIN ----------------------------------------------


@contextmanager
def unreachable(host: Host) -> Iterator[None]:
    """The VM's ``eth0`` down: its traffic is dropped without a FIN or RST either way."""
    ip("-n", host.ns.name, "link", "set", "eth0", "down")
    try:
        yield
    finally:
        ip("-n", host.ns.name, "link", "set", "eth0", "up")


@dataclass
class Outage:
    """A bosh capture of both VMs' ``lo`` during which one VM becomes unreachable."""

    landscape: Landscape
    capture: StreamedCapture
    good: Host
    silent: Host
    names: dict[str, str]
    during: int = 0
    noticed: float = 0.0
    """Seconds from the VM going silent to the user's INSTANCE_UNAVAILABLE."""

    def name(self, host: Host) -> str:
        return self.names[host.ip]

    @property
    def silent_agent(self) -> Process:
        return agents(self.landscape)[self.name(self.silent)][1]

    async def go_silent(self, down: Callable[[], Awaitable[None]]) -> None:
        """Packets from both VMs (until the user has them); then the silent VM's link down
        until ``down`` returns, while the good VM sends 5 packets every half second until the
        user is told."""
        for vm in (self.good, self.silent):
            await send_udp(vm.ns, "127.0.0.1", 9999, 20, marker=b"before")

        async def arrived() -> bool:
            return count_packets(self.capture.data) >= 40

        await wait_until(arrived, 10, "the packets from before reached the user")
        with unreachable(self.silent):
            went = trio.current_time()
            async with trio.open_nursery() as nursery:

                async def keep_sending() -> None:
                    while True:
                        with trio.CancelScope(shield=True):  # counted exactly: sent whole
                            await send_udp(self.good.ns, "127.0.0.1", 9999, 5, marker=b"during")
                        self.during += 5
                        await trio.sleep(0.5)

                nursery.start_soon(keep_sending)
                await self.capture.stderr.wait_for(lambda line: "INSTANCE_UNAVAILABLE" in line)
                self.noticed = trio.current_time() - went
                nursery.cancel_scope.cancel()
            await down()

    def lines(self, code: str) -> list[str]:
        return [line for line in self.capture.stderr.lines if code in line]

    def check_file(self, path: Path) -> list[tuple[bytes, str]]:
        """The file is whole and the good VM's packets are all there; the silent VM's packets
        and comments."""
        path.write_bytes(self.capture.data)
        whole_blocks(self.capture.data)
        assert "Number of interfaces in file: 2" in run_tool("capinfos", path)
        rows = tshark_fields(path, "frame.interface_name", "data.data", "frame.comment")
        good = [bytes.fromhex(d) for n, d, _ in rows if n == f"{self.name(self.good)}:lo"]
        for marker, sent in ((b"before", 20), (b"during", self.during), (b"after", 20)):
            assert sum(d.startswith(marker) for d in good) == sent, marker
        return [(bytes.fromhex(d), c) for n, d, c in rows if n == f"{self.name(self.silent)}:lo"]


@asynccontextmanager
async def outage(landscape: Landscape) -> AsyncIterator[Outage]:
    instances = landscape.director.deployments["cf"].instances
    good, silent = landscape.vms
    names = {vm.ip: f"router/{instances[i].id}" for i, vm in enumerate(landscape.vms)}
    async with streamed_capture("bosh", "-d", "cf", "-g", "router", "-i", "lo", "-f",
                                "udp and not icmp", env=bosh_env(landscape)) as capture:
        await capture.wait_started(interfaces=2)
        yield Outage(landscape, capture, good, silent, names)


async def test_agent_host_unreachable_without_fin(landscape: Landscape, tmp_path: Path) -> None:
    """The api's pings notice the silent agent (INSTANCE_UNAVAILABLE), the other source goes
    on without losing a packet; after ``agents.reconnect_grace`` the api gives the source up;
    the silent agent ends its capture by its own pings; the file is complete."""
    with trio.fail_after(80):
        async with outage(landscape) as o:
            seen = len(o.silent_agent.lines)

            async def agent_ended() -> bool:
                return any("capture_ended" in line for line in o.silent_agent.lines[seen:])

            async def stays_down() -> None:
                await o.capture.stderr.wait_for(
                    lambda line: "INSTANCE_UNAVAILABLE" in line and "reconnecting" not in line)
                await wait_until(agent_ended, PING_DEADLINE, "the silent agent ended")

            began = trio.current_time()
            await o.go_silent(stays_down)
            given_up = trio.current_time() - began
            await send_udp(o.good.ns, "127.0.0.1", 9999, 20, marker=b"after")
            o.capture.interrupt()
            # given up: the capture is partial (exit 3), and its summary says which source
            assert await o.capture.wait_exit() == 3, o.capture.stderr.text
            assert (f"from 1 of 2 sources; {o.name(o.silent).split(':')[0]} unavailable (lost "
                    "at ") in o.capture.stderr.lines[-1], o.capture.stderr.text
        # reachable again: nothing is left running anywhere
        await wait_until(lambda: all_idle(landscape), 10, "no capture left")
    assert KEEPALIVE_TIMEOUT - 1 <= o.noticed <= PING_DEADLINE + 2, o.noticed
    assert given_up <= o.noticed + RECONNECT_GRACE + 2, given_up
    first, last = o.lines("INSTANCE_UNAVAILABLE")
    assert o.name(o.silent) in first, first
    assert f"no answer to pings for {KEEPALIVE_TIMEOUT:g}s" in first, first
    assert "reconnecting for up to" in first and o.name(o.silent) in last, last
    # the second names the knob that decided it
    assert f"not back within {RECONNECT_GRACE:g}s (agents.reconnect_grace)" in last, last
    assert not o.lines("CAPTURE_RESUMED")
    assert accounted(o.capture.stderr.lines), o.capture.stderr.text
    from_silent = o.check_file(tmp_path / "out.pcapng")
    assert [d[:6] for d, _ in from_silent] == [b"before"] * 20
    landscape.client_lines.extend(o.capture.stderr.lines)


async def test_agent_host_back_within_the_grace_is_resumed(landscape: Landscape,
                                                            tmp_path: Path) -> None:
    """The same outage, but the VM comes back at once: the source resumes, the gap is marked,
    the agent's first capture (whose api link went silent) ends."""
    with trio.fail_after(80):
        async with outage(landscape) as o:
            async def back_at_once() -> None:
                pass

            await o.go_silent(back_at_once)
            await o.capture.stderr.wait_for(lambda line: "CAPTURE_RESUMED" in line)
            for vm in landscape.vms:
                await send_udp(vm.ns, "127.0.0.1", 9999, 20, marker=b"after")
            o.capture.interrupt()
            assert await o.capture.wait_exit() == 0, o.capture.stderr.text
        await wait_until(lambda: all_idle(landscape), 10, "no capture left")
    assert o.noticed <= PING_DEADLINE + 2, o.noticed
    from_silent = o.check_file(tmp_path / "out.pcapng")
    assert [d[:6] for d, _ in from_silent] == [b"before"] * 20 + [b"after\x00"] * 20
    comments = [c for _, c in from_silent if c]
    assert len(comments) == 1 and "resumed after a gap" in comments[0], comments
    assert accounted(o.capture.stderr.lines), o.capture.stderr.text
    landscape.client_lines.extend(o.capture.stderr.lines)


# --- 2. the client killed ----------------------------------------------------------------------


async def test_killed_client_ends_its_captures_on_api_and_agents(landscape: Landscape) -> None:
    token, refresh = developer_tokens(landscape)
    cells = [cell.host for cell in landscape.cells]
    with trio.fail_after(60):
        async with streamed_capture("cf", "my-app", "-i", "lo",
                                    env=landscape.cf_home(token, refresh)) as capture:
            await capture.wait_started(interfaces=2)
            assert await api_captures(landscape) == 1
            assert [await agent_captures(landscape, cell) for cell in cells] == [1, 1]
            capture.process.kill()  # no goodbye: SIGKILL
            await capture.process.wait()
            await wait_until(lambda: all_idle(landscape), 5,
                             "the api and the agents ended the capture of a killed client")
    assert any("client gone" in line for line in landscape.api.lines)


# --- 3. a user who never reads -------------------------------------------------------------------


async def test_stalled_reader_costs_bounded_memory_and_nobody_else(landscape: Landscape,
                                                                    tmp_path: Path) -> None:
    """Two users start a capture of a flooded VM and stop reading. The api drops and counts
    (its memory stays bounded), a third user's capture works meanwhile; one stalled user reads
    again and is told CONGESTED with the api's count, the exact accounting holds; the other,
    which never reads, is given up by the api's pings, and its capture ends on the agent."""
    vm = landscape.vms[0]
    instance = landscape.director.deployments["cf"].instances[0]
    bob = landscape.uaa.issue(BOB, client_id="bosh_cli", scopes=["openid", "bosh.admin"])
    start = Start(target=BoshTarget(deployment="cf", groups=["router"], instances=[instance.id]),
                  options=CaptureOptions(device="lo", filter="udp port 9999"))
    api_pid = landscape.api.popen.pid
    before = Figures.of(api_pid)
    peak = before.rss_mb
    flooded = 0
    with trio.fail_after(90):
        async with api_link(landscape, bob) as never, api_link(landscape, bob) as later:
            await never.send(start)
            await later.send(start)
            began = trio.current_time()

            async def both_run() -> bool:
                return (await api_captures(landscape) == 2
                        and await agent_captures(landscape, vm) == 2)

            await wait_until(both_run, 10, "both stalled captures run")
            async with trio.open_nursery() as nursery:

                async def flood() -> None:
                    nonlocal flooded
                    while True:
                        await send_udp(vm.ns, "127.0.0.1", 9999, 20000, size=1400,
                                       marker=b"flood")
                        flooded += 20000

                async def sample() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, Figures.of(api_pid).rss_mb)
                        await trio.sleep(0.1)

                nursery.start_soon(flood)
                nursery.start_soon(sample)
                await trio.sleep(2)
                await someone_else_captures(landscape, tmp_path)
                await trio.sleep(max(0.0, began + 7 - trio.current_time()))
                nursery.cancel_scope.cancel()
            # one stalled user reads again: everything it missed was counted
            congested: Notice | None = None
            while True:
                msg = await later.receive()
                if isinstance(msg, Notice) and msg.code == "CONGESTED" and msg.party == "api":
                    congested = msg
                    break
            await later.send(Stop())
            while not isinstance(msg := await later.receive(), End):
                assert not isinstance(msg, Error), msg
            # the other never reads: the api's pings give it up, its agent capture ends
            await wait_until(lambda: all_idle(landscape), began + STALL_DEADLINE + 5
                             - trio.current_time(), "the api gave up the stalled reader")
            gave_up = trio.current_time() - began
    assert congested.count is not None and congested.count > 0, congested
    t = msg.totals
    assert t.api_dropped > 0, t
    assert t.packets == t.written + t.agent_dropped + t.api_dropped + t.discarded, t
    assert peak - before.rss_mb < 100, (before, peak)
    assert KEEPALIVE_STALL <= gave_up <= STALL_DEADLINE + 5, gave_up
    assert any("it stopped reading" in line for line in landscape.api.lines)
    print(f"\nstalled reader: {flooded} packets flooded; api RSS {before.rss_mb:.0f} MB → peak "
          f"{peak:.0f} MB; the reader that woke up: {t.packets} captured, {t.written} written, "
          f"{t.api_dropped} dropped by the api, {t.agent_dropped} by the agent; the one that "
          f"never read was given up after {gave_up:.1f}s")


async def someone_else_captures(landscape: Landscape, tmp_path: Path) -> None:
    """Another user's capture through the same api, start to finish, every packet there."""
    token, refresh = developer_tokens(landscape)
    container = next(iter(landscape.cells[0].containers.values()))
    with trio.fail_after(20):
        async with streamed_capture("cf", "my-app", "--instance", "0", "-i", "lo", "-f",
                                    "udp and not icmp",
                                    env=landscape.cf_home(token, refresh)) as capture:
            await capture.wait_started(interfaces=1)
            await send_udp(container, "127.0.0.1", 9999, 20, marker=b"other")
            await capture.wait_for_bytes(b"other", 20)  # live, while the api is flooded
            capture.interrupt()
            assert await capture.wait_exit() == 0, capture.stderr.text
    out = tmp_path / "other.pcapng"
    out.write_bytes(capture.data)
    assert sum(d.startswith(b"other") for d in payloads(out, "my-app/0:lo")) == 20


# --- a peer that pings into our close ----------------------------------------------------------


async def test_a_ping_into_the_apis_close_does_not_end_the_api(landscape: Landscape) -> None:
    """A malformed message makes the api answer and close; a ping that arrives while its close
    frame is out used to crash trio-websocket's reader task and with it the whole api."""
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", landscape.api_port)
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host="127.0.0.1", target="/")))
        ws.receive_data(await stream.receive_some(65536))
        assert [type(e) for e in ws.events()] == [AcceptConnection]
        await stream.send_all(ws.send(TextMessage(data='{"type": "bogus"}')))
        await trio.sleep(0.3)  # the api answered and sent its close frame; we read neither
        await stream.send_all(ws.send(Ping(payload=b"late")))
        await trio.sleep(1.5)  # past the api's wait for our close frame
        await stream.aclose()
        assert landscape.api.popen.poll() is None, "\n".join(landscape.api.lines[-20:])
        assert await api_captures(landscape) == 0


# --- 4. no descriptor growth over a hundred captures ---------------------------------------------


async def short_capture(landscape: Landscape, token: str, start: Start, *,
                        sources: int) -> End:
    """Start, wait for the header, stop, read to ``end``."""
    async with api_link(landscape, token) as link:
        await link.send(start)
        started = await link.receive()
        assert isinstance(started, Started) and len(started.sources) == sources, started
        while not isinstance(await link.receive(), Data):
            pass
        await link.send(Stop())
        while not isinstance(msg := await link.receive(), End):
            assert not isinstance(msg, Error), msg
        return msg


def sockets_in_close_wait(pid: int) -> int:
    """Sockets of ``pid`` whose peer closed and which it did not close (TCP CLOSE_WAIT)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    found = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            found += fields[9] in inodes and fields[3] == "08"
    return found


async def test_a_hundred_captures_leak_no_descriptor(landscape: Landscape) -> None:
    """100 captures in a row, then 10 at once (alternately of the app on both cells and of
    both VMs): the api and every agent hold no more descriptors than before, and no socket
    whose peer closed (the garbage collector must not be what closes them)."""
    alice = landscape.uaa.issue(ALICE)
    landscape.cc.grant(ALICE, "developer", landscape.space)
    bob = landscape.uaa.issue(BOB, client_id="bosh_cli", scopes=["openid", "bosh.admin"])
    kinds = [(alice, Start(target=CfTarget(app="my-app", space=landscape.space.guid),
                           options=CaptureOptions(device="lo"))),
             (bob, Start(target=BoshTarget(deployment="cf", groups=["router"]),
                         options=CaptureOptions(device="lo")))]
    pids = {"api": landscape.api.popen.pid,
            **{name: process.popen.pid for name, (_, process) in agents(landscape).items()}}

    async def one(i: int) -> None:
        end = await short_capture(landscape, *kinds[i % 2], sources=2)
        assert end.reason == "stopped", end

    async def at_once(n: int) -> None:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)

    def grown() -> dict[str, int]:
        return {name: Figures.of(pid).fds - before[name].fds for name, pid in pids.items()}

    async def settled() -> bool:
        return all(growth <= FD_TOLERANCE for growth in grown().values())

    with trio.fail_after(150):
        await at_once(10)  # warm up: the api's HTTP connection pools, UAA keys
        await wait_until(lambda: all_idle(landscape), 5, "idle before")
        before = {name: Figures.of(pid) for name, pid in pids.items()}
        began = time.monotonic()
        for i in range(100):
            await one(i)
        took = time.monotonic() - began
        await at_once(10)
        await wait_until(lambda: all_idle(landscape), 5, "idle after")
        with contextlib.suppress(AssertionError):
            await wait_until(settled, 5, "descriptors back")
    after = {name: Figures.of(pid) for name, pid in pids.items()}
    print(f"\n100 captures in a row in {took:.1f}s, then 10 at once")
    for name in pids:
        print(f"{name}: {before[name]} → {after[name]}")
    assert {name: sockets_in_close_wait(pid) for name, pid in pids.items()} == dict.fromkeys(
        pids, 0)
    assert all(growth <= FD_TOLERANCE for growth in grown().values()), (before, after)


# --- 5. the api killed (last: it restarts the api) ---------------------------------------------


async def test_killed_api_leaves_a_valid_file_and_no_agent_capture(landscape: Landscape,
                                                                  tmp_path: Path) -> None:
    instances = landscape.director.deployments["cf"].instances
    try:
        with trio.fail_after(60):
            async with streamed_capture("bosh", "-d", "cf", "-g", "router", "-i", "lo", "-f",
                                        "udp and not icmp", env=bosh_env(landscape)) as capture:
                await capture.wait_started(interfaces=2)
                for vm in landscape.vms:
                    await send_udp(vm.ns, "127.0.0.1", 9999, 20, marker=b"before")

                async def written() -> bool:
                    return count_packets(capture.data) >= 40

                await wait_until(written, 10, "the packets reached the client")
                landscape.api.popen.send_signal(signal.SIGKILL)
                with trio.fail_after(10):
                    code = await capture.wait_exit()

                async def agents_idle() -> bool:
                    return [await agent_captures(landscape, vm) for vm in landscape.vms] == [0, 0]

                await wait_until(agents_idle, 5, "the agents ended the captures of a dead api")
    finally:
        await trio.to_thread.run_sync(landscape.api.popen.wait, 10)
        restart_api(landscape)
    assert code == 1, capture.stderr.text
    errors = [line for line in capture.stderr.lines if line.startswith("pcapd:")]
    assert len(errors) == 1 and "lost the connection to the api" in errors[0], errors
    assert "Traceback" not in capture.stderr.text
    out = tmp_path / "cut.pcapng"
    out.write_bytes(capture.data)
    whole_blocks(capture.data)  # only whole blocks; no statistics blocks: the api never ended
    for i in range(2):
        data = payloads(out, f"router/{instances[i].id}:lo")
        assert sum(d.startswith(b"before") for d in data) == 20
    assert "Number of interfaces in file: 2" in run_tool("capinfos", out)
    with trio.fail_after(30):  # the new api serves again
        assert await api_captures(landscape) == 0
    landscape.client_lines.extend(capture.stderr.lines)
