"""Read blocks rewritten as the little-endian blocks of one output section (pcapng/rewrite.py).

Synchronous and without files: each rewritten block is decoded again by pcapd's own decoder
in a little-endian section, and what a reader sees is compared field by field.
"""

from __future__ import annotations

import struct

from pcapd.pcapng import (
    EPB,
    IDB,
    ISB,
    NRB,
    PB,
    SPB,
    EnhancedPacket,
    InterfaceDescription,
    InterfaceStatistics,
    NameResolution,
    PcapngDecoder,
    RawBlock,
    UnknownBlock,
    encode_enhanced_packet,
    encode_interface_description,
    encode_name_resolution,
    encode_section_header,
    rewrite,
)
from pcapd.pcapng import options as o
from pcapd.pcapng.blocks import CUSTOM_COPYABLE, DSB
from tests.pcapng.pcapng_samples import be_block, be_options, big_endian_section, raw_all


def reread(*blocks: bytes, interfaces: int = 3) -> list[object]:
    """``blocks`` decoded after a little-endian header and ``interfaces`` plain interfaces."""
    head = encode_section_header() + b"".join(
        encode_interface_description(link_type=1, snaplen=0, name=f"if{i}")
        for i in range(interfaces)
    )
    decoder = PcapngDecoder()
    decoder.receive_data(head + b"".join(blocks))
    decoder.receive_data(b"")
    out = []
    while (block := decoder.next_block()) is not None:
        out.append(block)
    return out[1 + interfaces :]


def by_type(raws: list[RawBlock], kind: int) -> RawBlock:
    return next(raw for raw in raws if raw.block_type == kind)


def test_a_big_endian_interface_is_renamed_described_and_keeps_its_swapped_options() -> None:
    raws = raw_all([big_endian_section()])
    decoder = PcapngDecoder()
    decoder.receive_data(big_endian_section())
    decoder.next_raw(), decoder.next_raw()
    (idb,) = decoder.interfaces
    block, tsoffset = rewrite.relabeled_interface(by_type(raws, IDB), idb, "be.pcapng:be0", "x/be")
    assert tsoffset == 0
    (out,) = reread(block, interfaces=0)
    assert isinstance(out, InterfaceDescription)
    assert (out.link_type, out.snaplen) == (1, 128)
    assert (out.name, out.description) == ("be.pcapng:be0", "x/be")
    assert out.tsresol == 10**6


def test_if_tsoffset_is_kept_and_returned_and_a_description_is_not_replaced() -> None:
    fields = struct.pack(">HHI", 1, 0, 64)
    options = be_options(
        (o.IF_NAME, b"eth0"), (o.IF_DESCRIPTION, b"uplink"),
        (o.IF_TSOFFSET, struct.pack(">q", -7)), (o.IF_FILTER, b"\x01bytecode"),
    )  # fmt: skip
    section = be_block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
    data = section + be_block(IDB, fields + options)
    decoder = PcapngDecoder()
    decoder.receive_data(data)
    decoder.next_raw()
    raw = decoder.next_raw()
    assert raw is not None
    block, tsoffset = rewrite.relabeled_interface(raw, decoder.interfaces[0], "f:eth0", "f")
    assert tsoffset == -7
    (out,) = reread(block, interfaces=0)
    assert isinstance(out, InterfaceDescription)
    assert (out.name, out.description) == ("f:eth0", "uplink")
    assert struct.pack("<HHq", o.IF_TSOFFSET, 8, -7) in block
    assert b"bytecode" not in block  # BPF bytecode: the section's byte order, dropped


def test_big_endian_packets_keep_known_options_and_drop_custom_ones() -> None:
    raws = raw_all([big_endian_section()])
    block, local, ticks = rewrite.enhanced_packet(by_type(raws, EPB), [2])
    assert (local, ticks) == (0, 1 << 32 | 2)
    (out,) = reread(block)
    assert isinstance(out, EnhancedPacket)
    assert (out.interface_id, out.timestamp, out.data, out.original_length) == (
        2, 1 << 32 | 2, b"xyz", 70,
    )  # fmt: skip
    assert (out.comments, out.flags) == (("c",), 3)
    assert b"custom" not in block


def test_little_endian_packets_keep_their_bytes_but_the_interface_id() -> None:
    epb = encode_enhanced_packet(interface_id=1, timestamp=99, data=b"abc", comment="kept")
    raws = raw_all([encode_section_header(), reread_head(2), epb])
    block, local, ticks = rewrite.enhanced_packet(by_type(raws, EPB), [5, 0])
    assert (local, ticks) == (1, 99)
    assert block == epb[:8] + struct.pack("<I", 0) + epb[12:]


