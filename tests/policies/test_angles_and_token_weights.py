"""Angle features (`angle_dims`) and per-token loss weights (`token_decay`)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from policies import load_checkpoint, load_planner, save_checkpoint
from policies.checkpoint import state_dict_equal
from policies.model import AngleFeatures, DenoiserConfig, MLPConfig, MLPPolicy
from policies.train import TrainConfig, denoiser_loss, token_weights, train
from runtime.cli.train import cli_train

from .conftest import DA, DS, obs, small_model, toy_episodes, toy_spec


def test_angle_features_are_sin_and_cos_of_the_denormalized_angles() -> None:
    feats = AngleFeatures((0, 2))
    mean, std = np.array([0.5, 0.0, -1.0, 0.0]), np.array([2.0, 1.0, 3.0, 1.0])
    feats.set_stats(mean, std)
    s = torch.randn(5, 3, DS)
    out = feats(s)
    assert out.shape == (5, 3, DS + 4)
    q = torch.stack([s[..., 0] * 2.0 + 0.5, s[..., 2] * 3.0 - 1.0], dim=-1)
    torch.testing.assert_close(out[..., :DS], s)
    torch.testing.assert_close(out[..., DS:], torch.cat([q.sin(), q.cos()], dim=-1))
    # a full turn of the raw angle leaves the added features where they were
    s2 = s.clone()
    s2[..., 0] += 2 * math.pi / 2.0
    torch.testing.assert_close(feats(s2)[..., DS:], out[..., DS:], rtol=0, atol=1e-5)


def test_no_angle_dims_adds_nothing_so_older_checkpoints_load() -> None:
    plain = small_model(2)
    assert not any("angle" in k for k in plain.state_dict())
    assert AngleFeatures(())(x := torch.randn(2, 3)) is x
    with_angles = small_model(2, angle_dims=(1,))
    keys = set(with_angles.state_dict())
    assert {"angles.angle_mean", "angles.angle_std"} <= keys
    assert "angles.angle_idx" not in keys  # derived from the config, not stored


@pytest.mark.parametrize("global_cond", [False, True])
def test_angle_model_keeps_shapes_and_the_aligned_attention_property(global_cond: bool) -> None:
    net = small_model(2, n_layer=2, angle_dims=(0, 1), global_cond=global_cond)
    g = torch.Generator().manual_seed(0)
    c = net.cfg
    x = torch.randn(3, c.horizon, c.token_dim, generator=g)
    tau = torch.rand(3, c.horizon, generator=g)
    ctx = torch.randn(3, c.n_past + 1, DS, generator=g)
    goal = torch.randn(3, 2, generator=g)
    assert net(x, tau, ctx, goal).shape == (3, c.horizon, DS + DA)
    with torch.no_grad():
        h1 = net.encode(x, tau, ctx, goal)
        h2 = net.encode(x + 3.0 * torch.randn_like(x), torch.rand_like(tau), ctx, goal)
    nc = c.n_context
    torch.testing.assert_close(h1[:, :nc], h2[:, :nc], rtol=0, atol=1e-6)
    mlp = MLPPolicy(MLPConfig(state_dim=DS, action_dim=DA, goal_dim=2, angle_dims=(3,)))
    assert mlp(ctx, goal).shape == (3, DA)


def test_angle_dims_are_validated_and_json_lists_become_tuples() -> None:
    cfg = DenoiserConfig(state_dim=DS, action_dim=DA, angle_dims=[2, 0])  # type: ignore[arg-type]
    assert cfg.angle_dims == (0, 2)
    for bad in [(DS,), (-1,), (1, 1), ("a",)]:
        with pytest.raises(ValueError, match="angle_dims"):
            DenoiserConfig(state_dim=DS, action_dim=DA, angle_dims=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="angle_dims"):
        MLPConfig(state_dim=DS, action_dim=DA, angle_dims=(7,))


def test_training_sets_the_angle_stats_and_the_checkpoint_keeps_them(tmp_path: Path) -> None:
    eps = toy_episodes(n=3, T=30, goal_dim=2)
    model_cfg = DenoiserConfig(
        state_dim=DS, action_dim=DA, goal_dim=2, horizon=4, n_layer=1, n_embd=32,
        angle_dims=(0, 2),
    )
    res = train(eps, TrainConfig(steps=3, log_every=0), task="toy", model_cfg=model_cfg)
    ck = res.checkpoint
    norm = ck.normalizer
    np.testing.assert_allclose(ck.model.angles.angle_mean.numpy(), norm.state_mean[[0, 2]])
    np.testing.assert_allclose(ck.model.angles.angle_std.numpy(), norm.state_std[[0, 2]])
    out = save_checkpoint(ck, tmp_path / "ck")
    assert json.loads((out / "config.json").read_text())["model"]["angle_dims"] == [0, 2]
    back = load_checkpoint(out)
    assert back.model.cfg.angle_dims == (0, 2) and state_dict_equal(back.model, ck.model)
    spec = toy_spec(goal_dim=2)
    planner = load_planner(str(out), spec=spec)  # traced and frozen on CPU
    eager = load_planner(str(out), spec=spec, frozen=False)
    o = obs(np.array([0.3, -0.1, 4.0, 0.2]), goal=np.array([0.1, -0.2]))
    for p in (planner, eager):
        p.reset(o)
        p.observe(obs(o.state, seq=1, goal=o.goal))
        p.refine(0)
    a, b = planner.action(), eager.action()
    assert np.all(np.isfinite(a)) and np.allclose(a, b, atol=1e-4)


def test_token_weights_decay_with_mean_one_and_zero_decay_is_the_plain_loss() -> None:
    assert token_weights(6, 0.0) is None
    w = token_weights(6, 1.0)
    assert w is not None and w.shape == (6,)
    assert float(w.mean()) == pytest.approx(1.0) and bool((w[1:] < w[:-1]).all())
    torch.testing.assert_close(w[1] / w[0], torch.tensor(math.exp(-1.0)))
    net = small_model(2)
    g = torch.Generator().manual_seed(0)
    c = net.cfg
    ctx = torch.randn(4, c.n_past + 1, DS, generator=g)
    goal = torch.randn(4, 2, generator=g)
    z = torch.randn(4, c.horizon, c.token_dim, generator=g)
    tau = torch.rand(4, c.horizon, generator=g)
    eps = torch.randn(4, c.horizon, c.token_dim, generator=g)
    plain = denoiser_loss(net, ctx, goal, z, tau, eps, action_weight=2.0)
    ones = denoiser_loss(
        net, ctx, goal, z, tau, eps, action_weight=2.0, token_weights=torch.ones(c.horizon)
    )
    torch.testing.assert_close(plain, ones)
    near = torch.zeros(c.horizon)
    near[0] = c.horizon  # all the weight on token 0
    with torch.no_grad():
        x = (1 - tau.unsqueeze(-1)) * z + tau.unsqueeze(-1) * eps
        x[:, 0, :DS] = z[:, 0, :DS]
        sq = (net(x, tau, ctx, goal) - z).square()[:, 0]
    want = sq[:, :DS].mean() + 2.0 * sq[:, DS:].mean()
    got = denoiser_loss(net, ctx, goal, z, tau, eps, action_weight=2.0, token_weights=near)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="token_decay"):
        TrainConfig(token_decay=-1.0)


@pytest.fixture
def fake_sims(monkeypatch: pytest.MonkeyPatch) -> None:
    sims = types.ModuleType("sims")
    datasets = types.ModuleType("sims.datasets")
    datasets.load_episodes = lambda path: list(toy_episodes(n=2, T=20))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sims", sims)
    monkeypatch.setitem(sys.modules, "sims.datasets", datasets)


def _args(out: Path, settings: list[str], policy: str = "rolling") -> argparse.Namespace:
    return argparse.Namespace(
        task="toy", policy=policy, data="d", out=str(out), steps=2, device="cpu", seed=0,
        settings=settings,
    )


def test_train_cli_set_takes_angle_dims_as_a_list_and_token_decay(
    fake_sims: None, tmp_path: Path
) -> None:
    from runtime.cli import CliError

    out = tmp_path / "ck"
    assert cli_train(_args(out, ["angle_dims=0,2", "token_decay=1.5"])) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["angle_dims"] == [0, 2]
    assert cfg["train"]["config"]["token_decay"] == 1.5
    assert cli_train(_args(tmp_path / "m", ["angle_dims=1"], policy="mlp")) == 0
    for bad in ("angle_dims=a,b", "angle_dims=9"):
        with pytest.raises(CliError, match=r"angle_dims|comma-separated"):
            cli_train(_args(tmp_path / "x", [bad]))
