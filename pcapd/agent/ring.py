"""The flight recorder's ring: the last ``keep`` of a capture's packets, at most ``max_bytes``.

Theory of operation. Pure and synchronous: time is data (every call that ages takes ``now``),
so the rules are tested exhaustively without a clock. The capture engine hands over batches of
little-endian EPBs of interface 0; the ring keeps them as they came, in *pieces* (a batch, or a
slice of a large one) held in a deque, and never re-encodes a packet.

The ring is kept in timestamp order, globally: each piece is sorted, and every packet of a piece
is no newer than every packet of the next. The kernel almost always delivers in order; when it
does not (packets from two CPUs interleave in libpcap's ring), the batch is sorted and, if it
overlaps the newest pieces, those are merged with it. That one rule makes everything else a
binary search: ageing by time cuts the oldest piece at the first packet inside ``keep``;
extracting a window cuts the two pieces at its ends.

Ageing by time moves an offset into the oldest piece (no copy); the piece's buffer is freed
when its last packet ages out. Ageing by size drops whole oldest pieces, and it does so
*before* each new piece is stored, so ``memory`` (the bytes the store holds, in buffers or
segment files, which is what the budget is about) never exceeds ``max_bytes``, not even in the
middle of a batch larger than the ring; pieces are cut to at most a sixteenth of ``max_bytes``
(and 1 MiB), so that over-dropping costs little. Every packet added is either held or
counted aged out, by time or by size: ``captured == packets + aged_out_time + aged_out_size``.

Where the pieces' bytes are is a :class:`PieceStore`'s business: memory here, or segment files
(``pcapd.agent.ring_files``, called off the Trio thread); the size rule is the store's ``held``.

The :class:`Budget` is shared by all recordings of an agent: each reserves its ``max_bytes``
when it starts, and a recording that does not fit is refused. Running recordings are never
squeezed to make room: what an operator armed keeps what it was promised.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, islice, repeat
from operator import le, lshift, or_
from typing import Protocol

from pcapd import _accel
from pcapd.pcapng.packets import epb_run

Seq = Sequence[int]
"""A column of an index: a list, or a view of the compiled walker's array (no int objects)."""

MAX_SNAPLEN = 262144
MAX_EPB = 32 + MAX_SNAPLEN
"""The longest EPB a capture writes (no options)."""
MAX_PIECE = 1 << 20
"""Bytes of a piece at most: also the largest chunk a window hands out (one Data message)."""
MIN_PIECE = 4096


class RingError(ValueError):
    """What was added is not whole EPBs of interface 0."""


class BudgetRefused(Exception):
    """A new recording does not fit this agent's budget; the message says why, naming the key."""


@dataclass(frozen=True, slots=True)
class RingStatistics:
    """A snapshot of one ring."""

    packets: int
    """Packets held now."""
    bytes: int
    """Bytes of the EPBs held now."""
    memory: int
    """Bytes the store holds (≥ ``bytes``: a piece partly aged out by time stays whole until
    its last packet has aged out; on disk, a segment until its last piece has). Never above
    ``max_bytes`` after a call."""
    first_timestamp: int | None
    """ns since the epoch of the oldest packet held; None when empty."""
    last_timestamp: int | None
    captured: int
    """Packets ever added."""
    aged_out_time: int
    """Packets dropped because they became older than ``keep``."""
    aged_out_size: int
    """Packets dropped to stay within ``max_bytes``."""
    kernel_dropped: int
    interface_dropped: int


class Deferred(Protocol):
    """Bytes a store reads only when asked: a piece's part in a file. ``bytes(part)`` is
    blocking I/O (off the Trio thread); it stays readable whatever the ring does next."""

    def __len__(self) -> int: ...

    def __bytes__(self) -> bytes: ...


Chunk = memoryview | Deferred
"""A part of a window: in memory, or still in the store's file."""


@dataclass(frozen=True, slots=True)
class Window:
    """The packets of a window: ``chunks`` of whole EPBs, in timestamp order.

    Each chunk stays valid whatever the ring does next and is at most :data:`MAX_PIECE` bytes
    long. In memory it is a view of the ring's buffers; in files, the two pieces at the
    window's ends are read (to cut them) and the ones between are :class:`Deferred`: a window
    of a disk ring costs the agent two pieces of memory, not the window, until it is read.
    """

    chunks: list[Chunk]
    packets: int
    bytes: int
    first_timestamp: int | None
    last_timestamp: int | None


