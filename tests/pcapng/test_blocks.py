"""The decoded records: timestamps kept in their interface's ticks and converted exactly, and
the bytes a block was read from carried along without taking part in equality."""

from __future__ import annotations

import dataclasses

import pytest

from pcapd.pcapng import (
    DEFAULT_TSRESOL,
    EnhancedPacket,
    InterfaceDescription,
    PcapngDecoder,
    encode_enhanced_packet,
    ticks_to_ns,
)
from tests.pcapng.pcapng_samples import IDB_LE, SHB_LE


@pytest.mark.parametrize(
    ("ticks", "tsresol", "ns"),
    [
        (1_700_000_000_123_456_789, 10**9, 1_700_000_000_123_456_789),  # as stored
        (1_700_000_000_123_456, 10**6, 1_700_000_000_123_456_000),
        (3, 1, 3_000_000_000),
        (1, 1024, 976_562),  # 976 562.5 ns: floored, never rounded up past the next tick
        (2**64 - 1, 10**6, (2**64 - 1) * 1000),  # exact integers: no float rounding at 2**64
        (10**19 + 1, 10**10, 10**18),  # finer than nanoseconds: floored to whole ns
    ],
)
def test_ticks_become_nanoseconds_exactly(ticks: int, tsresol: int, ns: int) -> None:
    assert ticks_to_ns(ticks, tsresol) == ns


def test_an_interface_without_if_tsresol_counts_microseconds() -> None:
    assert DEFAULT_TSRESOL == 10**6
    assert InterfaceDescription(link_type=1, snaplen=0).tsresol == 10**6


def test_the_bytes_read_ride_along_outside_equality_and_repr() -> None:
    block = encode_enhanced_packet(interface_id=0, timestamp=1, data=b"x")
    dec = PcapngDecoder()
    dec.receive_data(SHB_LE + IDB_LE + block)
    [*_, packet] = [dec.next_block() for _ in range(3)]
    assert packet == EnhancedPacket(0, 1, 1, 1, b"x")  # a hand-built expectation compares equal
    assert isinstance(packet, EnhancedPacket)
    assert packet.raw == block  # what a merge passes through unchanged
    assert repr(packet) == ("EnhancedPacket(interface_id=0, timestamp=1, captured_length=1, "
                            "original_length=1, data=b'x', flags=None, comments=())")


def test_records_are_frozen() -> None:
    packet = EnhancedPacket(0, 1, 1, 1, b"x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        packet.timestamp = 2  # type: ignore[misc]
