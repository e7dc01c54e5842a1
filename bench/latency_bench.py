"""Capture-to-client latency through agent → api → client at a steady packet rate (root only).

The landscape of ``bench/distributed_bench.py`` (fakes, two BOSH VMs as network namespaces each
running a ``pcapd agent`` process, a ``pcapd api`` process; its setup is imported from there).
One capture of both VMs' ``eth0`` through the api, read by a client in this process speaking the
protocol as the CLI does; meanwhile the C generator (``bench/flood.c``) in each VM sends half of
``--rate`` 100-byte UDP datagrams/s out of its ``eth0`` for ``--seconds``.

For every packet: latency = the CLOCK_REALTIME instant the client took the Data message holding
its block off the WebSocket, minus the packet's capture timestamp in that block (the kernel's
CLOCK_REALTIME stamp; same machine, same clock). Prints p50, p90, p99 and max, and whether every
sequence number arrived. The first ``--warmup`` seconds of traffic are left out (connection
windows, first allocations).

Usage::

    sudo .venv/bin/python bench/latency_bench.py [--rate 10k] [--seconds 10] [--warmup 1]
                                                [--senders 2]

Everything is torn down on exit, also on Ctrl-C. A default run takes about 30 seconds.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from dataclasses import dataclass, field

import capture_bench as cb
import distributed_bench as db
import trio

from pcapd.pcapng import PcapngDecoder
from pcapd.pcapng.blocks import ticks_to_ns


@dataclass
class Latencies:
    """Decodes what the client receives; keeps each packet's latency and sequence number."""

    markers: dict[int, int]
    """Marker → index of the VM whose generator uses it."""
    count: int
    """Datagrams each generator sends."""
    skip_below_ns: int = 0
    """Packets captured before this instant are not counted (warm-up)."""
    decoder: PcapngDecoder = field(default_factory=PcapngDecoder)
    latencies: list[int] = field(default_factory=list)
    seen: list[bytearray] = field(default_factory=list)
    foreign: int = 0

    def __post_init__(self) -> None:
        self.seen = [bytearray(self.count) for _ in self.markers]

    def on_data(self, payload: bytes, received_ns: int) -> None:
        decoder = self.decoder
        decoder.receive_data(payload)
        unpack = cb.MARKER_SEQ.unpack_from
        while True:
            blocks, stamps, ids = decoder.next_packets()
            resolutions = [i.tsresol for i in decoder.interfaces]
            for block, ticks, iface in zip(blocks, stamps, ids, strict=True):
                marker, seq = unpack(block, cb.SEQ_OFFSET)
                vm = self.markers.get(marker)
                if vm is None or seq >= self.count:
                    self.foreign += 1
                    continue
                self.seen[vm][seq] = 1
                captured = ticks_to_ns(ticks, resolutions[iface])
                if captured >= self.skip_below_ns:
                    self.latencies.append(received_ns - captured)
            if decoder.next_raw() is None and not blocks:
                return

    def lost(self) -> int:
        return sum(self.count - s.count(1) for s in self.seen)


def percentile(ordered: list[int], p: float) -> float:
    """Nearest-rank percentile of a sorted list, in milliseconds."""
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank] / 1e6


async def measure(bench: db.Bench, args: argparse.Namespace) -> None:
    per_vm = args.rate // args.senders
    count = round(per_vm * args.seconds)
    markers = [secrets.randbits(32) for _ in range(args.senders)]
    latencies = Latencies({m: i for i, m in enumerate(markers)}, count)
    client = db.Client(bench.landscape.api_port, bench.token, bench.start_message(),
                       on_data=latencies.on_data)
    idle = len(bench.feeds) - args.senders
    print(f"\nlatency: one capture of both VMs through the api, {per_vm:,} datagrams/s from "
          f"{'each VM' if not idle else f'{args.senders} VM, the other idle'} "
          f"({per_vm * args.senders:,}/s in all) for {args.seconds:g} s, the first "
          f"{args.warmup:g} s left out")
    with trio.fail_after(db.CLIENT_TIMEOUT + args.seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            await client.started.wait()
            if client.failure:
                raise RuntimeError(f"the capture did not start: {client.failure}")
            latencies.skip_below_ns = time.time_ns() + round(args.warmup * 1e9)
            sent = await trio.to_thread.run_sync(bench.send_all, count, per_vm, markers)
            await trio.sleep(cb.SETTLE)
            client.stop.set()
    if client.end is None:
        raise RuntimeError(f"the capture did not end: {client.failure}")
    ordered = sorted(latencies.latencies)
    if not ordered:
        raise RuntimeError("no packet arrived after the warm-up")
    achieved = sum(s.pps for s in sent)
    t = client.end.totals
    print(f"sent {sum(s.packets for s in sent):,} at {achieved:,.0f} pps achieved; the client "
          f"received {len(ordered):,} after the warm-up, lost {latencies.lost()} (drops: "
          f"kernel {t.kernel_dropped}, agent {t.agent_dropped}, api {t.api_dropped}; "
          f"written out of order {t.late})")
    p = {q: percentile(ordered, q) for q in (50, 90, 99)}
    print(f"latency capture → client: p50 {p[50]:.1f} ms, p90 {p[90]:.1f} ms, "
          f"p99 {p[99]:.1f} ms, max {ordered[-1] / 1e6:.1f} ms, min {ordered[0] / 1e6:.1f} ms "
          f"(target p99 ≤ 250 ms)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", default="10k",
                        help="aggregate datagrams/s, split between the VMs (default 10k)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="seconds of traffic (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of traffic at the start left out (default 1)")
    parser.add_argument("--senders", type=int, choices=(1, 2), default=2,
                        help="VMs that send (default 2); with 1 the other VM's capture is "
                             "idle, and the merge waits on its heartbeats")
    parser.add_argument("--tmpdir", metavar="DIR", default=None)

    def body(args: argparse.Namespace) -> int:
        try:
            args.rate = cb.parse_rate(args.rate)
            if args.rate == 0 or args.seconds <= args.warmup:
                raise ValueError("a paced rate, and --seconds above --warmup")
        except ValueError as exc:
            parser.error(str(exc))
        db.print_machine()
        with db.bench_landscape(args.tmpdir) as bench:
            trio.run(measure, bench, args)
        print(f"\n{cb._load()} at the end")
        return 0

    return db.run_main("latency_bench", argv, parser, body)


if __name__ == "__main__":
    sys.exit(main())
