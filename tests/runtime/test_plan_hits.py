"""Emit-first ("action already predicted") and the plan hit rate of a run (fake clock)."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import FakeClock, Observation
from runtime.loop import ControlLoop, LoopConfig
from tests.runtime.test_loop import realtime_loop
from tests.runtime.toys import CostPlanner, IntegratorPlant


class PlanningPlanner(CostPlanner):
    """CostPlanner with a plan: row j is the action it predicts for j+1 ticks ahead. `honest`:
    the plan is the constant action it will emit next tick; otherwise the plan is always the
    negation of what it will emit (never a hit)."""

    def __init__(self, clock: FakeClock, *, honest: bool, **kw: object) -> None:
        super().__init__(clock, **kw)  # type: ignore[arg-type]
        self.honest = honest
        self.k = 0

    def observe(self, obs: Observation) -> None:
        super().observe(obs)
        self.k += 1

    def action(self) -> np.ndarray:
        return np.array([0.1 * (self.k % 5) - 0.2])

    def plan_into(self, out: np.ndarray) -> int:
        nxt = 0.1 * ((self.k + 1) % 5) - 0.2
        out[:3, 0] = nxt if self.honest else 0.9 - nxt
        return 3


@pytest.mark.parametrize(("honest", "rate"), [(True, 1.0), (False, 0.0)])
def test_the_hit_rate_counts_what_the_plan_held_one_tick_earlier(
    honest: bool, rate: float
) -> None:
    clock = FakeClock()
    loop = realtime_loop(clock, PlanningPlanner(clock, honest=honest, step_ns=50_000))
    out = loop.run(ticks=100).to_json()
    assert out["hit_rate"] == rate
    assert out["plan_hit_ticks"] == 99  # the first tick has no earlier plan
    assert out["plan_hit_tolerance"] == 0.05


def test_a_planner_without_a_plan_has_no_hit_rate() -> None:
    clock = FakeClock()
    out = realtime_loop(clock, CostPlanner(clock, step_ns=50_000)).run(ticks=20).to_json()
    assert out["hit_rate"] is None and out["plan_hit_ticks"] == 0


def test_each_episode_starts_without_a_prediction() -> None:
    clock = FakeClock()
    plant = IntegratorPlant(rate_hz=100, episode_ticks=10, clock=clock)
    loop = ControlLoop(plant, PlanningPlanner(clock, honest=True, step_ns=1_000), clock,
                       LoopConfig(mode="lockstep", warmup_steps=0))
    out = loop.run(episodes=3).to_json()
    assert out["plan_hit_ticks"] == 3 * 9


def test_emit_first_sends_before_any_step_and_refines_after() -> None:
    clock = FakeClock()
    planner = CostPlanner(clock, step_ns=70_000)
    loop = realtime_loop(clock, planner, emit_first=True)
    r = loop.run(ticks=200).records
    assert r["missed"].sum() == 0
    assert np.all(r["emit_ns"] == r["start_ns"])  # no step stands before the command
    assert np.all(r["refine_ns"] == 0)
    # all of them after it, for later ticks: until 50 us before the next tick, as early emit
    assert r["steps"].min() == r["steps"].max() == 13


def test_emit_first_is_its_own_mode() -> None:
    for bad in ({"emit_first": True, "emit_after_steps": 1},
                {"emit_first": True, "refine": "async"}):
        with pytest.raises(ValueError, match="emit_first"):
            LoopConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="plan_hit_tolerance"):
        LoopConfig(plan_hit_tolerance=0.0)
