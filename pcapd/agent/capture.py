"""One capture on an agent: libpcap → bounded queue → the api's link, until told to stop.

Theory of operation. Three tasks share one nursery: the *reader* takes batches from libpcap and
offers them to the queue (the drop gate keeps the agent's memory bounded when the api reads too
slowly, counting what it drops), the *sender* coalesces queued batches into binary messages with
their watermark, and the *reporter* sends statistics once a second and a CONGESTED message when
a drop episode starts. The link's own receiver waits for ``stop``. Stopping is always the same
path — the reader is cancelled (it loses nothing: libpcap keeps unread packets in the ring), the
ring is drained, the queue flushed, then the interface statistics block, final statistics and
``end`` — so the api's file ends complete whether the user stopped, a limit hit, or the agent
drains. Only a vanished api skips the farewell: there is nobody left to tell.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import msgspec
import trio

from pcapd.agent.pcap import Batch, HandleStats, PcapHandle
from pcapd.flow import DropGate
from pcapd.pcapng import encode_interface_description, encode_interface_statistics
from pcapd.proto import Counters, Data, End, Notice, SourceStatistics, Start, Statistics, Stop
from pcapd.proto.messages import EndReason, SourceState, StopReason
from pcapd.transport.groups import open_nursery
from pcapd.transport.link import Link, LinkClosed
from pcapd.transport.queue import PacketQueue

log = logging.getLogger(__name__)

READ_WAIT = 0.1
"""Seconds a read waits before returning empty: the heartbeat period of an idle source."""
STATS_PERIOD = 1.0
MAX_READ = 4096
"""Packets per read at most: bounds the time one read holds the event loop."""
MIN_READ = 64
"""A read smaller than this is not worth a wake-up: wait for the sender instead."""
READ_LINGER = 0.05
"""Seconds a read that has packets waits for more (``PcapHandle.read_batch``): the cost of an
agent is per wake-up and message rather than per packet, so under load it takes the ring's
packets in batches of this many ms instead of one ring block (5 ms) at a time. At most this
much added latency; the api's send linger is 10 ms, the latency target 250 ms at p99.
50 ms rather than 20: the agents' CPU per packet fell by a third (200 k packets/s: 0.62 →
0.41 µs, 80 k: 1.00 → 0.66), p99 latency rose from 50 to 80 ms (docs/performance.md)."""
BACKPRESSURE_WAIT = 0.5
"""Seconds the reader waits for the sender before reading anyway (and the gate drops)."""
MAX_PAYLOAD = 1024 * 1024
"""Bytes per binary message: large enough to amortise framing, far below the 8 MiB limit."""
FLUSH_TIMEOUT = 10.0
"""Seconds the farewell (tail, statistics, end) may take before the link is given up."""


@dataclass
class RunCounters:
    """What this capture saw and did with it."""

    packets: int = 0
    bytes: int = 0
    sent: int = 0
    kernel: HandleStats = field(default_factory=lambda: HandleStats(0, 0, 0))


@dataclass
class CaptureRun:
    """A running capture; :class:`~pcapd.agent.server.Agent` keeps these to stop them."""

    capture_id: str
    start: Start
    name: str
    description: str
    started_ns: int = field(default_factory=time.time_ns)
    counters: RunCounters = field(default_factory=RunCounters)
    end_reason: EndReason = "stopped"
    end_text: str = ""
    stop_requested: trio.Event = field(default_factory=trio.Event)
    api_stop_reason: StopReason | None = None
    """Why the api said ``stop`` (``limit``: its cut is reached), if it did."""
    farewell_sent: bool = False

    def request_stop(self, reason: EndReason, text: str = "") -> None:
        """Stop gracefully (first caller's reason wins)."""
        if not self.stop_requested.is_set():
            self.end_reason, self.end_text = reason, text
            self.stop_requested.set()

    async def run(self, link: Link, handle: PcapHandle, gate: DropGate) -> None:
        """Stream until stopped; then the farewell. Returns when ``end`` was sent."""
        queue = PacketQueue(gate)
        idb = encode_interface_description(
            link_type=handle.link_type, snaplen=handle.snaplen, name=self.name,
            description=self.description, tsresol=9, filter=self.start.options.filter or None)
        queue.put_unbounded(idb)
        limits = self.start.limits
        async with open_nursery() as nursery:
            nursery.start_soon(self._send, link, queue)
            nursery.start_soon(self._report, link, handle, gate)
            nursery.start_soon(self._listen, link)
            if limits.max_duration is not None:
                nursery.start_soon(self._stop_after, limits.max_duration)
            with trio.CancelScope() as reading:
                nursery.start_soon(self._wait_stop, reading)
                await self._read(handle, queue)
            # past a limit the tail is not written: no need to wait for late packets
            tail = await handle.drain(late=self.end_reason != "limit"
                                       and self.api_stop_reason != "limit")
            self._offer(queue, tail)
            self.counters.kernel = handle.stats()
            isb = self._statistics_block(gate)
            queue.put_unbounded(isb)
            queue.close()
            with trio.move_on_after(FLUSH_TIMEOUT) as flush:
                await queue.wait_empty()
                await self._farewell(link, gate)
            if flush.cancelled_caught:
                log.warning("capture %s: the api did not take the tail within %ss",
                            self.capture_id, FLUSH_TIMEOUT)
            nursery.cancel_scope.cancel()

    async def _wait_stop(self, reading: trio.CancelScope) -> None:
        await self.stop_requested.wait()
        reading.cancel()

    async def _stop_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.request_stop("limit", f"max_duration of {seconds:g}s reached")

    async def _read(self, handle: PcapHandle, queue: PacketQueue) -> None:
        """Read no more than the queue has room for: the kernel's ring (tens of MB) is the
        buffer for bursts, and the agent only drops — counting — when the api stays behind
        for longer than ``BACKPRESSURE_WAIT``."""
        limits = self.start.limits
        gate = queue.gate
        min_read = max(1, min(MIN_READ, gate.upper_limit // 4))
        while True:
            room = gate.upper_limit - queue.depth
            if room < min_read and not gate.dropping:
                with trio.move_on_after(BACKPRESSURE_WAIT):
                    await queue.wait_depth_below(gate.upper_limit - min_read)
                room = gate.upper_limit - queue.depth
            limit = min(MAX_READ, room) if room >= min_read else MAX_READ
            batch = await handle.read_batch(max_packets=limit, max_wait=READ_WAIT,
                                             linger=READ_LINGER)
            self._offer(queue, batch)
            c = self.counters
            if limits.max_packets is not None and c.packets >= limits.max_packets:
                self.request_stop("limit", f"max_packets of {limits.max_packets} reached")
            if limits.max_bytes is not None and c.bytes >= limits.max_bytes:
                self.request_stop("limit", f"max_bytes of {limits.max_bytes} reached")

    def _offer(self, queue: PacketQueue, batch: Batch) -> None:
        self.counters.packets += batch.packets
        self.counters.bytes += batch.captured_bytes
        queue.offer_joined(batch.blocks, batch.packets, batch.watermark)  # one answer a batch

    async def _send(self, link: Link, queue: PacketQueue) -> None:
        while (chunk := await queue.take(MAX_PAYLOAD)) is not None:
            await link.send(Data(watermark=chunk.watermark, payload=chunk.payload))
            self.counters.sent += chunk.packets

    async def _listen(self, link: Link) -> None:
        """The api's side of the link: ``stop`` (or nothing) until the end."""
        while True:
            try:
                msg = await link.receive()
            except LinkClosed:
                if self.farewell_sent:
                    return
                raise
            if isinstance(msg, Stop):
                self.api_stop_reason = self.api_stop_reason or msg.reason
                reason: EndReason = "drained" if msg.reason == "drained" else "stopped"
                self.request_stop(reason, f"stopped by the api ({msg.reason})")

    async def _report(self, link: Link, handle: PcapHandle, gate: DropGate) -> None:
        episodes = 0
        while True:
            await trio.sleep(STATS_PERIOD)
            self.counters.kernel = handle.stats()
            stats = gate.statistics()
            if stats.episodes > episodes:
                episodes = stats.episodes
                await link.send(Notice(
                    code="CONGESTED", party="agent", count=stats.dropped, origin=self.name,
                    source=0, text=f"{self.name}: the api reads too slowly; the agent dropped "
                                   f"{stats.dropped} packets so far"))
            await link.send(Statistics(sources=[self._source_statistics(gate, "capturing")]))

    def _counters(self, gate: DropGate) -> Counters:
        c, k = self.counters, self.counters.kernel
        return Counters(packets=c.packets, bytes=c.bytes, kernel_received=k.received,
                        kernel_dropped=k.kernel_dropped, interface_dropped=k.interface_dropped,
                        agent_dropped=gate.statistics().dropped, written=c.sent)

    def _source_statistics(self, gate: DropGate, state: SourceState) -> SourceStatistics:
        return SourceStatistics(source=0, state=state,
                                **msgspec.structs.asdict(self._counters(gate)))

    def _statistics_block(self, gate: DropGate) -> bytes:
        c, k = self.counters, self.counters.kernel
        now = time.time_ns()
        return encode_interface_statistics(
            interface_id=0, timestamp=now, start_time=self.started_ns, end_time=now,
            received=k.received, kernel_dropped=k.kernel_dropped,
            interface_dropped=k.interface_dropped, delivered=c.packets - gate.statistics().dropped,
            pcapd_dropped=gate.statistics().dropped)

    async def _farewell(self, link: Link, gate: DropGate) -> None:
        self.counters.sent = self.counters.packets - gate.statistics().dropped
        await link.send(Statistics(sources=[self._source_statistics(gate, "stopped")],
                                   final=True))
        self.farewell_sent = True
        await link.send(End(reason=self.end_reason, text=self.end_text,
                            totals=self._counters(gate)))

