"""Notices as packet comments, as pure code: whole blocks in, the first packet commented."""

from __future__ import annotations

from pcapd.client.notes import Notes, with_comments
from pcapd.pcapng import (
    EnhancedPacket,
    encode_enhanced_packet,
    encode_interface_description,
    encode_interface_statistics,
    encode_section_header,
    parse,
)
from pcapd.pcapng.reader import PcapngDecoder
from pcapd.proto import Notice


def packets(payload: bytes) -> list[EnhancedPacket]:
    decoder = PcapngDecoder()
    idb = encode_interface_description(link_type=1, snaplen=65535)
    decoder.receive_data(encode_section_header() + idb + idb + payload)
    found = []
    while (raw := decoder.next_raw()) is not None:
        block = parse(raw)
        if isinstance(block, EnhancedPacket):
            found.append(block)
    return found


EPB1 = encode_enhanced_packet(interface_id=1, timestamp=10, data=b"one", comment="resumed")
EPB2 = encode_enhanced_packet(interface_id=0, timestamp=11, data=b"two", original_length=9)
ISB = encode_interface_statistics(interface_id=0, timestamp=12)


def test_the_first_packet_carries_the_comments_and_nothing_else_changes() -> None:
    payload = ISB + EPB1 + EPB2
    out = with_comments(payload, ["pcapd CONGESTED router/0: dropped 3"])
    assert out is not None and out.startswith(ISB) and out.endswith(EPB2)
    first, second = packets(out)
    assert first.comments == ("resumed; pcapd CONGESTED router/0: dropped 3",)
    assert (first.interface_id, first.timestamp, first.data) == (1, 10, b"one")
    assert (second.data, second.original_length, second.comments) == (b"two", 9, ())


def test_notices_wait_for_a_packet() -> None:
    notes = Notes()
    notes.add(Notice(code="INSTANCE_UNAVAILABLE", text="my-app/1: cannot connect to its agent",
                     origin="my-app/1"))
    notes.add(Notice(code="PERMISSION_DENIED", text="not a note"))
    assert notes.annotate(ISB) == ISB  # no packet: still waiting
    [packet] = packets(notes.annotate(EPB2))
    assert packet.comments == ("pcapd INSTANCE_UNAVAILABLE my-app/1: cannot connect to its agent",)
    assert notes.annotate(EPB2) == EPB2  # said once
    assert with_comments(b"\x06\x00\x00\x00\x0d\x00\x00\x00", ["x"]) is None  # not whole
