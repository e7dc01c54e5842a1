"""The api under attack by clients without a token: /status latency and a capture's flow (root).

The end-to-end tests' landscape (``tests/e2e/platform_landscape.py``: fake UAA and BOSH director,
one BOSH VM as a network namespace running a ``pcapd agent``, a ``pcapd api`` process on
loopback, all with their default limits). A user's capture of the VM's ``lo`` runs throughout,
read by a client in this process; a sender in the VM sends ``--rate`` UDP datagrams/s to it.
``GET /status`` is asked every 50 ms. First ``--seconds`` quiet, then ``--seconds`` while
``--attackers`` clients, each from its own address on lo, loop over the worst they can send
without a valid token (the attacks of issue 12, hole 1 and 4; a third of them each, in a
child process of their own, niced: on a real network their CPU is not the api machine's):

- a ``start`` with an 8 KiB filter of ``or`` terms (on the api as it was: minutes of compile
  with the GIL held), with no token, a malformed one, or an expired one;
- 7 MiB of an 8 MiB message that never ends;
- a link that says ``hello`` and then nothing.

Prints, per phase: ``/status`` latency p50/p99/max and failures; the largest gap between two
packets arriving at the capture's client (the sender's own interval included) and whether
every datagram arrived; the api's RSS; what the attackers got. Targets: p99 ``/status`` under
100 ms, no gap over 250 ms. A plain script, not a timed test::

    sudo .venv/bin/python bench/intake_bench.py [--seconds 15] [--attackers 20] [--rate 200]

Everything made (namespaces, processes, files) is removed on exit. Takes about a minute.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the checkout: tests/ is a package

import trio  # noqa: E402
from capture_bench import cpu_seconds  # noqa: E402

from pcapd.pcapng import EPB, PcapngDecoder  # noqa: E402
from pcapd.proto import MAX_FILTER, BoshTarget, Data, End, Error, Started, Stop  # noqa: E402
from pcapd.transport.link import LinkClosed  # noqa: E402
from tests.e2e.attackers import (  # noqa: E402
    RawWebSocket,
    StatusLatency,
    bosh_start,
    hello_over,
    link_to_api,
    unfinished_message,
)
from tests.e2e.platform_landscape import Landscape  # noqa: E402
from tests.e2e.procs import Figures  # noqa: E402
from tests.fakes import BOB  # noqa: E402

PORT = 40111
WORST_FILTER = ""
for _term in range(1, 10000):
    _longer = WORST_FILTER + (" or " if WORST_FILTER else "") + f"port {_term}"
    if len(_longer) > MAX_FILTER:
        break
    WORST_FILTER = _longer

SENDER = """
import socket, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.monotonic()
n = 0
while (now := time.monotonic()) - start < seconds:
    s.sendto(b"intake" + n.to_bytes(4, "big"), ("127.0.0.1", PORT))
    n += 1
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
""".replace("PORT", str(PORT))


@dataclass
class Flow:
    """Packets arriving at the capture's client: when, and how many."""

    arrivals: list[tuple[float, int]] = field(default_factory=list)
    decoder: PcapngDecoder = field(default_factory=PcapngDecoder)

    def on_data(self, payload: bytes) -> None:
        self.decoder.receive_data(payload)
        packets = 0
        while (raw := self.decoder.next_raw()) is not None:
            packets += raw.block_type == EPB
        if packets:
            self.arrivals.append((time.perf_counter(), packets))

    def window(self, begin: float, end: float) -> tuple[float, int]:
        """(largest gap between arrivals, packets) within ``[begin, end)``."""
        times = [t for t, _ in self.arrivals if begin <= t < end]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return max(gaps, default=float("nan")), sum(n for t, n in self.arrivals
                                                     if begin <= t < end)


@dataclass
class Attack:
    outcomes: Counter[str] = field(default_factory=Counter)
    report: bool = False
    """Print each outcome as a line (in the attackers' child process)."""

    def count(self, outcome: str) -> None:
        if self.report:
            print(outcome, flush=True)
        else:
            self.outcomes[outcome] += 1

    async def attacker(self, kind: int, port: int, source: str,
                       tokens: list[str | None]) -> None:
        """One attacker doing one of the three attacks (by ``kind``) again and again."""
        for n in itertools.count():
            try:
                if kind == 0:
                    async with link_to_api(port, tokens[n % len(tokens)]) as link:
                        await link.send(bosh_start(WORST_FILTER))
                        answer = await link.receive()
                    code = answer.code if isinstance(answer, Error) else type(answer).__name__
                    self.count(f"worst filter: {code}")
                elif kind == 1:
                    raw = await unfinished_message(port, source, 7 << 20)
                    await raw.wait_closed()
                    self.count("7 MiB unfinished: closed")
                    await raw.aclose()
                else:
                    raw = await RawWebSocket.connect(port, source)
                    await hello_over(raw)
                    await raw.wait_closed()
                    self.count("hello, then silent: closed")
                    await raw.aclose()
            except (LinkClosed, OSError, trio.BrokenResourceError, AssertionError) as exc:
                self.count(f"refused: {str(exc)[:60]}")
                await trio.sleep(0.05)


