"""The bounded packet queue: joined batches admitted whole or cut at the gate's answer, and a
sender that lingers for larger messages without ever causing a drop."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pcapd.flow import DropGate
from pcapd.pcapng import encode_enhanced_packet, split_packets
from pcapd.transport.queue import PacketQueue


def run(count: int, size: int = 100, first: int = 0) -> bytes:
    return b"".join(encode_enhanced_packet(interface_id=0, timestamp=first + i, data=bytes(size))
                    for i in range(count))


async def test_a_joined_batch_is_kept_whole_cut_at_the_gate_or_dropped() -> None:
    queue = PacketQueue(DropGate(size=10, upper_limit=8, lower_limit=2))
    whole = run(5)
    assert queue.offer_joined(whole, 5, watermark=7) == (5, len(whole))
    assert queue.offer_joined(run(5, first=5), 5) == (3, 3 * 132)  # room for 3 of 5
    assert queue.offer_joined(run(1, first=10), 1, watermark=9) == (0, 0)  # dropping now
    chunk = await queue.take(1 << 20)
    assert chunk is not None and (chunk.packets, chunk.watermark) == (8, 9)
    assert split_packets(chunk.payload).timestamps == list(range(8))
    assert queue.gate.statistics().dropped == 3


async def test_a_lingering_take_waits_for_more_bytes_then_sends_them_in_one(
        autojump_clock: trio.testing.MockClock) -> None:
    queue = PacketQueue(DropGate(size=10_000, upper_limit=9_000, lower_limit=8_000))
    queue.offer_joined(run(10), 10)

    async def more() -> None:
        await trio.sleep(0.004)
        queue.offer_joined(run(90, first=10), 90)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(more)
        began = trio.current_time()
        chunk = await queue.take(1 << 20, min_bytes=100 * 132, linger=0.01)
    assert chunk is not None and chunk.packets == 100  # one message, not two
    assert trio.current_time() - began == pytest.approx(0.004)  # sent once there was enough


async def test_a_lingering_take_waits_no_longer_than_linger_nor_past_half_the_gate(
        autojump_clock: trio.testing.MockClock) -> None:
    queue = PacketQueue(DropGate(size=100, upper_limit=80, lower_limit=50))
    queue.offer_joined(run(10), 10)
    began = trio.current_time()
    chunk = await queue.take(1 << 20, min_bytes=1 << 20, linger=0.01)
    assert chunk is not None and chunk.packets == 10
    assert trio.current_time() - began == pytest.approx(0.01)
    queue.offer_joined(run(40), 40)  # half the upper limit: take at once, before any drop
    began = trio.current_time()
    chunk = await queue.take(1 << 20, min_bytes=1 << 20, linger=0.01)
    assert chunk is not None and chunk.packets == 40 and trio.current_time() == began
    queue.offer_joined(run(1), 1)
    queue.close()  # closing: the tail goes at once
    chunk = await queue.take(1 << 20, min_bytes=1 << 20, linger=0.01)
    assert chunk is not None and chunk.packets == 1 and trio.current_time() == began
    assert await queue.take(1 << 20) is None
