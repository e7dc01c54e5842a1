"""Soak: many captures through a real api and real agents, and what the processes hold after.

Builds the end-to-end tests' landscape (``tests/e2e/platform_landscape.py``): fakes of UAA,
Cloud Controller and the BOSH director on loopback; two Diego cells and two BOSH VMs as network
namespaces (198.18.0.0/15), each running a ``pcapd agent`` process; an app with one instance on
each cell; a ``pcapd api`` process. A sender in each app container and on each VM's ``lo``
keeps about 1 000 UDP datagrams/s going to 127.0.0.1:9999 throughout.

Then, speaking the protocol to the api as a user would (start, read, stop, read to ``end``):

1. ``--captures`` captures in a row (default 100), alternately of the app (both cells) and of
   the BOSH group (both VMs), each read for ``--short`` seconds (default 0.2) and stopped;
2. ``--concurrent`` captures at once (default 20), the same mix, each read for ``--hold``
   seconds (default 5) and stopped.

Every capture counts as a success when it ends ``stopped`` with both sources, wrote at least one
packet and its accounting adds up (``packets == written + agent_dropped + api_dropped +
discarded``). Before, between and after the phases (each time once no capture runs anywhere,
asked over ``GET /status`` and each agent's ``status``), and once more ``--linger`` seconds
later, it prints the open file descriptors, threads (``/proc/PID/task``) and RSS of the api and
of every agent.

Usage (root: namespaces)::

    sudo .venv/bin/python bench/soak.py [--captures 100] [--concurrent 20] [--rounds 3]
                                        [--hold 5] [--short 0.2] [--linger 15]

The api's per-user request rate and concurrency, and each agent's concurrency, are raised for
the run (one user makes all the requests). Everything is torn down on exit. A default run takes
about a minute and a half.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]  # the checkout: tests/ is a package

import trio  # noqa: E402

from pcapd.proto import (  # noqa: E402
    BoshTarget,
    CaptureOptions,
    CfTarget,
    Data,
    End,
    Error,
    InitiatorSession,
    Start,
    Started,
    Stop,
    Welcome,
)
from pcapd.transport.link import Link  # noqa: E402
from pcapd.transport.ws import open_websocket  # noqa: E402
from tests.e2e.platform_landscape import Landscape, agents, all_idle  # noqa: E402
from tests.e2e.procs import Figures, wait_until  # noqa: E402
from tests.fakes import ALICE, BOB  # noqa: E402

SENDER = """
import socket, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    for _ in range(10):
        sock.sendto(b"soak" + b"." * 96, ("127.0.0.1", 9999))
    time.sleep(0.01)
