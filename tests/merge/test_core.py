"""The live k-way merge, with exact expectations: one scenario per rule."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from pcapd.merge import Merge, MergeStatistics, Release


def blk(source: str, ts: int) -> bytes:
    return f"{source}@{ts}".encode()


def push(m: Merge, sid: int, name: str, stamps: list[int], now: float) -> None:
    m.push(sid, stamps, [blk(name, t) for t in stamps], now)


def test_importing_the_merge_does_not_import_trio() -> None:
    """The pure parts: the merge (not the file driver, which does I/O) and the rewriting."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    code = (
        "import sys; sys.modules['trio'] = None;"  # any import of trio fails
        " import pcapd.merge, pcapd.merge.engine, pcapd.pcapng.rewrite;"
        " assert 'pcapd.merge.files' not in sys.modules, 'the file driver was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": path})


def test_list_sort_computes_keys_left_to_right_once_each() -> None:
    """The merge sorts blocks by a parallel key list (``key=partial(next, iter(keys))``): that
    is right only while list.sort asks for each item's key once, in order."""
    asked: list[str] = []

    def key(item: str) -> str:
        asked.append(item)
        return item

    items = ["d", "c", "b", "a"]
    items.sort(key=key)
    assert asked == ["d", "c", "b", "a"]
    items = ["d", "c", "b", "a"]
    items.sort(key=partial(next, iter([3, 2, 1, 0])))
    assert items == ["a", "b", "c", "d"]


def test_two_sources_interleave() -> None:
    m = Merge()
    a, b = m.add_source(0.0), m.add_source(0.0)
    push(m, a, "a", [10, 30, 50], 0.0)
    push(m, b, "b", [20, 40, 60], 0.0)
    # a's frontier is 50, so b's 60 waits for a to say more.
    expected = [blk("a", 10), blk("b", 20), blk("a", 30), blk("b", 40), blk("a", 50)]
    assert m.pop(0.0) == Release(expected, wakeup=1.0)
    push(m, a, "a", [70], 0.1)
    assert m.pop(0.1) == Release([blk("b", 60)], wakeup=1.0)  # b (frontier 60) holds 70 back
    assert m.flush() == [blk("a", 70)]
    stats = m.statistics()
    assert stats == MergeStatistics(
        buffered=0,
        pending=0,
        released=7,
        reordered=0,
        forced=0,
        sources=2,
        per_source_buffered={a: 0, b: 0},
    )


def test_a_source_is_alone_while_it_is_the_only_live_one_and_nothing_waits() -> None:
    m = Merge()
    a = m.add_source(0.0)
    assert m.alone(a)  # a batch of it would come out as it went in: the api passes it by
    b = m.add_source(0.0)
    assert not m.alone(a) and not m.alone(b)  # a second source: merge
    m.remove_source(b, 0.0)
    assert m.alone(a)
    push(m, a, "a", [10, 20], 0.0)
    assert not m.alone(a)  # buffered
    assert m.pop(0.0).blocks == [blk("a", 10), blk("a", 20)]
    assert m.alone(a)
    c = m.add_source(0.0)
    push(m, c, "c", [5], 0.0)
    m.remove_source(c, 0.0)
    assert not m.alone(a)  # c's packet still waits for its turn
    assert m.pop(0.0).blocks == [blk("c", 5)]
    assert m.alone(a) and not m.alone(c)


def test_released_blocks_are_the_pushed_objects() -> None:
    m = Merge()
    a = m.add_source(0.0)
    block = bytes(bytearray(b"epb"))
    m.push(a, [5], [block], 0.0)
    m.remove_source(a, 0.0)
    assert m.pop(0.0).blocks[0] is block


def test_an_idle_source_holds_the_others_back_until_its_watermark() -> None:
    m = Merge()
    a, idle = m.add_source(0.0), m.add_source(0.0)
    push(m, a, "a", [10, 20, 30], 0.0)
    assert m.pop(0.0) == Release([], wakeup=1.0)
    m.advance(idle, 20, 0.5)  # no packet below 20 from idle any more; 20 itself may still come
    assert m.pop(0.5) == Release([blk("a", 10), blk("a", 20)], wakeup=1.5)
    m.advance(idle, 100, 0.6)
    assert m.pop(0.6) == Release([blk("a", 30)], wakeup=None)


