"""Hot-path helpers on little-endian Enhanced Packet Blocks, for the merge and the api.

The agent sends many EPBs in one WebSocket frame (its IDB before the first, its ISB after the
last: :func:`split_source_blocks` sorts them); the api splits them, orders them by
timestamp and writes them out with only the interface id rewritten. None of this re-encodes
or parses options: a packet costs one ``unpack_from``, one slice and a few appends.

Long runs of EPBs (:func:`epb_run`, behind ``PcapngDecoder.next_packets`` and ``pcapd merge``)
cost less again. Per block, Python runs only the walk from length field to length field (where
a block starts depends on the one before it, so that step cannot be done in bulk) and, where
ids change, a store of the new id. The rest is a few C-level passes over the whole run: one
``struct`` format, joined from per-length fragments, reads the fixed fields of every block in
one call (each field a strided slice of its tuple, checked in bulk against what ``next_raw``
requires); a second cuts every block out as ``bytes``. Measured 0.20 µs per 60–100-byte packet
in 256 KiB reads against 0.31 µs for :func:`split_packets`' loop and 0.42 µs for the decoder's
former one (CPython 3.11, a shared 2-vCPU VM); for batches of a hundred packets the fixed
costs of building two formats make it no faster than :func:`split_packets`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter, lshift, or_, sub
from typing import NamedTuple

from pcapd._accel import walk as _compiled
from pcapd.errors import PcapngFormatError
from pcapd.pcapng.blocks import EPB, IDB, ISB

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

    By the compiled walker where it is on (one C pass frames and checks the whole batch; a
    batch it refuses goes to :func:`split_packets_pure` for the exact error), else
    :func:`split_packets_pure`. The api's merge of several sources splits every batch so.
    """
    if _compiled is not None and data:
        blocks, high, low, ids, end, _ = _compiled.epb_run(
            data, 0, len(data) // 32 + 1, 0xFFFFFFFF, 1 << 32, None
        )
        if end == len(data):
            return PacketBatch(blocks, list(map(or_, map(lshift, high, repeat(32)), low)), ids)
    return split_packets_pure(data, offset)


def split_packets_pure(data: bytes, offset: int = 0) -> PacketBatch:
    """:func:`split_packets` in Python: the twin of the compiled path.

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


# -- runs of EPBs in columns ------------------------------------------------------------------

_TABLE_SIZE = 1 << 14
"""Block lengths below this are looked up in lists (a list index is far cheaper than a
``>> 2`` or a dict lookup in CPython 3.11); longer blocks take a slower, equivalent path."""
_COLUMNS = 7
# The fields of a run as one ``struct`` format: "<6I" reads block 0's type, length, interface
# id, timestamp high and low words and captured length; then per block "{length - 28}x7I"
# skips to its trailing length and reads it with the next block's first six fields (the last
# block ends in "I" instead). Seven columns per block for two format codes: building a format
# costs per character and per code (CPython parses it twice), the largest single cost here.
_FIELDS_HEAD = b"<6I"


class _Tables:
    """Per ``max_block_size``, indexed by block length: the walk's step in 32-bit words and
    the two ``struct`` format fragments, or None where no EPB can have that length (made all
    at once, about 1.4 ms, so that the walk never meets one missing)."""

    def __init__(self, limit: int) -> None:
        size = min(limit + 1, _TABLE_SIZE)
        self.limit = limit
        self.step: list[int | None] = [None] * size
        self.fields: list[bytes | None] = [None] * size
        self.whole: list[bytes | None] = [None] * size
        for total in range(32, size, 4):
            self.step[total] = total >> 2
            self.fields[total] = self.fragment(total, whole=False)
            self.whole[total] = self.fragment(total, whole=True)

    @staticmethod
    def fragment(total: int, *, whole: bool) -> bytes:
        return b"%ds" % total if whole else b"%dx7I" % (total - 28)

    def layout(self, lengths: Sequence[int]) -> bytes:
        """The format that cuts out blocks of ``lengths`` (each a possible EPB length)."""
        table = self.whole
        try:
            # itemgetter makes a tuple of the exact size (a map would make a growing list)
            fragments = itemgetter(*lengths)(table) if len(lengths) > 1 else (table[lengths[0]],)
            return b"".join(fragments)  # type: ignore[arg-type]  # lengths are EPB lengths
        except IndexError:  # a block longer than the table
            return b"".join([self.fragment(total, whole=True) for total in lengths])


_TABLES: dict[int, _Tables] = {}  # by max_block_size


def _tables(limit: int) -> _Tables:
    tables = _TABLES.get(limit)
    if tables is None:
        tables = _TABLES[limit] = _Tables(limit)
    return tables


class EpbRun(NamedTuple):
    """Whole, valid little-endian EPBs in a row, in columns (see :func:`epb_run`)."""

    blocks: list[bytes]
    high: Sequence[int]
    """Each block's timestamp ticks >> 32, as stored."""
    low: Sequence[int]
    """Each block's timestamp ticks & 0xFFFFFFFF."""
    interface_ids: Sequence[int]
    """As read, before any rewrite."""
    end: int
    """Offset in the buffer just past the last block (``pos`` if there is none)."""
    refused: bool
    """The run ends at a whole block that is not a valid EPB (rather than at the end of the
    input or after ``most`` blocks)."""


