"""The bounded packet queue between a producer that must never wait and a slower sender.

A capture reads packets when the kernel has them; the link to the reader drains as fast as the
reader reads. Between the two sits this queue: the producer ``offer``s batches and is told how
many packets were kept (the :class:`~pcapd.flow.DropGate` decides, with hysteresis), the sender
``take``s everything queued, coalesced into one payload of at most ``max_bytes``. Watermarks
ride along so a dropped batch still moves the reader's merge forward.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import trio

from pcapd.flow import DropGate
from pcapd.pcapng import split_packets


@dataclass(frozen=True, slots=True)
class Chunk:
    """What the sender gets: concatenated blocks, how many packets, the newest watermark."""

    payload: bytes
    packets: int
    watermark: int


class PacketQueue:
    """A queue of pcapng block batches counted in packets, bounded by a :class:`DropGate`."""

    def __init__(self, gate: DropGate) -> None:
        self.gate = gate
        self._items: deque[tuple[bytes, int, int]] = deque()
        self._depth = 0
        self._bytes = 0
        self._watermark = 0
        self._closed = False
        self._changed = trio.Event()

    @property
    def depth(self) -> int:
        """Packets waiting."""
        return self._depth

    def offer(self, blocks: list[bytes], watermark: int = 0) -> int:
        """Queue what the gate admits of ``blocks`` (one pcapng block each); return how many.

        An empty list still carries the watermark (a heartbeat). Never blocks.
        """
        kept = self.gate.admit(self._depth, len(blocks)) if blocks else 0
        if kept:
            payload = b"".join(blocks[:kept])
            self._items.append((payload, kept, watermark))
            self._depth += kept
            self._bytes += len(payload)
        elif watermark > self._watermark and not self._items:
            self._items.append((b"", 0, watermark))
        self._watermark = max(self._watermark, watermark)
        self._wake()
        return kept

    def offer_joined(self, payload: bytes, packets: int, watermark: int = 0) -> tuple[int, int]:
        """:meth:`offer` for ``packets`` Enhanced Packet Blocks already joined into ``payload``.

        Returns how many packets, and how many of the payload's bytes, were kept. The gate's
        answer is taken once for the batch; when it keeps only part, the batch is cut after
        its first ``kept`` blocks (split there, the rare congestion path); a whole batch is
        queued as it is, never split.
        """
        kept = self.gate.admit(self._depth, packets) if packets else 0
        if kept == packets and kept:
            self.put_unbounded(payload, kept, watermark)
            return kept, len(payload)
        if kept:
            part = b"".join(split_packets(payload).blocks[:kept])
            self.put_unbounded(part, kept, watermark)
            return kept, len(part)
        self.offer([], watermark)
        return 0, 0

    def put_unbounded(self, payload: bytes, packets: int = 0, watermark: int = 0) -> None:
        """Queue without asking the gate: headers and statistics blocks, never dropped."""
        self._items.append((payload, packets, watermark))
        self._depth += packets
        self._bytes += len(payload)
        self._watermark = max(self._watermark, watermark)
        self._wake()

    def close(self) -> None:
        """No more offers: ``take`` returns what is left, then None."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def take(self, max_bytes: int, *, min_bytes: int = 0, linger: float = 0.0
                   ) -> Chunk | None:
        """Everything queued (up to ``max_bytes``, at least one batch) as one chunk.

        Waits while the queue is empty; None once it is empty and closed. With ``linger``, a
        take that finds less than ``min_bytes`` queued waits up to ``linger`` seconds more for
        them (or the close): under load the sender then sends fewer, larger messages — each
        message costs the same framing, system calls and, on the user's side, a write, whatever
        its size — for at most ``linger`` of added latency. It stops waiting once half the
        gate's ``upper_limit`` of packets is queued: lingering must never cause drops.
        """
        while not self._items:
            if self._closed:
                return None
            await self._changed.wait()
        if linger > 0 and self._short_of(min_bytes):
            with trio.move_on_after(linger):
                while self._short_of(min_bytes):
                    await self._changed.wait()
        parts: list[bytes] = []
        size = packets = 0
        watermark = 0
        while self._items and (not parts or size + len(self._items[0][0]) <= max_bytes):
            payload, count, mark = self._items.popleft()
            self._bytes -= len(payload)
            parts.append(payload)
            size += len(payload)
            packets += count
            watermark = max(watermark, mark)
        if not self._items:  # everything offered so far is in this chunk or was dropped
            watermark = max(watermark, self._watermark)
        self._depth -= packets
        self._wake()
        return Chunk(b"".join(parts), packets, watermark)

    def _short_of(self, min_bytes: int) -> bool:
        return (self._bytes < min_bytes and self._depth < self.gate.upper_limit // 2
                and not self._closed)

    async def wait_depth_below(self, depth: int) -> None:
        """Until fewer than ``depth`` packets wait (the sender caught up)."""
        while self._depth >= depth:
            await self._changed.wait()

    async def wait_empty(self) -> None:
        """Until the sender has taken everything."""
        while self._items:
            await self._changed.wait()