def test_a_silent_source_stops_holding_back_exactly_at_last_heard_plus_lateness() -> None:
    m = Merge(lateness=2.0)
    a, silent = m.add_source(0.0), m.add_source(0.25)
    push(m, a, "a", [10, 20], 1.0)
    assert m.pop(1.0) == Release([], wakeup=2.25)
    assert m.pop(2.0) == Release([], wakeup=2.25)
    assert m.pop(2.249) == Release([], wakeup=2.25)
    assert m.pop(2.25) == Release([blk("a", 10), blk("a", 20)], wakeup=None)
    # Heard again, it holds back again, from its frontier.
    m.advance(silent, 15, 2.5)
    push(m, a, "a", [30], 2.5)
    assert m.pop(2.5) == Release([], wakeup=4.5)
    assert m.pop(4.5) == Release([blk("a", 30)], wakeup=None)


def test_the_wakeup_itself_releases_whatever_floats_it_is_made_of() -> None:
    m = Merge(lateness=0.2)
    a, b = m.add_source(0.1), m.add_source(0.1)
    push(m, a, "a", [10], 0.1)
    wakeup = m.pop(0.1).wakeup
    assert wakeup == 0.1 + 0.2  # 0.30000000000000004, and 0.3 - 0.1 < 0.2
    assert wakeup is not None
    assert m.pop(wakeup).blocks == [blk("a", 10)]
    m.remove_source(b, 0.5)


def test_with_infinite_lateness_nothing_waits_on_time() -> None:
    m = Merge(lateness=math.inf)
    a, b = m.add_source(0.0), m.add_source(0.0)
    push(m, a, "a", [10], 0.0)
    assert m.pop(1e9) == Release([], wakeup=None)
    m.advance(b, 10, 1e9)
    assert m.pop(1e9).blocks == [blk("a", 10)]


def test_wakeup_is_when_every_source_holding_the_next_packet_back_has_gone_stale() -> None:
    m = Merge(lateness=1.0)
    a, b, c = m.add_source(0.0), m.add_source(0.0), m.add_source(0.0)
    push(m, a, "a", [100], 0.5)
    m.advance(b, 10, 0.25)  # b and c both hold 100 back; c is heard last
    m.advance(c, 50, 0.75)
    assert m.pop(0.75) == Release([], wakeup=1.75)
    assert m.pop(1.25) == Release([], wakeup=1.75)  # b is stale now, c still holds
    assert m.pop(1.75) == Release([blk("a", 100)], wakeup=None)


def test_a_late_packet_is_released_and_counted_reordered() -> None:
    m = Merge(lateness=1.0)
    a, slow = m.add_source(0.0), m.add_source(0.0)
    push(m, a, "a", [10, 20, 30], 0.0)
    m.advance(slow, 25, 0.0)
    assert m.pop(0.0).blocks == [blk("a", 10), blk("a", 20)]
    push(m, slow, "s", [18, 26], 0.1)  # 18 breaks slow's watermark and is below 20, written
    assert m.pop(0.1) == Release([blk("s", 18), blk("s", 26)], wakeup=1.1)
    assert m.statistics().reordered == 1
    assert m.flush() == [blk("a", 30)]


def test_a_packet_below_what_was_written_goes_out_at_once() -> None:
    m = Merge(lateness=1.0)
    a, b = m.add_source(0.0), m.add_source(0.0)
    m.advance(b, 100, 0.0)
    push(m, a, "a", [50, 150], 0.0)
    assert m.pop(0.0).blocks == [blk("a", 50)]
    push(m, b, "b", [40, 50, 120], 0.1)  # 40 late; 50 ties what was written: in order, not late
    assert m.pop(0.1) == Release([blk("b", 40), blk("b", 50), blk("b", 120)], wakeup=1.1)
    assert m.statistics().reordered == 1


def test_a_stale_source_that_comes_back_gets_its_old_packets_written_late() -> None:
    m = Merge(lateness=1.0)
    a, b = m.add_source(0.0), m.add_source(0.0)
    push(m, a, "a", [10, 20, 30], 0.0)
    assert m.pop(1.0).blocks == [blk("a", 10), blk("a", 20), blk("a", 30)]
    push(m, b, "b", [5, 25, 35], 1.5)
    push(m, a, "a", [40], 1.5)
    # 5 and 25 are below 30 (written): late, out at once. low = min(40, 35): 35 goes too, while
    # 40 waits for b, heard at 1.5.
    assert m.pop(1.5) == Release([blk("b", 5), blk("b", 25), blk("b", 35)], wakeup=2.5)
    assert m.statistics().reordered == 2


