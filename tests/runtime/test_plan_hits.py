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


class SlowObserver(PlanningPlanner):
    """An honest `PlanningPlanner` whose `observe` costs `observe_ns` of fake time; it logs
    when each observation reached it."""

    def __init__(self, clock: FakeClock, *, observe_ns: int, **kw: object) -> None:
        super().__init__(clock, honest=True, **kw)
        self.observe_ns = observe_ns
        self.observed_at: list[int] = []

    def observe(self, obs: Observation) -> None:
        self.observed_at.append(self.clock.now_ns())
        self.clock.advance_ns(self.observe_ns)
        super().observe(obs)


def test_emit_first_sends_the_predicted_action_before_the_planner_observes() -> None:
    """An `observe` of 0.7 ms and steps of 0.4 ms at 1 kHz: observe-then-send would leave
    0.3 ms before the deadline; the command leaves at the tick's start instead, and it is
    what the plan held for this tick (row 0 as the last tick left it)."""
    clock = FakeClock()
    planner = SlowObserver(clock, observe_ns=700_000, step_ns=400_000)
    loop = realtime_loop(clock, planner, emit_first=True, warmup_steps=0)
    result = loop.run(ticks=100)
    r, out = result.records, result.to_json()
    assert r["missed"].sum() == 0
    assert np.all(r["emit_ns"][1:] == r["observe_ns"][1:])  # nothing between arrival and send
    plant = loop.plant
    sent = [c.t_ns for c in plant.applied[1:]]  # type: ignore[attr-defined]
    seen = planner.observed_at
    assert all(s <= o for s, o in zip(sent, seen, strict=True))
    # observation j (1-based) made k = j, and the plan then predicted 0.1*((j+1) % 5) - 0.2:
    # the command of tick j+1
    actions = r["action"][1:, 0]
    k = np.arange(1, len(actions) + 1)
    np.testing.assert_allclose(actions, 0.1 * (k % 5) - 0.2, atol=1e-6)
    assert out["hit_rate"] == 1.0


def test_emit_first_observes_first_on_an_episodes_first_tick_and_without_a_plan() -> None:
    clock = FakeClock()
    planner = SlowObserver(clock, observe_ns=300_000, step_ns=100_000)
    plant = IntegratorPlant(rate_hz=100, episode_ticks=10, clock=clock)
    loop = ControlLoop(plant, planner, clock,
                       LoopConfig(mode="lockstep", warmup_steps=0, emit_first=True))
    r = loop.run(episodes=2).records
    assert len(r) == 20 and len(plant.applied) == 20
    firsts = np.flatnonzero(np.diff(r["episode"], prepend=-1))
    assert list(firsts) == [0, 10]
    # the reset is the first tick's observation: nothing stands between it and the command
    # but the plan read elsewhere; in lockstep the later ticks send before observing too
    assert np.all(r["emit_ns"] == r["observe_ns"])
    no_plan = CostPlanner(clock, step_ns=100_000)
    loop = realtime_loop(clock, no_plan, emit_first=True)
    r = loop.run(ticks=20).records
    assert np.all(r["emit_ns"] == r["observe_ns"]) and no_plan.observed == 19
