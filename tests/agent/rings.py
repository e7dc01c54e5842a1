"""Packets and windows for the ring's tests (tests/agent/test_ring.py, test_ring_files.py):
EPBs of interface 0 with a serial in their data, and what a window of a ring holds."""

from __future__ import annotations

from hypothesis import strategies as st

from pcapd.agent.ring import Ring, Window
from pcapd.pcapng import encode_enhanced_packet, split_packets

S = 1_000_000_000
T0 = 1_700_000_000 * S


def epb(ts: int, tag: int = 0, size: int = 20) -> bytes:
    data = tag.to_bytes(4, "little") + bytes(max(0, size - 4))
    return encode_enhanced_packet(interface_id=0, timestamp=ts, data=data)


def batch(*stamps: int, size: int = 20) -> bytes:
    return b"".join(epb(ts, i, size) for i, ts in enumerate(stamps))


def packets(window: Window) -> list[tuple[int, bytes]]:
    """(timestamp, block) of every packet of ``window``, in its order."""
    got = split_packets(b"".join(bytes(c) for c in window.chunks))
    assert len(got.blocks) == window.packets
    assert sum(len(b) for b in got.blocks) == window.bytes
    return list(zip(got.timestamps, got.blocks, strict=True))


def held(ring: Ring) -> list[tuple[int, bytes]]:
    return packets(ring.window(0, 2**64))


PACKET = len(epb(0))
operations = st.lists(
    st.tuples(
        st.integers(0, 3 * S),  # time passing before the step
        st.lists(st.integers(-S, S // 10), max_size=12),  # packet times relative to now
    ),
    max_size=25,
)
"""Steps of a ring's life: time passing, then packets around the new now."""
