"""The decoders' input buffer: offsets that count from the start of the stream however it is
chunked, a read prefix dropped once it outweighs the rest, and no input after the end."""

from __future__ import annotations

import pytest

from pcapd.pcapng import PcapDecoder, PcapngDecoder, encode_enhanced_packet
from pcapd.pcapng.buffer import InputBuffer
from tests.pcapng.pcapng_samples import IDB_LE, SHB_LE, chunked


class Words(InputBuffer):
    """The smallest decoder: items of 4 bytes, each with the stream offset it started at."""

    def next_word(self) -> tuple[int, bytes] | None:
        if len(self._buf) - self._pos < 4:
            return None
        start, end = self.offset, self._pos + 4
        word = bytes(self._buf[self._pos : end])
        self._consume(end)
        return start, word


STREAM = b"".join(i.to_bytes(4, "little") for i in range(60_000))  # 240 000 bytes


@pytest.mark.parametrize("sizes", [[1], [3, 5], [4096], [65536 + 13], [200_000]])
def test_offsets_count_from_the_start_of_the_stream_in_any_chunking(sizes: list[int]) -> None:
    words = Words()
    got: list[tuple[int, bytes]] = []
    for n, chunk in enumerate(chunked(STREAM, sizes)):
        words.receive_data(chunk)
        if n % 3 == 2:  # sometimes let input pile up before reading
            continue
        while (word := words.next_word()) is not None:
            got.append(word)
    words.receive_data(b"")
    while (word := words.next_word()) is not None:
        got.append(word)
    assert got == [(4 * i, STREAM[4 * i : 4 * i + 4]) for i in range(60_000)]
    assert words.offset == len(STREAM)


def test_a_read_prefix_is_dropped_once_past_64_kib_and_outweighing_what_is_left() -> None:
    words = Words()
    words.receive_data(STREAM[:100_000])
    for _ in range(16_384):  # 65 536 bytes read: not past 64 KiB, kept (no copy yet)
        words.next_word()
    assert len(words._buf) == 100_000
    words.next_word()  # 65 540 read, 34 460 left: dropped
    assert len(words._buf) == 34_460
    for _ in range(1000):  # read from what is left, in place
        words.next_word()
    assert len(words._buf) == 34_460
    assert words.next_word() == (69_540, STREAM[69_540:69_544])
    words.receive_data(STREAM[100_000:])  # 140 000 more: 30 456 to read before them
    assert len(words._buf) == 174_460
    assert words.next_word() == (69_544, STREAM[69_544:69_548])


def test_all_of_it_read_empties_the_buffer_and_the_offset_goes_on() -> None:
    words = Words()
    words.receive_data(STREAM[:8])
    assert [words.next_word(), words.next_word(), words.next_word()] == [
        (0, STREAM[:4]), (4, STREAM[4:8]), None]
    assert (len(words._buf), words.offset) == (0, 8)
    words.receive_data(bytearray(STREAM[8:10]))
    words.receive_data(memoryview(STREAM)[10:12])
    assert words.next_word() == (8, STREAM[8:12])


def test_the_pcapng_decoders_buffer_stays_bounded_and_offsets_hold_across_compaction() -> None:
    packet = encode_enhanced_packet(interface_id=0, timestamp=1, data=bytes(1000))
    stream = SHB_LE + IDB_LE + packet * 3000
    dec = PcapngDecoder()
    count = 0
    largest = 0
    for chunk in chunked(stream, [65536 + 13]):
        dec.receive_data(chunk)
        while (raw := dec.next_raw()) is not None:
            count += 1
            if count > 2:
                assert raw.offset == len(SHB_LE + IDB_LE) + (count - 3) * len(packet)
        largest = max(largest, len(dec._buf))
    assert count == 3002
    assert largest < 2 * (65536 + 13) + len(packet)
    assert dec.offset == len(stream)


@pytest.mark.parametrize("decoder", [Words, PcapngDecoder, PcapDecoder])
def test_input_after_the_end_is_a_local_error(decoder: type[InputBuffer]) -> None:
    dec = decoder()
    dec.receive_data(b"")
    dec.receive_data(b"")  # saying "the end" twice is harmless
    with pytest.raises(RuntimeError, match=r"^receive_data\(\) after end of input$"):
        dec.receive_data(SHB_LE)