class PieceStore(Protocol):
    """Where a ring keeps its pieces' bytes: in memory (:class:`MemoryStore`), or in files
    (``pcapd.agent.ring_files``, an I/O edge its caller runs off the Trio thread). The ring
    decides what to keep; the store only holds bytes and says how many it holds."""

    @property
    def held(self) -> int:
        """Bytes the store holds now (memory, or disk): what ``max_bytes`` bounds."""
        ...

    def put(self, blocks: bytes) -> object:
        """Keep ``blocks``; a reference to them."""
        ...

    def get(self, ref: object) -> bytes:
        """The bytes kept under ``ref`` (they stay valid after :meth:`free`)."""
        ...

    def part(self, ref: object, start: int, end: int) -> Chunk:
        """Bytes ``start:end`` of those kept under ``ref``, read now or when asked (they stay
        valid after :meth:`free`)."""
        ...

    def free(self, ref: object) -> None: ...

    def clear(self) -> None:
        """Free everything at once."""
        ...


class MemoryStore:
    """Pieces as the bytes objects they came in: the reference is the buffer itself."""

    def __init__(self) -> None:
        self.held = 0

    def put(self, blocks: bytes) -> object:
        self.held += len(blocks)
        return blocks

    def get(self, ref: object) -> bytes:
        assert isinstance(ref, bytes)
        return ref

    def part(self, ref: object, start: int, end: int) -> Chunk:
        assert isinstance(ref, bytes)
        return memoryview(ref)[start:end]

    def free(self, ref: object) -> None:
        assert isinstance(ref, bytes)
        self.held -= len(ref)

    def clear(self) -> None:
        self.held = 0


@dataclass(slots=True)
class _Piece:
    ref: object
    """The store's reference to the piece's bytes."""
    size: int
    start: int
    """Offset of the first packet held (the ones before it aged out)."""
    packets: int
    """Packets held (from ``start``)."""
    first: int
    last: int


def index(blocks: bytes | bytearray) -> tuple[Seq, Seq]:
    """``(timestamps, ends)`` of the EPBs in ``blocks``: ``ends[i]`` is the offset just past
    packet ``i``. Raises :class:`RingError` unless ``blocks`` is whole EPBs of interface 0."""
    stamps, ends, _ = _index(blocks)
    return stamps, ends


