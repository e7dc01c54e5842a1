"""Zero-loss rate and memory of a distributed capture: two agents, the api, a client (root only).

The end-to-end tests' landscape (``tests/e2e/platform_landscape.py``): fakes of UAA, Cloud
Controller and the BOSH director on loopback; two BOSH VMs as network namespaces (``eth0`` a veth
to the host namespace, 198.18.0.0/15), each running a ``pcapd agent`` process; a ``pcapd api``
process on loopback. The C generator of ``bench/capture_bench.py`` (``bench/flood.c``) runs in
each VM and sends 100-byte UDP frames out of its ``eth0`` (to the host side of the wire, port
40111); each VM's run has its own marker, each datagram its sequence number.

**Zero-loss rate.** Per aggregate rate step (N = rate × ``--seconds``, half from each VM, both
generators at once), ``pcapd capture bosh -d bench -g router -i eth0 -f "udp and dst port
40111" -w FILE`` — the real CLI, through the api, to both agents — is started and waited for
(both IDBs in the file), the generators run, and ``SETTLE`` s later it gets SIGINT. A step is
lossless when every sequence number of both VMs is in the merged file and the CLI's summary
counts no drop (kernel, agent, api). Beside it: the CPU time per packet of the api and of the
two agents together (``/proc/PID/stat`` user + system over the traffic window). In the same run,
on ``capture_bench.py``'s own veth pair and generator, ``tcpdump -w`` and ``pcapd capture
local`` capture the same aggregate rate from one generator (``capture_bench.capture_once``):
the references. A tool stops climbing after its first lossy step. The figure is the achieved
aggregate rate of the highest step at and below which nothing was lost (as in capture_bench).
Each row ends with the same run's CPU ratios, repeated per rate after the table: the two agents'
CPU per packet over tcpdump's (issue #16's target: ≤ 2×) and ``capture local``'s over tcpdump's
(≤ 4×); the summary's distributed / ``capture local`` zero-loss ratio has its target, ≥ 0.90.

**Memory** (measured first, on a fresh api). The api's RSS (``VmRSS``) with 1, 10 and 50
captures running at once (``--concurrent``),
each a client speaking the protocol as the CLI does (start, read, stop, read to ``end``) from
this process, each capture of both VMs, while each VM sends ``--memory-rate`` datagrams/s (so
every capture source sees that rate); the last figure at each level is taken at the end of
``--hold`` seconds of traffic, the peak is the highest sample (every 0.25 s) meanwhile.

Usage::

    sudo .venv/bin/python bench/distributed_bench.py [--rates 25k,50k,...] [--seconds 2]
        [--concurrent 1,10,50] [--memory-rate 1000] [--hold 4] [--skip-references]
        [--skip-memory] [--skip-throughput]

Everything made (namespaces, processes, files) is removed on exit, also on Ctrl-C. A default run
takes about three minutes. ``bench/latency_bench.py`` uses the same landscape.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the checkout: tests/ is a package

import capture_bench as cb  # noqa: E402
import trio  # noqa: E402

from pcapd.proto import (  # noqa: E402
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
from pcapd.transport.link import Link  # noqa: E402
from pcapd.transport.ws import open_websocket  # noqa: E402
from tests.e2e.platform_landscape import Landscape, agents, all_idle  # noqa: E402
from tests.e2e.procs import Figures, wait_until  # noqa: E402
from tests.fakes import BOB  # noqa: E402

DEPLOYMENT, GROUP, DEVICE = "bench", "router", "eth0"
DEFAULT_RATES = "50k,100k,200k,300k,400k,500k,600k"
DEFAULT_CONCURRENT = "1,10,50"
CLIENT_TIMEOUT = 120.0
"""Seconds a protocol client may take from connecting to ``end`` beyond its hold (a bound)."""


# -- the landscape: fakes, two VMs with agents, the api -----------------------------------------


@dataclass
class Bench:
    """The built landscape, and what a bench needs of it."""

    landscape: Landscape
    generator: Path
    workdir: Path
    token: str
    feeds: list[cb.Topology]
    """One per VM: the generator runs in ``tx`` (the VM) and sends out of its ``eth0``."""
    destinations: list[str]
    """The host side of each VM's wire: where its generator sends to."""

    @property
    def api_pid(self) -> int:
        return int(self.landscape.api.popen.pid)

    @property
    def agent_pids(self) -> list[int]:
        return [process.popen.pid for _, process in agents(self.landscape).values()]

    def send_all(self, count_per_vm: int, rate_per_vm: int,
                 markers: list[int]) -> list[cb.Sent]:
        """The generators of the first ``len(markers)`` VMs at once (each with its marker),
        ``count_per_vm`` datagrams each at ``rate_per_vm``."""
        with ThreadPoolExecutor(len(markers)) as pool:
            futures = [pool.submit(cb.send, feed, self.generator, count_per_vm, rate_per_vm,
                                   marker, dst)
                       for feed, dst, marker in zip(self.feeds, self.destinations, markers,
                                                    strict=False)]
            return [f.result() for f in futures]

    def start_message(self) -> Start:
        return Start(target=BoshTarget(deployment=DEPLOYMENT, groups=[GROUP]),
                     options=CaptureOptions(device=DEVICE, filter=cb.BPF))


