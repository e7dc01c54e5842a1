"""The compiled merge engine and its pure-Python twin write the same bytes for the same inputs.

``merge_files`` runs once with each engine on generated inputs (timestamps that tie, go back
and jump; several resolutions and offsets; sections, SPBs and Packet Blocks among the EPBs;
classic pcap), on mutated ones (damaged inputs), and on the real files of the interop corpus;
read sizes, the tie cap and the buffer cap (forcing packets out) vary. The outputs and the
results must be equal. The pure engine is the merge as it was before the compiled one
(pcapd.merge.Merge with float keys), so this also says the order did not change.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcapd import _accel
from pcapd.merge.engine import CompiledFileMerge, FileMerge, PureFileMerge
from pcapd.merge.files import MergeInputError, merge_files
from pcapd.pcapng import (
    IDB,
    PB,
    SPB,
    encode_enhanced_packet,
    encode_name_resolution,
    encode_section_header,
)
from tests.interop import corpus_files

FUZZ = settings(
    deadline=None,
    max_examples=int(os.environ.get("PCAPD_FUZZ_EXAMPLES", "400")) // 4,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PCAP = (
    struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    + b"".join(struct.pack("<IIII", 1_700_000_000, n * 7 % 99, 4, 60) + bytes(4) for n in range(9))
)  # classic pcap, nanoseconds, times going back once

pytestmark = pytest.mark.skipif(
    _accel.walk is None, reason=f"the compiled walker is off ({_accel.DISABLE_ENV}) or not built"
)


def engines(cap: int | None) -> tuple[object, object]:
    """Both engines, with the merge's buffer cap lowered to ``cap`` (to force packets out)."""

    def pure(sources: int, max_buffered: int, tie_run_cap: int) -> FileMerge:
        return PureFileMerge(sources, cap or max_buffered, tie_run_cap)

    def compiled(sources: int, max_buffered: int, tie_run_cap: int) -> FileMerge:
        return CompiledFileMerge(sources, cap or max_buffered, tie_run_cap)

    return pure, compiled


def merge_both(
    files: Sequence[bytes], chunk: int | None, tie_cap: int, cap: int | None, names: Sequence[str]
) -> None:
    answers = []
    with tempfile.TemporaryDirectory(prefix="pcapd-engines.") as scratch:
        paths = []
        for i, (data, name) in enumerate(zip(files, names, strict=True)):
            path = Path(scratch) / f"{i}{name}"
            path.write_bytes(data)
            paths.append(path)
        for engine in engines(cap):
            out = Path(scratch) / "out.pcapng"
            try:
                result = merge_files(
                    paths, out, chunk_size=chunk, engine=engine,  # type: ignore[arg-type]
                    tie_run_cap=tie_cap,
                )  # fmt: skip
            except MergeInputError as exc:
                answers.append(("refused", str(exc)))
                continue
            answers.append((result, out.read_bytes()))
    pure, compiled = answers
    assert compiled == pure


def idb(tsresol: int, tsoffset: int) -> bytes:
    options = struct.pack("<HHB3x", 9, 1, tsresol)
    if tsoffset:
        options += struct.pack("<HHq", 14, 8, tsoffset)
    body = struct.pack("<HHI", 1, 0, 0) + options + struct.pack("<HH", 0, 0)
    return struct.pack("<II", IDB, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def spb(data: bytes) -> bytes:
    body = struct.pack("<I", len(data)) + data + bytes(-len(data) & 3)
    return struct.pack("<II", SPB, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def pb(interface: int, ticks: int, data: bytes, drops: int) -> bytes:
    body = struct.pack("<HHIII", interface, drops, ticks >> 32, ticks & 0xFFFFFFFF, len(data))
    body += struct.pack("<I", len(data)) + data + bytes(-len(data) & 3)
    return struct.pack("<II", PB, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


RESOLUTIONS = [6, 9, 3, 0, 0x80 | 20, 0x80 | 40, 100]  # µs, ns, ms, s, 2**-20, 2**-40, 10**-100


@st.composite
def pcapng_file(draw: st.DrawFn) -> bytes:
    """Sections of interfaces and packets whose times tie, go back and jump."""
    out = b""
    for _ in range(draw(st.integers(1, 2))):
        out += encode_section_header()
        count = draw(st.integers(1, 3))
        for _ in range(count):
            out += idb(draw(st.sampled_from(RESOLUTIONS)), draw(st.sampled_from([0, 0, 5, -3])))
        ticks = draw(st.integers(0, 1 << 40)) << draw(st.sampled_from([0, 8, 20]))
        for i in range(draw(st.integers(0, 40))):
            ticks += draw(st.sampled_from([0, 0, 1, 7, 1000, 1 << 31, -5, -(1 << 33)]))
            ticks = min(max(ticks, 0), (1 << 64) - 1)
            kind = draw(st.sampled_from(["epb"] * 8 + ["spb", "pb", "nrb"]))
            data = bytes([i % 256]) * draw(st.integers(0, 70))
            interface = draw(st.integers(0, count - 1))
            if kind == "epb":
                comment = "c" if draw(st.booleans()) and i % 5 == 0 else None
                out += encode_enhanced_packet(
                    interface_id=interface, timestamp=ticks, data=data, comment=comment
                )
            elif kind == "spb":
                out += spb(data)
            elif kind == "pb":
                out += pb(interface, ticks, data, i % 3)
            else:
                out += encode_name_resolution([("10.0.0.1", [f"h{i}"])])
    return out


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A generated file with a few 32-bit fields set to edge values, bytes flipped, or a cut."""
    data = bytearray(draw(pcapng_file()))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        choice = draw(st.integers(0, 2))
        if choice == 0 and at + 4 <= len(data):
            edge = draw(st.sampled_from([0, 1, 12, 28, 32, 33, 0xFFFF, 1 << 24, 0xFFFFFFFF]))
            struct.pack_into("<I", data, at & ~3, edge)
        elif choice == 1:
            data[at] ^= draw(st.integers(1, 255))
        else:
            del data[at:]
    return bytes(data)


@FUZZ
@given(
    st.lists(st.one_of(pcapng_file(), pcapng_file(), st.just(PCAP)), min_size=1, max_size=5),
    st.sampled_from([None, 64, 100, 256, 1024]),
    st.integers(0, 6),
    st.sampled_from([None, None, 1, 3, 20]),
)
def test_generated_inputs(
    files: list[bytes], chunk: int | None, tie_cap: int, cap: int | None
) -> None:
    merge_both(files, chunk, tie_cap, cap, [".pcapng"] * len(files))


@FUZZ
@given(
    st.lists(mutated(), min_size=1, max_size=3),
    st.sampled_from([None, 64, 128]),
    st.sampled_from([None, 2]),
)
def test_mutated_inputs(files: list[bytes], chunk: int | None, cap: int | None) -> None:
    merge_both(files, chunk, 2, cap, [".pcapng"] * len(files))


def real_groups() -> list[list[Path]]:
    files = corpus_files(".pcapng", ".ntar", ".pcap")
    small = [path for path in files if path.stat().st_size < 4 << 20]
    return [small[i : i + 4] for i in range(0, len(small), 4)]


@pytest.mark.parametrize("group", real_groups(), ids=lambda g: "+".join(p.name for p in g))
def test_real_files(group: list[Path]) -> None:
    merge_both([p.read_bytes() for p in group], None, 1 << 16, None, [p.name for p in group])
    merge_both([p.read_bytes() for p in group], 4096, 3, 50, [p.name for p in group])
