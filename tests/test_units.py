"""Durations and sizes said as a user types them: what a message suggests, pasted back, parses."""

from __future__ import annotations

import math

import pytest

from pcapd.client.arguments import parse_duration, parse_size
from pcapd.units import display_size, format_duration, format_size


@pytest.mark.parametrize(("seconds", "text"), [
    (30, "30s"), (90, "1m30s"), (600, "10m"), (5400, "1h30m"), (3725, "3725s"), (86400, "1d"),
    (93600, "1d2h"), (7 * 86400, "7d"), (0.5, "0.5s"), (0, "0s")])
def test_durations_are_said_as_typed(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("seconds", "text"), [
    (86460, "1d1m"),  # a unit may be skipped (no hours), the two kept are exact
    (3601, "1h1s"),
    (3660, "1h1m"),
    (7 * 86400 + 1, "7d1s"),
    (90061, "90061s"),  # 1d1h1m1s would be four units, 1d3661s a count that rolls over
    (90.5, "90.5s"),  # a fraction stays in seconds, never 1m30.5s
    (1.5, "1.5s"),
])
def test_at_most_two_units_and_never_one_that_rolls_over(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_negative_and_non_finite_durations_are_said_without_looping() -> None:
    assert format_duration(-90) == "-1m30s"
    assert format_duration(-0.25) == "-0.25s"
    assert format_duration(math.inf) == "infs"
    assert format_duration(math.nan) == "nans"


@pytest.mark.parametrize(("size", "text"), [
    (256_000_000, "256MB"), (1 << 30, "1GiB"), (64 << 20, "64MiB"), (1000, "1kB"),
    (65536, "64KiB"), (10, "10B"), (1_500_000_000, "1500MB")])
def test_sizes_are_said_as_typed(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


@pytest.mark.parametrize(("size", "text"), [
    (0, "0B"),
    (1024, "1KiB"),  # exact in both 1KiB and 1.024kB: the exact unit wins
    (1 << 40, "1TiB"),
    (10**12, "1TB"),
    (3 << 30, "3GiB"),  # not 3221225472B nor 3221225.472kB
    (10**15, "1000TB"),  # no unit beyond TB
])
def test_a_size_takes_the_exact_unit_with_the_smallest_count(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


@pytest.mark.parametrize(("size", "text"), [
    (1_234_567, "1.2MB"), (1536, "1.5kB"), ((3 << 30) + 1, "3.2GB"), (1023, "1.0kB")])
def test_a_size_no_unit_divides_gets_one_decimal_in_decimal_units(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(("size", "text"), [
    (0, "0B"), (999, "999B"), (1000, "1.0kB"), (1024, "1.0kB"), (12_345_678, "12.3MB"),
    (1_500_000_000, "1.5GB"), (1 << 30, "1.1GB"), (10**13, "10.0TB")])
def test_a_measured_amount_is_shown_in_decimal_units_with_one_decimal(size: int,
                                                                      text: str) -> None:
    assert display_size(size) == text
