"""``pcapd merge``: pcap and pcapng files merged by timestamp into one pcapng, like ``mergecap``.

Theory of operation
-------------------
An I/O shell around the sans-I/O decoders of :mod:`pcapd.pcapng` and the live merge
(:class:`pcapd.merge.Merge`), so that merging files runs the same merge as a live capture. Each
input is a merge source that never goes stale (``lateness=math.inf``): offline there is no
clock, only promises, and a file promises no packet below the greatest timestamp read from it
so far (its *frontier*, recorded by ``push``). The merge releases what lies at or below the
lowest frontier: timestamp order across inputs, file order within each (packets of a file that
goes back in time keep their place and are counted in ``reordered``). Equal timestamps go out
later input first, as mergecap's earliest-packet test does, so both tools agree packet for
packet. For that, a file's promise has to be strict: it may still hold more packets at its
greatest timestamp so far, and those must meet the other inputs' packets of that time in one
release. So each push holds back its trailing run of packets at its last timestamp until the
next push (or the end of the file); what was pushed then lies below anything still to come.

Bounded memory. The next chunk is always read from the input with the lowest frontier, the one
holding the others back. That read lifts its frontier above what it had buffered (every other
frontier was higher already), so after each read and pop an input holds at most its latest
chunk or two of packets, however large the files; ``max_buffered`` is set above that, so it
never forces a packet out. A read is :data:`BUFFER_BUDGET` over the input count, within
:data:`MIN_CHUNK` .. :data:`MAX_CHUNK`: small enough that what waits stays in the CPU caches.
With 8 inputs and more, a pop follows every ``inputs // 4`` reads rather than every read (a
pop costs a few steps per input besides its packets): those reads wait too, a quarter of the
budget more.

Speed. Per packet, the hot path is ``PcapngDecoder.next_packet_columns``, which frames a
read's run of Enhanced Packet Blocks in bulk and rewrites each interface id in the input buffer
before cutting the block out; then one pass to sort keys (:class:`_Clock`: nanoseconds after a
base as floats, which CPython sorts about twice as fast as 61-bit ints; for nanosecond
interfaces while the timestamps' high word stays the first one, just ``map(float, low)``), one
C sort per release in the merge, one ``write`` per release. Other blocks, big-endian
sections and classic pcap take slower, exact paths. The measurements and the profile are in
``docs/performance.md`` ("Merge").

Interfaces. Each input interface becomes an output interface named ``FILE:NAME``
(``a.pcapng:eth0``, ``a.pcapng:if1`` without ``if_name``, ``a.pcap`` for classic pcap,
``FILE#N:NAME`` in the Nth section of concatenated sections, whose ids restart at 0). Inputs
of the same file name are told apart by as much of their paths as needed (``le/a.pcapng``,
``be/a.pcapng``), the same path given twice by its place (``a.pcapng (2)``). Leading
interfaces are numbered in input order; one defined later in a file gets the next free id when
read. The output IDB keeps link type, snaplen and every option but ``if_name`` (``if_tsresol``
and ``if_tsoffset`` too, so EPBs pass through unchanged but for the interface id; ordering
applies ``if_tsoffset``, as Wireshark does); ``if_description`` is the input's path where there
is none. Big-endian options are swapped where their layout is known and dropped where not
(custom options, a BPF-bytecode ``if_filter``); big-endian EPBs keep comments, flags, drop
count, packet id and queue.

Other blocks.

- Name Resolution, Decryption Secrets and copyable custom (0x00000BAD) blocks are copied when
  read, so they precede the packets that follow them in their file. Big-endian NRBs keep their
  IPv4/IPv6 records; big-endian custom blocks keep their data as it is (only the enterprise
  number is swapped: the data's layout is the enterprise's); big-endian DSBs are skipped.
- Interface Statistics Blocks: the last of each interface (counters are cumulative) is written
  at the end, with its interface id rewritten.
- Simple Packet Blocks become EPBs of their section's interface 0, stamped with the previous
  packet's time in their file (the epoch before any), so they keep their place; mergecap
  stamps them 0.
- Obsolete Packet Blocks (type 2) become the EPBs they are the ancestors of, as Wireshark
  reads them (their drop count as ``epb_dropcount``).
- Anything else (journal, non-copyable custom and unknown blocks) is skipped and counted in
  ``skipped_blocks``. A section of a major version other than 1 is passed over whole (its
  layout is unknown) and reported in ``skipped_sections``; the file's other sections are read.

Damage. A malformed block (or a file cut short: the common case after a crash) ends that input
where it starts, as if the file ended there: every packet before it is merged, the other
inputs are merged whole, and ``MergeResult.damaged`` says where and why (``pcapd merge`` then
exits 4). Only an input that is not pcap or pcapng at all (or compressed: Wireshark reads
gzip, pcapd asks for it decompressed) stops the merge before it starts.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pcapd import __version__
from pcapd.errors import PcapdError, PcapngFormatError
from pcapd.merge import Merge
from pcapd.pcapng import (
    EPB,
    IDB,
    ISB,
    NRB,
    PB,
    SHB,
    SPB,
    EnhancedPacket,
    NameResolution,
    PcapDecoder,
    PcapHeader,
    PcapngDecoder,
    RawBlock,
    SimplePacket,
    encode_interface_description,
    encode_name_resolution,
    encode_section_header,
    epb_timestamp,
    parse,
    sniff_format,
    with_interface_id,
)
from pcapd.pcapng import options as o
from pcapd.pcapng.buffer import InputBuffer
from pcapd.pcapng.reader import SkippedSection

__all__ = [
    "BUFFER_BUDGET",
    "MAX_CHUNK",
    "MIN_CHUNK",
    "InputDamage",
    "MergeInputError",
    "MergeOutputError",
    "MergeResult",
    "SkippedInputSection",
    "merge_files",
]

BUFFER_BUDGET = 4 * 1024 * 1024
"""Bytes read ahead over all inputs together; each read is this divided by the input count,
within MIN_CHUNK..MAX_CHUNK (measured fastest at 128–256 KiB for 2 to 32 inputs)."""
MIN_CHUNK = 64 * 1024
MAX_CHUNK = 256 * 1024
_WRITE_BUFFER = 1024 * 1024
_NS = 10**9
_RELEASE_DIVISOR = 4
"""A release follows every ``inputs // 4`` reads (every read for up to 7 inputs): a release
costs a few steps per input besides its packets, so with many inputs (and reads made small by
the budget) several reads' worth go out together; what waits stays within a quarter of the
read budget more (measured: 250 of ~5,750 instructions a packet less at k = 32)."""
_TIE_RUN_CAP = 1 << 16
"""The longest run of equal timestamps a file holds back (see the module docstring); a longer
one goes out as it comes, so that a file of one timestamp cannot make the merge hold it all."""
_EXACT = 1 << 53  # every integer up to this is a float
_FLOAT_MUL = 1 << 21  # low * mul is exact in a float for every 32-bit low

_DSB = 0x0000000A  # Decryption Secrets Block
_CUSTOM_COPYABLE = 0x00000BAD
_COPIED_AS_IS = (NRB, _DSB, _CUSTOM_COPYABLE)
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x04\x22\x4d\x18", "lz4"))
"""Magic numbers of the compressions Wireshark reads transparently, and pcapd does not."""
_PB_HEAD = {False: struct.Struct("<HH4I"), True: struct.Struct(">HH4I")}
_EPB_DROPCOUNT = 4

_HEAD = struct.Struct("<II")
_U32 = struct.Struct("<I")
_EPB_HEAD = struct.Struct("<7I")
_ISB_FIXED = struct.Struct("<3I")

# Options that survive a big-endian block, by code: None copies the value's bytes (strings and
# byte strings), a struct format swaps a number of that layout. Codes not listed are dropped.
_IF_TSOFFSET = 14
_IDB_OPTIONS: dict[int, str | None] = {
    o.OPT_COMMENT: None, o.IF_DESCRIPTION: None, 4: None, 5: None, 6: None, 7: None,
    8: "Q", o.IF_TSRESOL: None, 10: "I", o.IF_FILTER: None, o.IF_OS: None, 13: None,
    _IF_TSOFFSET: "q", 15: None, 16: "Q", 17: "Q", 18: None,
}  # fmt: skip
_EPB_OPTIONS: dict[int, str | None] = {o.OPT_COMMENT: None, 2: "I", 4: "Q", 5: "Q", 6: "I"}
_ISB_OPTIONS: dict[int, str | None] = {
    o.OPT_COMMENT: None, 2: "II", 3: "II", 4: "Q", 5: "Q", 6: "Q", 7: "Q", 8: "Q",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What :func:`merge_files` wrote."""

    packets: int
    interfaces: int
    reordered: int
    """Packets written below an earlier one: only where an input's own timestamps go back."""
    skipped_blocks: int
    """Input blocks not copied (see the module docstring for which)."""
    damaged: tuple[InputDamage, ...] = ()
    """Inputs read only up to a fault (a file cut short, a broken block), in input order."""
    skipped_sections: tuple[SkippedInputSection, ...] = ()
    """Sections of a pcapng version other than 1.x, passed over whole."""


