"""The health-check schedule of a starting backend: fast where readiness is likely, bounded
everywhere else."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuletd.backends.schedule import PollSchedule


def checks(schedule: PollSchedule, until_s: float) -> list[float]:
    """The times (after the spawn) at which the health URL is asked, for a backend that never
    answers, as `wait_healthy` asks it (the request's own time left out)."""
    t, times = 0.0, []
    while t < until_s:
        times.append(t)
        t += schedule.interval(t)
    return times


def test_fast_at_first_then_backing_off_to_the_cap_without_an_expectation() -> None:
    s = PollSchedule()

    assert s.interval(0.0) == s.interval(0.9) == s.fast_s
    assert s.fast_s < s.interval(3.0) < s.interval(6.0) < s.max_s
    assert s.interval(60.0) == s.interval(600.0) == s.max_s


def test_fast_again_around_the_expected_load_time() -> None:
    s = PollSchedule().with_expected(40.0)

    assert s.fast_band == (30.0, 50.0)
    assert s.interval(20.0) > s.fast_s  # far from it: backing off
    assert s.interval(30.0) == s.interval(40.0) == s.interval(50.0) == s.fast_s
    assert s.interval(49.0) == s.fast_s
    assert s.fast_s < s.interval(55.0) < s.interval(70.0) <= s.max_s


def test_a_short_expected_load_keeps_at_least_a_second_of_fast_checks_either_side() -> None:
    s = PollSchedule().with_expected(2.0)

    assert s.fast_band == (1.0, 3.0)
    assert all(s.interval(t / 10) == s.fast_s for t in range(31))


@pytest.mark.parametrize("bad", [None, 0.0, -1.0, math.nan, math.inf])
def test_no_usable_expectation_is_no_expectation(bad: float | None) -> None:
    assert PollSchedule().with_expected(bad) == PollSchedule()


def test_the_band_is_reached_by_a_check_not_slept_through() -> None:
    s = PollSchedule().with_expected(120.0)
    start, end = s.fast_band or (0.0, 0.0)

    times = checks(s, end)
    inside = [t for t in times if start <= t <= end]

    # The first check in the band comes within one fast interval of its start.
    assert inside and inside[0] - start <= s.fast_s * 1.01
    assert all(b - a <= s.fast_s * 1.01 for a, b in itertools.pairwise(inside))


def test_a_ten_minute_wait_asks_a_bounded_number_of_times() -> None:
    without = checks(PollSchedule(), 600.0)
    around = checks(PollSchedule().with_expected(300.0), 600.0)

    # Without an expectation: fast checks for about the first 1.25 s (50), the ramp up to the
    # cap (about 40 more: each interval 10 % longer than the last), then one a second.
    assert len(without) < 50 + 40 + 600
    # The band (225..375 s) costs 40 checks a second for 150 s instead of one a second.
    assert len(around) < len(without) + 150 * 40
    assert len(around) > len(without) + 150 * 30


@given(
    expected=st.one_of(st.none(), st.floats(0.001, 3600.0)),
    elapsed=st.floats(0.0, 7200.0),
)
def test_never_faster_than_the_fast_interval_nor_slower_than_the_cap(
    expected: float | None, elapsed: float
) -> None:
    s = PollSchedule().with_expected(expected)

    assert s.fast_s <= s.interval(elapsed) <= s.max_s


@given(expected=st.floats(2.0, 3600.0), elapsed=st.floats(0.0, 3600.0))
def test_a_sleep_that_starts_before_the_band_ends_before_it(
    expected: float, elapsed: float
) -> None:
    s = PollSchedule().with_expected(expected)
    start, _ = s.fast_band or (0.0, 0.0)

    if elapsed < start - s.fast_s:
        assert elapsed + s.interval(elapsed) <= start


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="fast_s"):
        PollSchedule(fast_s=2.0, max_s=1.0)
    with pytest.raises(ValueError, match="backoff"):
        PollSchedule(backoff=1.0)
