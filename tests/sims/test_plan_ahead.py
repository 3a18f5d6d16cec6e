"""MujocoPlant in realtime executes a command's plan on ticks without a fresh command."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import Command, ExecutesPlans, FakeClock, LateCommand
from sims.plant import MujocoPlant

T = 10_000_000  # double-pendulum: 100 Hz


def _plant():
    clock = FakeClock(start_ns=1_000)
    plant = MujocoPlant("double-pendulum", mode="realtime", clock=clock, run_thread=False,
                        disturbances=False)
    plant.reset(seed=0)
    return plant, clock, clock.now_ns()


def _cmd(seq, value, deadline, plan=None, obs_t=None, fallback=""):
    p = None if plan is None else np.asarray(plan, dtype=float).reshape(-1, 1)
    return Command(seq, 0, np.array([value]), deadline, fallback, plan=p,
                   plan_t0_ns=deadline + T, plan_dt_ns=T, obs_t_ns=obs_t)


def _tick(plant, clock, t):
    clock.set_ns(t)
    assert plant.step_realtime_tick()
    return float(plant.observe().info["executed"][0])


def test_a_realtime_plant_declares_it_executes_plans_and_a_lockstep_one_does_not():
    plant, _, _ = _plant()
    assert isinstance(plant, ExecutesPlans) and plant.executes_plans
    lock = MujocoPlant("double-pendulum")
    assert not lock.executes_plans
    plant.close(), lock.close()


def test_order_of_preference_fresh_then_plan_then_hold_and_what_each_counts():
    plant, clock, t0 = _plant()
    assert _tick(plant, clock, t0 + T) == 0.0  # no command yet: dry
    plant.apply(_cmd(1, 0.1, t0 + 2 * T, plan=[0.2, 0.3], obs_t=t0 + T))
    assert _tick(plant, clock, t0 + 2 * T) == pytest.approx(0.1)  # fresh
    assert _tick(plant, clock, t0 + 3 * T) == pytest.approx(0.2)  # plan row 0
    assert _tick(plant, clock, t0 + 4 * T) == pytest.approx(0.3)  # plan row 1
    assert _tick(plant, clock, t0 + 5 * T) == pytest.approx(0.3)  # plan over: hold
    plant.apply(_cmd(2, -0.4, t0 + 6 * T, obs_t=t0 + 5 * T))  # no plan
    assert _tick(plant, clock, t0 + 6 * T) == pytest.approx(-0.4)
    assert _tick(plant, clock, t0 + 7 * T) == pytest.approx(-0.4)
    c = plant.counters()
    assert [c[k] for k in ("fresh", "plan_fed", "fallback", "safe", "dry")] == [2, 2, 2, 0, 1]
    # ages: fresh 10 ms, plan rows 20 and 30 ms, holds 40 and 20 ms after their observation
    assert c["age_le_10ms"] == 2 and c["age_le_20ms"] == 2
    assert c["age_le_30ms"] == 1 and c["age_le_40ms"] == 1


def test_a_late_command_brings_neither_its_action_nor_its_plan():
    plant, clock, t0 = _plant()
    plant.apply(_cmd(1, 0.1, t0 + T, obs_t=t0))
    _tick(plant, clock, t0 + T)
    clock.set_ns(t0 + 2 * T + 1)
    with pytest.raises(LateCommand):  # past its deadline: refused, counted late
        plant.apply(_cmd(2, 0.9, t0 + 2 * T, plan=[0.8, 0.7], obs_t=t0 + T))
    assert _tick(plant, clock, t0 + 3 * T) == pytest.approx(0.1)
    assert plant.counters()["late"] == 1 and plant.counters()["plan_fed"] == 0


def test_duplicated_or_reordered_commands_never_bring_their_plan():
    plant, clock, t0 = _plant()
    plant.apply(_cmd(5, 0.1, t0 + T, plan=[0.2], obs_t=t0))
    plant.apply(_cmd(5, 0.9, t0 + T, plan=[0.9], obs_t=t0))  # duplicate seq
    plant.apply(_cmd(4, 0.9, t0 + T, plan=[0.9], obs_t=t0))  # older seq
    assert _tick(plant, clock, t0 + T) == pytest.approx(0.1)
    assert _tick(plant, clock, t0 + 2 * T) == pytest.approx(0.2)
    assert plant.counters()["stale"] == 2


def test_rows_for_past_ticks_are_skipped_and_a_plan_past_its_age_is_not_used():
    clock = FakeClock(start_ns=1_000)
    plant = MujocoPlant("double-pendulum", mode="realtime", clock=clock, run_thread=False,
                        disturbances=False, plan_max_age_s=0.035)
    plant.reset(seed=0)
    t0 = clock.now_ns()
    plant.apply(_cmd(1, 0.1, t0 + T, plan=[0.2, 0.3, 0.4, 0.5], obs_t=t0))
    _tick(plant, clock, t0 + T)
    plant._next_tick_ns = t0 + 3 * T  # the plant itself slipped a tick: row 0 is in the past
    assert _tick(plant, clock, t0 + 3 * T) == pytest.approx(0.3)
    assert _tick(plant, clock, t0 + 4 * T) == pytest.approx(0.3)  # 40 ms old > 35 ms: hold
    assert plant.counters()["plan_expired"] == 1


def test_the_watchdog_safe_action_is_held_as_safe_and_ends_the_plan():
    plant, clock, t0 = _plant()
    plant.apply(_cmd(1, 0.1, t0 + T, plan=[0.2, 0.3], obs_t=t0))
    _tick(plant, clock, t0 + T)
    plant.apply(_cmd(2, 0.0, t0 + 2 * T, fallback="watchdog"))
    assert _tick(plant, clock, t0 + 2 * T) == 0.0
    assert _tick(plant, clock, t0 + 3 * T) == 0.0  # not the plan's 0.3
    c = plant.counters()
    assert c["safe"] == 2 and c["plan_fed"] == 0


def test_a_reset_forgets_the_plan():
    plant, clock, t0 = _plant()
    plant.apply(_cmd(1, 0.1, t0 + T, plan=[0.2, 0.3], obs_t=t0))
    _tick(plant, clock, t0 + T)
    plant.reset(seed=1)
    t1 = clock.now_ns()
    assert _tick(plant, clock, t1 + T) == 0.0
    assert plant.counters()["dry"] == 1