"""


@dataclass(frozen=True)
class Result:
    ok: bool
    started_after: float
    took: float
    written: int
    why: str = ""


class Soak:
    def __init__(self, landscape: Landscape, args: argparse.Namespace) -> None:
        self.landscape = landscape
        self.args = args
        landscape.cc.grant(ALICE, "developer", landscape.space)
        self.alice = landscape.uaa.issue(ALICE, lifetime=3600)
        self.bob = landscape.uaa.issue(BOB, client_id="bosh_cli",
                                       scopes=["openid", "bosh.admin"], lifetime=3600)
        options = CaptureOptions(device="lo", filter="udp port 9999")
        self.cf = Start(target=CfTarget(app="soak-app", space=landscape.space.guid),
                        options=options)
        self.bosh = Start(target=BoshTarget(deployment="soak", groups=["router"]),
                          options=options)
        self.agent_pids = {name: process.popen.pid
                           for name, (_, process) in agents(landscape).items()}

    def kind(self, i: int) -> tuple[str, Start]:
        return (self.alice, self.cf) if i % 2 == 0 else (self.bob, self.bosh)

    async def capture(self, i: int, seconds: float) -> Result:
        token, start = self.kind(i)
        began = time.monotonic()
        started_after = 0.0
        headers = [(b"authorization", f"bearer {token}".encode())]
        try:
            async with open_websocket("127.0.0.1", self.landscape.api_port, ssl_context=None,
                                      extra_headers=headers) as ws:
                link = Link(ws, InitiatorSession("client"), "api")
                await link.send(link.session.make_hello())  # type: ignore[union-attr]
                assert isinstance(await link.receive(), Welcome)
                await link.send(start)
                started = await link.receive()
                if not isinstance(started, Started):
                    return Result(False, 0, time.monotonic() - began, 0, str(started))
                started_after = time.monotonic() - began
                with trio.move_on_after(seconds):
                    while not isinstance(msg := await link.receive(), End | Error):
                        pass
                    return Result(False, started_after, time.monotonic() - began, 0,
                                  f"ended early: {msg}")
                await link.send(Stop())
                while not isinstance(msg := await link.receive(), End):
                    if isinstance(msg, Error):
                        return Result(False, started_after, time.monotonic() - began, 0,
                                      msg.text)
                    assert not isinstance(msg, Data) or msg.payload
        except Exception as exc:  # a soak counts failures, it does not stop at the first
            return Result(False, started_after, time.monotonic() - began, 0, repr(exc))
        t = msg.totals
        why = ""
        if msg.reason != "stopped":
            why = f"ended {msg.reason}: {msg.text}"
        elif len(started.sources) != 2:
            why = f"{len(started.sources)} sources"
        elif t.written == 0:
            why = "no packet written"
        elif t.packets != t.written + t.agent_dropped + t.api_dropped + t.discarded:
            why = f"accounting: {t}"
        return Result(not why, started_after, time.monotonic() - began, t.written, why)

    async def capture_into(self, results: list[Result], i: int, seconds: float) -> None:
        results[i] = await self.capture(i, seconds)

    async def idle(self) -> None:
        """Until no capture runs on the api or any agent (bounded)."""
        await wait_until(functools.partial(all_idle, self.landscape), 30,
                         "no capture running on the api or any agent")

    def figures(self) -> dict[str, Figures]:
        pids = {"api": self.landscape.api.popen.pid,
                **{f"agent {name.split('-')[0]}": pid for name, pid in self.agent_pids.items()}}
        return {name: Figures.of(pid) for name, pid in pids.items()}

    async def run(self) -> None:
        args = self.args
        for i in range(2):  # warm-up: connection pools, UAA keys, caches
            await self.capture(i, args.short)
        await self.idle()
        await trio.sleep(1)
        snapshots = {"before": self.figures()}

        began = time.monotonic()
        in_a_row = [await self.capture(i, args.short) for i in range(args.captures)]
        row_took = time.monotonic() - began
        await self.idle()
        await trio.sleep(1)
        snapshots[f"after {args.captures} in a row"] = self.figures()

        at_once: list[Result] = []
        once_took = 0.0
        for round_ in range(1, args.rounds + 1):
            results = [Result(False, 0, 0, 0, "not run")] * args.concurrent
            began = time.monotonic()
            async with trio.open_nursery() as nursery:
                for i in range(args.concurrent):
                    nursery.start_soon(self.capture_into, results, i, args.hold)
            once_took += time.monotonic() - began
            at_once += results
            await self.idle()
            await trio.sleep(1)
            snapshots[f"after {args.concurrent} at once" + (f" ×{round_}" if args.rounds > 1
                                                            else "")] = self.figures()
        await trio.sleep(args.linger)
        snapshots[f"{args.linger:g} s later"] = self.figures()
        report(args, snapshots, in_a_row, row_took, at_once, once_took)


def report(args: argparse.Namespace, snapshots: dict[str, dict[str, Figures]],
           in_a_row: list[Result], row_took: float, at_once: list[Result],
           once_took: float) -> None:
    print(f"pcapd soak: api + {len(next(iter(snapshots.values()))) - 1} agents, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
    for title, results, took in ((f"{args.captures} captures in a row ({args.short:g} s each)",
                                  in_a_row, row_took),
                                 (f"{args.concurrent} captures at once ({args.hold:g} s each), "
                                  f"{args.rounds} times", at_once, once_took)):
        ok = [r for r in results if r.ok]
        starts = sorted(r.started_after for r in results if r.started_after)
        print(f"\n{title}: {len(ok)}/{len(results)} succeeded in {took:.1f} s; "
              f"start (request → started) median {statistics.median(starts) * 1000:.0f} ms, "
              f"max {max(starts) * 1000:.0f} ms; capture (connect → end) median "
              f"{statistics.median(r.took for r in results) * 1000:.0f} ms; "
              f"{sum(r.written for r in results)} packets written")
        for r in results:
            if not r.ok:
                print(f"  failed: {r.why}")
    names = list(next(iter(snapshots.values())))
    width = max(len(n) for n in names)
    print(f"\n{'':{width}}  " + "  ".join(f"{title:>26}" for title in snapshots))
    print(f"{'':{width}}  " + "  ".join(f"{'fds  threads  RSS MB':>26}" for _ in snapshots))
    for name in names:
        cells = [f"{f.fds:>6} {f.threads:>8} {f.rss_mb:>8.1f}"
                 for f in (snap[name] for snap in snapshots.values())]
        print(f"{name:{width}}  " + "  ".join(f"{c:>26}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captures", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--short", type=float, default=0.2)
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="how many times the concurrent phase runs")
    parser.add_argument("--linger", type=float, default=15.0,
                        help="seconds idle before the last figures (idle worker threads end "
                             "after 10 s)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("soak.py: needs root (network namespaces, capture)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pcapd-soak-") as tmp, Landscape(
            Path(tmp),
            api_settings={"limits": {"requests_per_minute": 100000,
                                     "concurrent_captures_per_user": args.concurrent + 5}},
            agent_settings={"limits": {"concurrent_captures": args.concurrent + 5}}) as built:
        built.deploy_app("soak-app", instances=2)
        built.deploy_vms("soak", "router", teams=["soak"])
        senders = [subprocess.Popen(ns.argv(sys.executable, "-c", SENDER))
                   for ns in [*(c for cell in built.cells for c in cell.containers.values()),
                              *(vm.ns for vm in built.vms)]]
        try:
            trio.run(Soak(built, args).run)
        finally:
            for sender in senders:
                sender.kill()
                sender.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
