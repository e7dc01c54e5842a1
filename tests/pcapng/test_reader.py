"""The incremental decoder: round trips in any chunking, both byte orders, every error case."""

from __future__ import annotations

import random
import struct

import pytest

from pcapd.errors import PcapngFormatError
from pcapd.pcapng import (
    EPB,
    IDB,
    ISB,
    NRB,
    SHB,
    SPB,
    EnhancedPacket,
    InterfaceDescription,
    InterfaceStatistics,
    NameResolution,
    PcapngDecoder,
    SectionHeader,
    SimplePacket,
    UnknownBlock,
    encode_enhanced_packet,
    encode_interface_description,
    parse,
    ticks_to_ns,
)
from tests.pcapng.pcapng_samples import (
    BASE_NS,
    IDB_FIXED,
    IDB_LE,
    INTERFACES,
    SHB_LE,
    SNAPLEN,
    big_endian_section,
    chunked,
    decode_all,
    le_block,
    le_epb,
    raw_all,
    sample_capture,
)

HEAD = len(SHB_LE + IDB_LE)


def expected_blocks() -> list[object]:
    _, packets = sample_capture()
    blocks: list[object] = [SectionHeader(False, 1, 0, -1, "pcapd-tests 0.1", None, "Linux", ())]
    for name, description in INTERFACES:
        blocks.append(InterfaceDescription(1, SNAPLEN, name, description, 10**9))
    for p in packets:
        comments = () if p.comment is None else (p.comment,)
        blocks.append(
            EnhancedPacket(
                p.interface_id, p.ts_ns, len(p.data), p.original_length, p.data, None, comments
            )
        )
    blocks.append(NameResolution((("10.0.1.1", ("dns.example",)), ("::1", ("localhost",)))))
    end = packets[-1].ts_ns + 1000
    for interface_id in (0, 1):
        blocks.append(InterfaceStatistics(interface_id, end, BASE_NS, end, 3, 1, 0, None, 3, 2))
    return blocks


def test_round_trip_every_block_type() -> None:
    data, _ = sample_capture()
    blocks = decode_all([data])
    assert blocks == expected_blocks()
    assert b"".join(block.raw for block in blocks) == data


@pytest.mark.parametrize("seed", range(8))
def test_any_chunking_gives_the_same_blocks(seed: int) -> None:
    data, _ = sample_capture()
    rng = random.Random(seed)
    sizes = [rng.randint(1, 200) for _ in range(50)]
    assert decode_all(chunked(data, sizes)) == expected_blocks()


def test_byte_by_byte() -> None:
    data, _ = sample_capture()
    assert decode_all(chunked(data, [1])) == expected_blocks()


def test_raw_blocks_carry_offsets_types_and_exact_bytes() -> None:
    data, _ = sample_capture()
    raws = raw_all(chunked(data, [7]))
    offset = 0
    for raw in raws:
        assert raw.offset == offset
        assert raw.data == data[offset : offset + len(raw.data)]
        assert raw.big_endian is False
        offset += len(raw.data)
    assert offset == len(data)
    assert [raw.block_type for raw in raws] == [SHB, IDB, IDB] + [EPB] * 6 + [NRB, ISB, ISB]
    assert [parse(raw) for raw in raws] == expected_blocks()


def test_decoder_tracks_section_and_interfaces() -> None:
    data, packets = sample_capture()
    dec = PcapngDecoder()
    dec.receive_data(data)
    first = dec.next_block()
    assert first is dec.section
    assert [dec.next_block(), dec.next_block()] == list(dec.interfaces)
    epb = dec.next_block()
    assert isinstance(epb, EnhancedPacket)
    assert dec.timestamp_ns(epb) == packets[0].ts_ns
    assert dec.offset == sum(len(b.raw) for b in decode_all([data])[:4])


def test_empty_input_is_no_blocks() -> None:
    assert decode_all([]) == []


