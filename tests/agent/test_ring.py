"""The flight recorder's ring and budget: pure, time as data, checked exhaustively.

The ring's pieces in files (``recorder.storage: directory``) are tested in test_ring_files.py,
the trigger windows in test_triggers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcapd import _accel
from pcapd.agent.ring import (
    MAX_PIECE,
    Budget,
    BudgetRefused,
    Ring,
    RingError,
    _index,
    index,
)
from pcapd.agent.ring_files import DirectoryStore
from pcapd.pcapng import encode_enhanced_packet
from tests.agent.rings import PACKET, T0, S, batch, epb, held, operations, packets


def test_keeps_what_is_inside_keep_and_cuts_inside_a_batch() -> None:
    ring = Ring(keep_ns=10 * S, max_bytes=1 << 20)
    ring.add(batch(T0, T0 + S, T0 + 2 * S, T0 + 3 * S), now_ns=T0 + 3 * S)
    assert [ts for ts, _ in held(ring)] == [T0, T0 + S, T0 + 2 * S, T0 + 3 * S]
    ring.age(T0 + 11 * S + 1)  # T0 and T0 + 1 s are now older than 10 s
    assert [ts for ts, _ in held(ring)] == [T0 + 2 * S, T0 + 3 * S]
    stats = ring.statistics()
    assert (stats.packets, stats.aged_out_time, stats.aged_out_size, stats.captured) == (2, 2, 0, 4)
    assert stats.first_timestamp == T0 + 2 * S and stats.last_timestamp == T0 + 3 * S
    assert stats.bytes == 2 * len(epb(T0)) and stats.memory == 4 * len(epb(T0))  # one buffer
    ring.age(T0 + 14 * S)
    stats = ring.statistics()
    assert (stats.packets, stats.bytes, stats.memory, stats.aged_out_time) == (0, 0, 0, 4)


def test_a_packet_exactly_keep_old_is_held() -> None:
    ring = Ring(keep_ns=5, max_bytes=1 << 20)
    ring.add(batch(100, 101), now_ns=105)
    assert [ts for ts, _ in held(ring)] == [100, 101]
    ring.age(106)
    assert [ts for ts, _ in held(ring)] == [101]


def test_window_cuts_at_packet_granularity_and_is_ordered() -> None:
    ring = Ring(keep_ns=100 * S, max_bytes=1 << 20)
    ring.add(batch(*(T0 + i * S for i in range(10))), now_ns=T0 + 10 * S)
    ring.add(batch(*(T0 + i * S for i in range(10, 20))), now_ns=T0 + 20 * S)
    window = ring.window(T0 + 5 * S, T0 + 14 * S)
    assert [ts for ts, _ in packets(window)] == [T0 + i * S for i in range(5, 15)]
    assert (window.first_timestamp, window.last_timestamp) == (T0 + 5 * S, T0 + 14 * S)
    assert len(window.chunks) == 2
    empty = ring.window(T0 + 30 * S, T0 + 40 * S)
    assert (empty.packets, empty.chunks, empty.first_timestamp) == (0, [], None)


def test_out_of_order_within_and_across_batches_is_sorted() -> None:
    ring = Ring(keep_ns=100 * S, max_bytes=1 << 20)
    ring.add(batch(T0 + 3, T0 + 1, T0 + 2), now_ns=T0 + 3)
    ring.add(batch(T0 + 10, T0 + 12), now_ns=T0 + 12)
    ring.add(batch(T0 + 11, T0 + 4, T0 + 13), now_ns=T0 + 13)  # older than what is held
    assert [ts for ts, _ in held(ring)] == [T0 + 1, T0 + 2, T0 + 3, T0 + 4, T0 + 10, T0 + 11,
                                            T0 + 12, T0 + 13]
    assert ring.statistics().packets == 8


def test_size_ages_out_the_oldest_and_never_exceeds_max_bytes() -> None:
    one = len(epb(0))
    ring = Ring(keep_ns=1000 * S, max_bytes=10 * one)
    for i in range(100):
        ring.add(epb(T0 + i), now_ns=T0 + i)
        stats = ring.statistics()
        assert stats.memory <= 10 * one
        assert stats.captured == stats.packets + stats.aged_out_size
    assert [ts for ts, _ in held(ring)] == [T0 + i for i in range(90, 100)]
    assert ring.statistics().aged_out_size == 90


def test_a_large_batch_is_split_so_size_ageing_keeps_most_of_the_ring() -> None:
    ring = Ring(keep_ns=1000 * S, max_bytes=4 * MAX_PIECE)
    big = batch(*(T0 + i for i in range(4000)), size=1400)  # ~5.7 MB: more than max_bytes
    ring.add(big, now_ns=T0 + 4000)
    stats = ring.statistics()
    assert stats.memory <= 4 * MAX_PIECE
    assert stats.memory > 3 * MAX_PIECE  # whole pieces dropped, not the whole batch
    kept = held(ring)
    assert [ts for ts, _ in kept] == [T0 + i for i in range(4000 - len(kept), 4000)]
    assert all(len(bytes(c)) <= MAX_PIECE for c in ring.window(0, 2**64).chunks)


class _Watched(DirectoryStore):
    """A ring's files that note the most they ever held, after every write."""

    most = 0

    def put(self, blocks: bytes) -> object:
        ref = super().put(blocks)
        self.most = max(self.most, sum(p.stat().st_size for p in self.path.iterdir()))
        return ref


