"""From a framed block to its typed record: the fixed fields and options of every type, the
encoder's blocks read back whole, and every length checked against the block, each fault
named at its offset in the stream."""

from __future__ import annotations

import struct

import pytest

from pcapd.errors import PcapngFormatError
from pcapd.pcapng import (
    EPB,
    IDB,
    ISB,
    NRB,
    PB,
    SHB,
    SPB,
    EnhancedPacket,
    InterfaceDescription,
    InterfaceStatistics,
    NameResolution,
    RawBlock,
    SectionHeader,
    SimplePacket,
    UnknownBlock,
    encode_enhanced_packet,
    encode_interface_description,
    encode_interface_statistics,
    encode_name_resolution,
    encode_section_header,
    parse,
)
from pcapd.pcapng.blocks import DSB
from tests.pcapng.pcapng_samples import (
    IDB_FIXED,
    IDB_LE,
    SHB_LE,
    be_block,
    be_options,
    decode_all,
    le_block,
    le_epb,
)

AT = 4096
"""The stream offset the blocks below are read at: errors must count from it."""


def raw(block: bytes, big: bool = False) -> RawBlock:
    """``block`` framed as the reader frames it, at stream offset :data:`AT`."""
    (block_type,) = struct.unpack_from(">I" if big else "<I", block)
    return RawBlock(block_type, block, AT, big)


def refusal(block: RawBlock) -> PcapngFormatError:
    with pytest.raises(PcapngFormatError) as info:
        parse(block)
    return info.value


# -- what the encoder writes reads back ----------------------------------------------------------


def test_a_section_header_reads_back_with_its_strings_and_comment() -> None:
    block = encode_section_header(user_application="pcapd 1.0", hardware="x86_64",
                                  os="Linux 6.1", comment="capture of router/0")
    assert parse(raw(block)) == SectionHeader(False, 1, 0, -1, "pcapd 1.0", "x86_64",
                                              "Linux 6.1", ("capture of router/0",))


def test_an_interface_reads_back_with_every_option() -> None:
    block = encode_interface_description(link_type=1, snaplen=262144, name="a:eth0",
                                         description="instance a", tsresol=9, filter="udp port 53",
                                         os="Linux", comment="c")
    parsed = parse(raw(block))
    assert parsed == InterfaceDescription(1, 262144, "a:eth0", "instance a", 10**9,
                                          "udp port 53", "Linux", ("c",))
    assert isinstance(parsed, InterfaceDescription) and parsed.raw == block


@pytest.mark.parametrize("data", [b"", b"a", b"ab", b"abc", b"abcd", bytes(range(256)) * 6])
def test_a_packet_reads_back_with_and_without_options(data: bytes) -> None:
    plain = encode_enhanced_packet(interface_id=3, timestamp=1 << 40 | 7, data=data,
                                   original_length=9000)
    assert parse(raw(plain)) == EnhancedPacket(3, 1 << 40 | 7, len(data), 9000, data)
    commented = encode_enhanced_packet(interface_id=3, timestamp=1 << 40 | 7, data=data,
                                       original_length=9000, comment="late", flags=0x1)
    assert parse(raw(commented)) == EnhancedPacket(3, 1 << 40 | 7, len(data), 9000, data,
                                                   flags=1, comments=("late",))


def test_statistics_read_back_each_counter_by_its_name() -> None:
    block = encode_interface_statistics(
        interface_id=1, timestamp=99, start_time=10, end_time=2**64 - 1, received=1,
        kernel_dropped=2, interface_dropped=3, delivered=4, filter_accepted=5, pcapd_dropped=6,
        comment="agent restarted")
    assert parse(raw(block)) == InterfaceStatistics(
        1, 99, start_time=10, end_time=2**64 - 1, received=1, kernel_dropped=2,
        interface_dropped=3, filter_accepted=5, delivered=4, pcapd_dropped=6,
        comments=("agent restarted",))


def test_name_records_read_back_in_order_with_all_their_names() -> None:
    block = encode_name_resolution([("10.0.0.1", ["a.example", "b.example"]),
                                    ("fd00::1", ["v6.example"])])
    assert parse(raw(block)) == NameResolution(
        (("10.0.0.1", ("a.example", "b.example")), ("fd00::1", ("v6.example",))))


# -- fields, options and what is skipped -----------------------------------------------------------


def test_epb_flags_option() -> None:
    (*_, epb) = decode_all([SHB_LE + IDB_LE + le_epb(options=b"\x02\0\x04\0\1\0\0\0")])
    assert isinstance(epb, EnhancedPacket)
    assert epb.flags == 1


def test_options_without_end_of_options_unknown_and_lenient_strings() -> None:
    options = (
        b"\x02\0\x05\0eth0\0\0\0\0"  # NUL-terminated, as some writers do
        + b"\x03\0\x02\0\xff\xfe\0\0"  # not UTF-8
        + b"\x63\0\x01\0\x01\0\0\0"  # unknown code
        + b"\xad\x0b\x04\0abcd"  # custom option 2989
        + b"\x0b\0\x03\0\x01\x02\x03\0"  # BPF byte code filter: not a string
    )
    (_, idb) = decode_all([SHB_LE + le_block(IDB, IDB_FIXED + options)])
    assert idb == InterfaceDescription(1, 0, "eth0", "\ufffd\ufffd", filter=None)


