"""A saved ring's note: the agent's form reads back exactly, wherever it sits in a comment."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pcapd.proto.ring_note import RingNote, summary

COUNTS = st.integers(min_value=0, max_value=2**64 - 1)


@given(st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True), COUNTS, COUNTS, COUNTS,
       COUNTS, COUNTS)
def test_a_note_reads_back_as_written(rid: str, window: int, held: int, time: int, size: int,
                                      captured: int) -> None:
    note = RingNote(rid, window, held, time, size, captured)
    assert RingNote.find([note.text()]) == note
    assert RingNote.find(["other", f"{note.text()}; pcapd: lost; the capture is partial"]) \
        == note
    assert len(note.text()) < 400


def test_the_agents_words_are_those_users_read_in_the_file() -> None:
    note = RingNote("3f2a-0", 10, 20, 7, 3, 30)
    assert note.text() == ("recording 3f2a-0: 10 packets in the window of 20 held; 7 aged "
                           "out (older than keep), 3 aged out (over max_bytes), 30 captured")
    assert note.aged_out == 10


def test_comments_without_a_note_have_none() -> None:
    assert RingNote.find([]) is None
    assert RingNote.find(["pcapd: not captured: gone", "recording x: many packets"]) is None


def test_the_summary_adds_every_ring() -> None:
    assert summary([RingNote("a-0", 10, 20, 7, 3, 30), RingNote("a-1", 4, 4, 0, 0, 4)]) == (
        "14 packets saved of 24 held, 10 aged out (7 older than --keep, 3 over --max-bytes)")
