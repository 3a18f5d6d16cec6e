"""Optional capabilities (`runtime.protocols`): declared, checked once per run, never required."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.clock import FakeClock
from runtime.loop import ControlLoop, LoopConfig
from runtime.protocols import (
    Anytime,
    BoundedReset,
    Closes,
    FreshObservations,
    KeepsAlive,
    MeasuresTransport,
    Observation,
    Planner,
    PredictsStates,
    Refreshes,
    ReportsNoiseLevels,
    ReportsSurprise,
)
from runtime.sidecar import Sidecar

from .toys import IntegratorPlant

PLANNER_CAPABILITIES = (Anytime, BoundedReset, ReportsSurprise, ReportsNoiseLevels, Refreshes,
                        Closes, PredictsStates)


class Bare:
    """A P-controller with only the four `Planner` methods; each step costs 50 us of fake time."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.x = 0.0
        self._a = np.zeros(1)

    def reset(self, obs: Observation) -> None:
        self.x = float(obs.state[0])

    def observe(self, obs: Observation) -> None:
        self.x = float(obs.state[0])

    def refine(self, budget_ns: int) -> int:
        self.clock.advance_ns(50_000)
        return 1

    def action(self) -> np.ndarray:
        self._a[0] = -5.0 * self.x
        return self._a


class Capable(Bare):
    """`Bare` with every optional planner capability, recording what reaches it."""

    anytime = True
    bounded_reset = True

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.surprise = 0.5
        self.budgets: list[int | None] = []
        self.refreshed: list[int] = []
        self.closed = False
        self.levels = np.array([0.0, 0.5, 1.0], dtype=np.float32)

    def reset(self, obs: Observation, budget_ns: int | None = None) -> None:
        super().reset(obs)
        self.budgets.append(budget_ns)
        self.surprise = 0.0

    def observe(self, obs: Observation) -> None:
        super().observe(obs)
        self.surprise = float(obs.seq)

    def noise_levels(self) -> np.ndarray:
        return self.levels

    def refresh(self, obs: Observation) -> bool:
        self.refreshed.append(obs.seq)
        return True

    def close(self) -> None:
        self.closed = True

    predicted_ticks = 4

    def predicted_states_into(self, out: np.ndarray) -> int:
        n = min(len(out), self.predicted_ticks)
        out[:n, 0] = np.arange(1.0, n + 1.0)  # token j's state: j
        return n


def _obs(seq: int) -> Observation:
    return Observation(seq=seq, t_ns=0, state=np.zeros(1))


@pytest.mark.parametrize("realtime", [False, True])
def test_a_planner_without_optional_capabilities_runs(realtime: bool) -> None:
    clock = FakeClock(start_ns=10_000_000)
    plant = IntegratorPlant(rate_hz=1000, episode_ticks=20, clock=clock)
    planner = Bare(clock)
    assert isinstance(planner, Planner)
    assert not any(isinstance(planner, cap) for cap in PLANNER_CAPABILITIES)
    assert not any(isinstance(plant, cap)
                   for cap in (FreshObservations, MeasuresTransport, KeepsAlive))
    car = Sidecar(capacity=64, state_dim=1, levels_dim=0)
    cfg = LoopConfig(mode="realtime", emit_after_steps=1, phase_offset_s=100e-6) if realtime \
        else LoopConfig(mode="lockstep")
    result = ControlLoop(plant, planner, clock, cfg, sidecar=car).run(episodes=2)
    r = result.records
    assert len(result.episodes) == 2
    assert len(r) == 40 and np.all(r["steps"] >= 1)
    assert np.all(r["surprise"] == 0.0)  # no surprise reported: the trace records 0
    assert r["fallback"].sum() == 0


def test_token_rate_declares_exactly_the_inner_planners_capabilities() -> None:
    from policies.tokenrate import RateAdapter

    clock = FakeClock()

    class NotAnytime(Capable):
        anytime = False
        bounded_reset = False

    for inner in (Bare(clock), Capable(clock), NotAnytime(clock)):
        tr = RateAdapter(inner, 300, 100)
        for cap in PLANNER_CAPABILITIES:
            assert isinstance(tr, cap) == isinstance(inner, cap), (type(inner).__name__, cap)
        for flag in ("anytime", "bounded_reset"):
            assert getattr(tr, flag, None) == getattr(inner, flag, None)
        assert not hasattr(inner, "renoise_level") and not hasattr(tr, "renoise_level")

    # what it declares reaches the inner planner
    cap_ = Capable(clock)
    tr = RateAdapter(cap_, 300, 100)
    assert tr.surprise == 0.5
    tr.reset(_obs(0), budget_ns=123_000)
    assert cap_.budgets == [123_000] and tr.surprise == 0.0
    tr.observe(_obs(1))  # a sub-tick: a refresh, the plan stays
    assert cap_.refreshed == [1] and tr.surprise == 0.0
    tr.observe(_obs(2))
    tr.observe(_obs(3))  # a token tick: the inner planner observes and reports its surprise
    assert cap_.refreshed == [1, 2] and tr.surprise == 3.0
    assert tr.noise_levels() is cap_.levels
    tr.refresh(_obs(4))
    assert cap_.refreshed == [1, 2, 4]
    tr.close()
    assert cap_.closed
    assert tr.predicted_ticks == 12  # 4 tokens, 3 plant ticks each
    # token 0 began at seq 3: tokens 1..4 begin at seq 6, 9, 12, 15 (rows 2, 5, 8, 11 after
    # seq 3); the ticks between them get no prediction
    for seq, rows in ((3, [2, 5, 8, 11]), (4, [1, 4, 7, 10])):
        if seq == 4:
            tr.observe(_obs(4))  # a sub-tick: the boundaries come a tick closer
        out = np.full((20, 1), -1.0)
        assert tr.predicted_states_into(out) == rows[-1] + 1
        np.testing.assert_array_equal(np.flatnonzero(np.isfinite(out[: rows[-1] + 1, 0])), rows)
        np.testing.assert_array_equal(out[rows, 0], [1, 2, 3, 4])


def test_the_loop_runs_a_token_rate_planner_over_a_plain_inner_one() -> None:
    from policies.tokenrate import RateAdapter

    clock = FakeClock(start_ns=10_000_000)
    plant = IntegratorPlant(rate_hz=1000, episode_ticks=20, clock=clock)
    result = ControlLoop(plant, RateAdapter(Bare(clock), 1000, 500), clock,
                         LoopConfig(mode="realtime", phase_offset_s=100e-6)).run(episodes=2)
    assert len(result.records) == 40 and np.all(result.records["surprise"] == 0.0)
