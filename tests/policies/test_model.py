from __future__ import annotations

import pytest
import torch

from policies.model import Denoiser, DenoiserConfig, MLPConfig, MLPPolicy, role_mask

from .conftest import DA, DS, small_model


def _inputs(cfg: DenoiserConfig, B: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.horizon, cfg.token_dim, generator=g)
    tau = torch.rand(B, cfg.horizon, generator=g)
    ctx = torch.randn(B, cfg.n_past + 1, cfg.state_dim, generator=g)
    goal = torch.randn(B, cfg.goal_dim, generator=g) if cfg.goal_dim else None
    return x, tau, ctx, goal


@pytest.mark.parametrize("goal_dim", [0, 2])
@pytest.mark.parametrize("global_cond", [False, True])
def test_denoiser_maps_noisy_plan_to_clean_plan_of_same_shape(
    goal_dim: int, global_cond: bool
) -> None:
    net = small_model(goal_dim, global_cond=global_cond)
    x, tau, ctx, goal = _inputs(net.cfg)
    assert net(x, tau, ctx, goal).shape == (3, net.cfg.horizon, DS + DA)
    assert net.encode(x, tau, ctx, goal).shape == (
        3,
        net.cfg.n_context + net.cfg.horizon,
        net.cfg.n_embd,
    )


def test_role_mask_lets_context_see_context_only_and_plan_see_all() -> None:
    m = role_mask(3, 2)
    assert m[:3, :3].all() and not m[:3, 3:].any() and m[3:].all()


@pytest.mark.parametrize("goal_dim", [0, 2])
@pytest.mark.parametrize("global_cond", [False, True])
def test_aligned_attention_keeps_context_blind_to_plan_perturbations(
    goal_dim: int, global_cond: bool
) -> None:
    net = small_model(goal_dim, n_layer=2, global_cond=global_cond)
    x, tau, ctx, goal = _inputs(net.cfg)
    nc = net.cfg.n_context
    with torch.no_grad():
        h1 = net.encode(x, tau, ctx, goal)
        h2 = net.encode(x + 5.0 * torch.randn_like(x), torch.rand_like(tau), ctx, goal)
    torch.testing.assert_close(h1[:, :nc], h2[:, :nc], rtol=0, atol=1e-6)
    assert not torch.allclose(h1[:, nc:], h2[:, nc:])


def test_full_attention_switch_lets_plan_leak_into_context() -> None:
    net = small_model(0, aligned_attention=False)
    x, tau, ctx, goal = _inputs(net.cfg)
    nc = net.cfg.n_context
    with torch.no_grad():
        h1 = net.encode(x, tau, ctx, goal)
        h2 = net.encode(x + 5.0 * torch.randn_like(x), tau, ctx, goal)
    assert (h1[:, :nc] - h2[:, :nc]).abs().max() > 1e-4


def test_config_errors_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="n_embd=30"):
        DenoiserConfig(state_dim=2, action_dim=1, n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="horizon=0"):
        DenoiserConfig(state_dim=2, action_dim=1, horizon=0)


def test_goal_model_refuses_a_missing_goal() -> None:
    net = Denoiser(DenoiserConfig(state_dim=DS, action_dim=DA, goal_dim=2, n_embd=16, n_layer=1))
    x, tau, ctx, _ = _inputs(net.cfg)
    with pytest.raises(ValueError, match="needs a goal"):
        net(x, tau, ctx, None)


def test_mlp_policy_maps_context_to_one_action() -> None:
    net = MLPPolicy(MLPConfig(state_dim=DS, action_dim=DA, goal_dim=2, hidden=16))
    out = net(torch.randn(5, 3, DS), torch.randn(5, 2))
    assert out.shape == (5, DA)