@dataclass(frozen=True, slots=True)
class InputDamage:
    """Where an input stopped being readable; every packet before ``offset`` was merged."""

    path: str
    offset: int
    reason: str
    packets: int
    """Packets merged from this input (all of them lie before the fault)."""

    def __str__(self) -> str:
        kept = "the packet" if self.packets == 1 else f"the {self.packets} packets"
        return (
            f"{self.path}: unreadable from byte offset {self.offset} ({self.reason}): "
            f"merged {kept} before it"
        )


@dataclass(frozen=True, slots=True)
class SkippedInputSection:
    """A pcapng section of a major version pcapd cannot read (only 1.x is defined)."""

    path: str
    offset: int
    version: str
    blocks: int

    def __str__(self) -> str:
        return (
            f"{self.path}: the section at byte offset {self.offset} is pcapng version "
            f"{self.version}, which pcapd cannot read: skipped its {self.blocks} blocks"
        )


class MergeInputError(PcapdError):
    """An input is missing, unreadable, empty, compressed, or neither pcap nor pcapng.

    ``offset`` is the byte offset of the fault where its first bytes are wrong, else ``None``.
    (A file damaged after a good start is merged up to the damage: ``MergeResult.damaged``.)
    """

    def __init__(self, path: str, message: str, offset: int | None = None) -> None:
        self.path = path
        self.offset = offset
        super().__init__(f"{path}: {message}")


