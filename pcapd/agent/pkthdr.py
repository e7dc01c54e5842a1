"""Nanosecond timestamps out of cypcap's packet header, which cannot give them itself.

cypcap's ``Pkthdr.ts`` is ``tv_sec + tv_usec / 1e6``. With ``set_tstamp_precision(NANO)``
libpcap puts nanoseconds in ``tv_usec``, so that float is wrong by up to 1000 s and the
nanoseconds cannot be recovered from it. ``Pkthdr`` is a Cython extension type that holds the C
``struct pcap_pkthdr`` by value, so we read the struct's bytes from the object itself.

That is only safe where the struct's place in the object is known, so we never assume it: at
first use :func:`header_offset` builds headers of known values through cypcap's public
constructor and looks for them in the object's memory. If the probe fails (another build, ABI
or architecture), the capture falls back to microsecond precision, where the float is right,
and says so once (:attr:`TimestampReader.exact` is False and ``why`` says why).
"""

from __future__ import annotations

import ctypes
import functools
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cypcap

PKTHDR = struct.Struct("<qqII")
"""``struct pcap_pkthdr`` on little-endian LP64 Linux: tv_sec, tv_usec (or tv_nsec), caplen, len."""

_MAX_VIEWS = 1024
_PROBES = ((1234567.25, 0x0BADCAFE, 0x0D15EA5E), (7654321.5, 0x00C0FFEE, 0x7EA5E1))


@functools.cache
def header_offset() -> int | None:
    """Byte offset of ``struct pcap_pkthdr`` inside a ``cypcap.Pkthdr``, or None if unknown."""
    if sys.byteorder != "little" or ctypes.sizeof(ctypes.c_long) != 8:
        return None
    found: set[int] = set()
    for ts, caplen, length in _PROBES:
        hdr = cypcap.Pkthdr(ts=ts, caplen=caplen, len=length)
        raw = ctypes.string_at(id(hdr), type(hdr).__basicsize__)
        needle = struct.pack("<II", caplen, length)
        want = (int(ts), round(ts % 1 * 1_000_000))
        offsets = {
            pos - 16
            for pos in range(16, len(raw) - 7, 4)
            if raw[pos : pos + 8] == needle and PKTHDR.unpack_from(raw, pos - 16)[:2] == want
        }
        if len(offsets) != 1:
            return None
        found |= offsets
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True, slots=True)
class TimestampReader:
    """How to turn a ``(Pkthdr, data)`` callback's header into ``(timestamp_ns, original_len)``."""

    read: Callable[[Any], tuple[int, int]]
    exact: bool
    """True: nanoseconds straight from the C header. False: microseconds via the float."""
    why: str
    """One line for the log when ``exact`` is False."""
    layout: tuple[int, int] | None = None
    """``(offset, scale)`` when ``exact``: where the C header sits in a ``Pkthdr`` and what
    its fractional field is multiplied by to give nanoseconds (1 or 1000), for a hot path that
    fuses the read into its own loop (:func:`header_views`); None for the float fallback."""


def raw_reader(offset: int, nanoseconds: bool) -> Callable[[Any], tuple[int, int]]:
    """Read the C header at ``offset``; ``nanoseconds`` is the handle's actual precision.

    About 0.35 µs a packet. ``ctypes.string_at`` would cost 0.6 µs more (a foreign call per
    packet), so each address gets a ctypes view once: cypcap allocates headers from a small
    free list, so the same few addresses come back packet after packet. A view is only read
    while a live ``Pkthdr`` (the callback's argument) occupies its address, so it always reads
    that header's own bytes.
    """
    unpack_from = PKTHDR.unpack_from
    cached, view_at = header_views(offset)
    scale = 1 if nanoseconds else 1000

    def read(hdr: Any) -> tuple[int, int]:
        address = id(hdr)
        view = cached(address)
        if view is None:
            view = view_at(address)
        sec, frac, _caplen, length = unpack_from(view)
        return sec * 1_000_000_000 + frac * scale, length

    return read


def header_views(offset: int) -> tuple[Callable[[int], Any], Callable[[int], Any]]:
    """``(cached, view_at)`` for reading C headers at ``offset`` inside ``Pkthdr`` objects.

    ``cached(id(hdr))`` is the ctypes view made before for that address, or None (a dict
    lookup: cheap enough for every packet); ``view_at(id(hdr))`` makes, caches and returns it
    (bounded: the cache is cleared at ``_MAX_VIEWS`` addresses). Read a view only while the
    live ``Pkthdr`` it was asked for occupies its address (see :func:`raw_reader`).
    """
    view_type = ctypes.c_char * PKTHDR.size
    views: dict[int, Any] = {}

    def view_at(address: int) -> Any:
        if len(views) >= _MAX_VIEWS:
            views.clear()
        view = views[address] = view_type.from_address(address + offset)
        return view

    return views.get, view_at


def _float_reader(hdr: Any) -> tuple[int, int]:
    return round(hdr.ts * 1_000_000) * 1000, int(hdr.len)


def timestamp_reader(nanoseconds: bool) -> TimestampReader:
    """The reader for a handle whose actual precision is nanoseconds or not.

    Open the handle with nanosecond precision only when :func:`header_offset` is known: the
    fallback reads cypcap's float, which is right at microsecond precision only.
    """
    offset = header_offset()
    if offset is not None:
        return TimestampReader(raw_reader(offset, nanoseconds), True, "",
                               (offset, 1 if nanoseconds else 1000))
    if nanoseconds:
        raise ValueError("nanosecond precision needs the probed Pkthdr layout; open with MICRO")
    why = (
        f"cypcap {cypcap.__version__}: the layout of Pkthdr is not the one probed for on this "
        "build, so timestamps have microsecond precision (cypcap's float is wrong at nanosecond)"
    )
    return TimestampReader(_float_reader, False, why)
