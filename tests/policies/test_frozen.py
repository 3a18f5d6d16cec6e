"""`freeze_for_cpu`: the traced, frozen model computes what the eager one does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policies import MLPPlanner, RollingPlanner
from policies.frozen import FrozenDenoiser, FrozenMLP, freeze_for_cpu
from policies.model import MLPConfig, MLPPolicy

from .conftest import DS, obs, small_model, small_planner_cfg, toy_normalizer, toy_spec


@pytest.mark.parametrize("goal_dim", [0, 2])
def test_frozen_denoiser_matches_eager_on_fresh_inputs(goal_dim: int) -> None:
    model = small_model(goal_dim)
    frozen = freeze_for_cpu(model)
    assert isinstance(frozen, FrozenDenoiser) and frozen.cfg == model.cfg
    gen = torch.Generator().manual_seed(5)
    cfg = model.cfg
    for _ in range(3):
        x = torch.randn(1, cfg.horizon, cfg.token_dim, generator=gen)
        tau = torch.rand(1, cfg.horizon, generator=gen)
        ctx = torch.randn(1, cfg.n_past + 1, DS, generator=gen)
        goal = torch.randn(1, goal_dim, generator=gen) if goal_dim else None
        with torch.no_grad():
            torch.testing.assert_close(frozen(x, tau, ctx, goal), model(x, tau, ctx, goal),
                                       atol=1e-5, rtol=0)


def test_frozen_mlp_matches_eager() -> None:
    torch.manual_seed(0)
    model = MLPPolicy(MLPConfig(state_dim=DS, action_dim=1, goal_dim=1, hidden=16)).eval()
    frozen = freeze_for_cpu(model)
    assert isinstance(frozen, FrozenMLP)
    ctx, goal = torch.randn(1, 3, DS), torch.randn(1, 1)
    with torch.no_grad():
        torch.testing.assert_close(frozen(ctx, goal), model(ctx, goal), atol=1e-5, rtol=0)


def test_a_rolling_planner_on_the_frozen_model_acts_like_the_eager_one() -> None:
    model = small_model()
    planners = [
        RollingPlanner(m, toy_normalizer(), toy_spec(), small_planner_cfg(), seed=7)
        for m in (model, freeze_for_cpu(model))
    ]
    rng = np.random.default_rng(0)
    states = rng.normal(size=(20, DS))
    for p in planners:
        p.reset(obs(states[0], seq=0))
    for k in range(1, 20):
        acts = []
        for p in planners:
            p.observe(obs(states[k], seq=k))
            p.refine(10**9)
            acts.append(p.action().copy())
        np.testing.assert_allclose(acts[0], acts[1], atol=1e-4)
    mlp = MLPPlanner(freeze_for_cpu(MLPPolicy(MLPConfig(state_dim=DS, action_dim=1))),
                     toy_normalizer(), toy_spec(), small_planner_cfg())
    mlp.reset(obs(states[0]))
    assert np.all(np.isfinite(mlp.action()))


def test_anything_else_is_returned_unchanged() -> None:
    lin = torch.nn.Linear(2, 2)
    assert freeze_for_cpu(lin) is lin
