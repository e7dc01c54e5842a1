"""Hot-path helpers on little-endian Enhanced Packet Blocks, for the merge and the api.

The agent sends many EPBs in one WebSocket frame; the api splits them, orders them by
timestamp and writes them out with only the interface id rewritten. None of this re-encodes
or parses options: a packet costs one ``unpack_from``, one slice and a few appends.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from pcapd.errors import PcapngFormatError
from pcapd.pcapng.blocks import EPB, ISB

_TIMESTAMP = struct.Struct("<II")
_U32 = struct.Struct("<I")
_EPB_HEAD = struct.Struct("<7I")


class PacketBatch(NamedTuple):
    """Parallel lists: ``blocks[i]``, a whole EPB, of ``interface_ids[i]`` at ``timestamps[i]``."""

    blocks: list[bytes]
    timestamps: list[int]
    """Raw 64-bit ticks (nanoseconds for pcapd's own interfaces)."""
    interface_ids: list[int]


def epb_timestamp(block: bytes | memoryview) -> int:
    """The raw 64-bit timestamp ticks of a little-endian EPB."""
    high, low = _TIMESTAMP.unpack_from(block, 12)
    return int(high << 32 | low)


def with_interface_id(block: bytes, interface_id: int) -> bytes:
    """The little-endian EPB or ISB ``block`` with only its interface id replaced."""
    block_type = _U32.unpack_from(block, 0)[0] if len(block) >= 12 else None
    if block_type not in (EPB, ISB):
        raise ValueError(f"not an EPB or ISB (block type {block_type}): no interface id to rewrite")
    if not 0 <= interface_id <= 0xFFFFFFFF:
        raise ValueError(f"interface_id must be an unsigned 32-bit integer, not {interface_id}")
    return b"".join((block[:8], _U32.pack(interface_id), block[12:]))


def split_packets(data: bytes, offset: int = 0) -> PacketBatch:
    """Split concatenated little-endian EPBs (nothing else) into blocks and timestamps.

    Each block's framing is checked (type, length, trailing length, captured length within the
    block); a fault raises :class:`PcapngFormatError` at ``offset`` plus the position in
    ``data``. Options are not parsed.

    Measured 0.32 µs per 60-byte and 0.41 µs per 1500-byte packet in batches of 100 (CPython
    3.11, a 2-vCPU VM), with ``python -m timeit -s "from pcapd.pcapng import
    encode_enhanced_packet as e, split_packets as s; b = b''.join(e(interface_id=0,
    timestamp=i, data=bytes(1500)) for i in range(100))" "s(b)"`` (divide by 100).
    """
    blocks: list[bytes] = []
    timestamps: list[int] = []
    interface_ids: list[int] = []
    add_block, add_timestamp, add_id = blocks.append, timestamps.append, interface_ids.append
    unpack_head, unpack_u32 = _EPB_HEAD.unpack_from, _U32.unpack_from
    size = len(data)
    pos = 0
    try:
        while pos < size:
            block_type, total, interface_id, high, low, caplen, _ = unpack_head(data, pos)
            end = pos + total
            if (
                block_type != EPB
                or total & 3
                or total < 32 + caplen
                or end > size
                or unpack_u32(data, end - 4)[0] != total
            ):
                raise _framing_error(data, pos, offset)
            add_block(data[pos:end])
            add_timestamp(high << 32 | low)
            add_id(interface_id)
            pos = end
    except struct.error:
        raise PcapngFormatError(
            f"truncated enhanced packet block ({size - pos} bytes left)", offset + pos
        ) from None
    return PacketBatch(blocks, timestamps, interface_ids)


def _framing_error(data: bytes, pos: int, offset: int) -> PcapngFormatError:
    """Say which check failed; only runs once a block is known to be bad."""
    block_type, total, _, _, _, caplen, _ = _EPB_HEAD.unpack_from(data, pos)
    if block_type != EPB:
        why = f"block type {block_type:#x} where an enhanced packet block was expected"
    elif total & 3:
        why = f"block length {total} is not a multiple of 4"
    elif total < 32 + caplen:
        why = f"captured length {caplen} overruns the block length {total}"
    elif pos + total > len(data):
        why = f"block of {total} bytes is cut off after {len(data) - pos}"
    else:
        why = "trailing block length differs from the leading one"
    return PcapngFormatError(why, offset + pos)
