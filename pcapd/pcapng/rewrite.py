"""Blocks read from a file, rewritten as the little-endian blocks of one output section.

Pure: ``pcapd merge`` (:mod:`pcapd.merge.files`) reads many files' sections, of either byte
order, and writes one little-endian section holding all their interfaces. Each function here
takes one framed block (:class:`RawBlock`, checked by the decoder) and the map from its
section's interface ids to the output's, and returns what to write, built by
:mod:`pcapd.pcapng.encode`. The bulk of the packets (runs of little-endian EPBs) never come
here: the decoder rewrites their interface ids in place (``next_packet_columns``).

Big-endian options are swapped where their layout is known (the ``*_LAYOUTS`` below) and
dropped where not: custom options, and an ``if_filter`` of BPF bytecode, whose byte order is the
section's. A little-endian block keeps every option as it is.

:func:`commented_packet` is the one rewrite outside the merge: a packet given a comment (the
api's note of a gap, the client's notices), for both of which it is written.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pcapd.pcapng import options as o
from pcapd.pcapng.blocks import (
    CUSTOM_COPYABLE,
    DSB,
    EPB,
    NRB,
    EnhancedPacket,
    InterfaceDescription,
    NameResolution,
    RawBlock,
    SimplePacket,
)
from pcapd.pcapng.encode import (
    encode_block,
    encode_enhanced_packet,
    encode_interface_fields,
    encode_name_resolution,
    encode_packet_fields,
    encode_statistics_fields,
)
from pcapd.pcapng.packets import epb_timestamp, with_interface_id
from pcapd.pcapng.parse import parse

__all__ = [
    "EPB_LAYOUTS",
    "IDB_LAYOUTS",
    "ISB_LAYOUTS",
    "copied_block",
    "enhanced_packet",
    "interface_statistics",
    "le_options",
    "packet_block",
    "relabeled_interface",
    "simple_packet",
]

Layouts = dict[int, str | None]
"""Options that survive a big-endian block, by code: ``None`` copies the value's bytes (strings
and byte strings), a ``struct`` format swaps a number of that layout."""

IDB_LAYOUTS: Layouts = {
    o.OPT_COMMENT: None, o.IF_DESCRIPTION: None, o.IF_IPV4ADDR: None, o.IF_IPV6ADDR: None,
    o.IF_MACADDR: None, o.IF_EUIADDR: None, o.IF_SPEED: "Q", o.IF_TSRESOL: None, o.IF_TZONE: "I",
    o.IF_FILTER: None, o.IF_OS: None, o.IF_FCSLEN: None, o.IF_TSOFFSET: "q",
    o.IF_HARDWARE: None, o.IF_TXSPEED: "Q", o.IF_RXSPEED: "Q", o.IF_IANA_TZNAME: None,
}  # fmt: skip
EPB_LAYOUTS: Layouts = {
    o.OPT_COMMENT: None, o.EPB_FLAGS: "I", o.EPB_DROPCOUNT: "Q", o.EPB_PACKETID: "Q",
    o.EPB_QUEUE: "I",
}  # fmt: skip
ISB_LAYOUTS: Layouts = {
    o.OPT_COMMENT: None, o.ISB_STARTTIME: "II", o.ISB_ENDTIME: "II", o.ISB_IFRECV: "Q",
    o.ISB_IFDROP: "Q", o.ISB_FILTERACCEPT: "Q", o.ISB_OSDROP: "Q", o.ISB_USRDELIV: "Q",
}  # fmt: skip

_U32 = struct.Struct("<I")
_TSOFFSET = struct.Struct("<q")
_DROPCOUNT = struct.Struct("<Q")
_PB_HEAD = {False: struct.Struct("<HH4I"), True: struct.Struct(">HH4I")}
_ISB_HEAD_BE = struct.Struct(">3I")
_COPIED_AS_IS = (NRB, DSB, CUSTOM_COPYABLE)


def le_options(raw: RawBlock, start: int, known: Layouts) -> list[tuple[int, bytes]]:
    """The options of ``raw`` from byte ``start`` on, as little-endian values.

    A little-endian block keeps every option as it is; a big-endian one only the ``known``
    codes, copied or swapped (see :data:`Layouts`). A malformed list raises
    :class:`~pcapd.errors.PcapngFormatError` at its offset in the stream.
    """
    data = raw.data
    if start >= len(data) - 4:
        return []
    pairs = list(o.iter_options(data, start, len(data) - 4, raw.big_endian, raw.offset))
    if not raw.big_endian:
        return pairs
    kept: list[tuple[int, bytes]] = []
    for code, value in pairs:
        if code not in known:
            continue
        layout = known[code]
        if layout is None:
            kept.append((code, value))
        elif len(value) == struct.calcsize(layout):
            kept.append((code, struct.pack("<" + layout, *struct.unpack(">" + layout, value))))
    return kept


def relabeled_interface(
    raw: RawBlock, idb: InterfaceDescription, name: str, description: str
) -> tuple[bytes, int]:
    """The output IDB of the input IDB ``raw`` (parsed: ``idb``), and its ``if_tsoffset``.

    It is named ``name`` and keeps link type, snaplen and every other option, ``if_tsresol``
    and ``if_tsoffset`` included (so its packets pass through unchanged but for the interface
    id); ``description`` becomes its ``if_description`` where it has none. The offset (seconds,
    0 without the option) is for the caller's ordering, which applies it as Wireshark does.
    """
    tsoffset = 0
    has_description = False
    kept: list[tuple[int, bytes]] = [(o.IF_NAME, o.string_value(name))]
    for code, value in le_options(raw, 16, IDB_LAYOUTS):
        if code == o.IF_NAME or (raw.big_endian and code == o.IF_FILTER and value[:1] != b"\0"):
            continue  # replaced; or BPF bytecode, whose byte order is the section's
        if code == o.IF_TSOFFSET and len(value) == 8:
            tsoffset = _TSOFFSET.unpack(value)[0]
        has_description = has_description or code == o.IF_DESCRIPTION
        kept.append((code, value))
    if not has_description:
        kept.append((o.IF_DESCRIPTION, o.string_value(description)))
    return encode_interface_fields(idb.link_type, idb.snaplen, o.encode_options(kept)), tsoffset


def enhanced_packet(raw: RawBlock, interface_map: Sequence[int]) -> tuple[bytes, int, int]:
    """The EPB ``raw`` as the output's, and its section's interface id and timestamp ticks.

    A little-endian block keeps its bytes but the interface id; a big-endian one keeps its
    comments, flags, drop count, packet id and queue.
    """
    if raw.big_endian:
        packet = parse(raw)
        assert isinstance(packet, EnhancedPacket)
        local, ticks = packet.interface_id, packet.timestamp
        start = 28 + packet.captured_length + (-packet.captured_length & 3)
        options = o.encode_options(le_options(raw, start, EPB_LAYOUTS))
        block = encode_packet_fields(
            interface_map[local], ticks, packet.data, packet.original_length, options
        )
        return block, local, ticks
    local = _U32.unpack_from(raw.data, 8)[0]
    return with_interface_id(raw.data, interface_map[local]), local, epb_timestamp(raw.data)


def commented_packet(block: bytes, comments: Sequence[str]) -> bytes:
    """The little-endian EPB ``block`` with ``comments`` after its own, as one ``opt_comment``
    joined by "; ", re-encoded whole (its flags kept, other options dropped). Rare by design:
    one packet per gap or notice, so the hot path never re-encodes."""
    packet = parse(RawBlock(EPB, block, 0, False))
    assert isinstance(packet, EnhancedPacket)
    return encode_enhanced_packet(interface_id=packet.interface_id, timestamp=packet.timestamp,
                                  data=packet.data, original_length=packet.original_length,
                                  comment="; ".join([*packet.comments, *comments]),
                                  flags=packet.flags)


def packet_block(raw: RawBlock, interface_map: Sequence[int]) -> tuple[bytes, int, int]:
    """The obsolete Packet Block ``raw`` as the EPB it is the ancestor of (as Wireshark reads
    it: the same fields and options, its drop count as ``epb_dropcount``), its section's
    interface id and its timestamp ticks."""
    local, drops, high, low, caplen, original = _PB_HEAD[raw.big_endian].unpack_from(raw.data, 8)
    ticks = high << 32 | low
    options = le_options(raw, 28 + caplen + (-caplen & 3), EPB_LAYOUTS)
    if drops and all(code != o.EPB_DROPCOUNT for code, _ in options):
        options.append((o.EPB_DROPCOUNT, _DROPCOUNT.pack(drops)))
    block = encode_packet_fields(
        interface_map[local], ticks, raw.data[28 : 28 + caplen], original,
        o.encode_options(options),
    )  # fmt: skip
    return block, local, ticks


def simple_packet(
    raw: RawBlock, interfaces: Sequence[InterfaceDescription], interface_id: int, ticks: int
) -> bytes:
    """The Simple Packet Block ``raw`` (of its section's interface 0, whose snaplen bounds its
    data) as an EPB of ``interface_id`` stamped ``ticks``: an SPB has no timestamp of its own."""
    packet = parse(raw, interfaces)
    assert isinstance(packet, SimplePacket)
    return encode_packet_fields(interface_id, ticks, packet.data, packet.original_length)


def interface_statistics(raw: RawBlock, interface_map: Sequence[int]) -> tuple[int, bytes]:
    """The output id of the ISB ``raw``'s interface, and the ISB as the output's."""
    if raw.big_endian:
        local, high, low = _ISB_HEAD_BE.unpack_from(raw.data, 8)
        new = interface_map[local]
        options = o.encode_options(le_options(raw, 20, ISB_LAYOUTS))
        return new, encode_statistics_fields(new, high << 32 | low, options)
    new = interface_map[_U32.unpack_from(raw.data, 8)[0]]
    return new, with_interface_id(raw.data, new)


def copied_block(raw: RawBlock) -> bytes | None:
    """A block the output copies as read: Name Resolution, Decryption Secrets and copyable
    custom blocks; ``None`` for a block not copied (other kinds, big-endian DSBs).

    Big-endian, an NRB keeps its IPv4/IPv6 records (``b""`` where it has none) and a custom
    block its data as it is: only the enterprise number is swapped, since the data's layout is
    the enterprise's.
    """
    kind = raw.block_type
    if kind in _COPIED_AS_IS and not raw.big_endian:
        return raw.data
    if kind == CUSTOM_COPYABLE:
        (pen,) = struct.unpack_from(">I", raw.data, 8)
        return encode_block(CUSTOM_COPYABLE, _U32.pack(pen) + raw.data[12:-4])
    if kind == NRB:
        block = parse(raw)
        assert isinstance(block, NameResolution)
        return encode_name_resolution(block.records) if block.records else b""
    return None
