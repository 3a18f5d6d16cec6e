"""StepBudget: the latency estimate, the fit decision, adaptation and starvation probes."""

import pytest

from runtime.budget import BudgetConfig, StepBudget, for_period


def test_before_any_sample_the_prior_plus_margins_is_used() -> None:
    b = StepBudget(BudgetConfig(prior_step_ns=1_000_000, margin_frac=0.2, margin_ns=20_000))
    assert b.estimate_ns == 1_220_000
    assert not b.fits(1_000_000)


def test_a_lone_outlier_does_not_move_the_estimate() -> None:
    b = StepBudget(BudgetConfig(margin_frac=0.0, margin_ns=0))
    for _ in range(128):
        b.record(100_000)
    b.record(5_000_000)  # one OS preemption during one step
    assert b.estimate_ns == 100_000


def test_a_5x_jump_is_picked_up_within_eight_steps() -> None:
    b = StepBudget(BudgetConfig(margin_frac=0.0, margin_ns=0))
    for _ in range(128):
        b.record(100_000)
    seen = 0
    while b.estimate_ns < 500_000:
        b.record(500_000)
        seen += 1
    assert seen <= 8


def test_a_starved_budget_recovers_on_recent_steps_and_returns_to_the_p95() -> None:
    b = StepBudget(BudgetConfig(margin_frac=0.0, margin_ns=0, probe_after_ticks=3))
    for _ in range(100):
        b.record(100_000)
    for _ in range(28):
        b.record(900_000)  # sustained slow-down: p95 is now 900 us
    room = 600_000
    assert not b.fits(room, first=True)
    for _ in range(3):
        assert not b.recovering
        b.end_tick(steps=0, blocked=True, room_ns=room)
    # three starved ticks: recovering, on the median of the last 8 steps (still 900 us)
    assert b.recovering and b.estimate_ns == 900_000 and b.active_estimate_ns == 900_000
    for _ in range(3):
        assert not b.fits(room, first=True)  # no probe due yet
        b.end_tick(steps=0, blocked=True, room_ns=room)
    assert b.fits(room, first=True) and not b.fits(room)  # a probe: the tick's first step only
    b.record(100_000)  # the planner is fast again: the probe fitted the room
    b.end_tick(steps=1, blocked=True, room_ns=room)
    for _ in range(4):  # so it probes again on every tick
        assert b.fits(room, first=True) and not b.fits(room)
        b.record(100_000)
        b.end_tick(steps=1, blocked=True, room_ns=room)
    # 5 of the last 8 steps are fast: the tick's first step runs on their median, only that one
    assert b.active_estimate_ns == 100_000 and b.fits(room, first=True) and not b.fits(room)
    for _ in range(128):
        b.record(100_000)  # fresh samples push the slow stretch out of the window
    b.end_tick(steps=5, blocked=True, room_ns=room)
    assert not b.recovering and b.active_estimate_ns == b.estimate_ns == 100_000


def test_a_step_before_the_command_must_fit_by_the_tail_and_waits_out_recovery() -> None:
    b = StepBudget(BudgetConfig(margin_frac=0.0, margin_ns=0, probe_after_ticks=1))
    assert b.tail_estimate_ns == b.estimate_ns  # no samples: the prior, both ways
    for i in range(100):
        b.record(900_000 if i % 25 == 0 else 300_000)  # 4 % slow steps (cold, after idle)
    # the p95 (300 us) lets a step start in 500 us; the p99 (900 us) does not, before the command
    assert b.estimate_ns == 300_000 and b.tail_estimate_ns == 900_000
    assert b.fits(500_000) and not b.fits_before_emit(500_000) and b.fits_before_emit(900_000)
    for _ in range(30):
        b.record(2_000_000)  # a slow stretch, every step blocked for a tick: recovering
    b.end_tick(steps=0, blocked=True, room_ns=1_000_000)
    assert b.recovering
    assert not b.fits_before_emit(10_000_000)  # recovery's steps run after the command
    b.end_tick(steps=0, blocked=True, room_ns=1_000_000)
    assert b.fits(1_000_000, first=True)  # its probe is due: it runs after the command
    assert not b.fits_before_emit(10_000_000)
    with pytest.raises(ValueError, match="emit_quantile"):
        BudgetConfig(quantile=0.95, emit_quantile=0.9)


def test_the_tail_comes_from_the_ticks_first_steps_once_eight_were_seen() -> None:
    b = StepBudget(BudgetConfig(margin_frac=0.0, margin_ns=0))
    for _ in range(7):  # seven ticks: a first step, then fifteen back to back
        b.record(300_000, first=True)
        for _ in range(15):
            b.record(300_000)
    assert b.tail_estimate_ns == 300_000  # fewer than 8 first steps: the p99 of all steps
    b.record(1_000_000, first=True)  # the eighth tick's first step ran cold
    # one slow step in 113 leaves the p99 of all steps at 300 us; the first steps' own p99
    # (8 samples: their slowest) is what a step before the command must fit in
    assert b.estimate_ns == 300_000 and b.tail_estimate_ns == 1_000_000
    assert b.fits(950_000) and not b.fits_before_emit(950_000)


def test_probe_time_becomes_ticks_for_the_loops_period() -> None:
    cfg = BudgetConfig()  # 20 ms
    assert for_period(cfg, 10_000_000).probe_after_ticks == 2  # 100 Hz
    assert for_period(cfg, 4_000_000).probe_after_ticks == 5  # 250 Hz
    assert for_period(cfg, 1_000_000).probe_after_ticks == 20  # 1 kHz
    assert for_period(cfg, 50_000_000).probe_after_ticks == 1  # 20 Hz: at least one tick
    fixed = BudgetConfig(probe_after_s=None, probe_after_ticks=7)
    assert for_period(fixed, 1_000_000).probe_after_ticks == 7
    with pytest.raises(ValueError, match="probe_after_s"):
        BudgetConfig(probe_after_s=0.0)


def test_bad_config_names_the_value() -> None:
    with pytest.raises(ValueError, match="quantile"):
        BudgetConfig(quantile=1.5)
    with pytest.raises(ValueError, match="window"):
        BudgetConfig(window=0)