def test_a_source_joins_mid_stream() -> None:
    m = Merge()
    a = m.add_source(0.0)
    push(m, a, "a", [10, 20], 0.0)
    assert m.pop(0.0).blocks == [blk("a", 10), blk("a", 20)]
    push(m, a, "a", [30, 40], 0.1)
    late = m.add_source(0.1)  # promised nothing: holds a's 30 and 40 back
    assert m.pop(0.1) == Release([], wakeup=1.1)
    push(m, late, "l", [35], 0.2)
    assert m.pop(0.2) == Release([blk("a", 30), blk("l", 35)], wakeup=1.2)
    m.advance(late, 40, 0.3)
    assert m.pop(0.3).blocks == [blk("a", 40)]
    assert m.statistics().sources == 2


def test_a_source_leaves_with_packets_buffered() -> None:
    m = Merge()
    a, b, c = m.add_source(0.0), m.add_source(0.0), m.add_source(0.0)
    push(m, a, "a", [10, 40], 0.0)
    push(m, b, "b", [20, 30], 0.0)
    m.advance(c, 25, 0.0)
    assert m.pop(0.0).blocks == [blk("a", 10), blk("b", 20)]
    m.remove_source(b, 0.1)  # b's 30 stays; b holds nothing back any more
    assert m.statistics().per_source_buffered == {a: 1, b: 1, c: 0}
    m.advance(c, 35, 0.2)
    assert m.pop(0.2).blocks == [blk("b", 30)]
    assert m.statistics().per_source_buffered == {a: 1, c: 0}  # b is gone for good
    m.remove_source(c, 0.3)
    assert m.pop(0.3) == Release([blk("a", 40)], wakeup=None)  # a bounds only itself
    assert m.statistics().sources == 1


def test_the_cap_forces_the_oldest_packets_out_and_counts_them() -> None:
    m = Merge(max_buffered=4)
    a, idle = m.add_source(0.0), m.add_source(0.0)
    push(m, a, "a", [10, 20, 30], 0.0)
    assert m.statistics().buffered == 3
    push(m, a, "a", [40, 50, 60], 0.0)  # 6 > 4: the two oldest are forced into the next pop
    stats = m.statistics()
    assert (stats.buffered, stats.pending, stats.forced) == (4, 2, 2)
    assert m.pop(0.0) == Release([blk("a", 10), blk("a", 20)], wakeup=1.0)
    # idle was overtaken by force: its packet below 20 is late, written and counted.
    push(m, idle, "i", [15, 70], 0.1)
    expected = [blk("i", 15), blk("a", 30), blk("a", 40), blk("a", 50), blk("a", 60)]
    assert m.pop(0.1).blocks == expected
    stats = m.statistics()
    assert (stats.reordered, stats.forced, stats.released) == (1, 2, 7)
    assert m.flush() == [blk("i", 70)]


def test_the_cap_releases_by_the_rule_before_forcing() -> None:
    m = Merge(max_buffered=1)
    a, b = m.add_source(0.0), m.add_source(0.0)
    m.advance(b, 25, 0.0)
    push(m, a, "a", [10, 20, 30, 40], 0.0)  # 10, 20 may go anyway; only 30 is forced
    stats = m.statistics()
    assert (stats.buffered, stats.pending, stats.forced) == (1, 3, 1)
    assert m.pop(0.0).blocks == [blk("a", 10), blk("a", 20), blk("a", 30)]


def test_forcing_takes_ties_together_across_sources() -> None:
    m = Merge(max_buffered=2)
    a, b, idle = m.add_source(0.0), m.add_source(0.0), m.add_source(0.0)
    push(m, a, "a", [10, 20], 0.0)
    push(m, b, "b", [10], 0.0)  # 3 > 2: the smallest bound covering one packet is 10: two go
    assert m.statistics().forced == 2
    assert m.pop(0.0).blocks == [blk("a", 10), blk("b", 10)]
    m.remove_source(idle, 0.0)


def test_ties_keep_source_order_then_arrival_order() -> None:
    m = Merge()
    a, b, c = m.add_source(0.0), m.add_source(0.0), m.add_source(0.0)
    m.push(c, [5, 5], [b"c1", b"c2"], 0.0)
    m.push(a, [5, 5], [b"a1", b"a2"], 0.0)
    m.push(b, [5], [b"b1"], 0.0)
    assert m.pop(0.0).blocks == [b"a1", b"a2", b"b1", b"c1", b"c2"]


