"""Incremental, sans-I/O reader of classic libpcap files, and format sniffing.

``pcapd merge`` accepts what tcpdump and editcap write: either byte order, microsecond
(magic 0xa1b2c3d4) or nanosecond (0xa1b23c4d) timestamps. Same vocabulary and error discipline
as :class:`~pcapd.pcapng.reader.PcapngDecoder`: ``receive_data`` then ``next_record`` until
``None``; the first item is the :class:`PcapHeader`, then one :class:`PcapRecord` per packet.
After the header, :meth:`PcapDecoder.next_packets` takes every whole record at once, already
encoded as Enhanced Packet Blocks: the fast path of ``pcapd merge``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from pcapd.errors import PcapngFormatError
from pcapd.pcapng.blocks import EPB
from pcapd.pcapng.buffer import InputBuffer
from pcapd.pcapng.packets import PacketBatch

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
_MAGICS = {
    MAGIC_USEC: (False, 10**6),
    MAGIC_NSEC: (False, 10**9),
    0xD4C3B2A1: (True, 10**6),
    0x4D3CB2A1: (True, 10**9),
}
_MAGIC = struct.Struct("<I")
_HEADER = {False: struct.Struct("<4xHH8xII"), True: struct.Struct(">4xHH8xII")}
_RECORD = {False: struct.Struct("<IIII"), True: struct.Struct(">IIII")}
_PCAPNG_START = b"\x0a\x0d\x0d\x0a"
DEFAULT_MAX_RECORD_SIZE = 16 * 1024 * 1024
_EPB_PACKERS: dict[int, struct.Struct] = {}
_EPB_PACKERS_MAX = 4096
"""One precompiled Struct per captured length packs a whole option-less EPB in one call (as
:func:`~pcapd.pcapng.encode.encode_enhanced_packet` does). Capped: lengths are data."""


def _epb_packer(caplen: int) -> struct.Struct:
    packer = _EPB_PACKERS.get(caplen)
    if packer is None:
        packer = struct.Struct(f"<7I{caplen + (-caplen & 3)}sI")
        if len(_EPB_PACKERS) < _EPB_PACKERS_MAX:
            _EPB_PACKERS[caplen] = packer
    return packer


@dataclass(frozen=True, slots=True)
class PcapHeader:
    big_endian: bool
    major: int
    minor: int
    snaplen: int
    link_type: int
    """The low 16 bits of the header's link-type field (the upper bits carry FCS hints)."""
    tsresol: int
    """Ticks per second: 10**6 or 10**9."""


@dataclass(frozen=True, slots=True)
class PcapRecord:
    timestamp: int
    """Ticks of the file's resolution: seconds * tsresol + fraction."""
    captured_length: int
    original_length: int
    data: bytes
    offset: int
    """Byte offset of the record header in the file."""


def sniff_format(first_bytes: bytes) -> Literal["pcapng", "pcap"]:
    """Tell pcapng from classic pcap by the first four bytes, or say it is neither."""
    if len(first_bytes) < 4:
        raise PcapngFormatError("too short to be a pcap or pcapng file", len(first_bytes))
    if first_bytes[:4] == _PCAPNG_START:
        return "pcapng"
    if _MAGIC.unpack_from(first_bytes)[0] in _MAGICS:
        return "pcap"
    raise PcapngFormatError(
        f"neither pcap nor pcapng: starts with {bytes(first_bytes[:4]).hex()}", 0
    )


class PcapDecoder(InputBuffer):
    """Feed bytes with :meth:`receive_data`; take the header, then records, with
    :meth:`next_record`. Malformed input raises :class:`PcapngFormatError` naming the offset.
    """

    def __init__(self, *, max_record_size: int = DEFAULT_MAX_RECORD_SIZE) -> None:
        super().__init__()
        self.max_record_size = max_record_size
        self.header: PcapHeader | None = None
        """The file header, once read."""

    def next_record(self) -> PcapHeader | PcapRecord | None:
        """The header first, then one record per call; ``None``: need more input (or done)."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        start = self._base + pos
        header = self.header
        if header is None:
            if avail >= 4 and _MAGIC.unpack_from(buf, pos)[0] not in _MAGICS:
                raise PcapngFormatError("not a pcap file: unknown magic number", start)
            if avail < 24:
                self._need_more(avail, 24, start, "file header")
                return None
            big, tsresol = _MAGICS[_MAGIC.unpack_from(buf, pos)[0]]
            major, minor, snaplen, network = _HEADER[big].unpack_from(buf, pos)
            if major != 2:
                raise PcapngFormatError(f"unsupported pcap major version {major}", start + 4)
            self.header = PcapHeader(big, major, minor, snaplen, network & 0xFFFF, tsresol)
            self._consume(pos + 24)
            return self.header
        if avail < 16:
            self._need_more(avail, 16, start, "record header")
            return None
        seconds, fraction, caplen, orig = _RECORD[header.big_endian].unpack_from(buf, pos)
        if caplen > self.max_record_size:
            raise PcapngFormatError(
                f"captured length {caplen} exceeds the limit of {self.max_record_size} bytes",
                start + 8,
            )
        end = pos + 16 + caplen
        if len(buf) < end:
            self._need_more(avail, 16 + caplen, start, "record")
            return None
        record = PcapRecord(
            seconds * header.tsresol + fraction, caplen, orig, bytes(buf[pos + 16 : end]), start
        )
        self._consume(end)
        return record

    def next_packets(self, interface_id: int) -> PacketBatch:
        """Every whole record at the front of the input, as little-endian EPBs, in one call.

        Each record becomes an option-less Enhanced Packet Block of ``interface_id`` with the
        record's timestamp in ticks of the file's resolution (so an IDB for it needs
        ``if_tsresol`` 6 or 9, see :attr:`PcapHeader.tsresol`), its captured data and its
        original length. ``timestamps`` are those ticks; ``interface_ids`` are all
        ``interface_id``. Stops at an incomplete record or one :meth:`next_record` refuses,
        which ``next_record`` then returns or raises on; returns an empty batch until
        ``next_record`` has returned the header.
        """
        blocks: list[bytes] = []
        stamps: list[int] = []
        header = self.header
        if header is None:
            return PacketBatch(blocks, stamps, [])
        if not 0 <= interface_id <= 0xFFFFFFFF:
            raise ValueError(f"interface_id must be an unsigned 32-bit integer, not {interface_id}")
        add_block, add_stamp = blocks.append, stamps.append
        unpack = _RECORD[header.big_endian].unpack_from
        tsresol = header.tsresol
        limit = self.max_record_size
        buf, pos = self._buf, self._pos
        size = len(buf)
        while pos + 16 <= size:
            seconds, fraction, caplen, orig = unpack(buf, pos)
            end = pos + 16 + caplen
            if caplen > limit or end > size:
                break
            ticks = seconds * tsresol + fraction
            packer = _EPB_PACKERS.get(caplen) or _epb_packer(caplen)
            total = packer.size
            add_block(
                packer.pack(
                    EPB, total, interface_id, ticks >> 32, ticks & 0xFFFFFFFF, caplen, orig,
                    buf[pos + 16 : end], total,
                )
            )  # fmt: skip
            add_stamp(ticks)
            pos = end
        if blocks:
            self._consume(pos)
        return PacketBatch(blocks, stamps, [interface_id] * len(blocks))

    def _need_more(self, avail: int, needed: int, start: int, what: str) -> None:
        """Wait for more input, unless it has ended in the middle of an item."""
        if avail and self._eof:
            raise PcapngFormatError(f"input ends {avail} bytes into a {needed}-byte {what}", start)
