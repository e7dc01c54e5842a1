"""The bulk paths of both decoders: ``PcapngDecoder.next_packets``, ``PcapDecoder.next_packets``.

Each must give exactly what the one-at-a-time path gives (``next_raw`` / ``next_record`` plus
the obvious encoding), in any chunking, and leave every fault for the one-at-a-time path to
report at the same offset.
"""

from __future__ import annotations

import random
import struct

import pytest

from pcapd.errors import PcapngFormatError
from pcapd.pcapng import (
    EPB,
    PacketBatch,
    PcapDecoder,
    PcapngDecoder,
    RawBlock,
    encode_enhanced_packet,
    encode_interface_description,
    encode_section_header,
    epb_timestamp,
    with_interface_id,
)
from tests.pcapng.pcapng_samples import (
    RECORDS,
    big_endian_section,
    chunked,
    legacy_file,
    raw_all,
    sample_capture,
)
from tests.pcapng.test_reader import MALFORMED


def alternate(
    chunks: list[bytes], mapping: list[int] | None = None, **kwargs: int
) -> tuple[list[PacketBatch], list[RawBlock]]:
    """Feed ``chunks``, alternating next_packets and next_raw as a reader does."""
    dec = PcapngDecoder(**kwargs)
    batches: list[PacketBatch] = []
    raws: list[RawBlock] = []
    for chunk in [*chunks, b""]:
        dec.receive_data(chunk)
        while True:
            interfaces = len(dec.interfaces)
            batch = dec.next_packets(None if mapping is None else mapping[:interfaces])
            if batch.blocks:
                batches.append(batch)
            raw = dec.next_raw()
            if raw is None:
                break
            raws.append(raw)
    return batches, raws


def many_packets() -> bytes:
    """Two interfaces, packets of every length mod 4, with and without options."""
    parts = [encode_section_header()]
    parts += [encode_interface_description(link_type=1, snaplen=0, name=n) for n in "ab"]
    for i in range(40):
        parts.append(
            encode_enhanced_packet(
                interface_id=i % 2,
                timestamp=(7 << 32) + i * 1000,
                data=bytes([i]) * i,
                original_length=2 * i,
                comment="c" * (i % 5) if i % 3 == 0 else None,
            )
        )
    return b"".join(parts)


@pytest.mark.parametrize("seed", range(6))
def test_same_packets_as_next_raw_in_any_chunking(seed: int) -> None:
    data = many_packets()
    expected = [raw for raw in raw_all([data]) if raw.block_type == EPB]
    rng = random.Random(seed)
    sizes = [rng.randint(1, 300) for _ in range(40)] if seed else [len(data)]
    batches, raws = alternate(list(chunked(data, sizes)))
    assert len(raws) == 3  # the SHB and the IDBs: every EPB took the fast path
    blocks = [block for batch in batches for block in batch.blocks]
    assert blocks == [raw.data for raw in expected]
    assert [t for b in batches for t in b.timestamps] == [epb_timestamp(r.data) for r in expected]
    assert [i for b in batches for i in b.interface_ids] == [i % 2 for i in range(40)]
    assert all(type(block) is bytes for block in blocks)


def test_interface_map_rewrites_only_the_id() -> None:
    data = many_packets()
    expected = [raw for raw in raw_all([data]) if raw.block_type == EPB]
    batches, _ = alternate(list(chunked(data, [97])), mapping=[5, 0xFFFFFFFF])
    blocks = [block for batch in batches for block in batch.blocks]
    assert blocks == [
        with_interface_id(raw.data, [5, 0xFFFFFFFF][i % 2]) for i, raw in enumerate(expected)
    ]
    assert [i for b in batches for i in b.interface_ids] == [i % 2 for i in range(40)]


@pytest.mark.parametrize("mapping", [[0, 3], [0, 0xFE], [0, 0x1FF], [0, 0x301], [0, 0xFFFFFFFF]])
def test_interface_map_rewrites_runs_of_one_interface(mapping: list[int]) -> None:
    """A run of one interface is rewritten by its low byte alone where only that byte changes
    (1 -> 3, 1 -> 0xFE), else word by word (1 -> 0x1FF, 0x301, 0xFFFFFFFF): the same blocks."""
    parts = [encode_section_header()]
    parts += [encode_interface_description(link_type=1, snaplen=0, name=n) for n in "ab"]
    packets = [
        encode_enhanced_packet(interface_id=1, timestamp=i, data=bytes([i]) * (i % 9), comment=c)
        for i in range(30)
        for c in [("c" * (i % 3)) if i % 4 == 0 else None]
    ]
    batches, _ = alternate([b"".join(parts + packets)], mapping=mapping)
    blocks = [block for batch in batches for block in batch.blocks]
    assert blocks == [with_interface_id(packet, mapping[1]) for packet in packets]
    assert [i for b in batches for i in b.interface_ids] == [1] * 30


