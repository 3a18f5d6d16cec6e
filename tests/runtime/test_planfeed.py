"""PlanFeed and ApplyLog: which planned action a plant tick gets, and what is never applied."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import Command
from runtime.planfeed import (
    AGE_KEYS,
    DRY,
    FALLBACK,
    FRESH,
    PLAN_FED,
    SAFE,
    ApplyLog,
    PlanFeed,
    age_quantiles,
)

MS = 1_000_000
T = 10 * MS  # plant period


def _feed(**kw):
    return PlanFeed(1, low=np.array([-1.0]), high=np.array([1.0]), **kw)


def _cmd(plan, *, t0=20 * MS, dt=T, obs_t=0, seq=1):
    return Command(seq, obs_t, np.zeros(1), t0 - dt,
                   plan=None if plan is None else np.asarray(plan, dtype=float).reshape(-1, 1),
                   plan_t0_ns=t0, plan_dt_ns=dt, obs_t_ns=obs_t)


def test_each_tick_gets_its_own_row_and_nothing_outside_the_plan():
    feed = _feed()
    assert feed.accept(_cmd([0.1, 0.2, 0.3]))
    last = np.zeros(1)
    assert feed.action_for(20 * MS, last)[0] == pytest.approx(0.1)
    assert feed.action_for(30 * MS + 2 * MS, last)[0] == pytest.approx(0.2)  # plant jitter
    assert feed.action_for(40 * MS, last)[0] == pytest.approx(0.3)
    assert feed.action_for(10 * MS, last) is None  # a tick before the plan's first
    assert feed.action_for(50 * MS, last) is None  # past its horizon


def test_a_plan_older_than_the_limit_is_never_applied_and_is_dropped():
    feed = _feed(max_age_ns=25 * MS)
    feed.accept(_cmd([0.1, 0.2, 0.3], obs_t=0))
    assert feed.action_for(20 * MS, np.zeros(1)) is not None
    assert feed.action_for(30 * MS, np.zeros(1)) is None  # 30 ms after its observation
    assert feed.counts["plan_expired"] == 1
    assert feed.action_for(20 * MS, np.zeros(1)) is None  # gone for good


@pytest.mark.parametrize("bad", [[0.1, np.nan], [0.1, np.inf], [0.1, 1.5], [-1.01]])
def test_a_plan_with_any_bad_row_is_refused_whole_and_clears_the_held_one(bad):
    feed = _feed()
    feed.accept(_cmd([0.5, 0.5]))
    assert not feed.accept(_cmd(bad, obs_t=1))
    assert feed.counts["plans_refused"] == 1
    assert feed.action_for(20 * MS, np.zeros(1)) is None


def test_an_older_plan_never_replaces_a_newer_one():
    feed = _feed()
    feed.accept(_cmd([0.5, 0.5], obs_t=5 * MS))
    feed.accept(_cmd([-0.5, -0.5], obs_t=4 * MS))  # reordered on the way
    assert feed.counts["plans_reordered"] == 1
    assert feed.action_for(20 * MS, np.zeros(1))[0] == pytest.approx(0.5)


def test_a_command_without_a_plan_clears_the_held_plan():
    feed = _feed()
    feed.accept(_cmd([0.5, 0.5]))
    assert not feed.accept(_cmd(None, obs_t=1))
    assert feed.action_for(20 * MS, np.zeros(1)) is None


def test_the_row_handed_out_is_rate_limited_against_the_last_applied_action():
    feed = PlanFeed(1, low=np.array([-1.0]), high=np.array([1.0]),
                    max_rate_per_s=np.array([10.0]))  # 0.1 per 10 ms tick
    feed.accept(_cmd([0.8]))
    a = feed.action_for(20 * MS, np.array([0.0]))
    assert a[0] == pytest.approx(0.1)
    assert feed.counts["plan_rate_limited"] == 1


def test_apply_log_counts_sources_and_ages_into_fixed_bins():
    log = ApplyLog()
    for src, age in [(FRESH, 9 * MS), (FRESH, 10 * MS), (PLAN_FED, 35 * MS), (FALLBACK, None),
                     (SAFE, None), (DRY, None)]:
        log.record(src, age)
    c = log.counters()
    assert [c[k] for k in ("fresh", "plan_fed", "fallback", "safe", "dry")] == [2, 1, 1, 1, 1]
    assert c["age_le_10ms"] == 2 and c["age_le_40ms"] == 1  # 9 and 10 ms in (8, 10]
    assert sum(c[k] for k in AGE_KEYS) == 3  # no age for holds without one, safe or dry


def test_age_quantiles_interpolate_inside_a_bin_and_say_none_without_samples():
    counts = dict.fromkeys(AGE_KEYS, 0)
    counts["age_le_10ms"] = 4  # 4 samples in (8, 10]
    p50, p99 = age_quantiles(counts)
    assert p50 == pytest.approx(9.0)  # half way through the bin
    assert p99 == pytest.approx(8.0 + 0.99 * 2.0)
    assert age_quantiles(dict.fromkeys(AGE_KEYS, 0)) == [None, None]
    counts["age_gt_1000ms"] = 96
    assert age_quantiles(counts, (0.5,))[0] > 1000.0