async def attackers(attack: Attack, landscape: Landscape, args: argparse.Namespace,
                    tokens: list[str | None]) -> None:
    """``--attackers`` attackers in a child process, until cancelled; their outcomes counted."""
    argv = [sys.executable, __file__, "--attack", str(landscape.api_port),
            "--attackers", str(args.attackers), "--tokens", json.dumps(tokens)]
    async with trio.open_nursery() as nursery:
        process = await nursery.start(functools.partial(
            trio.run_process, argv, stdout=subprocess.PIPE, check=False))
        assert process.stdout is not None
        async for line in _lines(process.stdout):
            attack.outcomes[line] += 1


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    pending = b""
    async for chunk in stream:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode()


async def attack_only(port: int, n: int, tokens: list[str | None]) -> None:
    """The child: ``n`` attackers, each outcome a line on stdout."""
    os.nice(10)  # on a real network the attackers' CPU is not the api machine's
    attack = Attack(report=True)
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(attack.attacker, i % 3, port, f"127.0.8.{i + 1}", tokens)


async def capture(landscape: Landscape, token: str, flow: Flow, started: trio.Event,
                  stop: trio.Event) -> End | Error:
    target = BoshTarget(deployment="bench", groups=["router"])
    async with link_to_api(landscape.api_port, token) as link:
        await link.send(bosh_start(f"udp port {PORT}", target=target))
        answer = await link.receive()
        if not isinstance(answer, Started):
            raise SystemExit(f"the capture did not start: {answer}")
        started.set()
        async with trio.open_nursery() as nursery:
            async def stopper() -> None:
                await stop.wait()
                await link.send(Stop())
            nursery.start_soon(stopper)
            while True:
                msg = await link.receive()
                if isinstance(msg, Data):
                    flow.on_data(bytes(msg.payload))
                elif isinstance(msg, End | Error):
                    nursery.cancel_scope.cancel()
                    return msg


def report(name: str, status: StatusLatency, begin: float, end: float, flow: Flow,
           rate: float, rss: float, cpu: float) -> None:
    lat, samples = status, status.samples
    gap, packets = flow.window(begin, end)
    print(f"{name:<8} /status p50 {lat.percentile(50) * 1000:6.1f} ms  p99 "
          f"{lat.percentile(99) * 1000:6.1f} ms  max {lat.worst * 1000:6.1f} ms  "
          f"({len(samples)} asked, {status.failures} failed); capture: largest gap "
          f"{gap * 1000:6.1f} ms, {packets} packets ({rate:g}/s sent); api: RSS {rss:.0f} MB "
          f"at most, CPU {cpu / (end - begin):.0%} of a core")


async def run(landscape: Landscape, args: argparse.Namespace) -> None:
    token = landscape.uaa.issue(BOB, client_id="bosh_cli", scopes=["openid", "bosh.admin"],
                                lifetime=3600)
    bad_tokens: list[str | None] = [None, "not-a-jwt", landscape.uaa.expired(BOB)]
    vm = landscape.vms[0]
    pid = landscape.api.popen.pid
    flow, attack = Flow(), Attack()
    started, stop = trio.Event(), trio.Event()
    total = 2 * args.seconds + 1
    ended: list[End | Error] = []

    async def user() -> None:
        ended.append(await capture(landscape, token, flow, started, stop))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(user)
        await started.wait()
        await trio.sleep(0.5)
        nursery.start_soon(functools.partial(trio.run_process, vm.ns.argv(
            sys.executable, "-c", SENDER, str(args.rate), str(total))))
        await trio.sleep(0.5)
        for phase in ("quiet", "attacked"):
            status = StatusLatency(landscape.api_url)
            rss_before = Figures.of(pid).rss_mb
            cpu_before = cpu_seconds(pid)
            async with trio.open_nursery() as inner:
                inner.start_soon(status.run)
                if phase == "attacked":  # in a process of their own: their CPU is not ours
                    inner.start_soon(attackers, attack, landscape, args, bad_tokens)
                begin = time.perf_counter()
                peak = rss_before
                with trio.move_on_after(args.seconds):
                    while True:
                        await trio.sleep(0.25)
                        peak = max(peak, Figures.of(pid).rss_mb)
                end = time.perf_counter()
                inner.cancel_scope.cancel()
            report(phase, status, begin, end, flow, args.rate, peak,
                   cpu_seconds(pid) - cpu_before)
        stop.set()
    (end,) = ended
    if isinstance(end, End):
        t = end.totals
        print(f"the capture ended ({end.reason}): {t.written} packets written, dropped "
              f"{t.kernel_dropped + t.agent_dropped + t.api_dropped}")
    else:
        print(f"the capture failed: {end.code}: {end.text}")
    print("attackers got: " + ", ".join(f"{k} ×{v}" for k, v in attack.outcomes.most_common()))
    print(f"worst filter: {len(WORST_FILTER)} characters, {WORST_FILTER.count(' or ') + 1} "
          "`or` terms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="per phase (longer than the api's 10 s authentication deadline, "
                             "so the silent links' closing is counted)")
    parser.add_argument("--attackers", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0, help="datagrams/s captured")
    parser.add_argument("--attack", type=int, help=argparse.SUPPRESS)  # the child: api port
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack is not None:
        trio.run(attack_only, args.attack, args.attackers, json.loads(args.tokens))
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pcapd-intake-") as tmp, Landscape(
            Path(tmp), cells=0, vms=1) as landscape:
        landscape.deploy_vms("bench", "router", teams=["bench"])
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before; "
              f"{args.attackers} attackers; {args.seconds:g} s per phase")
        trio.run(run, landscape, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