class PacketColumns(NamedTuple):
    """Parallel columns of a run of EPBs: what ``PacketBatch`` holds, but each timestamp in
    its two stored 32-bit halves, so that a caller builds its own sort keys in one pass."""

    blocks: list[bytes]
    high: Sequence[int]
    """Each block's timestamp ticks >> 32."""
    low: Sequence[int]
    """Each block's timestamp ticks & 0xFFFFFFFF."""
    interface_ids: Sequence[int]
    """The section's ids, as read (before any rewrite)."""


def _walk(
    buf: bytes | bytearray, pos: int, most: int, tables: _Tables
) -> tuple[list[bytes], int, int, bool]:
    """Walk up to ``most`` blocks from ``pos`` (a multiple of 4), each found at the offset the
    one before gives, while their length fields lie in ``buf`` and are lengths an EPB can have.

    Returns the blocks' fields-format fragments, the offset past the last of them (possibly
    past the end of ``buf``), the last one's length, and whether the walk stopped at a length
    no EPB can have.
    """
    fragments: list[bytes] = []
    add = fragments.append
    step, fields = tables.step, tables.fields
    size = len(buf) & ~3
    total = 0
    with memoryview(buf) as view, view[:size].cast("I") as words:
        q = (pos >> 2) + 1  # the word holding the next block's length
        refused = False
        while True:
            try:
                for _ in range((most - len(fragments)) >> 1):  # two at a time: less looping
                    total = words[q]
                    q += step[total]  # type: ignore[operator]
                    add(fields[total])  # type: ignore[arg-type]
                    total = words[q]
                    q += step[total]  # type: ignore[operator]
                    add(fields[total])  # type: ignore[arg-type]
                if len(fragments) < most:
                    total = words[q]
                    q += step[total]  # type: ignore[operator]
                    add(fields[total])  # type: ignore[arg-type]
                break
            except TypeError:  # step None: no EPB has this length
                refused = True
                break
            except IndexError:
                if q >= size >> 2:  # the next length field lies past the end of the input
                    break
                total = words[q]  # longer than the table: step by hand
                if total & 3 or total > tables.limit:
                    refused = True
                    break
                q += total >> 2
                add(tables.fragment(total, whole=False))
    return fragments, (q - 1) << 2, total, refused


def epb_run(
    buf: bytes | bytearray,
    pos: int,
    *,
    most: int,
    max_block_size: int,
    interfaces: int,
    interface_map: Sequence[int] | None = None,
) -> EpbRun:
    """:func:`epb_run_pure`, by the compiled walker where it is built and on (``pcapd._accel``).

    The same answer for the same bytes (tests/pcapng/test_packets_walk_differential.py), in a single
    C pass instead of the Python walk, checks and cuts (docs/performance.md, "Merge").
    """
    if _compiled is None or most < 1:
        return epb_run_pure(
            buf, pos, most=most, max_block_size=max_block_size, interfaces=interfaces,
            interface_map=interface_map,
        )  # fmt: skip
    blocks, high, low, ids, end, refused = _compiled.epb_run(
        buf, pos, most, max_block_size, interfaces, interface_map
    )
    return EpbRun(blocks, high, low, ids, end, refused)


