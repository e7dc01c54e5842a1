"""Sans-I/O pcapng (and classic pcap) encoding and incremental decoding.

Pure and synchronous: bytes in, blocks out, no I/O, no clock, no trio. pcapd writes
little-endian pcapng 1.0 (draft-ietf-opsawg-pcapng) and reads either byte order.

- ``encode_*``: one whole block as bytes; :func:`encode_enhanced_packet` is the agent's hot path.
- :class:`PcapngDecoder`: ``receive_data`` / ``next_raw`` / ``next_block``, h11-style.
- :func:`split_packets`, :func:`epb_timestamp`, :func:`with_interface_id`: the api's and the
  merge's hot path over little-endian EPBs, without re-encoding.
- :class:`PcapDecoder` and :func:`sniff_format`: classic libpcap input for ``pcapd merge``.
"""

from pcapd.pcapng.blocks import (
    DEFAULT_TSRESOL,
    EPB,
    IDB,
    ISB,
    LINKTYPE_ETHERNET,
    NRB,
    PB,
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
    ticks_to_ns,
)
from pcapd.pcapng.encode import (
    encode_enhanced_packet,
    encode_interface_description,
    encode_interface_statistics,
    encode_name_resolution,
    encode_section_header,
)
from pcapd.pcapng.legacy import PcapDecoder, PcapHeader, PcapRecord, sniff_format
from pcapd.pcapng.packets import PacketBatch, epb_timestamp, split_packets, with_interface_id
from pcapd.pcapng.parse import parse
from pcapd.pcapng.reader import PcapngDecoder

__all__ = [
    "DEFAULT_TSRESOL",
    "EPB",
    "IDB",
    "ISB",
    "LINKTYPE_ETHERNET",
    "NRB",
    "PB",
    "SHB",
    "SPB",
    "Block",
    "EnhancedPacket",
    "InterfaceDescription",
    "InterfaceStatistics",
    "NameResolution",
    "PacketBatch",
    "PcapDecoder",
    "PcapHeader",
    "PcapRecord",
    "PcapngDecoder",
    "RawBlock",
    "SectionHeader",
    "SimplePacket",
    "UnknownBlock",
    "encode_enhanced_packet",
    "encode_interface_description",
    "encode_interface_statistics",
    "encode_name_resolution",
    "encode_section_header",
    "epb_timestamp",
    "parse",
    "sniff_format",
    "split_packets",
    "ticks_to_ns",
    "with_interface_id",
]