def test_stops_at_other_blocks_and_leaves_them_to_next_raw() -> None:
    data, packets = sample_capture()  # EPBs, then an NRB and ISBs
    batches, raws = alternate([data])
    assert [len(batch.blocks) for batch in batches] == [len(packets)]
    assert [raw.block_type for raw in raws] == [0x0A0D0D0A, 1, 1, 4, 5, 5]


def test_big_endian_sections_and_no_section_give_empty_batches() -> None:
    dec = PcapngDecoder()
    assert dec.next_packets() == PacketBatch([], [], [])
    dec.receive_data(big_endian_section())
    while True:
        assert dec.next_packets() == PacketBatch([], [], [])
        if dec.next_raw() is None:
            break


def test_a_map_of_the_wrong_size_is_a_local_error() -> None:
    dec = PcapngDecoder()
    dec.receive_data(many_packets())
    for _ in range(3):
        dec.next_raw()
    with pytest.raises(ValueError, match="2 interfaces"):
        dec.next_packets([0])
    with pytest.raises(ValueError, match="outside"):
        dec.next_packets([0, -1])


def _framing_fault(stream: bytes) -> bool:
    dec = PcapngDecoder(max_block_size=1024)
    dec.receive_data(stream)
    dec.receive_data(b"")
    try:
        while dec.next_raw() is not None:
            pass
    except PcapngFormatError:
        return True
    return False


# The cases next_raw finds (option faults inside EPBs are next_block's, on either path).
FRAMING = [case for case in MALFORMED if _framing_fault(case[0])]


@pytest.mark.parametrize(("stream", "offset", "words"), FRAMING, ids=[c[2] for c in FRAMING])
def test_faults_are_reported_by_next_raw_at_the_same_offset(
    stream: bytes, offset: int, words: str
) -> None:
    for chunks in ([stream], list(chunked(stream, [1])), list(chunked(stream, [5, 11]))):
        with pytest.raises(PcapngFormatError) as info:
            alternate(chunks, max_block_size=1024)
        assert info.value.offset == offset
        assert words in str(info.value)


def test_a_bad_packet_after_good_ones_ends_the_batch_before_it() -> None:
    data = many_packets()
    good = [raw for raw in raw_all([data]) if raw.block_type == EPB]
    bad = bytearray(good[5].data)
    struct.pack_into("<I", bad, len(bad) - 4, 0)  # trailing length
    head = len(data) - sum(len(raw.data) for raw in good)
    stream = data[:head] + b"".join(raw.data for raw in good[:5]) + bytes(bad)
    dec = PcapngDecoder()
    dec.receive_data(stream)
    for _ in range(3):
        dec.next_raw()
    assert dec.next_packets().blocks == [raw.data for raw in good[:5]]
    with pytest.raises(PcapngFormatError, match="trailing") as info:
        dec.next_raw()
    assert info.value.offset == len(stream) - 4


def test_oversized_packet_is_left_to_next_raw() -> None:
    stream = many_packets()
    dec = PcapngDecoder(max_block_size=64)
    dec.receive_data(stream)
    for _ in range(3):
        dec.next_raw()
    batch = dec.next_packets()
    assert batch.blocks and all(len(block) <= 64 for block in batch.blocks)
    with pytest.raises(PcapngFormatError, match="limit"):
        dec.next_raw()


# -- classic pcap ---------------------------------------------------------------------------


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("nsec", [False, True])
def test_pcap_records_become_the_epbs_the_encoder_writes(big: bool, nsec: bool) -> None:
    data = legacy_file(big, nsec, RECORDS)
    resol = 10**9 if nsec else 10**6
    expected_ticks = [seconds * resol + fraction for seconds, fraction, _, _ in RECORDS]
    expected = [
        encode_enhanced_packet(interface_id=3, timestamp=ticks, data=payload, original_length=orig)
        for ticks, (_, _, payload, orig) in zip(expected_ticks, RECORDS, strict=True)
    ]
    for sizes in ([len(data)], [1], [7, 30, 3]):
        dec = PcapDecoder()
        blocks: list[bytes] = []
        stamps: list[int] = []
        for chunk in [*chunked(data, sizes), b""]:
            dec.receive_data(chunk)
            if dec.header is None:
                assert dec.next_packets(3) == PacketBatch([], [], [])
                dec.next_record()
            batch = dec.next_packets(3)
            assert batch.interface_ids == [3] * len(batch.blocks)
            blocks += batch.blocks
            stamps += batch.timestamps
            assert dec.next_record() is None
        assert blocks == expected
        assert stamps == expected_ticks


