"""`RateAdapter`: a planner trained at one rate, run at a faster control rate."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from policies import MLPPlanner, RateAdapter, RollingPlanner, load_planner
from policies.model import MLPConfig, MLPPolicy
from runtime.protocols import Observation

from .conftest import DS, obs, small_model, small_planner_cfg, toy_normalizer, toy_spec


class Recorder:
    """A planner that records which of observe / refresh each tick reached."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.surprise = 0.25

    def reset(self, o: Observation) -> None:
        self.calls.append(("reset", o.seq))

    def observe(self, o: Observation) -> None:
        self.calls.append(("observe", o.seq))

    def refresh(self, o: Observation) -> bool:
        self.calls.append(("refresh", o.seq))
        return True

    def refine(self, budget_ns: int) -> int:
        return 0

    def action(self) -> np.ndarray:
        return np.zeros(1)


def _observed(plant_hz: float, model_hz: float, seqs: list[int]) -> list[int]:
    rec = Recorder()
    tr = RateAdapter(rec, plant_hz, model_hz)
    tr.reset(obs(np.zeros(DS), seq=0))
    for s in seqs:
        tr.observe(obs(np.zeros(DS), seq=s))
    assert tr.token_ticks + tr.sub_ticks == len(seqs)
    assert [c for c, _ in rec.calls].count("refresh") == tr.sub_ticks
    return [s for c, s in rec.calls if c == "observe"]


def test_an_integer_ratio_moves_the_plan_every_rth_tick() -> None:
    assert _observed(500, 100, list(range(1, 16))) == [5, 10, 15]
    assert _observed(100, 100, [1, 2, 3]) == [1, 2, 3]


def test_a_fractional_ratio_moves_it_on_the_first_tick_past_each_boundary() -> None:
    # 250 Hz against a 100 Hz model: boundaries at 2.5, 5, 7.5, 10 ticks
    assert _observed(250, 100, list(range(1, 11))) == [3, 5, 8, 10]


def test_skipped_ticks_count_and_cross_boundaries_once() -> None:
    # ticks 4..8 skipped by the loop: tick 9 is past the boundary at 5 (and not yet at 10)
    assert _observed(500, 100, [1, 2, 3, 9, 10, 11]) == [9, 10]
    # a plant whose seq went backwards (a restart) counts one tick
    assert _observed(500, 100, [1, 2, 3, 1, 2]) == [2]


class Predicting(Recorder):
    """`Recorder` whose plan predicts token j's state as j (every dimension)."""

    predicted_ticks = 4

    def predicted_states_into(self, out: np.ndarray) -> int:
        n = min(len(out), self.predicted_ticks)
        out[:n] = np.arange(1.0, n + 1.0)[:, None]
        return n


@pytest.mark.parametrize("plant_hz", [100, 250, 500])
def test_predicted_states_fall_on_the_ticks_whose_observation_starts_their_token(
    plant_hz: float,
) -> None:
    inner = Predicting()
    tr = RateAdapter(inner, plant_hz, 100)
    assert tr.predicted_ticks == math.ceil(4 * plant_hz / 100)
    tr.reset(obs(np.zeros(DS), seq=0))
    for now in range(0, 7):  # from several phases within a token
        if now:
            tr.observe(obs(np.zeros(DS), seq=now))
        out = np.full((40, DS), -1.0)
        n = tr.predicted_states_into(out)
        rows = np.flatnonzero(np.isfinite(out[:n, 0]))
        assert n == rows[-1] + 1 and np.all(out[n:] == -1.0)
        np.testing.assert_array_equal(out[rows, 0], [1, 2, 3, 4])  # tokens 1..4, in order
        # the ticks whose observation the inner planner will take as tokens 1..4's states
        ahead = RateAdapter(Recorder(), plant_hz, 100)
        ahead._phase, ahead._last_seq = tr._phase, now
        for k in range(now + 1, now + n + 1):
            ahead.observe(obs(np.zeros(DS), seq=k))
        starts = [s for c, s in ahead.inner.calls if c == "observe"]  # type: ignore[attr-defined]
        assert list(rows + now + 1) == starts


def test_a_plant_slower_than_the_model_is_refused() -> None:
    with pytest.raises(ValueError, match="trained at 100 Hz and cannot run at 50 Hz"):
        RateAdapter(Recorder(), 50, 100)


def test_other_attributes_are_the_inner_planners() -> None:
    tr = RateAdapter(Recorder(), 500, 100)
    assert tr.surprise == 0.25
    assert hasattr(tr, "surprise") and not hasattr(tr, "noise_levels")
    assert not hasattr(tr, "predicted_states_into") and not hasattr(tr, "predicted_ticks")


def _rolling(**cfg: int) -> RollingPlanner:
    return RollingPlanner(small_model(), toy_normalizer(), toy_spec(), small_planner_cfg(**cfg),
                          seed=3)


def test_rolling_refresh_puts_the_fresh_state_in_token_0_and_the_next_action_uses_it() -> None:
    rng = np.random.default_rng(0)
    p = _rolling()
    p.reset(obs(rng.normal(size=DS), seq=0))
    p.observe(obs(rng.normal(size=DS), seq=1))
    p.refine(10**9)
    levels = p.tau.clone()
    before = p.action().copy()
    fresh = 3.0 * rng.normal(size=DS)
    assert p.refresh(obs(fresh, seq=2))
    assert torch.equal(p.tau, levels)  # the plan did not move
    assert torch.allclose(p.x[0, 0, :DS], p.obs_n) and torch.allclose(p.ctx[0, -1], p.obs_n)
    p.refine(10**9)
    assert not np.allclose(p.action(), before)
    assert not p.refresh(obs(fresh, seq=3, stale=True))  # a stale reading changes nothing


