"""Encoders: exact bytes computed by hand from draft-ietf-opsawg-pcapng, and refusals."""

from __future__ import annotations

import pytest

from pcapd.pcapng import (
    encode_enhanced_packet,
    encode_interface_description,
    encode_interface_statistics,
    encode_name_resolution,
    encode_section_header,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("\n", ""))


def test_epb_without_options_exact_bytes() -> None:
    got = encode_enhanced_packet(
        interface_id=1, timestamp=(1 << 32) | 2, data=b"\1\2\3\4\5", original_length=60
    )
    assert got == h(
        "06000000 28000000 01000000"  # type, total 40, interface 1
        " 01000000 02000000"  # timestamp high, low
        " 05000000 3c000000"  # captured 5, original 60
        " 0102030405 000000"  # data padded to 8
        " 28000000"
    )


def test_epb_original_length_defaults_to_captured() -> None:
    got = encode_enhanced_packet(interface_id=0, timestamp=7, data=b"abcd")
    assert got == h(
        "06000000 24000000 00000000 00000000 07000000 04000000 04000000 61626364 24000000"
    )


def test_epb_with_comment_and_flags_exact_bytes() -> None:
    got = encode_enhanced_packet(
        interface_id=0, timestamp=3, data=b"\1\2\3\4\5", comment="abc", flags=1
    )
    assert got == h(
        "06000000 3c000000 00000000 00000000 03000000 05000000 05000000"
        " 0102030405 000000"
        " 0100 0300 616263 00"  # opt_comment, 3 bytes, padded by one
        " 0200 0400 01000000"  # epb_flags
        " 0000 0000"  # opt_endofopt
        " 3c000000"
    )


def test_shb_without_options_has_no_end_of_options() -> None:
    assert encode_section_header() == h(
        "0a0d0d0a 1c000000 4d3c2b1a 0100 0000 ffffffffffffffff 1c000000"
    )


def test_idb_exact_bytes() -> None:
    got = encode_interface_description(link_type=1, snaplen=64, name="eth0", tsresol=9)
    assert got == h(
        "01000000 28000000 0100 0000 40000000"
        " 0200 0400 65746830"  # if_name
        " 0900 0100 09000000"  # if_tsresol 9, padded
        " 0000 0000 28000000"
    )


def test_idb_filter_has_type_byte() -> None:
    got = encode_interface_description(link_type=1, snaplen=0, filter="udp", tsresol=6)
    assert h("0b00 0400 00756470") in got


def test_isb_exact_bytes_and_pcapd_dropped_comment() -> None:
    got = encode_interface_statistics(
        interface_id=0, timestamp=(1 << 32) | 2, start_time=(10 << 32) | 11, received=5,
        pcapd_dropped=3,
    )  # fmt: skip
    assert got == h(
        "05000000 48000000 00000000 01000000 02000000"
        " 0200 0800 0a000000 0b000000"  # isb_starttime: high word, then low word
        " 0400 0800 0500000000000000"  # isb_ifrecv
        " 0100 1000" + b"pcapd-dropped: 3".hex() + " 0000 0000 48000000"
    )


def test_isb_option_codes() -> None:
    got = encode_interface_statistics(
        interface_id=2, timestamp=0, received=1, interface_dropped=2, filter_accepted=3,
        kernel_dropped=4, delivered=5,
    )  # fmt: skip
    options = got[20:-4]
    for code, value in ((4, 1), (5, 2), (6, 3), (7, 4), (8, 5)):
        assert code.to_bytes(2, "little") + h("0800") + value.to_bytes(8, "little") in options


def test_nrb_exact_bytes() -> None:
    got = encode_name_resolution([("10.0.0.1", ["a"]), ("::1", ["lo", "x"])])
    assert got == h(
        "04000000 38000000"
        " 0100 0600 0a000001 6100 0000"  # IPv4 record, "a\0", padded
        " 0200 1500 00000000000000000000000000000001 6c6f00 7800 000000"  # IPv6, "lo\0x\0"
        " 0000 0000 38000000"
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_section_header(comment="x" * 65536),
        lambda: encode_interface_description(link_type=65536, snaplen=0),
        lambda: encode_interface_description(link_type=1, snaplen=-1),
        lambda: encode_interface_description(link_type=1, snaplen=2**32),
        lambda: encode_interface_description(link_type=1, snaplen=0, tsresol=128),
        lambda: encode_interface_description(link_type=1, snaplen=0, name="é" * 40000),
        lambda: encode_enhanced_packet(interface_id=2**32, timestamp=0, data=b""),
        lambda: encode_enhanced_packet(interface_id=-1, timestamp=0, data=b""),
        lambda: encode_enhanced_packet(interface_id=0, timestamp=2**64, data=b""),
        lambda: encode_enhanced_packet(interface_id=0, timestamp=-1, data=b""),
        lambda: encode_enhanced_packet(interface_id=0, timestamp=0, data=b"ab", original_length=1),
        lambda: encode_enhanced_packet(
            interface_id=0, timestamp=0, data=b"", original_length=2**32
        ),
        lambda: encode_enhanced_packet(interface_id=0, timestamp=0, data=b"", flags=2**32),
        lambda: encode_enhanced_packet(interface_id=0, timestamp=2**64, data=b"", comment="c"),
        lambda: encode_interface_statistics(interface_id=0, timestamp=0, received=2**64),
        lambda: encode_interface_statistics(interface_id=0, timestamp=0, pcapd_dropped=-1),
        lambda: encode_interface_statistics(interface_id=0, timestamp=0, end_time=2**64),
        lambda: encode_interface_statistics(interface_id=2**32, timestamp=0),
        lambda: encode_name_resolution([("not-an-address", ["a"])]),
        lambda: encode_name_resolution([("10.0.0.1", [])]),
        lambda: encode_name_resolution([("10.0.0.1", ["a\0b"])]),
        lambda: encode_name_resolution([("10.0.0.1", "name")]),
        lambda: encode_name_resolution([("10.0.0.1", ["n" * 65532])]),
    ],
)
def test_refuses_values_that_do_not_fit(call: object) -> None:
    assert callable(call)
    with pytest.raises(ValueError):
        call()