def epb_run_pure(
    buf: bytes | bytearray,
    pos: int,
    *,
    most: int,
    max_block_size: int,
    interfaces: int,
    interface_map: Sequence[int] | None = None,
) -> EpbRun:
    """Frame the whole, valid little-endian EPBs in a row from ``pos`` (at most ``most``).

    A block belongs to the run if it is all in ``buf`` and passes every framing check of
    ``PcapngDecoder.next_raw``: type EPB, a length that is a multiple of 4, at least 32 plus the
    captured length and at most ``max_block_size``, equal to the trailing length, and an
    interface id below ``interfaces``. With ``interface_map`` (one new id per interface, each
    below 2**32), every block's interface id is first rewritten in ``buf`` (then a
    ``bytearray``) to ``interface_map[id]``: the blocks are cut out with their new ids at no
    extra copy.

    Needs a little-endian host with 4-byte unsigned ints, and ``pos % 4 == 0``.
    """
    tables = _tables(max_block_size)
    fragments, end, last, refused = _walk(buf, pos, most, tables)
    if end > len(buf):  # the last block is not all here yet (only the last can be cut off)
        fragments.pop()
        end -= last
    n = len(fragments)
    if not n:
        return EpbRun([], (), (), (), pos, refused)
    fields = struct.Struct(_FIELDS_HEAD + b"".join(fragments)[:-2] + b"I").unpack_from(buf, pos)
    lengths = fields[1::_COLUMNS]
    ids = fields[2::_COLUMNS]
    first_id = ids[0]
    if (
        fields[0::_COLUMNS].count(EPB) != n
        or lengths != fields[6::_COLUMNS]
        or _caplen_overruns(lengths, fields[5::_COLUMNS])
        or (first_id >= interfaces if ids.count(first_id) == n else max(ids) >= interfaces)
    ):
        n = _valid(fields, interfaces)
        refused = True
        if not n:
            return EpbRun([], (), (), (), pos, refused)
        fields = fields[: n * _COLUMNS]
        lengths = fields[1::_COLUMNS]
        ids = fields[2::_COLUMNS]
        end = pos + sum(lengths)
    if interface_map is not None:
        _rewrite_ids(buf, pos, lengths, ids, interface_map, tables.step)
    blocks = list(struct.Struct(tables.layout(lengths)).unpack_from(buf, pos))
    return EpbRun(blocks, fields[3::_COLUMNS], fields[4::_COLUMNS], ids, end, refused)


_AT_LEAST_32 = bytes(range(32, 256))
_PLAIN_LENGTH = tuple(32 + caplen + (-caplen & 3) for caplen in range(_TABLE_SIZE))
"""By captured length: the length of an EPB without options (32 bytes, the data, padding)."""


def _caplen_overruns(lengths: Sequence[int], caplens: Sequence[int]) -> bool:
    """Whether some block is shorter than 32 bytes plus its captured length.

    In bulk. Most runs carry no options: then each length is exactly what ``_PLAIN_LENGTH``
    gives for its captured length, one lookup and one tuple compare (about 150 instructions a
    packet against 350). Otherwise the differences, as bytes, lose every byte of 32 and more in
    one ``translate``; a difference outside a byte (below 0, or options of 224 bytes and more)
    takes ``min``.
    """
    if len(caplens) > 1:
        try:
            if itemgetter(*caplens)(_PLAIN_LENGTH) == tuple(lengths):
                return False
        except IndexError:  # a captured length beyond the table: the general check
            pass
    try:
        return bool(bytes(map(sub, lengths, caplens)).translate(None, _AT_LEAST_32))
    except ValueError:
        return bool(min(map(sub, lengths, caplens)) < 32)


def _valid(fields: tuple[int, ...], interfaces: int) -> int:
    """The number of blocks in a row, from the first, whose fields pass every check."""
    for i in range(0, len(fields), _COLUMNS):
        block_type, total, interface_id, _, _, caplen, trailer = fields[i : i + _COLUMNS]
        if (
            block_type != EPB
            or trailer != total
            or total < 32 + caplen
            or interface_id >= interfaces
        ):
            return i // _COLUMNS
    return len(fields) // _COLUMNS


def _rewrite_ids(
    buf: bytes | bytearray,
    pos: int,
    lengths: Sequence[int],
    ids: Sequence[int],
    interface_map: Sequence[int],
    step: list[int | None],
) -> None:
    first = ids[0]
    uniform = ids.count(first) == len(ids)  # one interface, as in most runs
    if uniform and interface_map[first] == first:
        return
    if not uniform and all(new == old for old, new in enumerate(interface_map)):
        return
    if not isinstance(buf, bytearray):
        raise TypeError("rewriting interface ids needs a bytearray")
    if uniform and (first ^ interface_map[first]) >> 8 == 0:
        # The ids differ in their low byte only (little-endian: the first): store that byte,
        # stepping by the lengths themselves (cheaper than a 32-bit store through a view).
        low = interface_map[first] & 0xFF
        at = pos + 8
        for total in lengths:
            buf[at] = low
            at += total
        return
    with memoryview(buf) as view, view[: len(buf) & ~3].cast("I") as words:
        q = (pos >> 2) + 2
        try:
            if uniform:
                new = interface_map[first]
                for total in lengths:
                    words[q] = new
                    q += step[total]  # type: ignore[operator]
            else:
                for total, old in zip(lengths, ids, strict=True):
                    words[q] = interface_map[old]
                    q += step[total]  # type: ignore[operator]
        except IndexError:  # a block longer than the table: all over again, by hand
            q = (pos >> 2) + 2
            for total, old in zip(lengths, ids, strict=True):
                words[q] = interface_map[old]
                q += total >> 2