def test_truncated_tail_raises_at_the_partial_block_after_the_whole_ones() -> None:
    data, _ = sample_capture()
    boundaries = [0]
    for block in decode_all([data]):
        boundaries.append(boundaries[-1] + len(block.raw))
    for cut in range(len(data) + 1):
        dec = PcapngDecoder()
        dec.receive_data(data[:cut])
        dec.receive_data(b"")
        whole = [b for b in boundaries if b <= cut]
        for _ in whole[1:]:
            assert dec.next_raw() is not None
        if cut in boundaries:
            assert dec.next_raw() is None
        else:
            with pytest.raises(PcapngFormatError) as info:
                dec.next_raw()
            assert info.value.offset == whole[-1]


@pytest.mark.parametrize(
    ("garbage", "offset_from_end"),
    [
        (b"\0\1", 0),
        (b"garbage!", 0),
        (b"\xff" * 16, 4),
        (b"\x06\0\0\0\x0c" + bytes(7), 4),
        (le_epb(interface_id=7), 8),
    ],
)
def test_trailing_garbage(garbage: bytes, offset_from_end: int) -> None:
    data, _ = sample_capture()
    dec = PcapngDecoder()
    dec.receive_data(data + garbage)
    dec.receive_data(b"")
    for _ in range(len(expected_blocks())):
        assert dec.next_block() is not None
    with pytest.raises(PcapngFormatError) as info:
        dec.next_block()
    assert info.value.offset == len(data) + offset_from_end
    assert f"offset {info.value.offset}" in str(info.value)
    with pytest.raises(PcapngFormatError):  # the decoder stays where the fault is
        dec.next_block()


MALFORMED = [
    (IDB_LE, 0, "section header"),
    (b"\x0a\x0d\x0d\x0a\x1c\0\0\0\x4d\x3c\x2b\x1b" + bytes(16), 8, "byte-order magic"),
    (SHB_LE + le_block(IDB, b"", total=8), 28 + 4, "too short"),
    (SHB_LE + le_block(0x99, b"", total=8), 28 + 4, "too short"),
    (SHB_LE + le_block(IDB, bytes(9), total=21), 28 + 4, "multiple of 4"),
    (SHB_LE + le_block(0x99, bytes(1024)), 28 + 4, "limit"),
    (SHB_LE + le_block(IDB, bytes(8))[:-4] + b"\0\0\0\0", 28 + 16, "trailing"),
    (SHB_LE + le_epb(), 28 + 8, "interface 0"),
    (SHB_LE + IDB_LE + le_epb(interface_id=1), HEAD + 8, "interface 1"),
    (SHB_LE + IDB_LE + le_block(ISB, struct.pack("<3I", 3, 0, 0)), HEAD + 8, "interface 3"),
    (SHB_LE + IDB_LE + le_epb(caplen=5), HEAD + 20, "captured length"),
    (SHB_LE + le_block(SPB, bytes(4)), 28, "simple packet"),
    (SHB_LE + le_block(IDB, IDB_FIXED + b"\x02\0\x09\0abcd"), 28 + 16, "overruns"),
    (SHB_LE + le_block(IDB, IDB_FIXED + b"\x09\0\x02\0\x06\x06\0\0"), 28, "if_tsresol"),
    (SHB_LE + IDB_LE + le_epb(options=b"\x02\0\x02\0\1\0\0\0"), HEAD, "option 2 must be 4"),
    (SHB_LE + IDB_LE + le_epb(options=b"\x01\0\x05\0abcd"), HEAD + 32, "overruns"),
]


@pytest.mark.parametrize(
    ("stream", "offset", "words"), MALFORMED, ids=[case[2] for case in MALFORMED]
)
def test_malformed_input_names_the_offset(stream: bytes, offset: int, words: str) -> None:
    for chunks in ([stream], chunked(stream, [1]), chunked(stream, [5, 11])):
        with pytest.raises(PcapngFormatError) as info:
            decode_all(chunks, max_block_size=1024)
        assert info.value.offset == offset
        assert words in str(info.value)


