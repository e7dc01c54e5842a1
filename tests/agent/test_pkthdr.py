"""Timestamps out of cypcap's packet header: the probed layout reads libpcap's C header exactly
(nanoseconds at nanosecond precision, microseconds scaled otherwise), header after header at
reused addresses; without the layout, microseconds from cypcap's float, and nanosecond
precision refused. Headers are built with cypcap's public constructor: no root, no capture."""

from __future__ import annotations

import ctypes

import cypcap
import pytest

from pcapd.agent import pkthdr


def test_layout_probe_and_raw_read() -> None:
    offset = pkthdr.header_offset()
    assert offset is not None, "the Pkthdr layout probe failed on this build"
    hdr = cypcap.Pkthdr(ts=1700000000.5, caplen=64, len=1514)
    assert pkthdr.raw_reader(offset, nanoseconds=False)(hdr) == (1700000000_500000000, 1514)
    reader = pkthdr.timestamp_reader(nanoseconds=True)
    assert reader.exact
    # at nanosecond precision libpcap's tv_usec field holds nanoseconds: 500000 → 500 µs
    assert reader.read(hdr) == (1700000000_000500000, 1514)


def test_fallback_is_microseconds_via_the_float(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pkthdr, "header_offset", lambda: None)
    reader = pkthdr.timestamp_reader(nanoseconds=False)
    assert not reader.exact and "microsecond" in reader.why
    assert reader.read(cypcap.Pkthdr(ts=1700000000.25, caplen=1, len=9)) == (
        1700000000_250000000,
        9,
    )
    assert reader.layout is None  # nothing for a fused hot path to read
    with pytest.raises(ValueError, match="nanosecond precision needs the probed Pkthdr "
                                         "layout; open with MICRO"):
        pkthdr.timestamp_reader(nanoseconds=True)


def test_the_layout_given_for_a_hot_path_is_the_offset_and_the_scale_to_nanoseconds() -> None:
    offset = pkthdr.header_offset()
    assert offset is not None
    assert pkthdr.timestamp_reader(nanoseconds=True).layout == (offset, 1)
    assert pkthdr.timestamp_reader(nanoseconds=False).layout == (offset, 1000)


def test_every_header_is_read_as_its_own_when_addresses_are_reused() -> None:
    """cypcap hands out headers from a free list, so the same few addresses come back: the
    reader's cached view of an address must read whichever header lives there now."""
    reader = pkthdr.timestamp_reader(nanoseconds=False).read
    addresses = set()
    for n in range(3000):
        hdr = cypcap.Pkthdr(ts=1_700_000_000 + n + 0.000_001 * (n % 1000), caplen=n,
                            len=60 + n)
        addresses.add(id(hdr))
        assert reader(hdr) == ((1_700_000_000 + n) * 1_000_000_000 + (n % 1000) * 1000,
                               60 + n)
        del hdr
    assert len(addresses) < 3000  # addresses did come back (else this proves nothing)


def test_the_cache_of_views_is_bounded() -> None:
    """One view per address, cleared rather than grown past ``_MAX_VIEWS`` addresses."""
    many = pkthdr._MAX_VIEWS + 1
    memory = (ctypes.c_char * (many * 8 + pkthdr.PKTHDR.size))()
    base = ctypes.addressof(memory)
    cached, view_at = pkthdr.header_views(0)
    for i in range(many):
        assert cached(base + 8 * i) is None
        view = view_at(base + 8 * i)
        assert cached(base + 8 * i) is view
    assert cached(base) is None  # cleared at the limit: made again when next needed
    assert cached(base + 8 * (many - 1)) is not None