@contextlib.contextmanager
def bench_landscape(tmpdir: str | None, concurrent: int = 1) -> Iterator[Bench]:
    """The landscape with two VMs, the generator built, the CLI's environment set."""
    with tempfile.TemporaryDirectory(prefix="pcapd-dbench-", dir=tmpdir) as tmp, Landscape(
            Path(tmp), cells=0, vms=2,
            api_settings={"limits": {"requests_per_minute": 100000,
                                     "concurrent_captures_per_user": concurrent + 5}},
            agent_settings={"limits": {"concurrent_captures": concurrent + 5}}) as built:
        built.deploy_vms(DEPLOYMENT, GROUP, teams=[DEPLOYMENT])
        token, refresh = built.uaa.issue_pair(BOB, client_id="bosh_cli",
                                              scopes=["openid", "bosh.admin"], lifetime=3600)
        env = built.bosh_env(token, refresh)
        os.environ.update({k: env[k] for k in ("BOSH_CONFIG", "BOSH_ENVIRONMENT", "PCAPD_API")})
        workdir = Path(tmp)
        yield Bench(built, cb.build_generator(workdir), workdir, token,
                    [cb.Topology(vm.ns.name, "host", DEVICE, "") for vm in built.vms],
                    [vm.host_ip for vm in built.vms])


def rss_mb(pid: int) -> float:
    return float(Figures.of(pid).rss_mb)


# -- a client speaking the protocol to the api, as the CLI does -------------------------------


@dataclass
class Client:
    """One capture through the api: start, read until :attr:`stop` is set, stop, read to end.

    ``on_data(payload, received_ns)`` sees each Data message's pcapng bytes with the
    CLOCK_REALTIME instant it came off the link.
    """

    port: int
    token: str
    start: Start
    on_data: Callable[[bytes, int], None] | None = None
    started: trio.Event = field(default_factory=trio.Event)
    stop: trio.Event = field(default_factory=trio.Event)
    end: End | None = None
    failure: str = ""
    received_bytes: int = 0

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.started.set()  # a failed start must not leave anyone waiting for it

    async def _run(self) -> None:
        headers = [(b"authorization", f"bearer {self.token}".encode())]
        async with open_websocket("127.0.0.1", self.port, ssl_context=None,
                                  extra_headers=headers) as ws:
            link = Link(ws, InitiatorSession("client"), "api")
            await link.send(link.session.make_hello())  # type: ignore[union-attr]
            if not isinstance(welcome := await link.receive(), Welcome):
                self.failure = f"no welcome: {welcome}"
                return
            await link.send(self.start)
            started = await link.receive()
            if not isinstance(started, Started):
                self.failure = f"not started: {started}"
                return
            self.started.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stopper, link)
                while True:
                    msg = await link.receive()
                    if isinstance(msg, Data):
                        self.received_bytes += len(msg.payload)
                        if self.on_data is not None:
                            self.on_data(bytes(msg.payload), time.time_ns())
                    elif isinstance(msg, End):
                        self.end = msg
                        break
                    elif isinstance(msg, Error):
                        self.failure = msg.text
                        break
                nursery.cancel_scope.cancel()

    async def _stopper(self, link: Link) -> None:
        await self.stop.wait()
        await link.send(Stop())


