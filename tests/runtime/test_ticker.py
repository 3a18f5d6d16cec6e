"""Ticker: absolute schedule, skip accounting, no bursts (fake clock, no real sleeps)."""

import pytest

from runtime.clock import FakeClock
from runtime.ticker import Ticker

T = 1_000_000  # 1 ms


def test_ticks_start_on_the_absolute_schedule_without_drift() -> None:
    clock = FakeClock(start_ns=5_000)
    ticker = Ticker(clock, T)
    for k in range(100):
        start = ticker.wait()
        assert start.k == k
        assert start.scheduled_ns == 5_000 + k * T
        assert start.lateness_ns == 0
        clock.advance_ns(T // 3)  # work inside the tick does not shift later ticks
    assert ticker.skipped_total == 0


def test_a_late_start_within_the_period_runs_late_and_skips_nothing() -> None:
    clock = FakeClock()
    ticker = Ticker(clock, T)
    ticker.wait()
    clock.advance_ns(T + T // 2)  # overran into tick 1 by half a period
    start = ticker.wait()
    assert (start.k, start.skipped, start.lateness_ns) == (1, 0, T // 2)


def test_an_overrun_skips_the_missed_ticks_counts_them_and_never_bursts() -> None:
    clock = FakeClock()
    ticker = Ticker(clock, T)
    ticker.wait()
    clock.advance_ns(3 * T + 10)  # ticks 1 and 2 passed entirely; tick 3 is due
    start = ticker.wait()
    assert start.k == 3
    assert start.skipped == 2
    assert start.lateness_ns == 10
    # The next wait sleeps until tick 4's start: no catch-up burst of ticks 1 and 2.
    sleeps_before = clock.sleeps
    nxt = ticker.wait()
    assert nxt.k == 4 and nxt.start_ns == 4 * T and clock.sleeps == sleeps_before + 1
    assert ticker.skipped_total == 2


def test_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="period_ns"):
        Ticker(FakeClock(), 0)
