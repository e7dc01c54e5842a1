"""``pcapd merge``: pcap and pcapng files merged by timestamp into one pcapng, like ``mergecap``.

Theory of operation
-------------------
The driver: an I/O shell around the sans-I/O decoders and rewriting of :mod:`pcapd.pcapng`
(:mod:`pcapd.pcapng.rewrite`) and the live merge (:class:`pcapd.merge.Merge`), writing through
:mod:`pcapd.merge.output` (a file appears under its name only once complete), so that merging
files runs the same merge as a live capture. Each input is a merge source that never goes
stale (``lateness=math.inf``): offline there is no
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

Speed. The ordering is the engine's (:mod:`pcapd.merge.engine`): where the extension is
built, a run of Enhanced Packet Blocks goes from the decoder's buffer into the engine in one C
call (framed, checked, copied once, one array entry a packet) and each release is one C k-way
merge writing the packets' bytes into one string, one ``write``; the pure twin frames runs in
bulk (``PcapngDecoder.next_packet_columns``) into the live merge with float sort keys. Other
blocks, big-endian sections and classic pcap take slower, exact paths into the same engine.
The measurements and the profile are in ``docs/performance.md`` ("Merge").

Interfaces. Each input interface becomes an output interface named ``FILE:NAME``
(``a.pcapng:eth0``, ``a.pcapng:if1`` without ``if_name``, ``a.pcap`` for classic pcap,
``FILE#N:NAME`` in the Nth section of concatenated sections, whose ids restart at 0). Inputs
of the same file name are told apart by as much of their paths as needed (``le/a.pcapng``,
``be/a.pcapng``), the same path given twice by its place (``a.pcapng (2)``). Leading
interfaces are numbered in input order; one defined later in a file gets the next free id when
read. The output IDB keeps link type, snaplen and every option but ``if_name`` (``if_tsresol``
and ``if_tsoffset`` too, so EPBs pass through unchanged but for the interface id; ordering
applies ``if_tsoffset``, as Wireshark does); ``if_description`` is the input's path where there
is none. Big-endian blocks are rewritten little-endian (:mod:`pcapd.pcapng.rewrite` says which
options survive).

Other blocks.

- Name Resolution, Decryption Secrets and copyable custom (0x00000BAD) blocks are copied when
  read, so they precede the packets that follow them in their file (big-endian DSBs are
  skipped).
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pcapd import __version__
from pcapd.errors import PcapdError, PcapngFormatError
from pcapd.merge.engine import FileMerge, FileMergeFactory, new_file_merge
from pcapd.merge.output import MergeOutputError, Output, open_output
from pcapd.pcapng import (
    EPB,
    IDB,
    ISB,
    PB,
    SHB,
    SPB,
    PcapDecoder,
    PcapHeader,
    PcapngDecoder,
    RawBlock,
    encode_interface_description,
    encode_section_header,
    rewrite,
    sniff_format,
)
from pcapd.pcapng.buffer import InputBuffer
from pcapd.pcapng.reader import SkippedSection

__all__ = [
    "BUFFER_BUDGET",
    "MAX_CHUNK",
    "MIN_CHUNK",
    "TIE_RUN_CAP",
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
TIE_RUN_CAP = 1 << 16
"""The longest run of equal timestamps a file holds back (see the module docstring); a longer
one goes out as it comes, so that a file of one timestamp cannot make the merge hold it all."""
_NS = 10**9
_MAX_TICKS = (1 << 64) - 1
_RELEASE_DIVISOR = 4
"""A release follows every ``inputs // 4`` reads (every read for up to 7 inputs): a release
costs a few steps per input besides its packets, so with many inputs (and reads made small by
the budget) several reads' worth go out together; what waits stays within a quarter of the
read budget more (measured: 250 of ~5,750 instructions a packet less at k = 32)."""
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x04\x22\x4d\x18", "lz4"))
"""Magic numbers of the compressions Wireshark reads transparently, and pcapd does not."""

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


def merge_files(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    chunk_size: int | None = None,
    engine: FileMergeFactory = new_file_merge,
    tie_run_cap: int = TIE_RUN_CAP,
) -> MergeResult:
    """Merge ``inputs`` (pcap or pcapng files, any byte order) into the pcapng ``output``.

    ``output`` ``"-"`` is stdout. A regular output file is written as a hidden temporary file in
    the same directory and renamed over ``output`` when complete, so a failed merge leaves no
    partial file (and the output may be one of the inputs); a file that existed keeps its
    permissions, a symbolic link its target; a device or FIFO is written in place.
    ``chunk_size`` overrides the bytes per read, ``tie_run_cap`` the longest run of equal
    timestamps an input holds back, and ``engine`` makes the merge's engine (the compiled one
    where it is built: :func:`~pcapd.merge.engine.new_file_merge`; a test may watch it): see
    the module docstring.

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
        merging = engine(len(paths), len(paths) * 2 * (chunk // 16 + 1), tie_run_cap)
        sources = list(range(len(paths)))
        sources.reverse()  # ties go out source 0 first: the later input first, as mergecap
        shared = _Shared(chunk, merging)
        readers = [
            (_PcapngInput if kind == "pcapng" else _PcapInput)(path, label, fh, first, sid, shared)
            for path, label, (fh, first, kind), sid in zip(
                paths, _labels(paths), files, sources, strict=True
            )
        ]
        with open_output(target) as fh:
            out = Output(fh, target)
            out.write(encode_section_header(user_application=f"pcapd {__version__} (merge)"))
            for reader in readers:  # leading IDBs in input order, and a frontier for each
                reader.decode(out, until_packet=True)
                while not (reader.started or reader.eof):
                    reader.read()
                    reader.decode(out, until_packet=True)
            by_source = {reader.sid: reader for reader in readers}
            active = [reader.sid for reader in readers]  # equal frontiers: the earlier input
            every = max(1, len(readers) // _RELEASE_DIVISOR)  # reads per release
            reads = 0
            while active:
                reader = by_source[min(active, key=merging.frontier)]
                reader.read()
                reader.decode(out, until_packet=False)
                if reader.eof:
                    merging.end(reader.sid)
                    active.remove(reader.sid)
                reads += 1
                if reads == every:
                    out.write(merging.pop())
                    reads = 0
            out.write(merging.flush())
            out.finish()
    return MergeResult(
        packets=sum(reader.packets for reader in readers),
        interfaces=out.interfaces,
        reordered=merging.reordered,
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


@dataclass(frozen=True, slots=True)
class _Shared:
    """What every input of one merge reads with."""

    chunk: int
    engine: FileMerge


class _Input:
    """One input file: its source in the engine, the map of its current interfaces.

    Subclasses own the decoder: :meth:`decode` adds what it completes to the engine.
    """

    def __init__(
        self, path: str, label: str, fh: io.FileIO, first: bytes, decoder: InputBuffer,
        sid: int, shared: _Shared,
    ) -> None:
        decoder.receive_data(first)
        self.path = path
        self.label = label
        self.damage: InputDamage | None = None
        self._fh = fh
        self._decoder = decoder
        self._chunk = shared.chunk
        self._engine = shared.engine
        self.sid = sid
        self.started = False  # a packet was decoded
        self.eof = False
        self.packets = 0
        self.skipped = 0
        # Per interface of the current section: output id, and ticks -> ns as (mul, div, off).
        self._idmap: list[int] = []
        self._scales: list[tuple[int, int, int]] = []

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

    def decode(self, out: Output, *, until_packet: bool) -> None:
        """Add every whole packet read so far (at least the first, if ``until_packet``).

        A malformed block ends the input there, as if the file ended before it: what came
        before is merged (a file cut short by a crash is the common case) and ``damage`` says
        where and why.
        """
        if self.damage is not None:
            return
        try:
            self._decode(out, until_packet)
        except PcapngFormatError as exc:
            reason = str(exc).removesuffix(f" (at byte offset {exc.offset})")
            self.damage = InputDamage(self.path, exc.offset, reason, self.packets)
            self.eof = True

    def _decode(self, out: Output, until_packet: bool) -> None:
        raise NotImplementedError

    def _add_scale(self, tsresol: int, offset_ns: int) -> None:
        common = math.gcd(_NS, tsresol)
        scale = (_NS // common, tsresol // common, offset_ns)
        self._scales.append(scale)

    def _scale(self, ticks: int, local: int) -> int:
        mul, div, off = self._scales[local]
        return ticks * mul // div + off

    def _add(self, blocks: list[bytes], stamps: list[int]) -> None:
        self._engine.add(self.sid, blocks, stamps)
        self.packets += len(blocks)
        self.started = True


class _PcapngInput(_Input):
    def __init__(
        self, path: str, label: str, fh: io.FileIO, first: bytes, sid: int, shared: _Shared
    ) -> None:
        self._pcapng = PcapngDecoder()
        super().__init__(path, label, fh, first, self._pcapng, sid, shared)

    @property
    def skipped_sections(self) -> list[SkippedSection]:
        return self._pcapng.skipped_sections

    def _decode(self, out: Output, until_packet: bool) -> None:
        decoder = self._pcapng
        engine = self._engine
        while True:
            if not until_packet:
                taken = engine.add_run(self.sid, decoder, self._idmap, self._scales)
                if taken:
                    self.packets += taken
                    self.started = True
            raw = decoder.next_raw()
            if raw is None:
                return
            if self._block(raw, out) and until_packet:
                return

    def _block(self, raw: RawBlock, out: Output) -> bool:
        """Handle one block that is not on the fast path; True if it was a packet."""
        kind = raw.block_type
        if kind == EPB:
            block, local, ticks = rewrite.enhanced_packet(raw, self._idmap)
            self._add([block], [self._scale(ticks, local)])
            return True
        if kind == SPB:
            self._simple_packet(raw)
            return True
        if kind == PB:
            block, local, ticks = rewrite.packet_block(raw, self._idmap)
            self._add([block], [self._scale(ticks, local)])
            return True
        if kind == IDB:
            self._interface(raw, out)
        elif kind == SHB:
            self._idmap = []
            self._scales = []
        elif kind == ISB:
            out.keep_statistics(*rewrite.interface_statistics(raw, self._idmap))
        else:
            copied = rewrite.copied_block(raw)
            if copied is None:
                self.skipped += 1
            else:
                out.write(copied)
        return False

    def _interface(self, raw: RawBlock, out: Output) -> None:
        local = len(self._idmap)
        idb = self._pcapng.interfaces[local]
        section = self._pcapng.sections
        label = self.label if section <= 1 else f"{self.label}#{section}"
        name = f"{label}:{idb.name if idb.name is not None else f'if{local}'}"
        block, tsoffset = rewrite.relabeled_interface(raw, idb, name, self.path)
        self._idmap.append(out.add_interface(block))
        self._add_scale(idb.tsresol, tsoffset * _NS)

    def _simple_packet(self, raw: RawBlock) -> None:
        """Stamped with the previous packet's time in its file (the epoch before any), so that
        it keeps its place (mergecap stamps it 0)."""
        mul, div, off = self._scales[0]
        last = self._engine.last_ns(self.sid)
        if last is None:
            ns, ticks = off, 0
        else:
            ns = last
            ticks = min(max(0, (ns - off) * div // mul), _MAX_TICKS)  # as near as 64 bits get
        block = rewrite.simple_packet(raw, self._pcapng.interfaces, self._idmap[0], ticks)
        self._add([block], [ns])


class _PcapInput(_Input):
    def __init__(
        self, path: str, label: str, fh: io.FileIO, first: bytes, sid: int, shared: _Shared
    ) -> None:
        self._pcap = PcapDecoder()
        super().__init__(path, label, fh, first, self._pcap, sid, shared)

    def _decode(self, out: Output, until_packet: bool) -> None:
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
            mul, div, off = self._scales[0]
            if div == 1 and off == 0:
                stamps = batch.timestamps if mul == 1 else [t * mul for t in batch.timestamps]
            else:
                stamps = [t * mul // div + off for t in batch.timestamps]
            self._add(batch.blocks, stamps)
        record = decoder.next_record()  # raises on what next_packets refused, if anything
        assert record is None, "next_packets leaves only incomplete or refused records"
