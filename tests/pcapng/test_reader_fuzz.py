"""Hypothesis: any input, in any chunking, gives clean blocks or PcapngFormatError, nothing else."""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pcapd.errors import PcapngFormatError
from pcapd.pcapng import (
    EPB,
    IDB,
    ISB,
    NRB,
    SHB,
    SPB,
    EnhancedPacket,
    InterfaceStatistics,
    PcapDecoder,
    PcapngDecoder,
    encode_enhanced_packet,
    encode_interface_description,
    encode_interface_statistics,
    encode_section_header,
    sniff_format,
    split_packets,
    with_interface_id,
)
from tests.pcapng.pcapng_samples import (
    RECORDS,
    big_endian_section,
    chunked,
    legacy_file,
    sample_capture,
)

# PCAPD_FUZZ_EXAMPLES raises the effort for a long hunt (it ran clean with 15000).
FUZZ = settings(
    deadline=None,
    max_examples=int(os.environ.get("PCAPD_FUZZ_EXAMPLES", "400")),
    suppress_health_check=[HealthCheck.too_slow],
)
_SAMPLE = sample_capture()[0]
VALID_PCAPNG = [
    _SAMPLE + big_endian_section(),
    _SAMPLE[:272],  # the headers and a packet: mutations land on fewer, denser fields
    _SAMPLE[:188] + _SAMPLE[776:],  # the headers, the NRB and the ISBs
    big_endian_section(),
]
VALID_PCAP = legacy_file(False, True, RECORDS[:6])
VALID_BATCH = b"".join(
    encode_enhanced_packet(interface_id=i, timestamp=i * 1000, data=bytes(i * 3)) for i in range(6)
)
SHB_IDB = encode_section_header() + encode_interface_description(link_type=1, snaplen=0)

chunk_sizes = st.lists(st.integers(1, 97), min_size=1, max_size=12)