# -- zero-loss rate -----------------------------------------------------------------------------


class Remote(cb.Pcapd):
    """``pcapd capture bosh`` of both VMs through the api (ready and report as capture local)."""

    name = "distributed"

    def argv(self) -> list[str]:
        return [str(cb.PCAPD), "capture", "bosh", "-d", DEPLOYMENT, "-g", GROUP, "-i", DEVICE,
                "-f", cb.BPF, "-w", str(self.path)]


@dataclass
class Cpu:
    api: float
    agents: float
    client: float


def distributed_once(bench: Bench, count: int, rate: int) -> tuple[cb.Sent, cb.Captured, Cpu]:
    """One capture by the CLI through the api of ``count`` datagrams (half from each VM) at an
    aggregate ``rate``; the file is deleted afterwards."""
    markers = [secrets.randbits(32) for _ in bench.feeds]
    per_vm = count // len(bench.feeds)
    path = bench.workdir / f"distributed-{markers[0]:08x}.pcapng"
    capture = Remote(bench.feeds[0], path)
    pids = [bench.api_pid, *bench.agent_pids]
    try:
        capture.start()
        before = [cb.cpu_seconds(pid) for pid in pids]
        client_before = capture.cpu_seconds()
        sent = bench.send_all(per_vm, rate // len(bench.feeds), markers)
        time.sleep(cb.SETTLE)
        used = [cb.cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
        client = capture.cpu_seconds() - client_before
        capture.stop()
    finally:
        capture.kill()
    try:
        counted = [cb.count_file(path, marker, per_vm) for marker in markers]
    finally:
        path.unlink(missing_ok=True)
    result = cb.Captured(received=sum(c.received for c in counted),
                         lost=sum(c.lost for c in counted))
    capture.report(result)
    result.cpu_seconds = sum(used) + client
    total = cb.Sent(sum(s.packets for s in sent), max(s.seconds for s in sent))
    return total, result, Cpu(used[0], sum(used[1:]), client)


CELL = 96
DISTRIBUTED_HEAD = "distributed: achieved  lost / received  CPU per packet  CLI's drops"
REFERENCE_HEAD = "achieved  lost / received  cpu/pkt"


def _distributed_cell(sent: cb.Sent, c: cb.Captured, cpu: Cpu) -> str:
    per = max(c.received, 1) / 1e6
    return (f"{sent.pps / 1000:7.1f}k {c.lost:>7} / {c.received:<7} api {cpu.api / per:5.2f} "
            f"agents {cpu.agents / per:5.2f} cli {cpu.client / per:5.2f} µs  {c.detail}")


def throughput(bench: Bench, args: argparse.Namespace, rates: list[int]) -> None:
    tools = ["distributed"] + ([] if args.skip_references else ["pcapd", "tcpdump"])
    steps = [cb.Step(rate, max(cb.MIN_PACKETS, round(rate * args.seconds))) for rate in rates]
    cpus: dict[int, Cpu] = {}
    with contextlib.ExitStack() as stack:
        topo = None if args.skip_references else stack.enter_context(cb.topology())
        print(f"\nzero-loss rate: {args.seconds:g} s per step, N >= {cb.MIN_PACKETS} "
              f"(distributed: N/2 from each VM at once), settle {cb.SETTLE:g} s")
        print(f"distributed: pcapd capture bosh -d {DEPLOYMENT} -g {GROUP} -i {DEVICE} "
              f"-f {cb.BPF!r} -w FILE  (µs: CPU per packet)")
        if topo is not None:
            print(f"references:  {cb.TOOLS[0].name} and {cb.TOOLS[1].name} capture local on "
                  f"veth {topo.tx}:{topo.tx_dev} → {topo.rx}:{topo.rx_dev}, one generator")
        print(f"{'target':>6} {'N':>8}  {DISTRIBUTED_HEAD:<{CELL}} "
              + (f"pcapd local: {REFERENCE_HEAD} │ tcpdump: {REFERENCE_HEAD} │ "
                 "CPU per packet ratios" if topo else ""))
        climbing = set(tools)
        for i, step in enumerate(steps):
            order = tools if i % 2 == 0 else tools[::-1]
            for tool in order:
                if tool not in climbing:
                    continue
                if tool == "distributed":
                    sent, captured, cpu = distributed_once(bench, step.count, step.target)
                    cpus[i] = cpu
                    step.runs[tool] = [(sent, captured)]
                else:
                    assert topo is not None
                    kind = next(t for t in cb.TOOLS if t.name == tool)
                    step.runs[tool] = [cb.capture_once(kind, topo, bench.generator,
                                                       bench.workdir, step.count, step.target)]
                if not step.lossless(tool):
                    climbing.discard(tool)
            cells = [_distributed_cell(*step.runs["distributed"][0], cpus[i])
                     if "distributed" in step.runs else "(stopped after a loss)"]
            for tool in ("pcapd", "tcpdump"):
                if tool in tools:
                    cells.append(_short_cell(*step.runs[tool][0]) if tool in step.runs
                                 else "(stopped after a loss)")
            print(f"{step.target // 1000:>5}k {step.count:>8}  {cells[0]:<{CELL}} "
                  + " │ ".join(cells[1:])
                  + (f" │ {_ratios_cell(step, cpus.get(i))}" if topo else ""), flush=True)
            if not climbing:
                break
    if topo is not None:
        print_cpu_ratios(steps, cpus)
    best = {tool: cb.highest_lossless(steps, tool) for tool in tools}
    line = f"highest zero-loss aggregate rate: distributed {best['distributed']:,.0f} pps"
    for tool, label, target in (("pcapd", "pcapd capture local", " ≥ 0.90"),
                                ("tcpdump", "tcpdump", "")):
        if tool in best:
            ratio = best["distributed"] / best[tool] if best[tool] else float("nan")
            line += (f"; {label} {best[tool]:,.0f} pps (ratio {ratio:.2f}"
                     + (f", target{target})" if target else ")"))
    print(line)
    for tool in tools:
        if tool in climbing and any(tool in s.runs for s in steps):
            print(f"note: {tool} lost nothing at the highest step: its figure is a lower bound")


def _agents_ratio(step: cb.Step, cpu: Cpu | None) -> float:
    """Both agents' CPU per packet over ``tcpdump -w``'s at this step, in the same run."""
    if cpu is None or not step.runs.get("distributed") or not step.runs.get("tcpdump"):
        return float("nan")
    received = step.runs["distributed"][0][1].received
    theirs = cb.cpu_per_packet(step.runs["tcpdump"])
    return cpu.agents / max(received, 1) / theirs if theirs else float("nan")


def _ratios_cell(step: cb.Step, cpu: Cpu | None) -> str:
    return (f"agents/tcpdump {_agents_ratio(step, cpu):4.1f}× "
            f"local/tcpdump {cb.cpu_ratio(step):4.1f}×")


def print_cpu_ratios(steps: list[cb.Step], cpus: dict[int, Cpu]) -> None:
    """The same run's CPU ratios per rate, against issue #16's targets: the agents (each as its
    own process, as on a cell) ≤ 2× ``tcpdump -w``, ``capture local`` ≤ 4×."""
    ran = [(i, step) for i, step in enumerate(steps) if step.runs]
    agents = ", ".join(f"{cb.rate_label(step.target)} {_agents_ratio(step, cpus.get(i)):.1f}×"
                       for i, step in ran)
    local = ", ".join(f"{cb.rate_label(step.target)} {cb.cpu_ratio(step):.1f}×" for _, step in ran)
    print(f"CPU per packet, the agents / tcpdump -w: {agents} (target ≤ 2×)")
    print(f"CPU per packet, pcapd capture local / tcpdump -w: {local} (target ≤ 4×)")


def _short_cell(sent: cb.Sent, c: cb.Captured) -> str:
    us = c.cpu_seconds / max(c.received, 1) * 1e6
    return f"{sent.pps / 1000:6.1f}k {c.lost:>7} / {c.received:<7} {us:5.2f} µs"


# -- memory -------------------------------------------------------------------------------------


@dataclass
class Level:
    captures: int
    rss: float
    peak: float
    after: float
    ok: int
    written: int
    dropped: str
    """Drops by party, summed over the captures' ends."""


async def hold_captures(bench: Bench, n: int, seconds: float, rate: int) -> Level:
    """``n`` captures at once, ``seconds`` of traffic at ``rate`` per VM, then stopped."""
    clients = [Client(bench.landscape.api_port, bench.token, bench.start_message())
               for _ in range(n)]
    peak = 0.0
    with trio.fail_after(CLIENT_TIMEOUT + seconds):
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(client.run)
            for client in clients:
                await client.started.wait()
            failed = [c.failure for c in clients if c.failure]
            if failed:
                raise RuntimeError(f"{len(failed)} of {n} captures failed: {failed[0]}")
            markers = [secrets.randbits(32) for _ in bench.feeds]
            done = trio.Event()

            async def traffic() -> None:
                await trio.to_thread.run_sync(bench.send_all, max(1, round(rate * seconds)),
                                              rate, markers)
                done.set()

            nursery.start_soon(traffic)
            while not done.is_set():
                peak = max(peak, rss_mb(bench.api_pid))
                with trio.move_on_after(0.25):
                    await done.wait()
            rss = rss_mb(bench.api_pid)
            for client in clients:
                client.stop.set()
    await wait_until(functools.partial(all_idle, bench.landscape), 30,
                     "no capture running on the api or any agent")
    ended = [c.end for c in clients if c.end is not None]
    dropped = ", ".join(f"{party} {sum(getattr(e.totals, f'{party}_dropped') for e in ended)}"
                        for party in ("kernel", "agent", "api"))
    return Level(n, rss, max(peak, rss), rss_mb(bench.api_pid),
                 sum(e.reason == "stopped" for e in ended), sum(e.totals.written for e in ended),
                 dropped)


async def memory(bench: Bench, args: argparse.Namespace, levels: list[int]) -> None:
    print(f"\nmemory: api RSS with N captures at once (each of both VMs), {args.memory_rate} "
          f"datagrams/s from each VM for {args.hold:g} s")
    await hold_captures(bench, 1, 0.5, args.memory_rate)  # warm-up: pools, UAA keys, caches
    idle = rss_mb(bench.api_pid)
    print(f"api RSS idle after a warm-up capture: {idle:.1f} MB")
    print(f"{'N':>4}  {'RSS MB':>7}  {'peak':>7}  {'after':>7}  {'per extra capture':>18}  "
          f"{'ended stopped':>13}  {'written':>9}  dropped")
    results: list[Level] = []
    for n in levels:
        level = await hold_captures(bench, n, args.hold, args.memory_rate)
        growth = ""
        if results:
            last = results[-1]
            growth = f"{(level.rss - last.rss) / (n - last.captures):+.2f} MB"
        print(f"{n:>4}  {level.rss:7.1f}  {level.peak:7.1f}  {level.after:7.1f}  {growth:>18}  "
              f"{level.ok:>6} / {n:<4}  {level.written:>9,}  {level.dropped}", flush=True)
        results.append(level)
    by_n = {level.captures: level for level in results}
    if 10 in by_n:
        print(f"api RSS with 10 captures: {by_n[10].rss:.1f} MB (target ≤ 80 MB)")
    if len(results) > 1:
        first, last = results[0], results[-1]
        print(f"growth per extra capture, {first.captures} → {last.captures}: "
              f"{(last.rss - first.rss) / (last.captures - first.captures):.2f} MB "
              f"(target ≤ 2 MB)")


# -- main ---------------------------------------------------------------------------------------


def print_machine() -> None:
    cb.print_machine()
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    print(f"env:     {malloc or 'no MALLOC_* tunables'} (the api and agents inherit them)")


def parse_levels(text: str) -> list[int]:
    levels = sorted({int(x) for x in text.split(",") if x.strip()})
    if not levels or levels[0] < 1:
        raise ValueError("counts of at least 1")
    return levels


def run_main(name: str, argv: list[str] | None, parser: argparse.ArgumentParser,
             body: Callable[[argparse.Namespace], int]) -> int:
    """Root and tool checks, signals as Ctrl-C (so everything is torn down), errors as text."""
    parser.add_argument("--skip-if-not-root", action="store_true",
                        help="without root, say so and exit 0 (as tox -e bench does)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(f"{name}: {'skipped: it ' if args.skip_if_not_root else ''}needs root (network "
              f"namespaces, capture, agents in namespaces): run it as root, e.g. sudo "
              f".venv/bin/python bench/{name}.py", file=sys.stderr)
        return 0 if args.skip_if_not_root else 2
    for tool in ("gcc", "tcpdump", "ip"):
        if shutil.which(tool) is None:
            print(f"{name}: {tool} not found (apt-get install gcc tcpdump iproute2)",
                  file=sys.stderr)
            return 2

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the same cleanup path as Ctrl-C

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return body(args)
    except KeyboardInterrupt:
        print("\ninterrupted: namespaces, processes and files removed", file=sys.stderr)
        return 130
    except (RuntimeError, AssertionError, subprocess.SubprocessError, trio.TooSlowError) as exc:
        print(f"\n{name}: {exc!r}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default=DEFAULT_RATES,
                        help=f"aggregate packets/s per step, 'k' = 1000 (default {DEFAULT_RATES})")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="seconds of traffic per step (default 2)")
    parser.add_argument("--skip-references", action="store_true",
                        help="no tcpdump / pcapd capture local steps")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--concurrent", default=DEFAULT_CONCURRENT,
                        help=f"capture counts for the memory figures (default "
                             f"{DEFAULT_CONCURRENT})")
    parser.add_argument("--memory-rate", type=int, default=1000,
                        help="datagrams/s from each VM while measuring memory (default 1000)")
    parser.add_argument("--hold", type=float, default=4.0,
                        help="seconds of traffic at each memory level (default 4)")
    parser.add_argument("--tmpdir", metavar="DIR", default=None)

    def body(args: argparse.Namespace) -> int:
        try:
            rates = sorted({cb.parse_rate(r) for r in args.rates.split(",") if r.strip()})
            if not rates or 0 in rates:
                raise ValueError("paced rates only ('max' cannot be split between two VMs)")
            levels = parse_levels(args.concurrent)
        except ValueError as exc:
            parser.error(str(exc))
        print_machine()
        with bench_landscape(args.tmpdir, levels[-1]) as bench:
            print(f"landscape: api pid {bench.api_pid}, agents {bench.agent_pids} in "
                  f"{', '.join(f.tx for f in bench.feeds)}")
            if not args.skip_memory:  # first: the api's heap as a fresh api has it
                trio.run(memory, bench, args, levels)
            if not args.skip_throughput:
                throughput(bench, args, rates)
        print(f"\n{cb._load()} at the end")
        return 0

    return run_main("distributed_bench", argv, parser, body)


if __name__ == "__main__":
    sys.exit(main())