def test_a_source_going_backwards_keeps_its_own_order_and_is_counted() -> None:
    m = Merge()
    a, b = m.add_source(0.0), m.add_source(0.0)
    m.push(a, [10, 30, 20, 40], [b"a10", b"a30", b"a20", b"a40"], 0.0)
    m.push(b, [25, 35], [b"b25", b"b35"], 0.0)
    # a's 20 sorts as if it were 30 (its predecessor): a's order is kept, 20 is written late.
    assert m.pop(0.0).blocks == [b"a10", b"b25", b"a30", b"a20", b"b35"]
    assert m.statistics().reordered == 1
    m.push(a, [45, 50], [b"a45", b"a50"], 0.1)  # back to order: the fast path again
    m.remove_source(b, 0.1)
    assert m.pop(0.1).blocks == [b"a40", b"a45", b"a50"]
    assert m.statistics().reordered == 1


def test_flush_returns_everything_in_order_with_pending_first() -> None:
    m = Merge(max_buffered=2)
    a, b = m.add_source(0.0), m.add_source(0.0)
    push(m, a, "a", [10, 30, 50], 0.0)  # 3 > 2: b promised nothing, so 10 is forced
    push(m, b, "b", [20], 0.0)  # 3 > 2: low = 20 lets 20 out by the rule
    assert (m.statistics().pending, m.statistics().forced) == (2, 1)
    assert m.flush() == [blk("a", 10), blk("b", 20), blk("a", 30), blk("a", 50)]
    assert m.statistics().buffered == 0
    assert m.pop(0.0) == Release([], wakeup=None)


def test_an_empty_push_is_a_heartbeat() -> None:
    m = Merge(lateness=1.0)
    a, b = m.add_source(0.0), m.add_source(0.0)
    push(m, a, "a", [10], 0.0)
    m.advance(b, 5, 0.0)
    m.push(b, [], [], 0.75)
    assert m.pop(0.75) == Release([], wakeup=1.75)


def test_push_to_a_removed_or_unknown_source_raises() -> None:
    m = Merge()
    a = m.add_source(0.0)
    m.remove_source(a, 0.0)
    with pytest.raises(ValueError, match="no live source 0"):
        m.push(a, [1], [b"x"], 0.0)
    with pytest.raises(ValueError, match="no live source 7"):
        m.push(7, [1], [b"x"], 0.0)
    with pytest.raises(ValueError):
        m.advance(a, 10, 0.0)
    with pytest.raises(ValueError):
        m.remove_source(a, 0.0)


def test_push_with_mismatched_lengths_raises_and_changes_nothing() -> None:
    m = Merge()
    a = m.add_source(0.0)
    with pytest.raises(ValueError, match="2 timestamps for 1 blocks"):
        m.push(a, [1, 2], [b"x"], 0.0)
    assert m.statistics().buffered == 0


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Merge(lateness=-1.0)
    with pytest.raises(ValueError):
        Merge(lateness=float("nan"))
    with pytest.raises(ValueError):
        Merge(max_buffered=0)


def test_tuples_are_accepted_as_batches() -> None:
    m = Merge()
    a = m.add_source(0.0)
    m.push(a, (3, 4), (b"x", b"y"), 0.0)
    assert m.flush() == [b"x", b"y"]


def test_compaction_keeps_everything_through_many_partial_releases() -> None:
    m = Merge()
    a, b = m.add_source(0.0), m.add_source(0.0)
    out: list[bytes] = []
    for i in range(200):
        push(m, a, "a", [10 * i + k for k in range(7)], 0.0)
        m.advance(b, 10 * i + 3, 0.0)  # a keeps a tail of 3 packets each round
        out += m.pop(0.0).blocks
    out += m.flush()
    assert out == [blk("a", 10 * i + k) for i in range(200) for k in range(7)]


def test_frontier_is_the_greatest_pushed_timestamp_or_watermark() -> None:
    m = Merge()
    a = m.add_source(0.0)
    assert m.frontier(a) < -(2**63)  # nothing promised yet
    push(m, a, "a", [10, 30, 20], 0.0)  # a batch that goes back in time
    assert m.frontier(a) == 30
    m.advance(a, 50, 0.0)
    assert m.frontier(a) == 50
    m.remove_source(a, 0.0)
    with pytest.raises(ValueError, match="no live source"):
        m.frontier(a)


def test_float_timestamps_mix_with_ints_exactly() -> None:
    """pcapd merge passes offsets from a base as floats (they sort faster)."""
    m = Merge(lateness=math.inf, max_buffered=3)
    a, b = m.add_source(0.0), m.add_source(0.0)
    m.push(a, [1.0, 2**53, 2.0**53 + 2], [b"a1", b"a2", b"a3"], 0.0)
    m.push(b, [2, 2**53 + 1], [b"b2", b"b3"], 0.0)  # over the cap: forced out in order
    assert m.flush() == [b"a1", b"b2", b"a2", b"b3", b"a3"]