@pytest.mark.parametrize(
    "text", ["pcapd-dropped: x", "pcapd-dropped: " + "9" * 21, f"pcapd-dropped: {2**64}", "a"]
)
def test_other_isb_comments_stay_comments(text: str) -> None:
    isb = encode_interface_statistics(interface_id=0, timestamp=0, comment=text, pcapd_dropped=1)
    (*_, block) = decode_all([SHB_LE + IDB_LE + isb])
    assert block == InterfaceStatistics(0, 0, pcapd_dropped=1, comments=(text,))


def test_simple_packet_is_cut_to_interface_zero_snaplen() -> None:
    idb = encode_interface_description(link_type=1, snaplen=5)
    spb = le_block(SPB, struct.pack("<I", 7) + b"abcdefg\0")
    (*_, block) = decode_all([SHB_LE + idb + spb])
    assert block == SimplePacket(7, b"abcde")


def test_a_simple_packet_holds_at_most_its_original_length_and_what_the_block_holds() -> None:
    padded = raw(le_block(SPB, struct.pack("<I", 2) + b"ab\0\0"))
    assert parse(padded) == SimplePacket(2, b"ab")  # not the padding
    cut = raw(le_block(SPB, struct.pack("<I", 1500) + b"abcdefgh"))
    assert parse(cut) == SimplePacket(1500, b"abcdefgh")
    assert parse(cut, [InterfaceDescription(1, 3), InterfaceDescription(1, 0)]) == \
        SimplePacket(1500, b"abc")  # interface 0's snaplen, the only one an SPB can have


def test_name_records_other_than_ipv4_and_ipv6_and_what_follows_the_end_are_skipped() -> None:
    records = (struct.pack(">HH", 3, 6) + bytes(6) + b"\0\0"  # an EUI-48 record
               + struct.pack(">HH", 2, 18) + bytes(15) + b"\1" + b"h\0" + b"\0\0"
               + struct.pack(">HH", 0, 0)
               + be_options((1, b"an NRB comment")))
    assert parse(raw(be_block(NRB, records), big=True)) == NameResolution((("::1", ("h",)),))


@pytest.mark.parametrize("block_type", [DSB, 0x0BAD, 0x40000BAD, 0x7FFFFFFF])
def test_a_block_of_another_type_keeps_its_body_unread(block_type: int) -> None:
    block = le_block(block_type, b"secrets or custom data\0\0")
    parsed = parse(raw(block))
    assert parsed == UnknownBlock(block_type, b"secrets or custom data\0\0")
    assert parsed.raw == block


# -- faults, each at its offset --------------------------------------------------------------------


@pytest.mark.parametrize(("block_type", "least"),
                         [(SHB, 28), (IDB, 20), (PB, 32), (SPB, 16), (NRB, 12), (ISB, 24),
                          (EPB, 32), (0x0BAD, 12)])
def test_a_block_too_short_for_its_fixed_fields_is_refused(block_type: int, least: int) -> None:
    short = le_block(block_type, bytes(least - 12))[:-4]  # one word short
    err = refusal(raw(short))
    assert err.offset == AT
    assert f"block type {block_type:#x} of {least - 4} bytes is too short for its type" in \
        str(err)
    parse(raw(le_block(block_type, bytes(least - 12))))  # one word more is enough


def test_a_captured_length_past_the_block_is_refused_at_the_field() -> None:
    err = refusal(raw(le_epb(caplen=5, room=4)))
    assert err.offset == AT + 20
    assert "captured length 5 overruns its block" in str(err)


def test_an_option_past_the_block_is_refused_at_the_option() -> None:
    err = refusal(raw(le_epb(options=b"\x01\0\x05\0abcd")))
    assert err.offset == AT + 32
    assert "option 1 of length 5 overruns its block" in str(err)


@pytest.mark.parametrize(
    ("block", "words"),
    [
        (le_block(IDB, IDB_FIXED + b"\x09\0\x02\0\x06\x06\0\0"),
         "if_tsresol must be 1 byte, not 2"),
        (le_epb(options=b"\x02\0\x08\0" + bytes(8)), "option 2 must be 4 bytes, not 8"),
        (le_block(ISB, bytes(12) + b"\x04\0\x04\0\1\0\0\0"), "option 4 must be 8 bytes, not 4"),
        (le_block(ISB, bytes(12) + b"\x02\0\x04\0\1\0\0\0"), "option 2 must be 8 bytes, not 4"),
    ],
)
def test_an_option_of_the_wrong_size_is_refused_at_its_block(block: bytes, words: str) -> None:
    err = refusal(raw(block))
    assert err.offset == AT
    assert words in str(err)


@pytest.mark.parametrize(
    ("records", "at", "words"),
    [
        (struct.pack("<HH", 1, 6) + b"\x0a\0\0\1a\0\0\0" + b"\1\0", 20,
         "truncated name resolution record"),
        (struct.pack("<HH", 1, 9) + b"\x0a\0\0\1abcd", 8, "name resolution record overruns"),
        (struct.pack("<HH", 1, 4) + b"\x0a\0\0\1", 8, "name resolution record without a name"),
        (struct.pack("<HH", 2, 16) + bytes(16), 8, "name resolution record without a name"),
    ],
)
def test_a_bad_name_record_is_refused_at_the_record(records: bytes, at: int, words: str) -> None:
    err = refusal(raw(le_block(NRB, records)))
    assert err.offset == AT + at
    assert words in str(err)