# -- checking a run of EPBs without cutting it -------------------------------------------------

_CHECK_LIMIT = 1 << 24
"""Longest block :func:`check_epbs` walks over (larger than any message that carries one)."""


def check_epbs(
    buf: bytes | bytearray, *, interface_id: int = 0, offset: int = 0, new_id: int | None = None
) -> int:
    """How many EPBs ``buf`` holds, once it is known to be nothing but whole, valid
    little-endian EPBs of interface ``interface_id``; with ``new_id``, each block's interface id
    is then rewritten to it in place (``buf`` must be a ``bytearray``).

    The checks are those of :func:`split_packets` (type, length a multiple of 4 and at least 32
    plus the captured length, equal trailing length) plus the interface id, but no block is cut
    out: the api passes a single source's batch on as it came (see ``pcapd.api.capture``).
    Blocks all of one length (a flood of equal packets: the heaviest load) are checked by
    comparing strided columns of the buffer with one expected pattern each, in C. Otherwise
    Python walks from length field to length field, and one ``struct`` call reads every fixed
    field, checked in bulk (the technique of :func:`epb_run`). A fault raises
    :class:`PcapngFormatError` at ``offset`` plus the position in ``buf``. Needs a little-endian
    host.
    """
    size = len(buf)
    if not size:
        return 0
    if _compiled is not None and 0 <= interface_id <= 0xFFFFFFFF:
        rewrite = new_id is not None and 0 <= new_id <= 0xFFFFFFFF
        n = _compiled.check_epbs(buf, interface_id, new_id if rewrite else -1)
        if not n:
            raise _first_fault(buf, interface_id, offset)
        if new_id is not None and not rewrite:
            raise ValueError(f"interface id must be an unsigned 32-bit integer: {new_id}")
        return int(n)
    return check_epbs_pure(buf, interface_id=interface_id, offset=offset, new_id=new_id)