def test_a_batch_larger_than_the_ring_never_takes_the_disk_past_max_bytes(
        tmp_path: Path) -> None:
    """The oldest pieces make room before a piece is written, not after the batch: the disk
    (or memory) holds at most ``max_bytes`` at every moment, whatever the batch's size."""
    max_bytes = 64 << 10
    files = _Watched(tmp_path, "r-1", max_bytes // 8)
    ring = Ring(keep_ns=1000 * S, max_bytes=max_bytes, store=files)
    for n in range(5):  # each batch ~5.7 times the ring
        ring.add(batch(*(T0 + n * 1000 + i for i in range(250)), size=1400),
                 now_ns=T0 + n * 1000 + 250)
        assert files.most <= max_bytes
    stats = ring.statistics()
    assert stats.captured == stats.packets + stats.aged_out_size == 1250
    assert stats.memory > max_bytes // 2  # only what had to go went
    files.close()


def test_what_is_older_than_keep_is_counted_as_such_even_when_room_is_made() -> None:
    one = len(epb(0))
    ring = Ring(keep_ns=S, max_bytes=4 * one)
    ring.add(batch(T0, T0 + 1, T0 + 2), now_ns=T0 + 2)
    ring.add(batch(*(T0 + 2 * S + i for i in range(4))), now_ns=T0 + 2 * S + 3)
    stats = ring.statistics()
    assert (stats.aged_out_time, stats.aged_out_size, stats.packets) == (3, 0, 4)


def test_a_packet_larger_than_the_ring_is_counted_not_held() -> None:
    ring = Ring(keep_ns=S, max_bytes=100)
    ring.add(epb(T0, size=200), now_ns=T0)
    stats = ring.statistics()
    assert (stats.packets, stats.memory, stats.aged_out_size) == (0, 0, 1)


def test_clear_frees_at_once_and_keeps_the_counters() -> None:
    ring = Ring(keep_ns=S, max_bytes=1 << 20)
    ring.add(batch(T0, T0 + 1), now_ns=T0 + 1)
    ring.note_kernel(7, 1)
    ring.clear()
    stats = ring.statistics()
    assert (stats.packets, stats.bytes, stats.memory, stats.captured) == (0, 0, 0, 2)
    assert (stats.kernel_dropped, stats.interface_dropped) == (7, 1)


def test_windows_stay_valid_while_the_ring_moves_on() -> None:
    ring = Ring(keep_ns=10, max_bytes=1 << 20)
    ring.add(batch(T0, T0 + 1), now_ns=T0 + 1)
    window = ring.window(T0, T0 + 1)
    ring.age(T0 + 100)
    ring.add(batch(T0 + 100), now_ns=T0 + 100)
    assert [ts for ts, _ in packets(window)] == [T0, T0 + 1]


@pytest.mark.parametrize("bad", [b"\x00" * 7, epb(1)[:-4], epb(1) + b"\x00" * 4,
                                 encode_enhanced_packet(interface_id=1, timestamp=1, data=b"x")])
def test_only_whole_epbs_of_interface_0_are_taken(bad: bytes) -> None:
    ring = Ring(keep_ns=S, max_bytes=1 << 20)
    with pytest.raises(RingError, match="not whole EPBs of interface 0"):
        ring.add(bad, now_ns=0)
    assert ring.statistics().captured == 0


def test_invalid_ring_sizes() -> None:
    for keep, size in ((0, 1), (1, 0)):
        with pytest.raises(ValueError, match="positive"):
            Ring(keep_ns=keep, max_bytes=size)


def test_index_gives_timestamps_and_ends() -> None:
    blocks = batch(5, 3, size=10) + epb(9, size=100)
    stamps, ends = index(blocks)
    assert list(stamps) == [5, 3, 9]
    assert list(ends) == [len(epb(5, size=10)), 2 * len(epb(5, size=10)), len(blocks)]


@settings(deadline=None, max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 70)), max_size=20),
       st.integers(0, 8))
