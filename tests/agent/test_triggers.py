"""A recording's trigger windows: when a match fires a trigger, which matches belong to it, when
its window is whole, and what the rate limit and ``once`` hold back. Pure: timestamps in, the
fired trigger out."""

from __future__ import annotations

from pcapd.agent.triggers import HISTORY, MIN_INTERVAL_NS, Triggers

S = 1_000_000_000
T0 = 1_700_000_000 * S


def test_a_trigger_fires_and_completes_when_its_window_is_whole() -> None:
    triggers = Triggers(keep_ns=10 * S, after_ns=5 * S, once=False)
    fired = triggers.matched([T0])
    assert fired is not None and (fired.at, fired.window_start, fired.window_end) == (
        T0, T0 - 10 * S, T0 + 5 * S)
    assert triggers.matched([T0 + S, T0 + 5 * S]) is None  # inside its window: the same one
    assert triggers.complete(T0 + 5 * S) is None  # not past the window's end yet
    done = triggers.complete(T0 + 5 * S + 1)
    assert done is fired and done.matches == 3 and done.complete and not triggers.done
    assert triggers.matched([T0 + 30 * S]) is None  # within the minute: rate-limited
    assert triggers.suppressed == 1
    again = triggers.matched([T0 + MIN_INTERVAL_NS])
    assert again is not None and again.number == 2 and triggers.total == 2


def test_once_fires_one_trigger_and_is_done_when_its_window_is_whole() -> None:
    triggers = Triggers(keep_ns=S, after_ns=2 * S, once=True, min_interval_ns=1)
    assert triggers.matched([T0 + 5, T0]) is not None  # the earliest match fires
    assert triggers.open is not None and triggers.open.at == T0
    assert triggers.matched([T0 + 3 * S]) is None  # after the window: not a second trigger
    assert triggers.complete(T0 + 2 * S + 1) is not None and triggers.done
    assert triggers.matched([T0 + 100 * S]) is None and triggers.total == 1


def test_a_batch_fires_at_its_earliest_match_and_counts_the_rest_in_its_window() -> None:
    triggers = Triggers(keep_ns=S, after_ns=2 * S, once=False)
    fired = triggers.matched([T0 + 2 * S, T0 + 3 * S, T0, T0 + S])
    assert fired is not None and fired.at == T0 and fired.number == 1
    assert fired.matches == 3  # T0, T0 + 1 s and T0 + 2 s (the window's end is in it)
    assert triggers.suppressed == 1  # T0 + 3 s: past the end of a window not yet whole


def test_no_second_trigger_fires_while_one_is_open_even_past_its_window() -> None:
    """The watermark decides when a window is whole, not the matches: a match after the
    window's end is suppressed until the open trigger completes."""
    triggers = Triggers(keep_ns=S, after_ns=S, once=False, min_interval_ns=1)
    first = triggers.matched([T0])
    assert triggers.matched([T0 + 10 * S]) is None and triggers.open is first
    assert (triggers.total, triggers.suppressed) == (1, 1)
    assert triggers.complete(T0 + 11 * S) is first and triggers.open is None
    second = triggers.matched([T0 + 12 * S])
    assert second is not None and second.number == 2


def test_the_rate_limit_is_a_minute_or_the_window_after_whichever_is_longer() -> None:
    minute = Triggers(keep_ns=S, after_ns=S, once=False)
    minute.matched([T0])
    minute.complete(T0 + 2 * S)
    assert minute.matched([T0 + MIN_INTERVAL_NS - 1]) is None and minute.suppressed == 1
    assert minute.matched([T0 + MIN_INTERVAL_NS]) is not None  # exactly a minute: fires

    long_after = Triggers(keep_ns=S, after_ns=2 * MIN_INTERVAL_NS, once=False)
    long_after.matched([T0])
    long_after.complete(T0 + 2 * MIN_INTERVAL_NS + 1)
    late = T0 + 2 * MIN_INTERVAL_NS - 1  # a straggler older than the window's end
    assert long_after.matched([late]) is None and long_after.suppressed == 1
    assert long_after.matched([T0 + 2 * MIN_INTERVAL_NS + 1]) is not None


def test_once_ignores_matches_after_its_trigger_without_counting_them_suppressed() -> None:
    triggers = Triggers(keep_ns=S, after_ns=S, once=True, min_interval_ns=1)
    triggers.matched([T0])
    triggers.complete(T0 + S + 1)
    assert triggers.matched([T0 + 5 * S, T0 + 6 * S]) is None
    assert (triggers.total, triggers.suppressed, triggers.done) == (1, 0, True)


def test_complete_without_an_open_trigger_gives_nothing_and_a_window_completes_once() -> None:
    triggers = Triggers(keep_ns=S, after_ns=S, once=False)
    assert triggers.complete(T0) is None
    fired = triggers.matched([T0])
    assert triggers.complete(T0 + 2 * S) is fired
    assert triggers.complete(T0 + 3 * S) is None


def test_the_history_keeps_the_newest_triggers_and_the_total_counts_all() -> None:
    triggers = Triggers(keep_ns=0, after_ns=0, once=False, min_interval_ns=1)
    for i in range(HISTORY + 5):
        assert triggers.matched([T0 + i]) is not None
        assert triggers.complete(T0 + i + 1) is not None
    assert triggers.total == HISTORY + 5 and len(triggers.fired) == HISTORY
    assert [f.number for f in (triggers.fired[0], triggers.fired[-1])] == [6, HISTORY + 5]
    assert all(f.complete for f in triggers.fired)
