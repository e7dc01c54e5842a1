"""Turn a :class:`RawBlock` into a typed block, checking every length against the block.

The reader has already checked the framing (type, both lengths, byte order); this module reads
the fixed fields and the options. Unknown options, custom ones included, are skipped. Every
fault raises :class:`PcapngFormatError` naming the stream offset of the block or option at fault.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Callable, Sequence

from pcapd.errors import PcapngFormatError
from pcapd.pcapng import options as o
from pcapd.pcapng.blocks import (
    EPB,
    IDB,
    ISB,
    NRB,
    PB,
    PCAPD_DROPPED_PREFIX,
    SHB,
    SPB,
    Block,
    EnhancedPacket,
    InterfaceDescription,
    InterfaceStatistics,
    NameResolution,
    RawBlock,
    SectionHeader,
    SimplePacket,
    UnknownBlock,
)

_STRUCTS = {
    big: {
        "shb": struct.Struct(("!" if big else "<") + "IHHq"),
        "idb": struct.Struct(("!" if big else "<") + "HHI"),
        "epb": struct.Struct(("!" if big else "<") + "5I"),
        "isb": struct.Struct(("!" if big else "<") + "3I"),
        "u32": struct.Struct(("!" if big else "<") + "I"),
        "nrb": struct.Struct(("!" if big else "<") + "HH"),
    }
    for big in (False, True)
}
_PCAPD_DROPPED = re.compile(re.escape(PCAPD_DROPPED_PREFIX) + r"([0-9]{1,20})")

_NRB_ADDRESS_SIZE = {1: 4, 2: 16}  # record type -> address bytes (IPv4, IPv6)

# Smallest total length of each block type: 12 bytes of framing plus its fixed fields.
MIN_LENGTH = {SHB: 28, IDB: 20, PB: 32, SPB: 16, NRB: 12, ISB: 24, EPB: 32}


def _too_short(raw: RawBlock) -> PcapngFormatError:
    return PcapngFormatError(
        f"block type {raw.block_type:#x} of {len(raw.data)} bytes is too short for its type",
        raw.offset,
    )


def _tsresol(value: bytes, where: int) -> int:
    if len(value) != 1:
        raise PcapngFormatError(f"if_tsresol must be 1 byte, not {len(value)}", where)
    exponent = value[0] & 0x7F
    return 1 << exponent if value[0] & 0x80 else int(10**exponent)


def parse_section_header(raw: RawBlock) -> SectionHeader:
    data, big = raw.data, raw.big_endian
    _, major, minor, section_length = _STRUCTS[big]["shb"].unpack_from(data, 8)
    strings: dict[int, str] = {}
    comments: list[str] = []
    for code, value in o.iter_options(data, 24, len(data) - 4, big, raw.offset):
        if code == o.OPT_COMMENT:
            comments.append(o.decode_string(value))
        elif code in (o.SHB_HARDWARE, o.SHB_OS, o.SHB_USERAPPL):
            strings[code] = o.decode_string(value)
    return SectionHeader(
        big, major, minor, section_length,
        user_application=strings.get(o.SHB_USERAPPL), hardware=strings.get(o.SHB_HARDWARE),
        os=strings.get(o.SHB_OS), comments=tuple(comments), raw=data,
    )  # fmt: skip


def parse_interface_description(raw: RawBlock) -> InterfaceDescription:
    data, big = raw.data, raw.big_endian
    link_type, _, snaplen = _STRUCTS[big]["idb"].unpack_from(data, 8)
    strings: dict[int, str] = {}
    comments: list[str] = []
    tsresol = 10**6
    filter_: str | None = None
    for code, value in o.iter_options(data, 16, len(data) - 4, big, raw.offset):
        if code == o.OPT_COMMENT:
            comments.append(o.decode_string(value))
        elif code in (o.IF_NAME, o.IF_DESCRIPTION, o.IF_OS):
            strings[code] = o.decode_string(value)
        elif code == o.IF_TSRESOL:
            tsresol = _tsresol(value, raw.offset)
        elif code == o.IF_FILTER and value[:1] == b"\0":
            filter_ = o.decode_string(value[1:])
    return InterfaceDescription(
        link_type, snaplen, name=strings.get(o.IF_NAME),
        description=strings.get(o.IF_DESCRIPTION), tsresol=tsresol, filter=filter_,
        os=strings.get(o.IF_OS), comments=tuple(comments), raw=data,
    )  # fmt: skip


def parse_enhanced_packet(raw: RawBlock) -> EnhancedPacket:
    data, big = raw.data, raw.big_endian
    interface_id, high, low, caplen, orig = _STRUCTS[big]["epb"].unpack_from(data, 8)
    end = 28 + caplen
    if end > len(data) - 4:
        raise PcapngFormatError(f"captured length {caplen} overruns its block", raw.offset + 20)
    options_start = end + (-caplen & 3)
    if options_start >= len(data) - 4:  # most packets have no options: skip the machinery
        return EnhancedPacket(interface_id, high << 32 | low, caplen, orig, data[28:end], raw=data)
    flags: int | None = None
    comments: list[str] = []
    for code, value in o.iter_options(data, options_start, len(data) - 4, big, raw.offset):
        if code == o.OPT_COMMENT:
            comments.append(o.decode_string(value))
        elif code == o.EPB_FLAGS:
            flags = o.decode_uint(value, 4, big, code, raw.offset)
    return EnhancedPacket(
        interface_id, high << 32 | low, caplen, orig, data[28:end],
        flags=flags, comments=tuple(comments), raw=data,
    )  # fmt: skip


def parse_simple_packet(raw: RawBlock, snaplen: int = 0) -> SimplePacket:
    """The packet is ``min(original length, room, snaplen of interface 0)`` bytes long."""
    data = raw.data
    (orig,) = _STRUCTS[raw.big_endian]["u32"].unpack_from(data, 8)
    caplen = min(orig, len(data) - 16)
    if snaplen:
        caplen = min(caplen, snaplen)
    return SimplePacket(orig, data[12 : 12 + caplen], raw=data)


_ISB_COUNTERS = {
    o.ISB_IFRECV: "received",
    o.ISB_IFDROP: "interface_dropped",
    o.ISB_FILTERACCEPT: "filter_accepted",
    o.ISB_OSDROP: "kernel_dropped",
    o.ISB_USRDELIV: "delivered",
}


def parse_interface_statistics(raw: RawBlock) -> InterfaceStatistics:
    data, big = raw.data, raw.big_endian
    interface_id, high, low = _STRUCTS[big]["isb"].unpack_from(data, 8)
    values: dict[str, int] = {}
    comments: list[str] = []
    pcapd_dropped: int | None = None
    for code, value in o.iter_options(data, 20, len(data) - 4, big, raw.offset):
        if code == o.OPT_COMMENT:
            text = o.decode_string(value)
            match = _PCAPD_DROPPED.fullmatch(text)
            if match and int(match[1]) < 1 << 64:
                pcapd_dropped = int(match[1])
            else:
                comments.append(text)
        elif code == o.ISB_STARTTIME:
            values["start_time"] = o.decode_timestamp(value, big, code, raw.offset)
        elif code == o.ISB_ENDTIME:
            values["end_time"] = o.decode_timestamp(value, big, code, raw.offset)
        elif code in _ISB_COUNTERS:
            values[_ISB_COUNTERS[code]] = o.decode_uint(value, 8, big, code, raw.offset)
    return InterfaceStatistics(
        interface_id, high << 32 | low, **values, pcapd_dropped=pcapd_dropped,
        comments=tuple(comments), raw=data,
    )  # fmt: skip


def parse_name_resolution(raw: RawBlock) -> NameResolution:
    """IPv4 and IPv6 records; EUI records, other types and the NRB's options are skipped."""
    data = raw.data
    head = _STRUCTS[raw.big_endian]["nrb"]
    end = len(data) - 4
    pos = 8
    records: list[tuple[str, tuple[str, ...]]] = []
    while pos < end:
        if end - pos < 4:
            raise PcapngFormatError("truncated name resolution record", raw.offset + pos)
        record_type, length = head.unpack_from(data, pos)
        if record_type == 0:
            break
        value_end = pos + 4 + length
        if value_end + (-length & 3) > end:
            raise PcapngFormatError("name resolution record overruns its block", raw.offset + pos)
        size = _NRB_ADDRESS_SIZE.get(record_type)
        if size is not None:
            if length <= size:
                raise PcapngFormatError("name resolution record without a name", raw.offset + pos)
            packed = data[pos + 4 : pos + 4 + size]
            address = ipaddress.IPv4Address(packed) if size == 4 else ipaddress.IPv6Address(packed)
            names = data[pos + 4 + size : value_end].split(b"\0")
            records.append((str(address), tuple(o.decode_string(name) for name in names if name)))
        pos = value_end + (-length & 3)
    return NameResolution(tuple(records), raw=data)


def parse_unknown(raw: RawBlock) -> UnknownBlock:
    return UnknownBlock(raw.block_type, raw.data[8:-4], raw=raw.data)


_PARSERS: dict[int, Callable[[RawBlock], Block]] = {
    SHB: parse_section_header,
    IDB: parse_interface_description,
    EPB: parse_enhanced_packet,
    ISB: parse_interface_statistics,
    NRB: parse_name_resolution,
}


def parse(raw: RawBlock, interfaces: Sequence[InterfaceDescription] = ()) -> Block:
    """Decode ``raw`` into its typed block (:class:`UnknownBlock` for other types).

    ``interfaces`` (the section's, in order) is only needed to cut a Simple Packet Block's
    data to interface 0's snaplen.
    """
    if len(raw.data) < MIN_LENGTH.get(raw.block_type, 12):
        raise _too_short(raw)
    if raw.block_type == SPB:
        return parse_simple_packet(raw, interfaces[0].snaplen if interfaces else 0)
    return _PARSERS.get(raw.block_type, parse_unknown)(raw)
