"""The offline merge's engine: packets of k inputs in, one ordered run of output bytes out.

Pure and synchronous (no I/O, no clock): :mod:`pcapd.merge.files` reads and decodes, the engine
orders. Two implementations of one contract, :class:`FileMerge`:

- :class:`CompiledFileMerge`, the C ``FileMerge`` of ``pcapd/_ext/pcapngwalk.c`` (where the
  extension is built and on: :mod:`pcapd._accel`). Packets move as slices, never as per-packet
  objects: a run of little-endian EPBs goes from the decoder's buffer into the source's arena
  in one copy, with an array entry (offset, length, timestamp) a packet; a release merges the
  sources' arrays k ways and copies the slices into one ``bytes``, rewriting interface ids as
  it goes.
- :class:`PureFileMerge`, its twin in Python: the live merge (:class:`pcapd.merge.Merge`)
  with float sort keys (:class:`Clock`), a ``bytes`` per packet. What a laptop without a
  compiler runs, and the reference the compiled engine is tested against
  (tests/merge/test_engine_differential.py).

The contract, which is the live merge's with ``lateness=math.inf`` (no watermarks, no clock).
Timestamps are exact integer nanoseconds. A source's *frontier* is the greatest timestamp
pushed from it (below every timestamp before its first push). A pop releases every buffered
packet at or below the lowest frontier among the sources not ended (or the greatest timestamp
already released, if higher; all when every source has ended), ordered by timestamp, ties in
source order (source 0 first), then arrival; a packet below an earlier one of its own source
keeps its place after it. ``reordered`` counts packets written below the greatest timestamp
written before them. A push that takes more than ``max_buffered`` packets into the merge first
releases what the rule allows and then, if needed, the oldest packets (into the next pop).

Ties across reads. Each add holds back its trailing run of packets at its last timestamp
(up to ``tie_run_cap`` of them) until the source's next add or its end, so that a frontier is a
strict promise: the source may still hold packets at its greatest timestamp, and those must
meet the other sources' packets of that time in one release (``pcapd merge`` then orders ties
exactly as mergecap does; see :mod:`pcapd.merge.files`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from types import ModuleType
from typing import Protocol

from pcapd import _accel
from pcapd.merge.core import Merge
from pcapd.pcapng.reader import PcapngDecoder

__all__ = [
    "Clock",
    "CompiledFileMerge",
    "FileMerge",
    "FileMergeFactory",
    "PureFileMerge",
    "Scale",
    "new_file_merge",
]

Scale = tuple[int, int, int]
"""An interface's ticks to nanoseconds: ``ticks * mul // div + off`` as ``(mul, div, off)``."""

_EXACT = 1 << 53  # every integer up to this is a float
_FLOAT_MUL = 1 << 21  # low * mul is exact in a float for every 32-bit low


class FileMerge(Protocol):
    """The engine's contract (module docstring); sources are numbered from 0."""

    def add_run(
        self, source: int, decoder: PcapngDecoder, interface_map: list[int], scales: list[Scale]
    ) -> int:
        """Take the run of little-endian EPBs at the front of ``decoder``
        (``PcapngDecoder.next_packets``' run, checked alike), each stamped by its interface's
        scale and carrying ``interface_map[id]``; the number of packets taken."""
        ...

    def add(self, source: int, blocks: list[bytes], stamps: list[int]) -> None:
        """Take whole EPBs (already carrying their output interface ids) at ``stamps`` ns."""
        ...

    def last_ns(self, source: int) -> int | None:
        """The timestamp of the source's last packet taken (held back or not), if any."""
        ...

    def frontier(self, source: int) -> float:
        """The source's frontier, comparable with the other sources' (for reading order)."""
        ...

    def end(self, source: int) -> None:
        """The source has no more packets: push what it held back; it holds nothing back."""
        ...

    def pop(self) -> bytes:
        """The blocks that may be written now, in order, as one string."""
        ...

    def flush(self) -> bytes:
        """Every block still held, in order (after every source has ended)."""
        ...

    @property
    def reordered(self) -> int: ...

    @property
    def waiting(self) -> int:
        """Packets in the merge (buffered or released into the next pop): for tests."""
        ...


FileMergeFactory = Callable[[int, int, int], FileMerge]
"""``(sources, max_buffered, tie_run_cap) -> FileMerge``."""


def new_file_merge(sources: int, max_buffered: int, tie_run_cap: int) -> FileMerge:
    """The compiled engine where the extension is built and on, else the pure one."""
    if _accel.walk is not None:
        return CompiledFileMerge(sources, max_buffered, tie_run_cap)
    return PureFileMerge(sources, max_buffered, tie_run_cap)


class CompiledFileMerge:
    """:class:`FileMerge` by the C ``FileMerge`` (``module``: the compiled walker)."""

    def __init__(
        self, sources: int, max_buffered: int, tie_run_cap: int, module: ModuleType | None = None
    ) -> None:
        compiled = module if module is not None else _accel.walk
        if compiled is None:
            raise RuntimeError("the compiled pcapng walker is not built, or turned off")
        self._c = compiled.FileMerge(sources, max_buffered, tie_run_cap)
        self.add = self._c.add
        self.last_ns = self._c.last_ns
        self.frontier = self._c.frontier
        self.end = self._c.end
        self.pop = self._c.pop
        self.flush = self._c.flush

    def add_run(
        self, source: int, decoder: PcapngDecoder, interface_map: list[int], scales: list[Scale]
    ) -> int:
        taken: int = decoder.take_packet_run(
            partial(self._c.add_run, source, interface_map, scales)
        )
        return taken

    @property
    def reordered(self) -> int:
        return int(self._c.reordered)

    @property
    def waiting(self) -> int:
        return int(self._c.waiting)