class MergeOutputError(PcapdError):
    """The output cannot be created or written (nothing is left behind)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


def merge_files(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    chunk_size: int | None = None,
) -> MergeResult:
    """Merge ``inputs`` (pcap or pcapng files, any byte order) into the pcapng ``output``.

    ``output`` ``"-"`` is stdout. A regular output file is written as a hidden temporary file in
    the same directory and renamed over ``output`` when complete, so a failed merge leaves no
    partial file (and the output may be one of the inputs); a file that existed keeps its
    permissions, a symbolic link its target; a device or FIFO is written in place.
    ``chunk_size`` overrides the bytes per read (see the module docstring).

    Raises :class:`MergeInputError` naming the input at fault and :class:`MergeOutputError`
    naming the output; the inputs are all opened and sniffed before the output is created.
    """
    paths = [os.fspath(path) for path in inputs]
    if not paths:
        raise ValueError("merge_files needs at least one input")
    target = os.fspath(output)
    chunk = chunk_size or min(MAX_CHUNK, max(MIN_CHUNK, BUFFER_BUDGET // len(paths)))
    with contextlib.ExitStack() as stack:
        files = [_open_input(path, chunk, stack) for path in paths]
        # Per input, twice what one decode can push (two reads' worth of 32-byte EPBs, or one
        # of 16-byte pcap records): the bound of the theory of operation, with room to spare,
        # so the cap never forces a packet out early.
        merge = Merge(lateness=math.inf, max_buffered=len(paths) * 2 * (chunk // 16 + 1))
        sids = [merge.add_source(0.0) for _ in paths]
        sids.reverse()  # ties: the later input first, as mergecap
        clock = _Clock()
        readers = [
            (_PcapngInput if kind == "pcapng" else _PcapInput)(
                path, label, fh, first, sid, chunk, clock
            )
            for path, label, (fh, first, kind), sid in zip(
                paths, _labels(paths), files, sids, strict=True
            )
        ]
        with _open_output(target) as fh:
            out = _Output(fh, target)
            out.write(encode_section_header(user_application=f"pcapd {__version__} (merge)"))
            for reader in readers:  # leading IDBs in input order, and a frontier for each
                reader.decode(merge, out, until_packet=True)
                while not (reader.started or reader.eof):
                    reader.read()
                    reader.decode(merge, out, until_packet=True)
            active = list(readers)
            every = max(1, len(readers) // _RELEASE_DIVISOR)  # reads per release
            reads = 0
            while active:
                reader = min(active, key=_frontier)
                reader.read()
                reader.decode(merge, out, until_packet=False)
                if reader.eof:
                    reader.flush(merge)
                    merge.remove_source(reader.sid, 0.0)
                    active.remove(reader)
                reads += 1
                if reads == every:
                    out.write_blocks(merge.pop(0.0).blocks)
                    reads = 0
            out.write_blocks(merge.flush())
            out.finish()
    return MergeResult(
        packets=sum(reader.packets for reader in readers),
        interfaces=out.interfaces,
        reordered=merge.statistics().reordered,
        skipped_blocks=sum(reader.skipped for reader in readers),
        damaged=tuple(reader.damage for reader in readers if reader.damage is not None),
        skipped_sections=tuple(
            SkippedInputSection(
                reader.path, section.offset, f"{section.major}.{section.minor}", section.blocks
            )
            for reader in readers
            if isinstance(reader, _PcapngInput)
            for section in reader.skipped_sections
        ),
    )


def _labels(paths: Sequence[str]) -> list[str]:
    """Each input's name in its interfaces' names: the file name, or as many trailing parts of
    its path as tell it from the other inputs of that name (``le/a.pcapng``, ``be/a.pcapng``);
    the same path given twice gets ``(N)``, its place among the inputs."""
    parts = [Path(path).parts or (path,) for path in paths]
    labels = [p[-1] for p in parts]
    for name in {label for label in labels if labels.count(label) > 1}:
        group = [i for i, label in enumerate(labels) if label == name]
        distinct = len({parts[i] for i in group})
        depth = 1
        while len({parts[i][-depth:] for i in group}) < distinct:
            depth += 1
        for i in group:
            labels[i] = str(Path(*parts[i][-depth:]))
        twice = {labels[i] for i in group if sum(labels[j] == labels[i] for j in group) > 1}
        for i in group:
            if labels[i] in twice:
                labels[i] = f"{labels[i]} ({i + 1})"
    return labels


def _frontier(reader: _Input) -> float:
    return reader.frontier


class _Clock:
    """The merge's sort keys: nanoseconds after a base (the first packet's time), shared by
    all inputs, as floats wherever that is exact (within 2**53 ns, ~104 days, of the base).

    CPython sorts floats about twice as fast as 61-bit ints, which take its generic compare.
    A key beyond float range stays an exact int: int and float compare exactly in Python, so
    a mixed list still sorts right, only slower.
    """

    def __init__(self) -> None:
        self.base: int | None = None

    def start(self, ns: int) -> int:
        if self.base is None:
            # A multiple of 2**32: nanosecond inputs' keys are then their low timestamp
            # words, plus 0 while the high word is the first one (see _Input._keys).
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


def _open_input(
    path: str, chunk: int, stack: contextlib.ExitStack
) -> tuple[io.FileIO, bytes, Literal["pcapng", "pcap"]]:
    """Open ``path`` and read its first chunk; refuse what is neither pcap nor pcapng."""
    try:
        fh = stack.enter_context(io.FileIO(path, "rb"))
        first = fh.read(chunk) or b""
        while 0 < len(first) < 4:  # a pipe may deliver fewer bytes than asked for
            more = fh.read(chunk)
            if not more:
                break
            first += more
    except OSError as exc:
        raise MergeInputError(path, f"cannot read: {exc.strerror or exc}") from exc
    if not first:
        raise MergeInputError(path, "empty file: neither pcap nor pcapng")
    for magic, kind in _COMPRESSED:
        if first.startswith(magic):
            raise MergeInputError(path, f"{kind}-compressed: decompress first")
    try:
        kind = sniff_format(first)
    except PcapngFormatError as exc:
        raise MergeInputError(path, str(exc), exc.offset) from exc
    return fh, first, kind


@contextlib.contextmanager
def _open_output(target: str) -> Iterator[io.BufferedWriter]:
    """The output stream; a regular file appears under its name only once complete."""
    if target == "-":
        with _writing("stdout"):
            stdout = io.FileIO(sys.stdout.fileno(), "wb", closefd=False)
        with _closing(io.BufferedWriter(stdout, _WRITE_BUFFER), "stdout") as fh:
            yield fh
        return
    path = Path(target)
    try:
        mode = path.stat().st_mode
        path = path.resolve()  # a symbolic link: replace the file it names, keep the link
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise MergeOutputError(target, f"cannot write: {exc.strerror or exc}") from exc
    if mode is not None and not stat.S_ISREG(mode):  # /dev/null, a FIFO: write in place
        with _writing(target):
            raw = io.FileIO(path, "wb")
        with _closing(io.BufferedWriter(raw, _WRITE_BUFFER), target) as fh:
            yield fh
        return
    tmp, fd = _create_temporary(path)
    try:
        with _closing(io.BufferedWriter(io.FileIO(fd, "wb"), _WRITE_BUFFER), target) as fh:
            yield fh
        with _writing(target):
            if mode is not None:  # an existing file keeps its permissions, as if overwritten
                os.chmod(tmp, stat.S_IMODE(mode))
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _closing(fh: io.BufferedWriter, target: str) -> Iterator[io.BufferedWriter]:
    """Close (and so flush) ``fh`` at the end; after an error, close it quietly."""
    try:
        yield fh
    except BaseException:
        with contextlib.suppress(OSError):
            fh.close()
        raise
    with _writing(target):
        fh.close()


def _create_temporary(path: Path) -> tuple[Path, int]:
    # O_EXCL with a random name, rather than mkstemp: the file gets the mode of any new file
    # (0666 less the umask), not mkstemp's 0600, and keeps it through the rename.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")  # not secrets: 4 ms
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise MergeOutputError(str(path), f"cannot create: {exc.strerror or exc}") from exc
    raise MergeOutputError(str(path), "cannot create a temporary file next to it")


@contextlib.contextmanager
def _writing(target: str) -> Iterator[None]:
    try:
        yield
    except BrokenPipeError as exc:
        raise MergeOutputError(target, "the reader went away (broken pipe)") from exc
    except OSError as exc:
        raise MergeOutputError(target, f"cannot write: {exc.strerror or exc}") from exc


class _Output:
    """The output section: blocks in order, interface ids, the kept statistics."""

    def __init__(self, fh: io.BufferedWriter, target: str) -> None:
        self._fh = fh
        self._target = "stdout" if target == "-" else target
        self.interfaces = 0
        self._statistics: dict[int, bytes] = {}

    def write(self, block: bytes) -> None:
        with _writing(self._target):
            self._fh.write(block)

    def write_blocks(self, blocks: list[bytes]) -> None:
        if blocks:
            with _writing(self._target):
                self._fh.write(b"".join(blocks))

    def add_interface(self, idb: bytes) -> int:
        """Write an IDB now; its id is the number of IDBs before it."""
        self.write(idb)
        self.interfaces += 1
        return self.interfaces - 1

    def keep_statistics(self, interface_id: int, isb: bytes) -> None:
        self._statistics[interface_id] = isb

    def finish(self) -> None:
        self.write_blocks([self._statistics[i] for i in sorted(self._statistics)])


class _Input:
    """One input file: its merge source, its frontier, the map of its current interfaces.

    Subclasses own the decoder: :meth:`decode` pushes what it completes into the merge.
    """

    def __init__(
        self,
        path: str,
        label: str,
        fh: io.FileIO,
        first: bytes,
        decoder: InputBuffer,
        sid: int,
        chunk: int,
        clock: _Clock,
    ) -> None:
        decoder.receive_data(first)
        self.path = path
        self.label = label
        self.damage: InputDamage | None = None
        self._fh = fh
        self._decoder = decoder
        self._chunk = chunk
        self.sid = sid
        self.started = False  # a packet was decoded
        self.eof = False
        self._clock = clock
        self.frontier: float = -(1 << 64)  # in keys of the clock
        self.last_key: float | None = None
        # The trailing run of packets at the last timestamp, not pushed yet (module docstring).
        self._held_keys: list[float] = []
        self._held_blocks: list[bytes] = []
        self.packets = 0
        self.skipped = 0
        # Per interface of the current section: output id, and ticks -> ns as (mul, div, off).
        self._idmap: list[int] = []
        self._scales: list[tuple[int, int, int]] = []
        self._uniform: tuple[int, int, int] | None = None  # the one scale, if all agree

    def read(self) -> None:
        """Read the next chunk into the decoder; at the end, tell the decoder so."""
        if self.eof:
            return
        try:
            data = self._fh.read(self._chunk) or b""
        except OSError as exc:
            raise MergeInputError(self.path, f"cannot read: {exc.strerror or exc}") from exc
        self.eof = not data
        self._decoder.receive_data(data)

    def decode(self, merge: Merge, out: _Output, *, until_packet: bool) -> None:
        """Push every whole packet read so far (at least the first, if ``until_packet``).

        A malformed block ends the input there, as if the file ended before it: what came
        before is merged (a file cut short by a crash is the common case) and ``damage`` says
        where and why.
        """
        if self.damage is not None:
            return
        try:
            self._decode(merge, out, until_packet)
        except PcapngFormatError as exc:
            reason = str(exc).removesuffix(f" (at byte offset {exc.offset})")
            self.damage = InputDamage(self.path, exc.offset, reason, self.packets)
            self.eof = True

    def _decode(self, merge: Merge, out: _Output, until_packet: bool) -> None:
        raise NotImplementedError

    def _add_scale(self, tsresol: int, offset_ns: int) -> None:
        common = math.gcd(_NS, tsresol)
        scale = (_NS // common, tsresol // common, offset_ns)
        self._scales.append(scale)
        self._uniform = scale if all(s == scale for s in self._scales) else None

    def _scale(self, ticks: int, local: int) -> int:
        mul, div, off = self._scales[local]
        return ticks * mul // div + off

    def _to_ns(self, ticks: list[int], ids: Sequence[int]) -> list[int]:
        uniform = self._uniform
        if uniform is None:
            return [self._scale(t, i) for t, i in zip(ticks, ids, strict=True)]
        mul, div, off = uniform
        if div == 1 and off == 0:
            return ticks if mul == 1 else [t * mul for t in ticks]
        return [t * mul // div + off for t in ticks]

    def _keys(self, high: Sequence[int], low: Sequence[int], ids: Sequence[int]) -> list[float]:
        """Sort keys of a run of packets from its timestamp halves and local interface ids."""
        uniform = self._uniform
        first = high[0]
        if uniform is not None and high.count(first) == len(high):
            mul, div, off = uniform
            ticks = first << 32
            base = self._clock.start(ticks * mul // div + off)
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
        ticks_list = [hi << 32 | lo for hi, lo in zip(high, low, strict=True)]
        return self._clock.keys(self._to_ns(ticks_list, ids))

    def _push(self, merge: Merge, keys: list[float], blocks: list[bytes]) -> None:
        """Push decoded packets but the trailing run at the last timestamp (module docstring)."""
        self.last_key = last = keys[-1]
        self.packets += len(blocks)
        self.started = True
        if self._held_keys:
            keys = self._held_keys + keys
            blocks = self._held_blocks + blocks
        start = len(keys) - 1
        while start and keys[start - 1] == last:
            start -= 1
            if len(keys) - start > _TIE_RUN_CAP:
                start = len(keys)  # too long to hold: let it go
                break
        if start == len(keys):
            self._held_keys, self._held_blocks = [], []
            merge.push(self.sid, keys, blocks, 0.0)
        else:
            self._held_keys, self._held_blocks = keys[start:], blocks[start:]
            if not start:
                return
            merge.push(self.sid, keys[:start], blocks[:start], 0.0)
        self.frontier = merge.frontier(self.sid)  # the greatest key pushed (no watermarks here)

    def flush(self, merge: Merge) -> None:
        """At the end of the file (or of what could be read): push what was held back."""
        if self._held_keys:
            merge.push(self.sid, self._held_keys, self._held_blocks, 0.0)
            self._held_keys, self._held_blocks = [], []


class _PcapngInput(_Input):
    def __init__(
        self, path: str, label: str, fh: io.FileIO, first: bytes, sid: int, chunk: int,
        clock: _Clock,
    ) -> None:
        self._pcapng = PcapngDecoder()
        super().__init__(path, label, fh, first, self._pcapng, sid, chunk, clock)

    @property
    def skipped_sections(self) -> list[SkippedSection]:
        return self._pcapng.skipped_sections

    def _decode(self, merge: Merge, out: _Output, until_packet: bool) -> None:
        decoder = self._pcapng
        while True:
            if not until_packet:
                blocks, high, low, ids = decoder.next_packet_columns(self._idmap)
                if blocks:
                    self._push(merge, self._keys(high, low, ids), blocks)
            raw = decoder.next_raw()
            if raw is None:
                return
            if self._block(raw, merge, out) and until_packet:
                return

    def _block(self, raw: RawBlock, merge: Merge, out: _Output) -> bool:
        """Handle one block that is not on the fast path; True if it was a packet."""
        kind = raw.block_type
        if kind == EPB:
            self._enhanced_packet(raw, merge)
            return True
        if kind == SPB:
            self._simple_packet(raw, merge)
            return True
        if kind == PB:
            self._packet_block(raw, merge)
            return True
        if kind == IDB:
            self._interface(raw, out)
        elif kind == SHB:
            self._idmap = []
            self._scales = []
            self._uniform = None
        elif kind == ISB:
            self._statistics(raw, out)
        elif kind in _COPIED_AS_IS and not raw.big_endian:
            out.write(raw.data)
        elif kind == _CUSTOM_COPYABLE:  # big-endian: the enterprise number swapped, data as is
            (pen,) = struct.unpack_from(">I", raw.data, 8)
            out.write(_block(_CUSTOM_COPYABLE, _U32.pack(pen) + raw.data[12:-4]))
        elif kind == NRB:  # big-endian: keep the IPv4/IPv6 records
            block = parse(raw)
            assert isinstance(block, NameResolution)
            if block.records:
                out.write(encode_name_resolution(block.records))
        else:
            self.skipped += 1
        return False

    def _interface(self, raw: RawBlock, out: _Output) -> None:
        local = len(self._idmap)
        idb = self._pcapng.interfaces[local]
        section = self._pcapng.sections
        label = self.label if section <= 1 else f"{self.label}#{section}"
        name = f"{label}:{idb.name if idb.name is not None else f'if{local}'}"
        options = _le_options(raw, 16, _IDB_OPTIONS)
        tsoffset = 0
        has_description = False
        kept: list[tuple[int, bytes]] = [(o.IF_NAME, o.string_value(name))]
        for code, value in options:
            if code == o.IF_NAME or (raw.big_endian and code == o.IF_FILTER and value[:1] != b"\0"):
                continue  # replaced; or BPF bytecode, whose byte order is the section's
            if code == _IF_TSOFFSET and len(value) == 8:
                tsoffset = struct.unpack("<q", value)[0]
            has_description = has_description or code == o.IF_DESCRIPTION
            kept.append((code, value))
        if not has_description:
            kept.append((o.IF_DESCRIPTION, o.string_value(self.path)))
        fixed = struct.pack("<HHI", idb.link_type, 0, idb.snaplen)
        self._idmap.append(out.add_interface(_block(IDB, fixed + o.encode_options(kept))))
        self._add_scale(idb.tsresol, tsoffset * _NS)

    def _enhanced_packet(self, raw: RawBlock, merge: Merge) -> None:
        if raw.big_endian:
            packet = parse(raw)
            assert isinstance(packet, EnhancedPacket)
            local, ticks = packet.interface_id, packet.timestamp
            start = 28 + packet.captured_length + (-packet.captured_length & 3)
            options = o.encode_options(_le_options(raw, start, _EPB_OPTIONS))
            block = _enhanced_packet(
                self._idmap[local], ticks, packet.data, packet.original_length, options
            )
        else:
            local = _U32.unpack_from(raw.data, 8)[0]
            ticks = epb_timestamp(raw.data)
            block = with_interface_id(raw.data, self._idmap[local])
        self._push(merge, [self._clock.key(self._scale(ticks, local))], [block])

    def _packet_block(self, raw: RawBlock, merge: Merge) -> None:
        """An obsolete Packet Block becomes the EPB it is the ancestor of (as Wireshark reads
        it): the same fields and options, its drop count as ``epb_dropcount``."""
        local, drops, high, low, caplen, original = _PB_HEAD[raw.big_endian].unpack_from(
            raw.data, 8
        )
        ticks = high << 32 | low
        start = 28 + caplen + (-caplen & 3)
        options = _le_options(raw, start, _EPB_OPTIONS)
        if drops and all(code != _EPB_DROPCOUNT for code, _ in options):
            options.append((_EPB_DROPCOUNT, struct.pack("<Q", drops)))
        block = _enhanced_packet(
            self._idmap[local], ticks, raw.data[28 : 28 + caplen], original,
            o.encode_options(options),
        )  # fmt: skip
        self._push(merge, [self._clock.key(self._scale(ticks, local))], [block])

    def _simple_packet(self, raw: RawBlock, merge: Merge) -> None:
        packet = parse(raw, self._pcapng.interfaces)
        assert isinstance(packet, SimplePacket)
        mul, div, off = self._scales[0]
        if self.last_key is None:
            ns, ticks = off, 0
        else:
            ns = self._clock.ns(self.last_key)
            ticks = max(0, (ns - off) * div // mul)
        block = _enhanced_packet(self._idmap[0], ticks, packet.data, packet.original_length, b"")
        self._push(merge, [self._clock.key(ns)], [block])

    def _statistics(self, raw: RawBlock, out: _Output) -> None:
        if raw.big_endian:
            local, high, low = struct.unpack_from(">3I", raw.data, 8)
            new = self._idmap[local]
            options = o.encode_options(_le_options(raw, 20, _ISB_OPTIONS))
            isb = _block(ISB, _ISB_FIXED.pack(new, high, low) + options)
        else:
            new = self._idmap[_U32.unpack_from(raw.data, 8)[0]]
            isb = with_interface_id(raw.data, new)
        out.keep_statistics(new, isb)


class _PcapInput(_Input):
    def __init__(
        self, path: str, label: str, fh: io.FileIO, first: bytes, sid: int, chunk: int,
        clock: _Clock,
    ) -> None:
        self._pcap = PcapDecoder()
        super().__init__(path, label, fh, first, self._pcap, sid, chunk, clock)

    def _decode(self, merge: Merge, out: _Output, until_packet: bool) -> None:
        decoder = self._pcap
        if decoder.header is None:
            header = decoder.next_record()
            if header is None:
                return
            assert isinstance(header, PcapHeader)
            idb = encode_interface_description(
                link_type=header.link_type, snaplen=header.snaplen, name=self.label,
                description=self.path, tsresol=9 if header.tsresol == _NS else 6,
            )  # fmt: skip
            self._idmap.append(out.add_interface(idb))
            self._add_scale(header.tsresol, 0)
        # One interface, defined above: all the packets at once, even ``until_packet``.
        batch = decoder.next_packets(self._idmap[0])
        if batch.blocks:
            stamps = self._to_ns(batch.timestamps, batch.interface_ids)
            self._push(merge, self._clock.keys(stamps), batch.blocks)
        record = decoder.next_record()  # raises on what next_packets refused, if anything
        assert record is None, "next_packets leaves only incomplete or refused records"


def _block(block_type: int, body: bytes) -> bytes:
    total = len(body) + 12
    return b"".join((_HEAD.pack(block_type, total), body, _U32.pack(total)))


def _enhanced_packet(
    interface_id: int, ticks: int, data: bytes, original_length: int, options: bytes
) -> bytes:
    caplen = len(data)
    total = 32 + caplen + (-caplen & 3) + len(options)
    head = _EPB_HEAD.pack(
        EPB, total, interface_id, ticks >> 32, ticks & 0xFFFFFFFF, caplen, original_length
    )
    return b"".join((head, data, o.PAD[caplen & 3], options, _U32.pack(total)))


def _le_options(raw: RawBlock, start: int, known: dict[int, str | None]) -> list[tuple[int, bytes]]:
    """The options of ``raw`` from ``start`` as little-endian values.

    A little-endian block keeps every option as it is. A big-endian one keeps only the
    ``known`` codes: ``None`` copies the bytes, a struct format swaps a number of that layout.
    """
    data = raw.data
    if start >= len(data) - 4:
        return []
    pairs = list(o.iter_options(data, start, len(data) - 4, raw.big_endian, raw.offset))
    if not raw.big_endian:
        return pairs
    kept: list[tuple[int, bytes]] = []
    for code, value in pairs:
        if code not in known:
            continue
        layout = known[code]
        if layout is None:
            kept.append((code, value))
        elif len(value) == struct.calcsize(layout):
            kept.append((code, struct.pack("<" + layout, *struct.unpack(">" + layout, value))))
    return kept