def _index(blocks: bytes | bytearray) -> tuple[Seq, Seq, bool]:
    """:func:`index` and whether the timestamps are in order: in one C pass where built."""
    if not blocks:
        return [], [], True
    if _accel.recorder is not None:
        try:
            raw_stamps, raw_ends, in_order = _accel.recorder.epb_index(blocks)
        except ValueError as exc:
            raise RingError(str(exc)) from None
        return (memoryview(raw_stamps).cast("Q"), memoryview(raw_ends).cast("Q"),
                bool(in_order))
    run = epb_run(blocks, 0, most=len(blocks) // 32 + 1, max_block_size=MAX_EPB, interfaces=1)
    if run.end != len(blocks):
        raise RingError(f"not whole EPBs of interface 0 (at byte {run.end} of {len(blocks)})")
    stamps = list(map(or_, map(lshift, run.high, repeat(32)), run.low))
    in_order = all(map(le, stamps, islice(stamps, 1, None)))
    return stamps, list(accumulate(map(len, run.blocks))), in_order


_Indexed = tuple[bytes, Seq, Seq]


def _sorted(blocks: bytes, stamps: Seq, ends: Seq, in_order: bool) -> _Indexed:
    """``blocks`` with its packets in timestamp order (stable), with their index."""
    if in_order:
        return blocks, stamps, ends
    order = sorted(range(len(stamps)), key=stamps.__getitem__)
    view = memoryview(blocks)
    starts = [0, *ends[:-1]]
    new_ends: list[int] = []
    offset = 0
    for i in order:
        offset += ends[i] - starts[i]
        new_ends.append(offset)
    return b"".join(view[starts[i]:ends[i]] for i in order), [stamps[i] for i in order], new_ends


class Ring:
    """One recording's packets: the last ``keep_ns`` of them, at most ``max_bytes``."""

    def __init__(self, keep_ns: int, max_bytes: int, store: PieceStore | None = None) -> None:
        if keep_ns <= 0 or max_bytes <= 0:
            raise ValueError("keep_ns and max_bytes must be positive")
        self.keep_ns = keep_ns
        self.max_bytes = max_bytes
        self.store: PieceStore = MemoryStore() if store is None else store
        self._piece_limit = min(MAX_PIECE, max(MIN_PIECE, max_bytes // 16))
        self._pieces: deque[_Piece] = deque()
        self._head_index: tuple[Seq, Seq] | None = None
        """``index()`` of the oldest piece's whole buffer, kept while it is being cut."""
        self._packets = self._bytes = 0
        self._captured = self._aged_time = self._aged_size = 0
        self._kernel_dropped = self._interface_dropped = 0

    # --- input -------------------------------------------------------------------------------

    def add(self, blocks: bytes, now_ns: int) -> None:
        """Keep the EPBs ``blocks`` (of interface 0, any order), then age the ring at ``now_ns``.
        What is older than ``keep`` goes first (counted as such); then each piece makes its
        own room (:meth:`_push`)."""
        self._age_by_time(now_ns)
        if blocks:
            stamps, ends, in_order = _index(blocks)
            self._captured += len(stamps)
            indexed = _sorted(blocks, stamps, ends, in_order)
            if self._pieces and indexed[1][0] < self._pieces[-1].last:
                indexed = self._merge_tail(indexed[0], indexed[1][0])
            self._append(*indexed)
        self.age(now_ns)

    def note_kernel(self, kernel_dropped: int, interface_dropped: int) -> None:
        """libpcap's cumulative drop counters, reported with the ring's own."""
        self._kernel_dropped, self._interface_dropped = kernel_dropped, interface_dropped

    def age(self, now_ns: int) -> None:
        """Drop what is older than ``now_ns - keep_ns``, then what exceeds ``max_bytes``."""
        self._age_by_time(now_ns)
        self._make_room(0)

    def _age_by_time(self, now_ns: int) -> None:
        cutoff = now_ns - self.keep_ns
        pieces = self._pieces
        while pieces and pieces[0].last < cutoff:
            self._aged_time += self._pop_head().packets
        if pieces and pieces[0].first < cutoff:
            self._cut_head(cutoff)

    def _make_room(self, size: int) -> None:
        """Drop the oldest pieces until ``size`` more bytes fit in ``max_bytes``."""
        pieces = self._pieces
        while pieces and self.store.held + size > self.max_bytes:
            self._aged_size += self._pop_head().packets

    def clear(self) -> None:
        """Free every buffer at once (the counters stay)."""
        self._pieces.clear()
        self._head_index = None
        self.store.clear()
        self._packets = self._bytes = 0

    # --- output ------------------------------------------------------------------------------

    def window(self, t_from: int, t_to: int) -> Window:
        """The packets with ``t_from <= timestamp <= t_to``, in order."""
        chunks: list[Chunk] = []
        packets = nbytes = 0
        first = last = None
        for i, piece in enumerate(self._pieces):
            if piece.last < t_from:
                continue
            if piece.first > t_to:
                break
            chunk: Chunk
            if t_from <= piece.first and piece.last <= t_to:  # whole: not read here
                chunk = self.store.part(piece.ref, piece.start, piece.size)
                count, lo_ts, hi_ts = piece.packets, piece.first, piece.last
            else:  # a piece at an end of the window: read it to cut it
                blocks = self.store.get(piece.ref)
                stamps, ends = (self._head_index if i == 0 and self._head_index
                                else index(blocks))
                skip = bisect_right(ends, piece.start)  # packets before the first held
                lo = max(skip, bisect_left(stamps, t_from))
                hi = bisect_right(stamps, t_to)
                if hi <= lo:
                    continue
                chunk = memoryview(blocks)[ends[lo - 1] if lo else 0:ends[hi - 1]]
                count, lo_ts, hi_ts = hi - lo, stamps[lo], stamps[hi - 1]
            chunks.append(chunk)
            packets += count
            nbytes += len(chunk)
            first = lo_ts if first is None else first
            last = hi_ts
        return Window(chunks, packets, nbytes, first, last)

    def statistics(self) -> RingStatistics:
        pieces = self._pieces
        return RingStatistics(
            packets=self._packets, bytes=self._bytes, memory=self.store.held,
            first_timestamp=pieces[0].first if pieces else None,
            last_timestamp=pieces[-1].last if pieces else None,
            captured=self._captured, aged_out_time=self._aged_time,
            aged_out_size=self._aged_size, kernel_dropped=self._kernel_dropped,
            interface_dropped=self._interface_dropped)

    # --- the pieces --------------------------------------------------------------------------

    def _append(self, blocks: bytes, stamps: Seq, ends: Seq) -> None:
        """Append sorted EPBs (no older than the newest held) as pieces of at most the limit."""
        limit = self._piece_limit
        if len(blocks) <= limit:
            self._push(blocks, len(stamps), stamps[0], stamps[-1])
            return
        lo = 0
        while lo < len(stamps):
            start = ends[lo - 1] if lo else 0
            hi = max(lo + 1, bisect_right(ends, start + limit))
            self._push(blocks[start:ends[hi - 1]], hi - lo, stamps[lo], stamps[hi - 1])
            lo = hi

    def _push(self, blocks: bytes, packets: int, first: int, last: int) -> None:
        """Keep one piece, the oldest ones making room for it *before* it is stored: the
        store (memory, or the disk) never holds more than ``max_bytes``, not even while a
        batch larger than the ring goes in (a piece is at most ``max_bytes // 16``)."""
        self._make_room(len(blocks))
        self._pieces.append(_Piece(self.store.put(blocks), len(blocks), 0, packets, first, last))
        self._packets += packets
        self._bytes += len(blocks)

    def _pop_head(self) -> _Piece:
        piece = self._pieces.popleft()
        self._head_index = None
        self._packets -= piece.packets
        self._bytes -= piece.size - piece.start
        self.store.free(piece.ref)
        return piece

    def _pop_tail(self) -> _Piece:
        if len(self._pieces) == 1:
            return self._pop_head()
        piece = self._pieces.pop()
        self._packets -= piece.packets
        self._bytes -= piece.size
        self.store.free(piece.ref)
        return piece

    def _cut_head(self, cutoff: int) -> None:
        """Age out the oldest piece's packets before ``cutoff`` (its newest is not)."""
        head = self._pieces[0]
        if self._head_index is None:
            self._head_index = index(self.store.get(head.ref))
        stamps, ends = self._head_index
        keep_from = bisect_left(stamps, cutoff)
        offset = ends[keep_from - 1] if keep_from else 0
        if offset <= head.start:
            return
        gone = head.packets - (len(stamps) - keep_from)
        self._aged_time += gone
        self._packets -= gone
        self._bytes -= offset - head.start
        head.start, head.packets, head.first = offset, head.packets - gone, stamps[keep_from]

    def _merge_tail(self, blocks: bytes, oldest: int) -> _Indexed:
        """The held packets newer than ``oldest`` taken back and merged with ``blocks`` (the
        kernel delivered out of order across batches): rare, and bounded by the skew."""
        taken: list[bytes | memoryview] = []
        while self._pieces and self._pieces[-1].last > oldest:
            piece = self._pieces[-1]
            taken.insert(0, memoryview(self.store.get(piece.ref))[piece.start:])
            self._pop_tail()
        joined = b"".join([*taken, blocks])
        return _sorted(joined, *_index(joined))


# --- the budget of all recordings of an agent ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    recordings: int
    reserved: int
    max_bytes: int
    max_recordings: int


@dataclass
class Budget:
    """What all recordings of an agent may hold: ``max_bytes`` together, ``max_recordings``."""

    max_bytes: int
    max_recordings: int
    _reserved: dict[str, int] = field(default_factory=dict)

    def reserve(self, key: str, nbytes: int) -> None:
        """Reserve ``nbytes`` for recording ``key``, or raise :class:`BudgetRefused`."""
        if key in self._reserved:
            raise BudgetRefused(f"recording {key} already holds a reservation")
        if nbytes <= 0:
            raise BudgetRefused(f"a recording needs a positive max_bytes, not {nbytes}")
        if len(self._reserved) >= self.max_recordings:
            raise BudgetRefused(
                f"{len(self._reserved)} recordings already run here, the most this agent "
                f"keeps (recorder.max_recordings): stop one, or ask the operator to raise it")
        free = self.max_bytes - sum(self._reserved.values())
        if nbytes > free:
            raise BudgetRefused(
                f"{size_text(nbytes)} does not fit: {size_text(free)} of this agent's "
                f"{size_text(self.max_bytes)} (recorder.max_bytes) is free, the rest is held by "
                f"{len(self._reserved)} running recordings; ask for less (--max-bytes), stop "
                "one, or ask the operator to raise it")
        self._reserved[key] = nbytes

    def release(self, key: str) -> None:
        self._reserved.pop(key, None)

    def statistics(self) -> BudgetStatistics:
        return BudgetStatistics(len(self._reserved), sum(self._reserved.values()),
                                self.max_bytes, self.max_recordings)


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
