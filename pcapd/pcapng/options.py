"""pcapng options: encoding with 32-bit padding, and a bounds-checked walk for decoding.

An option is ``code:u16, length:u16, value, zero padding to 32 bits``; a list ends with
``opt_endofopt`` (code 0, length 0). A block with no options has no end-of-options either:
both forms are valid, and omitting it keeps option-less blocks (most EPBs) short.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from pcapd.errors import PcapngFormatError

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_HARDWARE = 2
SHB_OS = 3
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_IPV4ADDR = 4
IF_IPV6ADDR = 5
IF_MACADDR = 6
IF_EUIADDR = 7
IF_SPEED = 8
IF_TSRESOL = 9
IF_TZONE = 10
IF_FILTER = 11
IF_OS = 12
IF_FCSLEN = 13
IF_TSOFFSET = 14
IF_HARDWARE = 15
IF_TXSPEED = 16
IF_RXSPEED = 17
IF_IANA_TZNAME = 18
EPB_FLAGS = 2
EPB_HASH = 3
EPB_DROPCOUNT = 4
EPB_PACKETID = 5
EPB_QUEUE = 6
ISB_STARTTIME = 2
ISB_ENDTIME = 3
ISB_IFRECV = 4
ISB_IFDROP = 5
ISB_FILTERACCEPT = 6
ISB_OSDROP = 7
ISB_USRDELIV = 8

MAX_OPTION_LENGTH = 0xFFFF
PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
"""``PAD[n & 3]`` pads ``n`` bytes to a multiple of four."""

_OPT_HEAD_LE = struct.Struct("<HH")
_OPT_HEAD_BE = struct.Struct(">HH")
_END_OF_OPTIONS = _OPT_HEAD_LE.pack(OPT_ENDOFOPT, 0)
_U32_LE = struct.Struct("<I")
_U64_LE = struct.Struct("<Q")
_U32_BE = struct.Struct(">I")
_U64_BE = struct.Struct(">Q")
_TS_LE = struct.Struct("<II")
_TS_BE = struct.Struct(">II")


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    """Encode ``(code, value)`` pairs, then opt_endofopt; ``b""`` when there are none."""
    parts: list[bytes] = []
    for code, value in options:
        length = len(value)
        if length > MAX_OPTION_LENGTH:
            raise ValueError(f"option {code} is {length} bytes long; the limit is 65535")
        parts += (_OPT_HEAD_LE.pack(code, length), value, PAD[length & 3])
    if not parts:
        return b""
    parts.append(_END_OF_OPTIONS)
    return b"".join(parts)


def string_value(text: str) -> bytes:
    """UTF-8 option value (no terminating NUL, as the draft asks)."""
    return text.encode("utf-8")


def u32_value(value: int, what: str) -> bytes:
    return _U32_LE.pack(check_uint(value, 32, what))


def u64_value(value: int, what: str) -> bytes:
    return _U64_LE.pack(check_uint(value, 64, what))


def timestamp_value(ticks: int, what: str) -> bytes:
    """A 64-bit timestamp as pcapng stores it: high 32 bits, then low 32 bits."""
    check_uint(ticks, 64, what)
    return _TS_LE.pack(ticks >> 32, ticks & 0xFFFFFFFF)


def check_uint(value: int, bits: int, what: str) -> int:
    """Refuse a value that does not fit an unsigned field of ``bits`` bits."""
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{what} must be an unsigned {bits}-bit integer, not {value!r}")
    return value


def iter_options(
    data: bytes, start: int, end: int, big_endian: bool, offset: int
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(code, value)`` for each option in ``data[start:end]``.

    Stops at opt_endofopt or at ``end``. ``offset`` is the stream offset of ``data[0]``, so
    an error names where in the stream the option list went wrong.
    """
    head = _OPT_HEAD_BE if big_endian else _OPT_HEAD_LE
    pos = start
    while pos < end:
        if end - pos < 4:
            raise PcapngFormatError("truncated option header", offset + pos)
        code, length = head.unpack_from(data, pos)
        if code == OPT_ENDOFOPT:
            return
        value_start = pos + 4
        next_pos = value_start + ((length + 3) & ~3)
        if next_pos > end:
            raise PcapngFormatError(
                f"option {code} of length {length} overruns its block", offset + pos
            )
        yield code, data[value_start : value_start + length]
        pos = next_pos


def decode_string(value: bytes) -> str:
    """Decode a string option leniently: bad UTF-8 is replaced, stray trailing NULs dropped.

    Readers are lenient here because some writers NUL-terminate, and a bad byte in a comment
    is no reason to reject a capture.
    """
    return value.decode("utf-8", "replace").rstrip("\0")


def decode_uint(value: bytes, size: int, big_endian: bool, code: int, where: int) -> int:
    """Decode a fixed-size unsigned option; its length must be exactly ``size``."""
    if len(value) != size:
        raise PcapngFormatError(f"option {code} must be {size} bytes, not {len(value)}", where)
    if size == 4:
        return int((_U32_BE if big_endian else _U32_LE).unpack(value)[0])
    return int((_U64_BE if big_endian else _U64_LE).unpack(value)[0])


def decode_timestamp(value: bytes, big_endian: bool, code: int, where: int) -> int:
    """Decode a timestamp option stored as high then low 32-bit words."""
    if len(value) != 8:
        raise PcapngFormatError(f"option {code} must be 8 bytes, not {len(value)}", where)
    high, low = (_TS_BE if big_endian else _TS_LE).unpack(value)
    return int(high << 32 | low)
