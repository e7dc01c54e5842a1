"""The compiled walker and its pure-Python twin give the same answers for the same bytes.

Random bytes, mutated pcapd captures, structured streams and the real files of the interop
corpus, fed to both ``epb_run`` (every offset a block could start at) and ``check_epbs``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcapd import _accel
from pcapd.errors import PcapngFormatError
from pcapd.pcapng import packets
from tests.interop import corpus_files
from tests.pcapng.test_reader_fuzz import (
    FUZZ,
    VALID_BATCH,
    VALID_PCAPNG,
    mutated,
    structured_stream,
)

pytestmark = pytest.mark.skipif(
    _accel.walk is None, reason=f"the compiled walker is off ({_accel.DISABLE_ENV}) or not built"
)


def test_the_compiled_walker_is_built_unless_turned_off() -> None:
    """Runs (and must pass) whenever the extensions are on: the normal install builds them."""
    assert _accel.walk is not None
    assert packets._compiled is _accel.walk


def run_both(
    data: bytes, pos: int, most: int, limit: int, interfaces: int, mapping: Sequence[int] | None
) -> None:
    runs = []
    for walk in (packets.epb_run_pure, packets.epb_run):
        buf = bytearray(data)
        try:
            run = walk(buf, pos, most=most, max_block_size=limit, interfaces=interfaces,
                       interface_map=mapping)  # fmt: skip
        except (TypeError, ValueError, IndexError) as exc:
            runs.append(("error", type(exc).__name__))
            continue
        runs.append((
            run.blocks, list(run.high), list(run.low), list(run.interface_ids), run.end,
            run.refused, bytes(buf),
        ))  # fmt: skip
    pure, compiled = runs
    assert compiled == pure


def check_both(data: bytes, interface_id: int, new_id: int | None) -> None:
    answers: list[object] = []
    for check in (packets.check_epbs_pure, packets.check_epbs):
        buf = bytearray(data)
        try:
            answers.append((check(buf, interface_id=interface_id, offset=100, new_id=new_id),
                            bytes(buf)))  # fmt: skip
        except PcapngFormatError as exc:
            answers.append(("format", exc.offset, str(exc)))
    pure, compiled = answers
    assert compiled == pure


def split_both(data: bytes) -> None:
    answers: list[object] = []
    for split in (packets.split_packets_pure, packets.split_packets):
        try:
            answers.append(split(data, 100))
        except PcapngFormatError as exc:
            answers.append(("format", exc.offset, str(exc)))
    pure, compiled = answers
    assert compiled == pure


def offsets(data: bytes) -> list[int]:
    return list(range(0, len(data) + 1, 4))


@FUZZ
@given(st.binary(max_size=400), st.integers(1, 40), st.integers(0, 3), st.booleans())
def test_random_bytes(data: bytes, most: int, interfaces: int, remap: bool) -> None:
    mapping = [7 - i for i in range(interfaces)] if remap else None
    for pos in offsets(data)[:8]:
        run_both(data, pos, most, 4096, interfaces, mapping)
    check_both(data, 0, 5 if remap else None)
    split_both(data)


@FUZZ
@given(mutated(VALID_BATCH), st.integers(1, 10), st.sampled_from([32, 64, 4096, 1 << 24]))
def test_mutated_batches(data: bytes, most: int, limit: int) -> None:
    for pos in offsets(data):
        run_both(data, pos, most, limit, 6, [5, 4, 3, 2, 1, 0])
    for interface_id in range(3):
        check_both(data, interface_id, 9)
        check_both(data, interface_id, None)
    split_both(data)


@FUZZ
@given(st.sampled_from(VALID_PCAPNG).flatmap(mutated), st.integers(1, 64))
def test_mutated_captures(data: bytes, most: int) -> None:
    for pos in offsets(data):
        run_both(data, pos, most, 4096, 2, [1, 0])


@FUZZ
@given(structured_stream().flatmap(mutated), st.integers(1, 64))
def test_mutated_structured_streams(data: bytes, most: int) -> None:
    for pos in offsets(data):
        run_both(data, pos, most, 4096, 3, None)


def block_starts(data: bytes) -> list[int]:
    """Where each block of a little-endian pcapng starts (up to the first nonsense length)."""
    starts, pos = [], 0
    while pos + 8 <= len(data):
        starts.append(pos)
        (total,) = struct.unpack_from("<I", data, pos + 4)
        if total < 12 or total & 3:
            break
        pos += total
    return starts


@pytest.mark.parametrize(
    "path", corpus_files(".pcapng", ".ntar"), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_real_files(path: object) -> None:
    data = path.read_bytes()  # type: ignore[attr-defined]
    for pos in block_starts(data)[:400]:
        for most in (1, 7, 1 << 16):
            run_both(data, pos, most, 1 << 24, 16, list(range(100, 116)))
        check_both(data[pos:pos + 4096], 0, 3)
        split_both(data[pos:pos + 4096])
