"""ControlLoop behaviour on a fake clock: budgets, misses, fallbacks, episodes, async."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.budget import BudgetConfig
from runtime.clock import FakeClock
from runtime.fallback import CODE_HOLD, CODE_NONFINITE, ZeroAction
from runtime.loop import ControlLoop, LoopConfig, RunResult
from runtime.protocols import Command, EpisodeOver, Observation
from runtime.sidecar import EVENT_RESET, Sidecar, load_sidecar
from runtime.trace import TraceRing

from .toys import CostPlanner, IntegratorPlant

T = 1_000_000  # 1 kHz


def realtime_loop(clock: FakeClock, planner: CostPlanner, **cfg: object) -> ControlLoop:
    plant = IntegratorPlant(rate_hz=1000, episode_ticks=10_000, clock=clock)
    cfg.setdefault("align_to_plant", False)
    config = LoopConfig(mode="realtime", budget=BudgetConfig(margin_ns=0, margin_frac=0.0),
                        **cfg)  # type: ignore[arg-type]
    return ControlLoop(plant, planner, clock, config)


def test_lockstep_runs_exact_steps_and_finishes_episodes() -> None:
    clock = FakeClock()
    plant = IntegratorPlant(rate_hz=100, episode_ticks=100, clock=clock)
    planner = CostPlanner(clock, step_ns=1_000)
    loop = ControlLoop(plant, planner, clock, LoopConfig(mode="lockstep", steps_per_tick=3,
                                                          warmup_steps=0))
    result = loop.run(episodes=3)
    assert len(result.episodes) == 3
    assert [e.ticks for e in result.episodes] == [100, 100, 100]
    assert all(e.success for e in result.episodes)  # a P-controller drives x to 0
    assert np.all(result.records["steps"] == 3)
    assert len(result.records) == 300
    assert result.records["missed"].sum() == 0
    out = result.to_json()
    assert out["episodes"] == 3 and out["success_rate"] == 1.0 and out["ticks"] == 300
    assert out["replans_per_s"] == pytest.approx(100.0)  # every tick refined, at 100 Hz


def test_budget_never_schedules_a_step_past_the_refine_end() -> None:
    clock = FakeClock()
    planner = CostPlanner(clock, step_ns=70_000)
    loop = realtime_loop(clock, planner, emit_reserve_s=50e-6)
    r = loop.run(ticks=300).records
    assert r["missed"].sum() == 0
    refine_end = r["scheduled_ns"] + T - 50_000
    assert np.all(r["refine_end_ns"] <= refine_end)
    assert r["steps"].min() == r["steps"].max() == 13  # floor(950 us / 70 us)


def test_steps_adapt_within_a_few_ticks_when_step_latency_jumps_5x() -> None:
    clock = FakeClock()
    planner = CostPlanner(clock, step_ns=50_000)
    loop = realtime_loop(clock, planner)
    first = loop.run(ticks=100).records
    assert first["steps"][-1] == 19  # floor(950 / 50)
    planner.step_ns = 250_000
    after = loop.run(ticks=100).records
    # The first slow step is only known once measured; afterwards every tick plans with it.
    assert after["missed"][2:].sum() == 0
    assert after["steps"][-1] == 3  # floor(950 / 250)
    assert np.all(after["refine_end_ns"][1:] <= after["scheduled_ns"][1:] + T - 50_000)


def test_a_planner_that_overruns_causes_a_counted_miss_and_the_fallback() -> None:
    clock = FakeClock()
    planner = CostPlanner(clock, step_ns=100_000)
    planner.overrun_at = 10  # the 10th observed tick: one step costs 2.5 periods
    planner.overrun_ns = 2_500_000
    loop = realtime_loop(clock, planner, steps_per_tick=1)
    result = loop.run(ticks=50)
    r = result.records
    missed = np.flatnonzero(r["missed"])
    assert len(missed) == 1
    m = missed[0]
    assert r["fallback"][m] == CODE_HOLD
    assert r["action"][m] == pytest.approx(r["action"][m - 1])  # held the last command
    # The overrun ended 2.5 periods after tick m's start: tick m+1 is skipped (counted), tick
    # m+2 runs half a period late, and no burst follows.
    assert r["skipped"][m + 1] == 1
    assert r["tick"][m + 1] == r["tick"][m] + 2
    assert r["lateness_ns"][m + 1] == T // 2
    assert np.all(r["lateness_ns"][m + 2 :] == 0)
    assert loop.fallback_counts == {"hold": 1}
    assert result.plant_counters["late"] == 1  # the plant saw the same miss
    assert result.to_json()["plant_misses"] == 1


def test_early_emit_sends_after_the_first_step_and_refines_on_until_the_next_tick() -> None:
    clock = FakeClock()
    planner = CostPlanner(clock, step_ns=70_000)
    loop = realtime_loop(clock, planner, emit_after_steps=1)
    result = loop.run(ticks=300)
    r = result.records
    assert r["missed"].sum() == 0
    # the command left one step (70 us) after the tick's start (observe costs no fake time) ...
    assert np.all(r["emit_ns"] - r["start_ns"] == 70_000)
    assert np.all(r["refine_end_ns"] - r["start_ns"] == 70_000)
    sent = np.array([c.t_ns for c in loop.plant.applied[-300:]])  # type: ignore[attr-defined]
    assert np.all(sent - r["start_ns"] == 70_000)
    # ... and the planner kept refining until 50 us before the next tick: 13 steps as before
    assert r["steps"].min() == r["steps"].max() == 13
    assert np.all(r["refine_ns"] == 70_000)  # the time in refine before the command
    assert np.all(r["lateness_ns"] == 0)


def test_a_stall_after_an_early_emit_costs_no_deadline() -> None:
    def run(emit_after: int) -> RunResult:
        clock = FakeClock()
        planner = CostPlanner(clock, step_ns=70_000)
        planner.overrun_at, planner.overrun_call, planner.overrun_ns = 10, 3, 900_000
        return realtime_loop(clock, planner, emit_after_steps=emit_after).run(ticks=50)

    late, early = run(0), run(1)
    # refining first, the stalled third step (140 + 900 us) pushes the emit past the deadline
    assert late.records["missed"].sum() == 1 and late.plant_counters["late"] == 1
    # emitting after the first step, the command was out before the stall: no miss; the tick
    # stopped refining after the stall, and the next tick started 40 us late (still in time)
    r = early.records
    assert r["missed"].sum() == 0 and early.plant_counters["late"] == 0
    assert list(r["steps"][r["tick"] == 10]) == [3]
    assert list(np.flatnonzero(r["lateness_ns"])) == [11] and r["lateness_ns"][11] == 40_000


def test_with_no_room_before_the_command_it_is_sent_at_once_and_the_steps_run_after() -> None:
    clock = FakeClock()
    planner = CostPlanner(clock, step_ns=400_000)
    # a 0.7 ms transport margin: the command must leave 0.3 ms into the 1 ms tick, and a
    # 0.4 ms step does not fit before it
    loop = realtime_loop(clock, planner, emit_after_steps=1, transport_margin_s=700e-6)
    r = loop.run(ticks=100).records
    assert r["missed"].sum() == 0 and np.all(r["fallback"] == 0)
    assert np.all(r["emit_ns"] == r["start_ns"])  # sent at once: the plan's current action
    assert np.all(r["steps"] == 2)  # then two steps before the next tick (0.4 + 0.4 < 0.95 ms)
    assert np.all(r["refine_ns"] == 0) and np.all(r["lateness_ns"] == 0)


def test_early_emit_in_lockstep_with_one_step_per_tick_changes_nothing() -> None:
    def actions(emit_after: int) -> np.ndarray:
        clock = FakeClock()
        plant = IntegratorPlant(rate_hz=100, episode_ticks=50, clock=clock)
        loop = ControlLoop(plant, CostPlanner(clock, step_ns=1_000), clock,
                           LoopConfig(mode="lockstep", warmup_steps=0,
                                      emit_after_steps=emit_after))
        return loop.run(episodes=1).records["action"]

    np.testing.assert_array_equal(actions(0), actions(1))
    with pytest.raises(ValueError, match="emit_after_steps"):
        LoopConfig(emit_after_steps=-1)


def test_non_finite_actions_never_leave_the_loop() -> None:
    clock = FakeClock()
    planner = CostPlanner(clock, step_ns=10_000)
    planner.nan_ticks = {5, 6, 7}
    loop = realtime_loop(clock, planner, steps_per_tick=1)
    r = loop.run(ticks=20).records
    assert np.all(np.isfinite(r["action"]))
    assert list(np.flatnonzero(r["fallback"] == CODE_NONFINITE)) == [5, 6, 7]
    assert np.all(np.abs(r["action"]) <= 1.0)


def test_actions_are_clipped_into_the_limits() -> None:
    clock = FakeClock()
    planner = CostPlanner(clock, step_ns=10_000, gain=1e6)
    r = realtime_loop(clock, planner, steps_per_tick=1).run(ticks=5).records
    assert np.all(r["action"] == -1.0)


def test_async_refinement_publishes_planner_actions_to_the_tick() -> None:
    clock = FakeClock()
    plant = IntegratorPlant(rate_hz=1000, episode_ticks=10_000, clock=clock)

    class Slow(CostPlanner):
        def refine(self, budget_ns: int) -> int:
            self.refines += 1
            return 1 if self.refines % 50 else 0  # idles now and then, like a converged plan

    planner = Slow(clock)
    loop = ControlLoop(plant, planner, clock,
                       LoopConfig(mode="realtime", refine="async", align_to_plant=False))
    result = loop.run(ticks=200)
    r = result.records
    assert len(r) == 200
    assert np.all(np.isfinite(r["action"]))
    assert r["steps"].sum() > 0
    # Every action the tick emitted is the planner's P-law on some observed state: finite,
    # within limits, and pulling x (which starts at +1) towards 0.
    assert np.all(r["action"] <= 0.0) and np.all(r["action"] >= -1.0)
    assert r["fallback"].sum() == 0


def test_warmup_measures_a_planner_that_works_once_per_observation() -> None:
    """Like the MLP (one forward pass per observation): without samples the estimate would
    stay at the 1 ms prior, above a 500 Hz tick's budget, and no step would ever run."""
    clock = FakeClock()

    class OncePerObs(CostPlanner):
        pending = True

        def observe(self, obs: Observation) -> None:
            super().observe(obs)
            self.pending = True

        def refine(self, budget_ns: int) -> int:
            if not self.pending:
                return 0
            self.pending = False
            return super().refine(budget_ns)

    loop = realtime_loop(clock, OncePerObs(clock, step_ns=100_000), warmup_steps=6)
    loop.warmup(Observation(seq=0, t_ns=0, state=np.ones(1)))
    assert loop.budget.estimate_ns == 100_000  # p95 of the recorded 100 us steps, no margins


