"""StepBudget: the latency estimate, the fit decision, adaptation and starvation probes."""

import pytest

from runtime.budget import BudgetConfig, StepBudget


def test_before_any_sample_the_prior_plus_margins_is_used() -> None:
    b = StepBudget(BudgetConfig(prior_step_ns=1_000_000, margin_frac=0.2, margin_ns=20_000))
    assert b.estimate_ns == 1_220_000
    assert not b.fits(1_000_000)


def test_steps_that_fit_never_exceed_the_remaining_time() -> None:
    b = StepBudget(BudgetConfig(margin_frac=0.1, margin_ns=5_000))
    for ns in (90_000, 100_000, 110_000) * 50:
        b.record(ns)
    for remaining in range(0, 3_000_000, 7_919):
        n = b.steps_that_fit(remaining)
        assert n * b.estimate_ns <= max(remaining, 0)
        assert b.fits(remaining) == (n >= 1)


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


def test_a_starved_budget_probes_with_the_median_and_relearns() -> None:
    b = StepBudget(BudgetConfig(margin_frac=0.0, margin_ns=0, probe_after_ticks=3))
    for _ in range(100):
        b.record(100_000)
    for _ in range(28):
        b.record(900_000)  # sustained slow-down: p95 is now 900 us
    remaining = 600_000
    assert not b.fits(remaining)
    for _ in range(2):
        b.end_tick(steps=0, blocked=True)
        assert not b.probe_ok(remaining)
    b.end_tick(steps=0, blocked=True)
    assert b.probe_ok(remaining)  # median (100 us) fits: one probe step may run
    b.end_tick(steps=1, blocked=False)
    assert not b.probe_ok(remaining)


def test_bad_config_names_the_value() -> None:
    with pytest.raises(ValueError, match="quantile"):
        BudgetConfig(quantile=1.5)
    with pytest.raises(ValueError, match="window"):
        BudgetConfig(window=0)
