from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from policies.schedule import (
    ramp_levels,
    refine_step_,
    renoise_,
    sample_train_levels,
    surprise_to_level,
)


def test_ramp_is_min_one_j_over_hc() -> None:
    assert ramp_levels(6, 4).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    with pytest.raises(ValueError, match="clean_ticks=6"):
        ramp_levels(6, 6)


def _ref_refine(x, z_hat, tau, target, delta):
    """Plain per-token loop of the schedule's step (docs/architecture.md, "The rolling buffer")."""
    x, tau = x.clone(), tau.clone()
    for b in range(x.shape[0]):
        for j in range(x.shape[1]):
            t = float(tau[b, j])
            t_new = min(t, max(float(target[b, j]), t - float(delta[b, j])))
            r = t_new / max(t, 1e-6)
            x[b, j] = z_hat[b, j] + r * (x[b, j] - z_hat[b, j])
            tau[b, j] = t_new
    return x, tau


def test_refine_step_matches_a_plain_per_token_loop() -> None:
    g = torch.Generator().manual_seed(0)
    x, z_hat = torch.randn(2, 6, 3, generator=g), torch.randn(2, 6, 3, generator=g)
    tau = torch.rand(2, 6, generator=g)
    tau[0, 0] = 0.0
    target = ramp_levels(6, 4).expand(2, 6).contiguous() * 0.5
    delta = torch.rand(2, 6, generator=g) * 0.3
    ref_x, ref_tau = _ref_refine(x, z_hat, tau, target, delta)
    kw = dict(tau_new=torch.empty(2, 6), ratio=torch.empty(2, 6), scratch=torch.empty(2, 6, 3))
    refine_step_(x, z_hat, tau, target, delta, **kw)
    torch.testing.assert_close(x, ref_x)
    torch.testing.assert_close(tau, ref_tau)


def test_refine_step_lands_on_the_flow_path_with_an_exact_clean_estimate() -> None:
    g = torch.Generator().manual_seed(1)
    z, eps = torch.randn(1, 4, 2, generator=g), torch.randn(1, 4, 2, generator=g)
    tau = torch.tensor([[0.2, 0.5, 0.8, 1.0]])
    x = (1 - tau[..., None]) * z + tau[..., None] * eps
    target, delta = torch.zeros(1, 4), torch.full((1, 4), 0.1)
    kw = dict(tau_new=torch.empty(1, 4), ratio=torch.empty(1, 4), scratch=torch.empty(1, 4, 2))
    refine_step_(x, z, tau, target, delta, **kw)
    want_tau = torch.tensor([[0.1, 0.4, 0.7, 0.9]])
    torch.testing.assert_close(tau, want_tau)
    torch.testing.assert_close(x, (1 - want_tau[..., None]) * z + want_tau[..., None] * eps)


def test_renoise_matches_the_forward_process_formula_token_by_token() -> None:
    g = torch.Generator().manual_seed(2)
    x, noise = torch.randn(1, 5, 3, generator=g), torch.randn(1, 5, 3, generator=g)
    tau = torch.tensor([[0.0, 0.3, 0.6, 0.95, 1.0]])
    new = torch.full((1, 5), 0.6)
    ref = x.clone()
    for j in range(5):
        t, t2 = float(tau[0, j]), max(float(tau[0, j]), 0.6)
        a = (1 - t2 + 1e-6) / (1 - t + 1e-6)
        b = math.sqrt(max(0.0, (t2 - a * t) * (t2 + a * t)))
        ref[0, j] = a * x[0, j] + b * noise[0, j]
    renoise_(x, tau, new, noise, a=torch.empty(1, 5), b=torch.empty(1, 5), c=torch.empty(1, 5))
    torch.testing.assert_close(x, ref)
    torch.testing.assert_close(tau, torch.tensor([[0.6, 0.6, 0.6, 0.95, 1.0]]))


def test_renoise_to_the_same_level_changes_nothing() -> None:
    x = torch.randn(1, 4, 2)
    before = x.clone()
    tau = torch.tensor([[0.0, 0.5, 0.9, 1.0]])
    renoise_(
        x,
        tau,
        torch.zeros(1, 4),
        torch.randn(1, 4, 2),
        a=torch.empty(1, 4),
        b=torch.empty(1, 4),
        c=torch.empty(1, 4),
    )
    assert torch.equal(x, before)


def test_surprise_level_is_zero_below_threshold_then_rises_monotonically_to_the_cap() -> None:
    s = np.linspace(0.0, 3.0, 61)
    levels = [surprise_to_level(v, 0.5, 2.0, 0.9) for v in s]
    assert levels[0] == 0.0 and levels[10] == 0.0
    assert all(b >= a for a, b in itertools.pairwise(levels))
    assert levels[-1] == 0.9
    assert surprise_to_level(float("nan"), 0.5, 2.0, 0.9) == 0.9


@pytest.mark.parametrize("profile", ["forcing", "uniform"])
def test_training_levels_are_in_unit_range_and_uniform_profile_is_shared(profile: str) -> None:
    tau = sample_train_levels(
        512, 8, 7, profile=profile, generator=torch.Generator().manual_seed(0)
    )
    assert tau.shape == (512, 8) and tau.min() >= 0 and tau.max() <= 1
    if profile == "uniform":
        assert torch.equal(tau, tau[:, :1].expand(-1, 8))
    else:
        ramps = (tau[:, 1:] >= tau[:, :-1]).all(dim=1).float().mean()
        assert 0.4 < float(ramps) < 0.8  # about half ramps (+ a few sorted independent draws)
