"""pcapng block types and the frozen records the decoder yields.

Field names follow draft-ietf-opsawg-pcapng. Timestamps stay in raw ticks of their interface's
resolution (``InterfaceDescription.tsresol`` ticks per second); :func:`ticks_to_ns` converts.
Every decoded block carries ``raw``, the exact bytes it was decoded from, so a merge can pass it
through unchanged; ``raw`` takes no part in equality, so hand-built expectations compare equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

SHB = 0x0A0D0D0A
IDB = 0x00000001
PB = 0x00000002
"""The obsolete Packet Block: an EPB with a 16-bit interface id and a 16-bit drop count."""
SPB = 0x00000003
NRB = 0x00000004
ISB = 0x00000005
EPB = 0x00000006
DSB = 0x0000000A
"""Decryption Secrets Block."""
CUSTOM_COPYABLE = 0x00000BAD
"""A custom block that writers may copy into other files (0x40000BAD: may not)."""

BYTE_ORDER_MAGIC = 0x1A2B3C4D
LINKTYPE_ETHERNET = 1
DEFAULT_TSRESOL = 10**6
"""Ticks per second of an interface without ``if_tsresol``: microseconds."""

PCAPD_DROPPED_PREFIX = "pcapd-dropped: "
"""ISB ``opt_comment`` prefix carrying pcapd's own drop count (there is no standard option)."""


class RawBlock(NamedTuple):
    """One undecoded block: the fast path of the reader.

    A NamedTuple rather than a dataclass because one is made per block read, and a tuple is
    the cheapest record Python builds.
    """

    block_type: int
    data: bytes
    """The whole block, from its type field to its trailing length."""
    offset: int
    """Byte offset of the block in the stream."""
    big_endian: bool


@dataclass(frozen=True, slots=True)
class SectionHeader:
    big_endian: bool
    major: int
    minor: int
    section_length: int
    user_application: str | None = None
    hardware: str | None = None
    os: str | None = None
    comments: tuple[str, ...] = ()
    raw: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class InterfaceDescription:
    link_type: int
    snaplen: int
    name: str | None = None
    description: str | None = None
    tsresol: int = DEFAULT_TSRESOL
    """Ticks per second (10**9 for nanoseconds), not the option's exponent byte."""
    filter: str | None = None
    os: str | None = None
    comments: tuple[str, ...] = ()
    raw: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class EnhancedPacket:
    interface_id: int
    timestamp: int
    """Raw 64-bit ticks in the interface's resolution."""
    captured_length: int
    original_length: int
    data: bytes
    flags: int | None = None
    comments: tuple[str, ...] = ()
    raw: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class SimplePacket:
    original_length: int
    data: bytes
    raw: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class InterfaceStatistics:
    """Counters of one interface; ``None`` where the writer did not record the option.

    ``pcapd_dropped`` comes from an ``opt_comment`` of the exact form ``pcapd-dropped: N``
    (pcapng has no option for drops by the capturing application's own buffers); any other
    comment stays in ``comments``.
    """

    interface_id: int
    timestamp: int
    start_time: int | None = None
    end_time: int | None = None
    received: int | None = None
    kernel_dropped: int | None = None
    interface_dropped: int | None = None
    filter_accepted: int | None = None
    delivered: int | None = None
    pcapd_dropped: int | None = None
    comments: tuple[str, ...] = ()
    raw: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class NameResolution:
    records: tuple[tuple[str, tuple[str, ...]], ...]
    """``(address, names)`` for IPv4 and IPv6 records; other record types are skipped."""
    raw: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class UnknownBlock:
    """A block type this module does not interpret (custom, journal, decryption secrets...)."""

    block_type: int
    body: bytes
    """The bytes between the leading and the trailing block length."""
    raw: bytes = field(default=b"", repr=False, compare=False)


Block = (
    SectionHeader
    | InterfaceDescription
    | EnhancedPacket
    | SimplePacket
    | InterfaceStatistics
    | NameResolution
    | UnknownBlock
)


def ticks_to_ns(ticks: int, tsresol: int) -> int:
    """Convert ``ticks`` at ``tsresol`` ticks per second to nanoseconds (floor, exact ints)."""
    if tsresol == 1_000_000_000:
        return ticks
    return ticks * 1_000_000_000 // tsresol