def check_epbs_pure(
    buf: bytes | bytearray, *, interface_id: int = 0, offset: int = 0, new_id: int | None = None
) -> int:
    """:func:`check_epbs` in Python: the twin of the compiled one (see :mod:`pcapd._accel`)."""
    size = len(buf)
    if not size:
        return 0
    n = _uniform_epbs(buf, interface_id)
    if n:
        lengths: Sequence[int] = [size // n] * n
    else:
        n, lengths = _walked_epbs(buf, interface_id)
    if not n:
        raise _first_fault(buf, interface_id, offset)
    if new_id is not None and new_id != interface_id:
        if not 0 <= new_id <= 0xFFFFFFFF:
            raise ValueError(f"interface id must be an unsigned 32-bit integer: {new_id}")
        if not isinstance(buf, bytearray):
            raise TypeError("rewriting interface ids needs a bytearray")
        with memoryview(buf) as view, view[: size & ~3].cast("I") as words:
            q = 2  # the word holding the first block's interface id
            for total in lengths:
                words[q] = new_id
                q += total >> 2
    return n


def _uniform_epbs(buf: bytes | bytearray, interface_id: int) -> int:
    """The number of blocks if ``buf`` is valid EPBs all of the first block's length, else 0.

    Proof by induction over the blocks: block k starts at ``k * length`` when every earlier one
    is a valid block of that length, which the column checks establish for each k.
    """
    size = len(buf)
    if size < 32 or size & 3:
        return 0
    with memoryview(buf) as view, view.cast("I") as words:
        total = words[1]
        if total < 32 or total & 3 or size % total:
            return 0
        n, step = size // total, total >> 2
        pattern = _U32.pack
        if (
            words[0::step].tobytes() != pattern(EPB) * n
            or words[1::step].tobytes() != pattern(total) * n
            or words[step - 1 :: step].tobytes() != pattern(total) * n
            or words[2::step].tobytes() != pattern(interface_id) * n
            or (words[5::step].tobytes() != pattern(words[5]) * n  # one captured length
                and max(words[5::step]) > total - 32)
            or words[5] > total - 32
        ):
            return 0
    return n


def _walked_epbs(buf: bytes | bytearray, interface_id: int) -> tuple[int, Sequence[int]]:
    """(count, lengths) of the valid EPBs that make up all of ``buf``; (0, ()) if they do not."""
    fragments, end, _, refused = _walk(buf, 0, len(buf) // 32 + 1, _tables(_CHECK_LIMIT))
    n = len(fragments)
    if refused or end != len(buf) or not n:
        return 0, ()
    fields = struct.Struct(_FIELDS_HEAD + b"".join(fragments)[:-2] + b"I").unpack_from(buf)
    lengths = fields[1::_COLUMNS]
    if (
        fields[0::_COLUMNS].count(EPB) != n
        or lengths != fields[6::_COLUMNS]
        or _caplen_overruns(lengths, fields[5::_COLUMNS])
        or fields[2::_COLUMNS].count(interface_id) != n
    ):
        return 0, ()
    return n, lengths


def _first_fault(buf: bytes | bytearray, interface_id: int, offset: int) -> PcapngFormatError:
    """What is wrong with ``buf``, and where: the slow way (only ever for a faulty peer)."""
    pos = 0
    batch = split_packets(bytes(buf), offset)  # raises for a framing fault
    for block, iid in zip(batch.blocks, batch.interface_ids, strict=True):
        if iid != interface_id:
            return PcapngFormatError(
                f"enhanced packet block of interface {iid} where only {interface_id} exists",
                offset + pos,
            )
        pos += len(block)
    return PcapngFormatError("enhanced packet blocks that do not frame", offset)


# -- one source's payload -----------------------------------------------------------------------

_HEAD = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class SourceBlocks:
    """One payload of a single interface's blocks, sorted by kind (:func:`split_source_blocks`)."""

    interfaces: list[bytes]
    """The whole IDBs that led it."""
    packets: bytes
    """The EPBs between, concatenated as they came (not cut into blocks): framing checked,
    every one of the interface asked for."""
    count: int
    """How many EPBs ``packets`` holds."""
    statistics: list[bytes]
    """The whole ISBs that ended it."""
    offset: int
    """Where ``packets`` begins in the payload (for the position in an error)."""


def split_source_blocks(
    data: bytes, *, interface_id: int = 0, what: str = "a source's payload"
) -> SourceBlocks:
    """Sort a payload of one interface's little-endian blocks into IDBs, a run of EPBs
    (checked by :func:`check_epbs`, counted) and ISBs.

    A source sends its IDB first and its ISB last, so IDBs may only lead a payload and ISBs
    only end one: they are peeled off the edges (ISBs found walking back from the end by their
    trailing lengths) and the middle is checked as EPBs of ``interface_id`` in one pass.
    Anything else raises :class:`PcapngFormatError` (``what`` names the payload in it).
    """
    interfaces: list[bytes] = []
    start = 0
    while len(data) - start >= 12 and _HEAD.unpack_from(data, start)[0] == IDB:
        length = _block_length(data, start, what)
        interfaces.append(data[start:start + length])
        start += length
    tail = _trailing_statistics(data, start)
    end = tail[0][0] if tail else len(data)
    statistics = [data[offset:offset + length] for offset, length in tail]
    if start == end:
        return SourceBlocks(interfaces, b"", 0, statistics, start)
    packets = data if start == 0 and end == len(data) else data[start:end]
    count = check_epbs(packets, interface_id=interface_id, offset=start)
    return SourceBlocks(interfaces, packets, count, statistics, start)


def _block_length(data: bytes, offset: int, what: str) -> int:
    length = int(_HEAD.unpack_from(data, offset)[1])
    if length < 12 or length & 3 or offset + length > len(data):
        raise PcapngFormatError(f"bad block length {length} in {what}", offset)
    return length


def _trailing_statistics(data: bytes, start: int) -> list[tuple[int, int]]:
    """(offset, length) of the ISBs that end a payload: found by walking back from the end."""
    found: list[tuple[int, int]] = []
    end = len(data)
    while end - start >= 12:
        length = _U32.unpack_from(data, end - 4)[0]
        offset = end - length
        if length < 12 or offset < start or _HEAD.unpack_from(data, offset) != (ISB, length):
            break
        found.insert(0, (offset, length))
        end = offset
    return found
