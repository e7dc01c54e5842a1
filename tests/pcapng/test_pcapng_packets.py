"""Hot-path helpers: split_packets, epb_timestamp, with_interface_id."""

from __future__ import annotations

import pytest
from pcapng_samples import decode_all

from pcapd.errors import PcapngFormatError
from pcapd.pcapng import (
    EnhancedPacket,
    InterfaceStatistics,
    encode_enhanced_packet,
    encode_interface_description,
    encode_interface_statistics,
    encode_section_header,
    epb_timestamp,
    split_packets,
    with_interface_id,
)

TS = 0x1234_5678_9ABC_DEF0


def packets(count: int) -> list[bytes]:
    return [
        encode_enhanced_packet(
            interface_id=i % 3,
            timestamp=TS + i,
            data=bytes(range(i % 7)) * i,
            original_length=1000 + i,
            comment="c" if i == 4 else None,
        )
        for i in range(count)
    ]


def test_split_packets_returns_blocks_timestamps_and_interfaces() -> None:
    blocks = packets(10)
    batch = split_packets(b"".join(blocks))
    assert batch.blocks == blocks
    assert batch.timestamps == [TS + i for i in range(10)]
    assert batch.interface_ids == [i % 3 for i in range(10)]
    assert split_packets(b"") == ([], [], [])


@pytest.mark.parametrize(
    ("data", "where", "words"),
    [
        (packets(2)[0] + b"\x06\0\0\0", 1, "truncated"),
        (packets(1)[0][:-4], 0, "cut off"),
        (encode_section_header(), 0, "block type 0xa0d0d0a"),
        (packets(1)[0][:4] + b"\x25" + packets(1)[0][5:], 0, "multiple of 4"),
        (packets(1)[0][:20] + b"\x40" + packets(1)[0][21:], 0, "captured length 64"),
        (packets(1)[0][:-4] + b"\0\0\0\0", 0, "trailing"),
    ],
)
def test_split_packets_refuses_bad_framing(data: bytes, where: int, words: str) -> None:
    offset = len(packets(1)[0]) if where else 0
    with pytest.raises(PcapngFormatError, match=words) as info:
        split_packets(data, offset=100)
    assert info.value.offset == 100 + offset


def test_epb_timestamp() -> None:
    block = packets(1)[0]
    assert epb_timestamp(block) == TS
    assert epb_timestamp(memoryview(block)) == TS


def test_with_interface_id_rewrites_only_the_id() -> None:
    head = encode_section_header() + encode_interface_description(link_type=1, snaplen=0) * 8
    epb = packets(5)[4]
    isb = encode_interface_statistics(interface_id=1, timestamp=5, received=3)
    moved = [with_interface_id(epb, 7), with_interface_id(isb, 6)]
    assert moved[0][:8] == epb[:8] and moved[0][12:] == epb[12:]
    *_, new_epb, new_isb = decode_all([head, *moved])
    assert isinstance(new_epb, EnhancedPacket) and isinstance(new_isb, InterfaceStatistics)
    assert new_epb.interface_id == 7 and new_epb.comments == ("c",)
    assert new_epb.timestamp == TS + 4
    assert new_isb == InterfaceStatistics(6, 5, received=3)


@pytest.mark.parametrize(
    ("block", "interface_id"),
    [(encode_section_header(), 0), (b"\x06\0", 0), (packets(1)[0], -1), (packets(1)[0], 2**32)],
)
def test_with_interface_id_refuses_misuse(block: bytes, interface_id: int) -> None:
    with pytest.raises(ValueError):
        with_interface_id(block, interface_id)