def test_a_commented_packet_adds_its_comments_after_its_own_and_keeps_its_fields() -> None:
    epb = encode_enhanced_packet(interface_id=2, timestamp=7 << 32 | 5, data=b"abcde",
                                 original_length=9, comment="first", flags=1)
    (out,) = reread(rewrite.commented_packet(epb, ["gap", "notice"]))
    assert out == EnhancedPacket(interface_id=2, timestamp=7 << 32 | 5, captured_length=5,
                                 original_length=9, data=b"abcde", flags=1,
                                 comments=("first; gap; notice",))
    plain = encode_enhanced_packet(interface_id=0, timestamp=1, data=b"x")
    assert rewrite.commented_packet(plain, ["only"]) == encode_enhanced_packet(
        interface_id=0, timestamp=1, data=b"x", comment="only")


def reread_head(interfaces: int) -> bytes:
    return b"".join(
        encode_interface_description(link_type=1, snaplen=0) for _ in range(interfaces)
    )


def test_statistics_get_the_output_interface_and_swapped_counters() -> None:
    raws = raw_all([big_endian_section()])
    new, block = rewrite.interface_statistics(by_type(raws, ISB), [1])
    assert new == 1
    (out,) = reread(block)
    assert isinstance(out, InterfaceStatistics)
    assert (out.interface_id, out.timestamp, out.start_time) == (1, 9, 1 << 32 | 2)
    assert out.received == 10
    assert (out.kernel_dropped, out.pcapd_dropped) == (5, 4)


def test_an_obsolete_packet_block_becomes_an_epb_with_its_drop_count() -> None:
    body = struct.pack("<HHIIII", 1, 3, 0, 77, 4, 2) + b"abcd" + be_free_options()
    pb = struct.pack("<II", PB, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    raws = raw_all([encode_section_header(), reread_head(2), pb])
    block, local, ticks = rewrite.packet_block(by_type(raws, PB), [4, 6])
    assert (local, ticks) == (1, 77)
    (out,) = reread(block, interfaces=7)
    assert isinstance(out, EnhancedPacket)
    # An original length below the captured one is the file's to say: kept, not refused.
    assert (out.interface_id, out.data, out.original_length) == (6, b"abcd", 2)
    assert struct.pack("<HHQ", o.EPB_DROPCOUNT, 8, 3) in block
    assert out.comments == ("pb",)


def be_free_options() -> bytes:
    """Little-endian options of a Packet Block: a comment."""
    return struct.pack("<HH", o.OPT_COMMENT, 2) + b"pb\0\0" + struct.pack("<HH", 0, 0)


def test_a_simple_packet_becomes_an_epb_of_the_given_interface_and_time() -> None:
    decoder = PcapngDecoder()
    decoder.receive_data(big_endian_section())
    raw = None
    while (raw := decoder.next_raw()) is not None and raw.block_type != SPB:
        pass
    assert raw is not None
    block = rewrite.simple_packet(raw, decoder.interfaces, 2, 12345)
    (out,) = reread(block)
    assert isinstance(out, EnhancedPacket)
    assert (out.interface_id, out.timestamp, out.data, out.original_length) == (
        2, 12345, b"abcdefgh", 200,
    )  # fmt: skip


def test_copied_blocks_as_read_or_swapped_and_the_rest_not_copied() -> None:
    raws = raw_all([big_endian_section()])
    nrb = rewrite.copied_block(by_type(raws, NRB))
    assert nrb == encode_name_resolution([("10.0.0.1", ["a"])])
    custom = rewrite.copied_block(by_type(raws, CUSTOM_COPYABLE))
    assert custom is not None
    (out,) = reread(custom)
    assert isinstance(out, UnknownBlock) and out.block_type == CUSTOM_COPYABLE
    assert custom[8:12] == b"body"[::-1] and custom[12:-4] == b""  # the enterprise number swapped
    dsb = be_block(DSB, struct.pack(">II", 0x544C534B, 4) + b"keys")
    big_dsb = RawBlock(DSB, dsb, 0, True)
    assert rewrite.copied_block(big_dsb) is None
    little = encode_name_resolution([("10.0.0.2", ["b"])])
    assert rewrite.copied_block(RawBlock(NRB, little, 0, False)) == little
    (again,) = reread(little)
    assert isinstance(again, NameResolution)
    assert rewrite.copied_block(RawBlock(0x40000BAD, little, 0, False)) is None