class Clock:
    """The pure engine's sort keys: nanoseconds after a base (the first packet's time), shared
    by all sources, as floats wherever that is exact (within 2**53 ns, ~104 days, of the base).

    CPython sorts floats about twice as fast as 61-bit ints, which take its generic compare.
    A key beyond float range stays an exact int: int and float compare exactly in Python, so
    a mixed list still sorts right, only slower.
    """

    def __init__(self) -> None:
        self.base: int | None = None

    def start(self, ns: int) -> int:
        if self.base is None:
            # A multiple of 2**32: nanosecond inputs' keys are then their low timestamp
            # words, plus 0 while the high word is the first one (see PureFileMerge._keys).
            self.base = ns & ~0xFFFFFFFF
        return self.base

    def key(self, ns: int) -> float:
        offset = ns - self.start(ns)
        return float(offset) if -_EXACT <= offset <= _EXACT else offset

    def keys(self, stamps: list[int]) -> list[float]:
        base = self.start(stamps[0])
        if base - _EXACT <= min(stamps) and max(stamps) <= base + _EXACT:
            return [float(ns - base) for ns in stamps]
        return [self.key(ns) for ns in stamps]

    def ns(self, key: float) -> int:
        assert self.base is not None
        return self.base + int(key)


class _Held:
    """A source's trailing run at its last timestamp, not pushed yet, and its last key."""

    __slots__ = ("blocks", "keys", "last")

    def __init__(self) -> None:
        self.keys: list[float] = []
        self.blocks: list[bytes] = []
        self.last: float | None = None


class PureFileMerge:
    """:class:`FileMerge` in Python, on the live merge (``merge``: a subclass may watch it)."""

    def __init__(
        self, sources: int, max_buffered: int, tie_run_cap: int, merge: Callable[..., Merge] = Merge
    ) -> None:
        self.merge = merge(lateness=math.inf, max_buffered=max_buffered)
        self._sids = [self.merge.add_source(0.0) for _ in range(sources)]
        self._held = [_Held() for _ in range(sources)]
        self._frontiers: list[float] = [-(1 << 64)] * sources
        self._tie_run_cap = tie_run_cap
        self.clock = Clock()

    def add_run(
        self, source: int, decoder: PcapngDecoder, interface_map: list[int], scales: list[Scale]
    ) -> int:
        blocks, high, low, ids = decoder.next_packet_columns(interface_map)
        if blocks:
            self._push(source, self._keys(high, low, ids, scales), blocks)
        return len(blocks)

    def add(self, source: int, blocks: list[bytes], stamps: list[int]) -> None:
        if blocks:
            self._push(source, self.clock.keys(stamps), blocks)

    def last_ns(self, source: int) -> int | None:
        last = self._held[source].last
        return None if last is None else self.clock.ns(last)

    def frontier(self, source: int) -> float:
        return self._frontiers[source]

    def end(self, source: int) -> None:
        held = self._held[source]
        sid = self._sids[source]
        if held.keys:
            self.merge.push(sid, held.keys, held.blocks, 0.0)
            held.keys, held.blocks = [], []
        self.merge.remove_source(sid, 0.0)

    def pop(self) -> bytes:
        return b"".join(self.merge.pop(0.0).blocks)

    def flush(self) -> bytes:
        return b"".join(self.merge.flush())

    @property
    def reordered(self) -> int:
        return self.merge.statistics().reordered

    @property
    def waiting(self) -> int:
        stats = self.merge.statistics()
        return stats.buffered + stats.pending

    def _keys(
        self, high: Sequence[int], low: Sequence[int], ids: Sequence[int], scales: list[Scale]
    ) -> list[float]:
        """Sort keys of a run of packets from its timestamp halves and local interface ids."""
        uniform = scales[0] if scales.count(scales[0]) == len(scales) else None
        first = high[0]
        if uniform is not None and high.count(first) == len(high):
            mul, div, off = uniform
            ticks = first << 32
            base = self.clock.start(ticks * mul // div + off)
            offset = ticks * mul + off - base  # the key of low 0, if div == 1
            if div == 1 and mul <= _FLOAT_MUL and -_EXACT <= offset <= _EXACT - (mul << 32):
                # One pass, exact: every key is an integer below 2**53 in magnitude.
                if mul == 1:
                    if not offset:
                        return list(map(float, low))
                    start = float(offset)
                    return [start + lo for lo in low]
                start = float(offset)
                factor = float(mul)
                return [start + factor * lo for lo in low]
        stamps = [
            (hi << 32 | lo) * scales[i][0] // scales[i][1] + scales[i][2]
            for hi, lo, i in zip(high, low, ids, strict=True)
        ]
        return self.clock.keys(stamps)

    def _push(self, source: int, keys: list[float], blocks: list[bytes]) -> None:
        """Push packets but the trailing run at the last timestamp (module docstring)."""
        held = self._held[source]
        sid = self._sids[source]
        held.last = last = keys[-1]
        if held.keys:
            keys = held.keys + keys
            blocks = held.blocks + blocks
        start = len(keys) - 1
        while start and keys[start - 1] == last:
            start -= 1
            if len(keys) - start > self._tie_run_cap:
                start = len(keys)  # too long to hold: let it go
                break
        if start == len(keys):
            held.keys, held.blocks = [], []
            self.merge.push(sid, keys, blocks, 0.0)
        else:
            held.keys, held.blocks = keys[start:], blocks[start:]
            if not start:
                return
            self.merge.push(sid, keys[:start], blocks[:start], 0.0)
        self._frontiers[source] = self.merge.frontier(sid)  # the greatest key pushed
