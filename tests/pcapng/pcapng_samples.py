"""Shared helpers for the pcapng tests: real frames, a sample capture, big-endian blocks.

Named uniquely (not conftest/helpers) so it never collides with other test directories.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator

from pcapd.pcapng import (
    EPB,
    IDB,
    ISB,
    NRB,
    SHB,
    SPB,
    Block,
    PcapngDecoder,
    RawBlock,
    encode_enhanced_packet,
    encode_interface_description,
    encode_interface_statistics,
    encode_name_resolution,
    encode_section_header,
)

BASE_NS = 1_700_000_000_123_456_789


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """A real Ethernet II / IPv4 / UDP frame with correct IPv4 and UDP checksums."""
    src_ip, dst_ip = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    udp_len = 8 + len(payload)
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    udp_sum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0x4000, 64, 17, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = bytes.fromhex("020000000002") + bytes.fromhex("020000000001") + b"\x08\x00"
    return eth + ip + udp


class Packet:
    """What a sample EPB was written with, to compare readers' output against."""

    def __init__(
        self, interface_id: int, ts_ns: int, frame: bytes, snaplen: int, comment: str | None
    ) -> None:
        self.interface_id = interface_id
        self.ts_ns = ts_ns
        self.original_length = len(frame)
        self.data = frame[:snaplen]
        self.comment = comment


SNAPLEN = 64
INTERFACES = (("a:eth0", "instance a-guid"), ("host:lo", "agent host"))


def sample_packets() -> list[Packet]:
    packets = []
    for i in range(6):
        payload = bytes([65 + i]) * (10 + 30 * i)  # some fit the snaplen, some are cut
        frame = udp_frame(f"10.0.0.{i + 1}", "10.0.1.1", 40000 + i, 40999, payload)
        comment = "the third packet" if i == 2 else None
        packets.append(Packet(i % 2, BASE_NS + i * 1_000_123, frame, SNAPLEN, comment))
    return packets


def sample_capture() -> tuple[bytes, list[Packet]]:
    """SHB, two IDBs, EPBs (some cut to the snaplen, one with a comment), NRB and ISBs."""
    packets = sample_packets()
    parts = [encode_section_header(user_application="pcapd-tests 0.1", os="Linux")]
    for name, description in INTERFACES:
        parts.append(
            encode_interface_description(
                link_type=1, snaplen=SNAPLEN, name=name, description=description, tsresol=9
            )
        )
    for p in packets:
        parts.append(
            encode_enhanced_packet(
                interface_id=p.interface_id,
                timestamp=p.ts_ns,
                data=p.data,
                original_length=p.original_length,
                comment=p.comment,
            )
        )
    parts.append(encode_name_resolution([("10.0.1.1", ["dns.example"]), ("::1", ["localhost"])]))
    end = packets[-1].ts_ns + 1000
    for interface_id in (0, 1):
        parts.append(
            encode_interface_statistics(
                interface_id=interface_id,
                timestamp=end,
                start_time=BASE_NS,
                end_time=end,
                received=3,
                kernel_dropped=1,
                interface_dropped=0,
                delivered=3,
                pcapd_dropped=2,
            )
        )
    return b"".join(parts), packets


def decode_all(chunks: Iterable[bytes], **kwargs: int) -> list[Block]:
    dec = PcapngDecoder(**kwargs)
    blocks: list[Block] = []
    for chunk in [*chunks, b""]:
        dec.receive_data(chunk)
        while (block := dec.next_block()) is not None:
            blocks.append(block)
    return blocks


def raw_all(chunks: Iterable[bytes]) -> list[RawBlock]:
    dec = PcapngDecoder()
    raws: list[RawBlock] = []
    for chunk in [*chunks, b""]:
        dec.receive_data(chunk)
        while (raw := dec.next_raw()) is not None:
            raws.append(raw)
    return raws


def chunked(data: bytes, sizes: Iterable[int]) -> Iterator[bytes]:
    """``data`` cut into pieces of the given sizes (cycled), the last piece whatever is left."""
    sizes = list(sizes) or [len(data) or 1]
    pos, i = 0, 0
    while pos < len(data):
        size = max(1, sizes[i % len(sizes)])
        yield data[pos : pos + size]
        pos += size
        i += 1


SHB_LE = encode_section_header()
IDB_LE = encode_interface_description(link_type=1, snaplen=0)
IDB_FIXED = struct.pack("<HHI", 1, 0, 0)
"""An IDB's fixed fields (Ethernet, snaplen 0), for ``le_block(IDB, IDB_FIXED + options)``."""


def le_block(block_type: int, body: bytes, total: int | None = None) -> bytes:
    """A little-endian block around ``body``; ``total`` sets both lengths (to make a bad one)."""
    total = len(body) + 12 if total is None else total
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def le_epb(interface_id: int = 0, caplen: int = 4, room: int = 4, options: bytes = b"") -> bytes:
    """An EPB of ``room`` zero bytes of data that claims ``caplen`` of them, then ``options``."""
    body = struct.pack("<5I", interface_id, 0, 0, caplen, caplen) + b"\0" * room + options
    return le_block(EPB, body)


def be_block(block_type: int, body: bytes) -> bytes:
    """A big-endian block around ``body`` (which the caller encodes big-endian)."""
    total = len(body) + 12
    return struct.pack(">II", block_type, total) + body + struct.pack(">I", total)


def be_options(*options: tuple[int, bytes]) -> bytes:
    out = b""
    for code, value in options:
        out += struct.pack(">HH", code, len(value)) + value + b"\0" * (-len(value) & 3)
    return out + (struct.pack(">HH", 0, 0) if options else b"")


def big_endian_section() -> bytes:
    shb = be_block(SHB, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, 4096) + be_options((4, b"be-app")))
    idb = be_block(IDB, struct.pack(">HHI", 1, 0, 128) + be_options((2, b"be0"), (9, b"\x06")))
    epb = be_block(
        EPB,
        struct.pack(">5I", 0, 1, 2, 3, 70) + b"xyz\0"
        + be_options((1, b"c"), (2, struct.pack(">I", 3)), (2988, b"\0\0\0\1custom")),
    )  # fmt: skip
    isb = be_block(
        ISB,
        struct.pack(">3I", 0, 0, 9)
        + be_options((2, struct.pack(">II", 1, 2)), (4, struct.pack(">Q", 10)),
                     (1, b"pcapd-dropped: 4"), (7, struct.pack(">Q", 5))),
    )  # fmt: skip
    nrb = be_block(
        NRB,
        struct.pack(">HH", 1, 6) + bytes([10, 0, 0, 1]) + b"a\0" + b"\0\0"
        + struct.pack(">HH", 3, 8) + bytes(8)  # an EUI-48 record: skipped
        + struct.pack(">HH", 0, 0),
    )  # fmt: skip
    spb = be_block(SPB, struct.pack(">I", 200) + b"abcdefgh")
    unknown = be_block(0x0BAD, b"body")
    return shb + idb + epb + isb + nrb + spb + unknown


def legacy_file(big: bool, nsec: bool, records: list[tuple[int, int, bytes, int]]) -> bytes:
    """A classic pcap file: ``records`` are (seconds, fraction, data, original length)."""
    order = ">" if big else "<"
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 96, 1)
    for seconds, fraction, data, orig in records:
        out += struct.pack(order + "IIII", seconds, fraction, len(data), orig) + data
    return out


RECORDS = [(1_700_000_000, 123_456, b"abc", 60), (1_700_000_001, 999_999, b"", 0)] + [
    (1_700_000_002, i, bytes([i]) * i, 1500) for i in range(20)
]
