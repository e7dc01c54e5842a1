"""Classic libpcap reader and format sniffing."""

from __future__ import annotations

import random
import struct

import pytest

from pcapd.errors import PcapngFormatError
from pcapd.pcapng import PcapDecoder, PcapHeader, PcapRecord, sniff_format
from tests.pcapng.pcapng_samples import RECORDS, chunked, legacy_file, sample_capture


def read_all(chunks: object, **kwargs: int) -> list[PcapHeader | PcapRecord]:
    dec = PcapDecoder(**kwargs)
    items: list[PcapHeader | PcapRecord] = []
    assert isinstance(chunks, list)
    for chunk in [*chunks, b""]:
        dec.receive_data(chunk)
        while (item := dec.next_record()) is not None:
            items.append(item)
    return items


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("nsec", [False, True])
def test_both_byte_orders_and_resolutions_in_any_chunking(big: bool, nsec: bool) -> None:
    data = legacy_file(big, nsec, RECORDS)
    resol = 10**9 if nsec else 10**6
    expected: list[PcapHeader | PcapRecord] = [PcapHeader(big, 2, 4, 96, 1, resol)]
    offset = 24
    for seconds, fraction, payload, orig in RECORDS:
        expected.append(PcapRecord(seconds * resol + fraction, len(payload), orig, payload, offset))
        offset += 16 + len(payload)
    rng = random.Random(7)
    for sizes in ([len(data)], [1], [rng.randint(1, 40) for _ in range(30)]):
        assert read_all(list(chunked(data, sizes))) == expected
    assert sniff_format(data) == "pcap"


def test_header_is_kept_and_offsets_advance() -> None:
    dec = PcapDecoder()
    dec.receive_data(legacy_file(False, False, RECORDS[:1]))
    header = dec.next_record()
    assert header is dec.header
    assert dec.offset == 24
    assert isinstance(dec.next_record(), PcapRecord)
    assert dec.next_record() is None
    assert dec.offset == 24 + 16 + 3


def test_truncated_tails_raise_at_the_partial_item() -> None:
    records = [*RECORDS[:2], RECORDS[3]]  # 3, 0 and 1 bytes of data
    data = legacy_file(False, True, records)
    boundaries = [0, 24, 24 + 19, 24 + 19 + 16, 24 + 19 + 16 + 17]
    assert boundaries[-1] == len(data)
    for cut in range(len(data) + 1):
        if cut in boundaries:
            assert len(read_all([data[:cut]])) == boundaries.index(cut)
            continue
        with pytest.raises(PcapngFormatError) as info:
            read_all([data[:cut]])
        assert info.value.offset == max(b for b in boundaries if b <= cut)


@pytest.mark.parametrize(
    ("data", "offset", "words"),
    [
        (b"\xa1\xb2\xc3", 0, "ends"),
        (b"\x0a\x0d\x0d\x0a" + bytes(20), 0, "magic"),
        (b"\xd4\xc3\xb2\xa1\x03\x00\x04\x00" + bytes(16), 4, "major version 3"),
        (
            legacy_file(False, False, [(0, 0, b"", 0)])[:32] + struct.pack("<II", 2000, 0),
            32,
            "limit",
        ),
    ],
)
def test_malformed(data: bytes, offset: int, words: str) -> None:
    with pytest.raises(PcapngFormatError, match=words) as info:
        read_all([data], max_record_size=1024)
    assert info.value.offset == offset


def test_sniff_format() -> None:
    pcapng, _ = sample_capture()
    assert sniff_format(pcapng) == "pcapng"
    assert sniff_format(legacy_file(True, True, [])) == "pcap"
    for bad in (b"", b"\xa1\xb2", b"GIF89a", b"\x0a\x0d\x0d\x0b"):
        with pytest.raises(PcapngFormatError, match="pcap"):
            sniff_format(bad)
