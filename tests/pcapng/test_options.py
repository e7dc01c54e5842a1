"""pcapng options: exact bytes with 32-bit padding, a walk that refuses what overruns its block
(naming the offset), and values checked on the way in and decoded in either byte order."""

from __future__ import annotations

import struct

import pytest

from pcapd.errors import PcapngFormatError
from pcapd.pcapng import options as o


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(
    ("comment", "option"),
    [
        ("", "0100 0000"),
        ("a", "0100 0100 61000000"),
        ("ab", "0100 0200 61620000"),
        ("abc", "0100 0300 61626300"),
        ("abcd", "0100 0400 61626364"),
        ("abcde", "0100 0500 6162636465000000"),
        ("é", "0100 0200 c3a90000"),  # UTF-8, no terminating NUL
    ],
)
def test_option_padding(comment: str, option: str) -> None:
    encoded = o.encode_options([(o.OPT_COMMENT, o.string_value(comment))])
    assert encoded == h(option) + h("0000 0000")  # then opt_endofopt


def test_no_options_is_no_bytes_not_an_end_of_options() -> None:
    assert o.encode_options([]) == b""


def test_an_option_of_exactly_65535_bytes_is_the_longest() -> None:
    assert len(o.encode_options([(o.OPT_COMMENT, b"x" * 65535)])) == 4 + 65536 + 4
    with pytest.raises(ValueError, match=r"^option 1 is 65536 bytes long; the limit is 65535$"):
        o.encode_options([(o.OPT_COMMENT, b"x" * 65536)])


PAIRS = [(o.OPT_COMMENT, b""), (o.IF_NAME, b"eth0"), (o.IF_TSRESOL, b"\x09"),
         (2989, b"\0\0\0\1custom"), (o.OPT_COMMENT, b"abcde")]


def test_the_walk_gives_back_what_was_encoded() -> None:
    data = b"head" + o.encode_options(PAIRS)
    assert list(o.iter_options(data, 4, len(data), False, 0)) == PAIRS


def test_the_walk_reads_big_endian_lists() -> None:
    data = b"".join(struct.pack(">HH", code, len(value)) + value + o.PAD[len(value) & 3]
                    for code, value in PAIRS)
    assert list(o.iter_options(data, 0, len(data), True, 0)) == PAIRS


def test_the_walk_ends_at_end_of_options_or_at_the_end_of_its_range() -> None:
    listed = o.encode_options([(o.IF_NAME, b"eth0")])
    after = b"\x03\0\x01\0x\0\0\0"  # past opt_endofopt: never read
    assert list(o.iter_options(listed + after, 0, len(listed + after), False, 0)) == [
        (o.IF_NAME, b"eth0")]
    unended = listed[:-4]
    assert list(o.iter_options(unended, 0, len(unended), False, 0)) == [(o.IF_NAME, b"eth0")]
    assert list(o.iter_options(unended, 0, 0, False, 0)) == []


@pytest.mark.parametrize(
    ("data", "message", "at"),
    [
        (b"\x01\0", "truncated option header", 1000 + 8),
        (b"\x01\0\x05\0abcd", "option 1 of length 5 overruns its block", 1000 + 8),
        (b"\x02\0\x03\0ab", "option 2 of length 3 overruns its block", 1000 + 8),  # no padding
    ],
)
def test_an_option_that_overruns_its_block_is_refused_at_its_offset(
        data: bytes, message: str, at: int) -> None:
    block = bytes(8) + data  # the list starts 8 bytes into a block at stream offset 1000
    with pytest.raises(PcapngFormatError) as info:
        list(o.iter_options(block, 8, len(block), False, 1000))
    assert info.value.offset == at
    assert message in str(info.value)


def test_strings_are_read_leniently() -> None:
    assert o.decode_string(b"eth0\0\0") == "eth0"  # some writers NUL-terminate
    assert o.decode_string(b"a\xffb") == "a\ufffdb"  # a bad byte is no reason to refuse a file
    assert o.decode_string("é".encode()) == "é"


@pytest.mark.parametrize("big", [False, True])
def test_numbers_and_timestamps_in_either_byte_order(big: bool) -> None:
    order = ">" if big else "<"
    assert o.decode_uint(struct.pack(order + "I", 0xDEADBEEF), 4, big, o.EPB_FLAGS, 0) == 0xDEADBEEF
    assert o.decode_uint(struct.pack(order + "Q", 2**64 - 1), 8, big, o.ISB_IFRECV, 0) == 2**64 - 1
    # a timestamp is its high 32 bits, then its low 32 bits, each in the section's order
    stored = struct.pack(order + "II", 1, 2)
    assert o.decode_timestamp(stored, big, o.ISB_STARTTIME, 0) == 1 << 32 | 2


def test_values_of_the_wrong_size_are_refused_naming_the_option_and_where() -> None:
    with pytest.raises(PcapngFormatError) as info:
        o.decode_uint(b"\1\0\0\0", 8, False, o.ISB_IFRECV, 512)
    assert info.value.offset == 512
    assert "option 4 must be 8 bytes, not 4" in str(info.value)
    with pytest.raises(PcapngFormatError, match="option 2 must be 8 bytes, not 9"):
        o.decode_timestamp(bytes(9), False, o.ISB_STARTTIME, 0)


def test_encoded_values_read_back() -> None:
    assert o.decode_uint(o.u32_value(7, "epb_flags"), 4, False, 2, 0) == 7
    assert o.decode_uint(o.u64_value(2**64 - 1, "isb_ifrecv"), 8, False, 4, 0) == 2**64 - 1
    ticks = 1_700_000_000_123_456_789
    assert o.decode_timestamp(o.timestamp_value(ticks, "isb_starttime"), False, 2, 0) == ticks
    assert o.timestamp_value(1 << 32 | 2, "t") == h("01000000 02000000")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: o.u32_value(-1, "epb_flags"),
         "epb_flags must be an unsigned 32-bit integer, not -1"),
        (lambda: o.u32_value(2**32, "interface_id"),
         "interface_id must be an unsigned 32-bit integer, not 4294967296"),
        (lambda: o.u64_value(2**64, "isb_ifrecv"),
         "isb_ifrecv must be an unsigned 64-bit integer"),
        (lambda: o.timestamp_value(-1, "timestamp"),
         "timestamp must be an unsigned 64-bit integer"),
    ],
)
def test_a_value_that_does_not_fit_is_refused_by_name(call: object, message: str) -> None:
    assert callable(call)
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value).startswith(message)