def test_the_compiled_index_agrees_with_the_pure_one(
    packets: list[tuple[int, int]], cut: int
) -> None:
    """Whole batches, and batches with their last ``cut`` bytes missing."""
    if _accel.recorder is None:
        pytest.skip("the compiled index is not built or off")
    blocks = b"".join(epb(ts, size=size) for ts, size in packets)
    blocks = blocks[:len(blocks) - cut]
    answers = []
    for compiled in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            if not compiled:
                patch.setattr(_accel, "recorder", None)
            try:
                stamps, ends, in_order = _index(blocks)
                answers.append((list(stamps), list(ends), in_order))
            except RingError:
                answers.append(None)
    assert answers[0] == answers[1]


# --- properties --------------------------------------------------------------------------------

def _run(ops: list[tuple[int, list[int]]], ring: Ring) -> tuple[list[tuple[int, int]], int]:
    """Drive ``ring``; return every packet added as (timestamp, serial), and the final now."""
    now, serial, added = T0, 0, []
    for step, offsets in ops:
        now += step
        stamps = [now + o for o in offsets]
        blocks = b"".join(epb(ts, serial + i) for i, ts in enumerate(stamps))
        added += [(ts, serial + i) for i, ts in enumerate(stamps)]
        serial += len(stamps)
        ring.add(blocks, now)
        stats = ring.statistics()
        kept = held(ring)
        assert all(ts >= now - ring.keep_ns for ts, _ in kept), "older than keep"
        assert stats.memory <= ring.max_bytes, "over max_bytes"
        assert [ts for ts, _ in kept] == sorted(ts for ts, _ in kept), "not ordered"
        assert stats.packets == len(kept) and stats.bytes == sum(len(b) for _, b in kept)
        assert stats.captured == stats.packets + stats.aged_out_time + stats.aged_out_size
        assert stats.captured == len(added)
    return added, now


def _serial(block: bytes) -> int:
    return int.from_bytes(block[28:32], "little")


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(operations, st.integers(1, 5 * S), st.data())
def test_time_only_holds_exactly_the_packets_inside_keep(
    ops: list[tuple[int, list[int]]], keep: int, data: st.DataObject
) -> None:
    ring = Ring(keep_ns=keep, max_bytes=1 << 40)
    added, now = _run(ops, ring)
    expected = sorted(((ts, s) for ts, s in added if ts >= now - keep), key=lambda p: p[0])
    got = [(ts, _serial(b)) for ts, b in held(ring)]
    assert got == expected  # exactly these, ordered (ties in arrival order)
    t_from = data.draw(st.integers(T0 - 2 * S, now + S), label="from")
    t_to = data.draw(st.integers(t_from, now + 2 * S), label="to")
    window = [(ts, _serial(b)) for ts, b in packets(ring.window(t_from, t_to))]
    assert window == [p for p in expected if t_from <= p[0] <= t_to]


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(operations, st.integers(1, 5 * S), st.integers(PACKET, 40 * PACKET), st.data())
def test_size_and_time_together(
    ops: list[tuple[int, list[int]]], keep: int, max_bytes: int, data: st.DataObject
) -> None:
    ring = Ring(keep_ns=keep, max_bytes=max_bytes)
    _run(ops, ring)
    kept = held(ring)
    t_from = data.draw(st.integers(T0 - 2 * S, T0 + 80 * S), label="from")
    t_to = data.draw(st.integers(t_from, T0 + 90 * S), label="to")
    window = packets(ring.window(t_from, t_to))
    assert window == [p for p in kept if t_from <= p[0] <= t_to]


# --- the budget --------------------------------------------------------------------------------


def test_budget_refuses_a_new_recording_rather_than_squeezing_running_ones() -> None:
    budget = Budget(max_bytes=100 << 20, max_recordings=3)
    budget.reserve("a", 60 << 20)
    with pytest.raises(BudgetRefused, match=r"60.0 MiB does not fit: 40.0 MiB of this agent's "
                       r"100.0 MiB \(recorder.max_bytes\) is free"):
        budget.reserve("b", 60 << 20)
    budget.reserve("b", 40 << 20)
    assert budget.statistics().reserved == 100 << 20
    with pytest.raises(BudgetRefused, match="does not fit"):
        budget.reserve("c", 1)
    budget.release("a")
    budget.reserve("c", 1)
    budget.reserve("d", 1)
    with pytest.raises(BudgetRefused, match=r"3 recordings already run here.*recorder.max_rec"):
        budget.reserve("e", 1)
    with pytest.raises(BudgetRefused, match="already holds"):
        budget.reserve("d", 1)
    budget.release("nobody")  # harmless
    assert budget.statistics().recordings == 3