def test_async_runs_with_a_short_gil_switch_interval_and_restores_it() -> None:
    import sys

    clock = FakeClock()
    plant = IntegratorPlant(rate_hz=1000, episode_ticks=10_000, clock=clock)
    seen: list[float] = []

    class Watch(CostPlanner):
        def refine(self, budget_ns: int) -> int:
            seen.append(sys.getswitchinterval())
            return 0

    before = sys.getswitchinterval()
    loop = ControlLoop(plant, Watch(clock), clock,
                       LoopConfig(mode="realtime", refine="async", align_to_plant=False))
    loop.run(ticks=20)
    assert seen and max(seen) == pytest.approx(50e-6)  # min(100 us, T/20) at 1 kHz
    assert sys.getswitchinterval() == before
    with pytest.raises(ValueError, match="gil_switch_s"):
        LoopConfig(gil_switch_s=0.0)


def test_sidecar_records_state_levels_and_events_beside_the_trace(tmp_path: Path) -> None:
    clock = FakeClock()
    plant = IntegratorPlant(rate_hz=100, episode_ticks=5, clock=clock)

    class Leveled(CostPlanner):
        def noise_levels(self) -> np.ndarray:
            return np.array([0.0, 0.5, float(self.observed)], dtype=np.float32)

    planner = Leveled(clock, step_ns=1_000)
    car = Sidecar(capacity=100, state_dim=1, levels_dim=3)
    ring = TraceRing(1, chunk_ticks=4, path=tmp_path / "trace")
    loop = ControlLoop(plant, planner, clock, LoopConfig(warmup_steps=0), trace=ring, sidecar=car)
    result = loop.run(episodes=2)
    side = load_sidecar(tmp_path / "trace")
    assert side is not None
    n = len(result.records)
    assert n == 10 and side["state"].shape == (n, 1) and side["levels"].shape == (n, 3)
    assert list(np.flatnonzero(side["events"] & EVENT_RESET)) == [0, 5]
    np.testing.assert_allclose(side["state"][:5, 0], 1.0 - 0.01 * np.arange(5), atol=1e-6)
    assert side["levels"][-1, 2] == planner.observed