def test_a_section_of_another_major_version_is_passed_over_whole() -> None:
    v2 = le_block(SHB, struct.pack("<IHHq", 0x1A2B3C4D, 2, 0, -1))
    packet = encode_enhanced_packet(interface_id=0, timestamp=7, data=b"kept")
    foreign = le_block(EPB, bytes(28))  # not even a valid EPB of version 1: never read
    stream = SHB_LE + IDB_LE + packet + v2 + IDB_LE + foreign + SHB_LE + IDB_LE + packet
    for chunks in ([stream], chunked(stream, [1]), chunked(stream, [5, 11])):
        dec = PcapngDecoder()
        blocks = []
        for chunk in [*chunks, b""]:
            dec.receive_data(chunk)
            while (block := dec.next_block()) is not None:
                blocks.append(block)
        assert [type(b).__name__ for b in blocks] == [
            "SectionHeader", "InterfaceDescription", "EnhancedPacket",
            "SectionHeader", "InterfaceDescription", "EnhancedPacket",
        ]  # fmt: skip
        assert dec.sections == 3
        [skipped] = dec.skipped_sections
        assert (skipped.offset, skipped.major, skipped.minor, skipped.blocks) == (
            len(SHB_LE + IDB_LE + packet), 2, 0, 3,
        )  # fmt: skip


def test_big_endian_section_then_little_endian_section() -> None:
    second = SHB_LE + encode_interface_description(link_type=101, snaplen=9, tsresol=9)
    second += encode_enhanced_packet(interface_id=0, timestamp=5, data=b"ok")
    for sizes in ([10**6], [1], [3, 17]):
        dec = PcapngDecoder()
        blocks = []
        for chunk in [*chunked(big_endian_section() + second, sizes), b""]:
            dec.receive_data(chunk)
            while (block := dec.next_block()) is not None:
                blocks.append(block)
        assert blocks == [
            SectionHeader(True, 1, 0, 4096, "be-app"),
            InterfaceDescription(1, 128, "be0", tsresol=10**6),
            EnhancedPacket(0, 1 << 32 | 2, 3, 70, b"xyz", 3, ("c",)),
            InterfaceStatistics(0, 9, start_time=1 << 32 | 2, received=10, kernel_dropped=5,
                                pcapd_dropped=4),
            NameResolution((("10.0.0.1", ("a",)),)),
            SimplePacket(200, b"abcdefgh"),
            UnknownBlock(0x0BAD, b"body"),
            SectionHeader(False, 1, 0, -1),
            InterfaceDescription(101, 9, tsresol=10**9),
            EnhancedPacket(0, 5, 2, 2, b"ok"),
        ]  # fmt: skip
        assert dec.interfaces == [InterfaceDescription(101, 9, tsresol=10**9)]


def test_new_section_forgets_old_interfaces() -> None:
    stream = SHB_LE + IDB_LE + IDB_LE + SHB_LE + IDB_LE + le_epb(interface_id=1)
    with pytest.raises(PcapngFormatError, match="interface 1"):
        decode_all([stream])


@pytest.mark.parametrize(
    ("option", "tsresol"),
    [(b"", 10**6), (b"\x09\0\x01\0\x06\0\0\0", 10**6), (b"\x09\0\x01\0\x09\0\0\0", 10**9),
     (b"\x09\0\x01\0\x00\0\0\0", 1), (b"\x09\0\x01\0\x8a\0\0\0", 1024)],
)  # fmt: skip
def test_tsresol(option: bytes, tsresol: int) -> None:
    idb = le_block(IDB, IDB_FIXED + option)
    epb = encode_enhanced_packet(interface_id=0, timestamp=3 * tsresol + tsresol // 2, data=b"")
    dec = PcapngDecoder()
    dec.receive_data(SHB_LE + idb + epb)
    blocks = [dec.next_block() for _ in range(3)]
    assert dec.interfaces[0].tsresol == tsresol
    assert isinstance(blocks[2], EnhancedPacket)
    assert dec.timestamp_ns(blocks[2]) == ticks_to_ns(blocks[2].timestamp, tsresol)
    assert dec.timestamp_ns(blocks[2]) == 3_000_000_000 + (500_000_000 if tsresol > 1 else 0)
    with pytest.raises(ValueError):
        dec.timestamp_ns(EnhancedPacket(1, 0, 0, 0, b""))
