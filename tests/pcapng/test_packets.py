"""Hot-path helpers: split_packets, check_epbs, epb_timestamp, with_interface_id, and
split_source_blocks (one source's payload: IDBs, EPBs, ISBs)."""

from __future__ import annotations

import pytest

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
from pcapd.pcapng.packets import SourceBlocks, check_epbs, split_source_blocks
from tests.pcapng.pcapng_samples import decode_all

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


def one_interface(sizes: list[int], interface_id: int = 0) -> list[bytes]:
    return [encode_enhanced_packet(interface_id=interface_id, timestamp=TS + i, data=bytes(size),
                                   original_length=size + 10) for i, size in enumerate(sizes)]


@pytest.mark.parametrize("sizes", [[100] * 50, [97, 98, 99, 100] * 10, [0, 1, 60, 1500, 9000] * 9])
def test_check_epbs_counts_equal_and_mixed_blocks_and_rewrites_ids(sizes: list[int]) -> None:
    blocks = one_interface(sizes)
    run = bytearray(b"".join(blocks))
    assert check_epbs(bytes(run)) == len(blocks)
    assert check_epbs(run, new_id=5) == len(blocks)
    assert bytes(run) == b"".join(one_interface(sizes, 5))  # nothing but the ids changed
    assert check_epbs(b"") == 0


def _patched(blocks: list[bytes], index: int, at: int, value: bytes) -> bytes:
    bad = bytearray(blocks[index])
    bad[at:at + len(value)] = value
    return b"".join([*blocks[:index], bytes(bad), *blocks[index + 1:]])


@pytest.mark.parametrize("sizes", [[100] * 6, [100, 60, 1500, 100, 7, 100]])
@pytest.mark.parametrize(
    ("at", "value", "words"),
    [
        (0, b"\x05", "block type 0x5"),
        (8, b"\x01", "interface 1 where only 0"),
        (20, b"\xff\xff", "captured length"),
        (-4, b"\0\0\0\0", "trailing"),
    ],
)
def test_check_epbs_says_what_is_wrong_and_where(sizes: list[int], at: int, value: bytes,
                                                 words: str) -> None:
    blocks = one_interface(sizes)
    at = at % len(blocks[3])
    with pytest.raises(PcapngFormatError, match=words) as info:
        check_epbs(_patched(blocks, 3, at, value), offset=12)
    assert info.value.offset == 12 + sum(len(b) for b in blocks[:3])


def test_check_epbs_refuses_what_is_not_only_whole_epbs() -> None:
    blocks = one_interface([100] * 3)
    for data in (b"".join(blocks)[:-4], b"".join(blocks) + encode_section_header(),
                 encode_interface_description(link_type=1, snaplen=0) + blocks[0]):
        with pytest.raises(PcapngFormatError):
            check_epbs(data)
    with pytest.raises(TypeError):
        check_epbs(b"".join(blocks), new_id=1)  # rewriting needs a bytearray


# -- one source's payload -----------------------------------------------------------------------

IDB_BLOCK = encode_interface_description(link_type=1, snaplen=65535, name="eth0")
ISB_BLOCK = encode_interface_statistics(interface_id=0, timestamp=TS, received=9, kernel_dropped=1)


@pytest.mark.parametrize(("idbs", "epbs", "isbs"),
                         [(0, 0, 0), (1, 0, 0), (0, 0, 1), (1, 3, 1), (2, 5, 2), (0, 4, 0)])
def test_split_source_blocks_peels_idbs_and_isbs_off_the_edges(idbs: int, epbs: int,
                                                              isbs: int) -> None:
    run = one_interface([60 + i for i in range(epbs)])
    data = IDB_BLOCK * idbs + b"".join(run) + ISB_BLOCK * isbs
    assert split_source_blocks(data) == SourceBlocks(
        interfaces=[IDB_BLOCK] * idbs, packets=b"".join(run), count=epbs,
        statistics=[ISB_BLOCK] * isbs, offset=len(IDB_BLOCK) * idbs)


def test_split_source_blocks_passes_a_run_of_packets_on_as_it_came() -> None:
    data = b"".join(one_interface([100] * 4))
    assert split_source_blocks(data).packets is data  # no copy when there is nothing to peel


def test_an_isb_that_does_not_end_the_payload_is_a_fault_where_it_is() -> None:
    run = one_interface([100] * 2)
    data = IDB_BLOCK + run[0] + ISB_BLOCK + run[1]
    with pytest.raises(PcapngFormatError, match="block type 0x5") as info:
        split_source_blocks(data)
    assert info.value.offset == len(IDB_BLOCK) + len(run[0])


def test_an_idb_after_a_packet_or_another_interface_is_a_fault() -> None:
    run = one_interface([100] * 2)
    with pytest.raises(PcapngFormatError, match="block type 0x1"):
        split_source_blocks(run[0] + IDB_BLOCK + run[1])
    with pytest.raises(PcapngFormatError, match="interface 2 where only 0"):
        split_source_blocks(IDB_BLOCK + b"".join(one_interface([100], 2)))
    assert split_source_blocks(b"".join(one_interface([100], 2)), interface_id=2).count == 1


@pytest.mark.parametrize("length", [8, 14, 1 << 20])
def test_a_leading_idb_with_a_bad_length_names_the_payload(length: int) -> None:
    bad = IDB_BLOCK[:4] + length.to_bytes(4, "little") + IDB_BLOCK[8:]
    with pytest.raises(PcapngFormatError, match=f"bad block length {length} in an agent") as info:
        split_source_blocks(bad + b"".join(one_interface([100])), what="an agent payload")
    assert info.value.offset == 0