class _Predicting(CostPlanner):
    """`CostPlanner` that predicts the integrator's next states under its own clipped P-law."""

    predicted_ticks = 3

    def predicted_states_into(self, out: np.ndarray) -> int:
        n = min(len(out), self.predicted_ticks)
        x = self.x
        for i in range(n):
            x += float(np.clip(-self.gain * x, -1.0, 1.0)) * 0.01  # dt at 100 Hz
            out[i, 0] = x
        return n


@pytest.mark.parametrize("refine", ["sync", "async"])
def test_sidecar_records_the_plans_predicted_states_in_sync_mode(
    tmp_path: Path, refine: str
) -> None:
    from runtime.sidecar import lookahead_error

    clock = FakeClock()
    plant = IntegratorPlant(rate_hz=100, episode_ticks=6, clock=clock)
    planner = _Predicting(clock, step_ns=1_000)
    car = Sidecar(capacity=100, state_dim=1, levels_dim=0, predicted_ticks=3)
    ring = TraceRing(1, chunk_ticks=4, path=tmp_path / "trace")
    cfg = LoopConfig(warmup_steps=0, refine=refine)  # type: ignore[arg-type]
    ControlLoop(plant, planner, clock, cfg, trace=ring, sidecar=car).run(episodes=2)
    side = load_sidecar(tmp_path / "trace")
    assert side is not None and side["predicted"].shape == (12, 3, 1)
    if refine == "async":  # the worker owns the planner: nothing is read from it per tick
        assert np.all(side["predicted_n"] == 0) and np.all(np.isnan(side["predicted"]))
        return
    assert np.all(side["predicted_n"] == 3)
    # what tick t predicted for t+1 is what tick t+1 observed, within an episode
    np.testing.assert_allclose(side["predicted"][:5, 0, 0], side["state"][1:6, 0], atol=1e-6)
    err = lookahead_error(side["state"], side["predicted"], side["predicted_n"], side["events"])
    # two episodes of 6 ticks: 6 - j pairs each; none across the episode start at tick 6
    assert list(err.pairs) == [10, 8, 6]
    assert np.all(err.mean < 1e-5)