def test_pcap_faults_are_left_to_next_record() -> None:
    data = legacy_file(False, False, RECORDS[:3])
    dec = PcapDecoder(max_record_size=2)
    dec.receive_data(data)
    dec.next_record()
    assert len(dec.next_packets(0).blocks) == 0  # the first record holds 3 bytes
    with pytest.raises(PcapngFormatError, match="limit"):
        dec.next_record()
    truncated = PcapDecoder()
    truncated.receive_data(data[:-1])
    truncated.receive_data(b"")
    truncated.next_record()
    assert len(truncated.next_packets(0).blocks) == 2
    with pytest.raises(PcapngFormatError, match="input ends"):
        truncated.next_record()


# -- the bulk path's rarer branches: long blocks, long options, runs cut short ---------------


def varied_packets() -> bytes:
    """One interface; blocks above the lookup tables (20 000 bytes of data), options of 300
    bytes (a captured length 224+ bytes below the block length), and ordinary ones."""
    parts = [encode_section_header(), encode_interface_description(link_type=1, snaplen=0)]
    for i in range(60):
        size = 20_000 + i if i % 7 == 3 else 40 + i
        comment = "x" * 300 if i % 5 == 1 else None
        parts.append(
            encode_enhanced_packet(
                interface_id=0, timestamp=(9 << 32) + i, data=bytes([i]) * size, comment=comment
            )
        )
    return b"".join(parts)


@pytest.mark.parametrize("sizes", [None, [97], [4096, 333], [70_000]])
@pytest.mark.parametrize("mapping", [None, [0], [7]])
def test_long_blocks_and_long_options_give_what_next_raw_gives(
    sizes: list[int] | None, mapping: list[int] | None
) -> None:
    data = varied_packets()
    expected = [raw.data for raw in raw_all([data]) if raw.block_type == EPB]
    if mapping is not None:
        expected = [with_interface_id(block, mapping[0]) for block in expected]
    batches, raws = alternate(list(chunked(data, sizes or [len(data)])), mapping)
    assert len(raws) == 2  # only the SHB and the IDB left the fast path
    assert [block for batch in batches for block in batch.blocks] == expected
    assert [t for b in batches for t in b.timestamps] == [(9 << 32) + i for i in range(60)]


@pytest.mark.parametrize("limit", [64, 1024, 20_000])
def test_the_size_limit_holds_on_the_bulk_path(limit: int) -> None:
    data = varied_packets()
    dec = PcapngDecoder(max_block_size=limit)
    dec.receive_data(data)
    for _ in range(2):
        dec.next_raw()
    blocks = dec.next_packets().blocks
    assert all(len(block) <= limit for block in blocks)
    with pytest.raises(PcapngFormatError, match="limit"):
        dec.next_raw()


def test_other_blocks_every_few_packets_leave_the_same_packets() -> None:
    """Runs cut short again and again (the walk-ahead window shrinks, then grows back)."""
    parts = [encode_section_header(), encode_interface_description(link_type=1, snaplen=0)]
    for i in range(300):
        parts.append(encode_enhanced_packet(interface_id=0, timestamp=i, data=bytes(i % 50)))
        if i % 3 == 0 and i < 100:
            parts.append(encode_interface_description(link_type=1, snaplen=0, name=f"if{i}"))
    data = b"".join(parts)
    expected = [raw.data for raw in raw_all([data]) if raw.block_type == EPB]
    batches, raws = alternate([data])
    assert [block for batch in batches for block in batch.blocks] == expected
    assert len(raws) == 2 + 34


def test_columns_hold_the_timestamp_halves_and_the_ids_as_read() -> None:
    data = many_packets()
    dec = PcapngDecoder()
    dec.receive_data(data)
    for _ in range(3):
        dec.next_raw()
    blocks, high, low, ids = dec.next_packet_columns([4, 5])
    expected = [raw for raw in raw_all([data]) if raw.block_type == EPB]
    assert blocks == [with_interface_id(r.data, [4, 5][i % 2]) for i, r in enumerate(expected)]
    assert [h << 32 | lo for h, lo in zip(high, low, strict=True)] == [
        epb_timestamp(r.data) for r in expected
    ]
    assert list(ids) == [i % 2 for i in range(40)]


@pytest.mark.parametrize("count", [15, 16, 17, 32, 48, 49])
def test_runs_that_fill_the_walk_ahead_window_exactly_are_all_taken(count: int) -> None:
    packets = [encode_enhanced_packet(interface_id=0, timestamp=i, data=b"x") for i in range(count)]
    data = b"".join(
        [encode_section_header(), encode_interface_description(link_type=1, snaplen=0), *packets]
    )
    for final in (False, True):
        dec = PcapngDecoder()
        dec.receive_data(data)
        if final:
            dec.receive_data(b"")
        for _ in range(2):
            dec.next_raw()
        assert [epb_timestamp(b) for b in dec.next_packets().blocks] == list(range(count))
        assert dec.next_raw() is None