INTERESTING = [0, 1, 2, 3, 4, 5, 6, 8, 9, 12, 16, 20, 24, 28, 32, 0x7F, 0x80, 0xFF, 0xFFFF]


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with a few byte flips, 16-bit field rewrites, insertions, deletions or a cut.

    Rewriting aligned 16-bit words with small values hits lengths, codes and counts, where
    random bytes rarely land.
    """
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "word", "word", "insert", "delete", "cut"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "word" and len(data) >= 2:
            pos = min(pos & ~1, len(data) - 2)
            value = draw(st.sampled_from(INTERESTING))
            big = draw(st.booleans())
            data[pos : pos + 2] = value.to_bytes(2, "big" if big else "little")
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "cut":
            del data[pos:]
    return bytes(data)


OPTION_CODES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 2988, 2989, 0xFFFF]


@st.composite
def structured_stream(draw: st.DrawFn) -> bytes:
    """A correctly framed section of every block type with random fields and options.

    Reaches the option and record checks that byte mutations of one valid file rarely hit.
    """
    order = draw(st.sampled_from(["<", ">"]))

    def options() -> bytes:
        out = b""
        for code, value in draw(
            st.lists(st.tuples(st.sampled_from(OPTION_CODES), st.binary(max_size=12)), max_size=4)
        ):
            out += struct.pack(order + "HH", code, len(value)) + value + bytes(-len(value) & 3)
        return out + (struct.pack(order + "HH", 0, 0) if draw(st.booleans()) else b"")

    def block(block_type: int, body: bytes) -> bytes:
        total = len(body) + 12
        return struct.pack(order + "II", block_type, total) + body + struct.pack(order + "I", total)

    def data() -> bytes:
        payload = draw(st.binary(max_size=20))
        return payload + bytes(-len(payload) & 3)

    u32 = st.integers(0, 2**32 - 1)
    small = st.integers(0, 24)
    interface = st.integers(0, 2)
    blocks = [block(SHB, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1) + options())]
    for _ in range(draw(st.integers(0, 2))):
        blocks.append(block(IDB, struct.pack(order + "HHI", 1, 0, draw(small)) + options()))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from([EPB, ISB, NRB, SPB, 0x0BAD]))
        if kind == EPB:
            head = struct.pack(
                order + "5I", draw(interface), draw(u32), draw(u32), draw(small), draw(u32)
            )
            blocks.append(block(EPB, head + data() + options()))
        elif kind == ISB:
            head = struct.pack(order + "3I", draw(interface), draw(u32), draw(u32))
            blocks.append(block(ISB, head + options()))
        elif kind == NRB:
            records = b""
            for record_type, value in draw(
                st.lists(st.tuples(st.integers(0, 4), st.binary(max_size=24)), max_size=3)
            ):
                records += struct.pack(order + "HH", record_type, len(value)) + value
                records += bytes(-len(value) & 3)
            blocks.append(block(NRB, records + options()))
        else:
            blocks.append(block(kind, struct.pack(order + "I", draw(u32)) + data()))
    return b"".join(blocks)


def drain_pcapng(data: bytes, sizes: list[int], parse: bool) -> None:
    dec = PcapngDecoder(max_block_size=4096)
    offset = 0
    try:
        for chunk in [*chunked(data, sizes), b""]:
            dec.receive_data(chunk)
            while True:
                if parse:
                    block = dec.next_block()
                    if block is None:
                        break
                    raw = block.raw
                    if isinstance(block, EnhancedPacket | InterfaceStatistics):
                        dec.timestamp_ns(block)
                else:
                    raw_block = dec.next_raw()
                    if raw_block is None:
                        break
                    assert raw_block.offset == dec.offset - len(raw_block.data)
                    raw = raw_block.data
                start = dec.offset - len(raw)
                if start != offset:  # only a section of another version is passed over
                    assert offset in {section.offset for section in dec.skipped_sections}
                    offset = start
                assert raw == data[offset : offset + len(raw)]
                offset += len(raw)
    except PcapngFormatError as exc:
        assert offset <= exc.offset <= len(data)
        return
    assert dec.offset == len(data)  # no error: every byte was a whole block


def drain_pcap(data: bytes, sizes: list[int]) -> None:
    dec = PcapDecoder(max_record_size=4096)
    try:
        for chunk in [*chunked(data, sizes), b""]:
            dec.receive_data(chunk)
            while dec.next_record() is not None:
                pass
    except PcapngFormatError as exc:
        assert 0 <= exc.offset <= len(data)


def split(data: bytes) -> None:
    try:
        batch = split_packets(data)
    except PcapngFormatError as exc:
        assert 0 <= exc.offset <= len(data)
    else:
        assert b"".join(batch.blocks) == data


def sniff(data: bytes) -> None:
    try:
        sniff_format(data)
    except PcapngFormatError:
        pass


@FUZZ
@given(st.binary(max_size=600), chunk_sizes, st.booleans(), st.booleans())
def test_arbitrary_bytes(data: bytes, sizes: list[int], prefix: bool, parse: bool) -> None:
    if prefix:  # get past the first checks, to reach the deeper ones
        data = SHB_IDB + data
    drain_pcapng(data, sizes, parse)
    drain_pcap(data, sizes)
    split(data)
    sniff(data)


@FUZZ
@given(st.sampled_from(VALID_PCAPNG).flatmap(mutated), chunk_sizes, st.booleans())
def test_mutated_pcapng(data: bytes, sizes: list[int], parse: bool) -> None:
    drain_pcapng(data, sizes, parse)


@FUZZ
@given(structured_stream(), chunk_sizes)
def test_structured_blocks(data: bytes, sizes: list[int]) -> None:
    drain_pcapng(data, sizes, parse=True)


@FUZZ
@given(structured_stream().flatmap(mutated), chunk_sizes, st.booleans())
def test_mutated_structured_blocks(data: bytes, sizes: list[int], parse: bool) -> None:
    drain_pcapng(data, sizes, parse)


@FUZZ
@given(mutated(VALID_PCAP), chunk_sizes)
def test_mutated_pcap(data: bytes, sizes: list[int]) -> None:
    drain_pcap(data, sizes)


@FUZZ
@given(mutated(VALID_BATCH))
def test_mutated_packet_batch(data: bytes) -> None:
    split(data)


@settings(deadline=None, max_examples=200)
@given(
    interface_id=st.integers(0, 2),
    timestamp=st.integers(0, 2**64 - 1),
    data=st.binary(max_size=300),
    extra=st.integers(0, 2**16),
    comment=st.none() | st.text(max_size=40),
    flags=st.none() | st.integers(0, 2**32 - 1),
    received=st.none() | st.integers(0, 2**64 - 1),
    pcapd_dropped=st.none() | st.integers(0, 2**64 - 1),
    sizes=chunk_sizes,
)
def test_round_trip_property(
    *,
    interface_id: int,
    timestamp: int,
    data: bytes,
    extra: int,
    comment: str | None,
    flags: int | None,
    received: int | None,
    pcapd_dropped: int | None,
    sizes: list[int],
) -> None:
    assume(comment is None or not comment.startswith("pcapd-dropped: "))
    epb = encode_enhanced_packet(
        interface_id=interface_id, timestamp=timestamp, data=data,
        original_length=len(data) + extra, comment=comment, flags=flags,
    )  # fmt: skip
    isb = encode_interface_statistics(
        interface_id=interface_id, timestamp=timestamp, received=received,
        pcapd_dropped=pcapd_dropped, comment=comment,
    )  # fmt: skip
    idb = encode_interface_description(link_type=1, snaplen=0)
    dec = PcapngDecoder()
    blocks = []
    for chunk in [*chunked(encode_section_header() + idb * 3 + epb + isb, sizes), b""]:
        dec.receive_data(chunk)
        while (block := dec.next_block()) is not None:
            blocks.append(block)
    comments = () if comment is None else (comment.rstrip("\0"),)
    assert blocks[-2:] == [
        EnhancedPacket(
            interface_id, timestamp, len(data), len(data) + extra, data, flags, comments
        ),
        InterfaceStatistics(
            interface_id, timestamp, received=received, pcapd_dropped=pcapd_dropped,
            comments=comments,
        ),
    ]  # fmt: skip


# -- the bulk path against the one-at-a-time path ---------------------------------------------


def blocks_one_at_a_time(data: bytes, sizes: list[int], limit: int) -> tuple[list[bytes], str]:
    dec = PcapngDecoder(max_block_size=limit)
    out: list[bytes] = []
    try:
        for chunk in [*chunked(data, sizes), b""]:
            dec.receive_data(chunk)
            while (raw := dec.next_raw()) is not None:
                out.append(raw.data)
    except PcapngFormatError as exc:
        return out, f"{exc.offset}: {exc}"
    return out, ""


def blocks_in_bulk(
    data: bytes, sizes: list[int], limit: int, mapping: list[int] | None
) -> tuple[list[bytes], list[int], str]:
    """Alternate next_packets and next_raw; beside each block the id next_packets read (-1 for
    one from next_raw)."""
    dec = PcapngDecoder(max_block_size=limit)
    out: list[bytes] = []
    ids: list[int] = []
    try:
        for chunk in [*chunked(data, sizes), b""]:
            dec.receive_data(chunk)
            while True:
                count = len(dec.interfaces)
                batch = dec.next_packets(None if mapping is None else mapping[:count])
                out += batch.blocks
                ids += batch.interface_ids
                raw = dec.next_raw()
                if raw is None:
                    break
                out.append(raw.data)
                ids.append(-1)
    except PcapngFormatError as exc:
        return out, ids, f"{exc.offset}: {exc}"
    return out, ids, ""


def assert_bulk_matches(
    data: bytes, sizes: list[int], limit: int, mapping: list[int] | None
) -> None:
    """Same blocks, same fault at the same offset; with a map, each EPB the bulk path took
    carries its mapped id and nothing else changed."""
    expected, expected_fault = blocks_one_at_a_time(data, sizes, limit)
    got, ids, fault = blocks_in_bulk(data, sizes, limit, mapping)
    assert fault == expected_fault
    assert len(got) == len(expected)
    for block, interface_id, original in zip(got, ids, expected, strict=True):
        if mapping is None or interface_id < 0:
            assert block == original
        else:
            assert block == with_interface_id(original, mapping[interface_id])


@FUZZ
@given(
    st.one_of(structured_stream(), structured_stream().flatmap(mutated)),
    chunk_sizes,
    st.none() | st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3),
)
def test_the_bulk_path_gives_what_next_raw_gives(
    data: bytes, sizes: list[int], mapping: list[int] | None
) -> None:
    assert_bulk_matches(data, sizes, 4096, mapping)


@st.composite
def long_runs(draw: st.DrawFn) -> bytes:
    """Runs of up to a few hundred EPBs (some longer than the bulk path's tables), now and
    then another block, and at times a fault: the bulk path's windows and slower branches."""
    interfaces = draw(st.integers(1, 2))
    parts = [encode_section_header()]
    parts += [encode_interface_description(link_type=1, snaplen=0)] * interfaces
    rolls = draw(st.lists(st.integers(0, 199), max_size=300))
    for i, roll in enumerate(rolls):
        if roll < 2:
            parts.append(encode_interface_statistics(interface_id=0, timestamp=i, received=i))
        else:
            parts.append(
                encode_enhanced_packet(
                    interface_id=roll % interfaces, timestamp=i,
                    data=bytes(17_000 if roll < 4 else roll % 120),
                    comment="c" * 240 if roll == 4 else None,
                )
            )  # fmt: skip
    data = b"".join(parts)
    if draw(st.booleans()):  # a fault somewhere: a flipped bit, or a cut
        at = draw(st.integers(0, len(data) - 1))
        flipped = data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]
        data = data[:at] if draw(st.booleans()) else flipped
    return data


@settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    long_runs(),
    st.lists(st.integers(1, 20_000), min_size=1, max_size=6),
    st.none() | st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=2),
)
def test_long_runs_in_bulk_give_what_next_raw_gives(
    data: bytes, sizes: list[int], mapping: list[int] | None
) -> None:
    assert_bulk_matches(data, sizes, 1 << 20, mapping)