def test_a_refreshed_state_earns_one_step_past_the_tokens_cap() -> None:
    rng = np.random.default_rng(1)
    p = _rolling(max_steps_per_tick=3)
    p.reset(obs(rng.normal(size=DS), seq=0))
    p.observe(obs(rng.normal(size=DS), seq=1))
    assert [p.refine(10**9) for _ in range(4)] == [1, 1, 1, 0]  # the token's cap
    before = p.action().copy()
    assert p.refresh(obs(3.0 * rng.normal(size=DS), seq=2))
    # one step for the fresh state (its action is computed from it), then the cap again
    assert [p.refine(10**9) for _ in range(2)] == [1, 0]
    assert not np.allclose(p.action(), before)
    assert not p.refresh(obs(rng.normal(size=DS), seq=3, stale=True))
    assert p.refine(10**9) == 0  # a stale reading earns nothing


def test_history_keeps_token_spacing_through_refreshes() -> None:
    """The states pushed into the context are the token ticks' states, not the sub-ticks'."""
    p = _rolling()
    tr = RateAdapter(p, 300, 100)
    tr.reset(obs(np.full(DS, 0.0), seq=0))
    for seq in range(1, 7):  # token ticks at 3 and 6
        tr.observe(obs(np.full(DS, float(seq)), seq=seq))
        tr.refine(10**9)
    norm = toy_normalizer()
    ctx = p.ctx[0].numpy() * norm.state_std + norm.state_mean  # (P+1, Ds) raw, oldest first
    np.testing.assert_allclose(ctx[:, 0], [0.0, 3.0, 6.0], atol=1e-5)
    tr.observe(obs(np.full(DS, 7.0), seq=7))  # a sub-tick: only the current slot changes
    ctx = p.ctx[0].numpy() * norm.state_std + norm.state_mean
    np.testing.assert_allclose(ctx[:, 0], [0.0, 3.0, 7.0], atol=1e-5)


def test_mlp_refresh_recomputes_the_action_from_the_fresh_state() -> None:
    torch.manual_seed(0)
    model = MLPPolicy(MLPConfig(state_dim=DS, action_dim=1, hidden=16, n_hidden=1)).eval()
    p = MLPPlanner(model, toy_normalizer(), toy_spec(), small_planner_cfg())
    p.reset(obs(np.zeros(DS), seq=0))
    before = p.action().copy()
    assert p.refresh(obs(np.full(DS, 2.0), seq=1))
    assert p.refine(10**9) == 1
    assert not np.allclose(p.action(), before)


def test_load_planner_wraps_a_model_run_faster_than_its_data_and_refuses_slower() -> None:
    pytest.importorskip("sims")
    from sims.registry import plant_spec

    spec = plant_spec("double-pendulum")  # 100 Hz, the shipped model's rate
    assert isinstance(load_planner("mlp:double-pendulum", spec=spec), MLPPlanner)
    fast = load_planner("mlp:double-pendulum", spec=dataclasses.replace(spec, rate_hz=500.0))
    assert isinstance(fast, RateAdapter) and fast.ticks_per_token == pytest.approx(5.0)
    with pytest.raises(ValueError, match="cannot run at 50 Hz"):
        load_planner("mlp:double-pendulum", spec=dataclasses.replace(spec, rate_hz=50.0))


def test_chunked_async_refresh_leaves_the_context_the_worker_reads_alone() -> None:
    from policies import ChunkedAsyncPlanner

    p = ChunkedAsyncPlanner(small_model(), toy_normalizer(), toy_spec(), small_planner_cfg())
    try:
        p.reset(obs(np.zeros(DS), seq=0))
        before = p.ctx.clone()
        assert not p.refresh(obs(np.full(DS, 3.0), seq=1))
        assert torch.equal(p.ctx, before)
    finally:
        p.close()


class Planning(Recorder):
    """`Recorder` with a plan of `n` tokens: token j's action is j (the current one is 0)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def plan_into(self, out: np.ndarray) -> int:
        k = min(self.n, out.shape[0])
        out[:k] = np.arange(1, k + 1)[:, None]
        return k


@pytest.mark.parametrize(("plant_hz", "model_hz"), [(1000, 100), (250, 100), (100, 100)])
@pytest.mark.parametrize("rows", [1, 7, 512])
def test_the_plan_holds_each_token_over_its_plant_ticks(plant_hz, model_hz, rows) -> None:
    """Row i (plant tick i + 1 from now) holds the token whose ticks it falls in, at every
    phase of the current token, and the rows end with the plan."""
    tr = RateAdapter(Planning(n=5), plant_hz, model_hz)
    r = plant_hz / model_hz
    tr.reset(obs(np.zeros(DS), seq=0))
    out = np.full((rows, 2), -1.0)
    for seq in range(1, 25):
        tr.observe(obs(np.zeros(DS), seq=seq))
        phase = tr._phase
        want = []
        for i in range(rows):  # the reference: one row at a time
            t = math.floor((phase + i + 1) / r + 1e-6)
            if t > 5:
                break
            want.append(float(t))
        out[:] = -1.0
        n = tr.plan_into(out)
        assert n == len(want)
        np.testing.assert_array_equal(out[:n, 0], want)
        np.testing.assert_array_equal(out[:n, 1], want)
        assert np.all(out[n:] == -1.0)  # nothing written past the plan
