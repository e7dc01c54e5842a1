"""The drop gate: exact admissions across a congestion episode."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcapd.flow import DropGate, RateLimiter


def test_keeps_below_upper_then_drops_until_lower() -> None:
    gate = DropGate(size=100, upper_limit=90, lower_limit=50)
    assert gate.admit(depth=0, count=80) == 80
    assert gate.admit(depth=80, count=20) == 10  # fills to the upper limit, drops 10
    assert gate.dropping
    assert gate.admit(depth=90, count=5) == 0
    assert gate.admit(depth=51, count=5) == 0  # still above the lower limit: hysteresis
    assert gate.admit(depth=50, count=5) == 5  # drained to the lower limit: resumes
    stats = gate.statistics()
    assert (stats.admitted, stats.dropped, stats.episodes, stats.dropping) == (95, 20, 1, False)


def test_a_second_congestion_is_a_second_episode() -> None:
    gate = DropGate(size=10, upper_limit=8, lower_limit=2)
    gate.admit(depth=8, count=1)
    gate.admit(depth=0, count=1)
    gate.admit(depth=8, count=1)
    assert gate.statistics().episodes == 2


@pytest.mark.parametrize(("size", "upper", "lower"), [(10, 11, 5), (10, 5, 5), (10, 5, -1)])
def test_refuses_limits_in_the_wrong_order(size: int, upper: int, lower: int) -> None:
    with pytest.raises(ValueError, match="lower_limit < upper_limit <= size"):
        DropGate(size, upper, lower)


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 50)), max_size=200))
def test_accounting_holds_and_queue_never_passes_upper(steps: list[tuple[int, int]]) -> None:
    gate = DropGate(size=120, upper_limit=100, lower_limit=40)
    offered = 0
    for depth, count in steps:
        kept = gate.admit(depth, count)
        offered += count
        assert 0 <= kept <= count
        assert kept == 0 or depth + kept <= 100
    stats = gate.statistics()
    assert stats.admitted + stats.dropped == offered


def test_rate_limiter_allows_a_burst_then_one_per_interval() -> None:
    limiter = RateLimiter(rate=3, period=60)
    assert [limiter.allow("alice", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.allow("alice", 0.0) == pytest.approx(20.0)  # one token per 20 s
    assert limiter.allow("bob", 0.0) == 0.0  # each user has a bucket of their own
    assert limiter.allow("alice", 19.9) > 0
    assert limiter.allow("alice", 20.0) == 0.0
    limiter.forget_idle(1000.0)
    assert limiter._buckets == {}


@given(st.lists(st.floats(0, 10, allow_nan=False), max_size=100))
def test_rate_limiter_never_allows_more_than_rate_plus_refill(steps: list[float]) -> None:
    limiter = RateLimiter(rate=5, period=10)
    now, allowed = 0.0, 0
    for step in steps:
        now += step
        allowed += limiter.allow("u", now) == 0.0
    assert allowed <= 5 + now * 5 / 10 + 1e-9