def test_ticks_align_just_after_the_plant_tick_and_deadlines_fall_on_the_next_one() -> None:
    clock = FakeClock(start_ns=10_000_000)
    plant = IntegratorPlant(rate_hz=1000, episode_ticks=50, clock=clock)
    plant_tick_ns = 9_700_123  # the plant ticked 0.3 ms ago, at its own phase
    reset = plant.reset

    def reset_at_phase(seed: int | None = None) -> Observation:
        obs = reset(seed)
        obs.t_ns = plant_tick_ns + (clock.now_ns() - plant_tick_ns) // T * T  # its last tick
        return obs

    plant.reset = reset_at_phase  # type: ignore[method-assign]
    planner = CostPlanner(clock, step_ns=50_000)
    loop = ControlLoop(plant, planner, clock,
                       LoopConfig(mode="realtime", phase_offset_s=100e-6, warmup_steps=0))
    r = loop.run(episodes=2).records
    phase = (r["scheduled_ns"] - plant_tick_ns) % T
    assert np.all(phase == 100_000)  # 0.1 ms after every plant tick, in both episodes
    assert np.all((r["deadline_ns"] - plant_tick_ns) % T == 0)  # deadline = next plant tick
    assert np.all(r["deadline_ns"] - r["scheduled_ns"] == T - 100_000)
    assert r["missed"].sum() == 0


def _episodes_with_costly_resets(reset_ns: int, bounded: bool = False):  # type: ignore[no-untyped-def]
    clock = FakeClock(start_ns=10_000_000)
    plant = IntegratorPlant(rate_hz=1000, episode_ticks=20, clock=clock)
    reset = plant.reset

    def reset_now(seed: int | None = None) -> Observation:
        obs = reset(seed)
        obs.t_ns = clock.now_ns()  # a realtime plant restarts its schedule at the reset
        return obs

    plant.reset = reset_now  # type: ignore[method-assign]

    class SlowReset(CostPlanner):
        resets = 0
        bounded_reset = bounded
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.budgets: list[int | None] = []

        def reset(self, obs: Observation, budget_ns: int | None = None) -> None:
            super().reset(obs)
            self.resets += 1
            self.budgets.append(budget_ns)
            # the rolling planner's warm-up steps; given a budget, cut short to it, but not
            # below one step (a sixteenth of them)
            cost = reset_ns if budget_ns is None else max(reset_ns // 16, min(reset_ns, budget_ns))
            clock.advance_ns(cost)

    planner = SlowReset(clock, step_ns=50_000)
    loop = ControlLoop(plant, planner, clock,
                       LoopConfig(mode="realtime", phase_offset_s=100e-6, warmup_steps=0))
    result = loop.run(episodes=3)
    return result, planner


def test_an_episode_start_counts_against_the_plants_first_tick_and_resets_once() -> None:
    """The planner's reset (and warm-up) at an episode start is the first tick's work; its
    command is for the plant's first tick after the reset, and the first tick of the run does
    not reset the planner a second time."""
    result, planner = _episodes_with_costly_resets(reset_ns=400_000)
    r = result.records
    assert planner.resets == 3  # the three episodes, nothing twice
    assert r["missed"].sum() == 0 and r["skipped"].sum() == 0
    assert np.all(r["deadline_ns"] - r["scheduled_ns"] == T - 100_000)
    # the run's first reset (0.4 ms) outlasts tick 0's phase (0.1 ms): tick 0 starts 0.3 ms
    # late. Inside the run an episode's first tick counts from the plant's reset, after the
    # tick began: it records no lateness (not a negative one). The rest start on time.
    firsts = [20, 40]
    assert np.all(r["start_ns"][firsts] - r["scheduled_ns"][firsts] == -100_000)
    expected = np.zeros(len(r), dtype=np.int64)
    expected[0] = 300_000
    np.testing.assert_array_equal(r["lateness_ns"], expected)


def test_a_reset_that_outlasts_the_plants_first_tick_is_counted() -> None:
    result, _ = _episodes_with_costly_resets(reset_ns=1_500_000)
    r = result.records
    # each of the two episode changes inside the run swallowed the plant's first tick (at
    # reset + 1 ms; the planner was ready at reset + 1.5 ms): one skipped tick each, counted
    assert list(np.flatnonzero(r["skipped"])) == [20, 40]
    assert r["skipped"].sum() == 2 and result.stats().misses >= 2
    assert r["missed"].sum() == 0  # the command went out in time for the tick after


def test_a_planner_that_can_bound_its_reset_gets_the_time_to_the_first_command() -> None:
    result, planner = _episodes_with_costly_resets(reset_ns=1_500_000, bounded=True)
    r = result.records
    # the run's first reset takes its time (before the first tick); the two episode changes
    # inside it get the time to the first tick's refine end, 0.95 ms after the plant's reset
    # (phase 0.1 ms + refine end 0.85 ms), less one step estimate: nothing skipped or missed,
    # where the full 1.5 ms warm-up skipped a tick each time (the test above)
    assert planner.budgets[0] is None and len(planner.budgets) == 3
    assert all(b is not None and b < 950_000 for b in planner.budgets[1:])
    assert r["skipped"].sum() == 0 and r["missed"].sum() == 0


def test_a_tick_that_starts_late_records_exactly_how_late() -> None:
    clock = FakeClock()
    planner = CostPlanner(clock, step_ns=100_000)
    planner.overrun_at = 5
    planner.overrun_ns = 1_300_000  # tick 5's step ends 0.3 ms into tick 6's period
    loop = realtime_loop(clock, planner, steps_per_tick=1)
    r = loop.run(ticks=10).records
    assert r["skipped"].sum() == 0
    assert r["start_ns"][6] - r["scheduled_ns"][6] == 300_000
    expected = np.zeros(10, dtype=np.int64)
    expected[6] = 300_000
    np.testing.assert_array_equal(r["lateness_ns"], expected)


def test_transport_margin_counts_a_miss_but_sends_the_ticks_action_and_true_deadline() -> None:
    clock = FakeClock()
    planner = CostPlanner(clock, step_ns=100_000)
    planner.overrun_at = 5
    planner.overrun_ns = 900_000  # ends 0.9 ms into the 1 ms tick: inside the 0.2 ms margin
    loop = realtime_loop(clock, planner, steps_per_tick=1, transport_margin_s=200e-6)
    loop.fallback = ZeroAction()  # so a fallback would show in the command
    result = loop.run(ticks=10)
    r = result.records
    assert list(np.flatnonzero(r["missed"])) == [5]
    # inside the margin but before the deadline: counted, yet this tick's action went out
    # (not the fallback) with the plant's own deadline, which it met
    assert r["fallback"][5] == 0
    sent = loop.plant.applied[5]  # type: ignore[attr-defined]
    assert sent.deadline_ns == r["scheduled_ns"][5] + T
    assert sent.action[0] == -1.0  # the P-controller's action (clipped), not the fallback's 0
    assert result.plant_counters["late"] == 0


def test_a_plant_that_measures_its_link_sets_the_transport_margin() -> None:
    """The margin follows `plant.transport_margin_ns()` (re-read every 32 ticks), clipped to
    [configured floor, half a period]: a step that ends 0.7 ms into the tick is in time under
    the configured 0.1 ms margin and a miss under a measured 0.4 ms one."""

    def run(said: int | None, ticks: int = 64) -> RunResult:
        clock = FakeClock()
        planner = CostPlanner(clock, step_ns=100_000)
        planner.overrun_at = 40
        planner.overrun_ns = 700_000
        loop = realtime_loop(clock, planner, steps_per_tick=1, transport_margin_s=100e-6)
        loop.plant.transport_margin_ns = lambda: said  # type: ignore[attr-defined]
        return loop.run(ticks=ticks)

    unmeasured = run(None)  # nothing measured yet: the configured margin holds
    assert unmeasured.records["missed"].sum() == 0
    assert unmeasured.transport_margin_ns == (100_000, 100_000, 100_000)
    measured = run(400_000)
    assert list(np.flatnonzero(measured.records["missed"])) == [40]
    assert measured.records["fallback"][40] == 0  # counted, but sent fresh: before the deadline
    assert measured.transport_margin_ns == (100_000, 400_000, 400_000)
    assert measured.to_json()["transport_margin_us"] == {"start": 100.0, "end": 400.0,
                                                         "max": 400.0}
    assert run(10_000_000).transport_margin_ns[1] == T // 2  # at most half a period
    assert run(0).transport_margin_ns[1] == 100_000  # never below the configured floor


def test_a_budget_starved_by_a_slow_warm_up_recovers_within_40_ms() -> None:
    """Warm-up steps of 5 ms (a stall, cold caches) make the estimate larger than a 1 ms tick:
    every step is blocked. The budget recovers (recent steps, then probes) within ~40 ms and
    is refining every tick from then on; before, it waited 200 ticks for each probe step."""

    class SlowWarmUp(CostPlanner):
        resets = 0

        def reset(self, obs: Observation) -> None:
            super().reset(obs)
            self.resets += 1
            self.step_ns = 5_000_000 if self.resets == 1 else 100_000  # warm-up, then fast

    clock = FakeClock()
    planner = SlowWarmUp(clock)
    loop = realtime_loop(clock, planner)
    result = loop.run(ticks=300)
    steps = result.records["steps"]
    assert result.step_estimate_ns[0] >= 5_000_000  # the warm-up left a 5 ms estimate
    first = int(np.flatnonzero(steps)[0])
    # 20 ms of blocked ticks, then recovering on the last 8 steps (all slow): another 20 ms,
    # then a probe step, which is fast, so a probe on every tick until the median is fast
    assert 38 <= first <= 42
    assert steps[first:].min() >= 1 and steps[100:].mean() > 5  # refining every tick since
    assert not loop.budget.recovering and loop.budget.estimate_ns < 200_000  # back on the p95


def test_stale_observations_are_counted_not_hidden() -> None:
    clock = FakeClock()
    plant = IntegratorPlant(rate_hz=1000, episode_ticks=10_000, clock=clock)
    observe = plant.observe
    calls = [0]

    def sometimes_stale() -> Observation:
        obs = observe()
        calls[0] += 1
        obs.stale = calls[0] % 4 == 0
        return obs

    plant.observe = sometimes_stale  # type: ignore[method-assign]
    loop = ControlLoop(plant, CostPlanner(clock), clock,
                       LoopConfig(mode="realtime", steps_per_tick=1, align_to_plant=False))
    out = loop.run(ticks=41).to_json()
    assert out["stale_observations"] == 10  # ticks 1..40 observe; every 4th was stale


def test_plant_counters_report_only_what_changed_during_the_run() -> None:
    clock = FakeClock()
    planner = CostPlanner(clock, step_ns=100_000)
    planner.overrun_at, planner.overrun_ns = 3, 1_500_000
    loop = realtime_loop(clock, planner, steps_per_tick=1)
    loop.plant.late = 7  # type: ignore[attr-defined]  # a served plant's earlier sessions
    result = loop.run(ticks=10)
    assert result.plant_counters["late"] == 1
    assert result.plant_counters["applied"] == len(result.records) - 1


def test_realtime_waits_briefly_for_a_fresh_state_when_the_plant_offers_it() -> None:
    clock = FakeClock()
    plant = IntegratorPlant(rate_hz=1000, episode_ticks=10_000, clock=clock)
    waits: list[float] = []

    def next_observation(timeout_s: float) -> Observation:
        waits.append(timeout_s)
        return plant.observe()

    plant.next_observation = next_observation  # type: ignore[attr-defined]
    loop = ControlLoop(plant, CostPlanner(clock), clock,
                       LoopConfig(mode="realtime", steps_per_tick=1, align_to_plant=False))
    loop.run(ticks=5)
    assert waits == [pytest.approx(200e-6)] * 4  # min(1 ms, T/5) at 1 kHz; tick 0 has reset's
    lock = ControlLoop(plant, CostPlanner(clock), clock, LoopConfig(mode="lockstep"))
    waits.clear()
    lock.run(ticks=3)
    assert waits == []  # lockstep: the plant waits for us, never the other way round


class EndsUnderfoot(IntegratorPlant):
    """A realtime plant whose episode ended between the loop's observation and its command,
    on the 5th command: `EpisodeOver`, nothing applied."""

    def apply(self, cmd: Command) -> None:
        if len(self.applied) == 4 and not getattr(self, "refused", False):
            self.refused = True
            raise EpisodeOver("apply() after the episode ended; send reset")
        super().apply(cmd)


def test_a_command_that_crosses_the_episodes_end_is_routine() -> None:
    clock = FakeClock()
    plant = EndsUnderfoot(rate_hz=1000, episode_ticks=10_000, clock=clock)
    loop = ControlLoop(plant, CostPlanner(clock, step_ns=50_000), clock,
                       LoopConfig(mode="realtime", align_to_plant=False,
                                  budget=BudgetConfig(margin_ns=0, margin_frac=0.0)))
    result = loop.run(ticks=20)
    assert len(result.records) == 20 and plant.refused
    assert len(plant.applied) == 19  # the refused one applied nothing
