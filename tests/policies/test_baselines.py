from __future__ import annotations

import time

import numpy as np
import torch

from policies import (
    ChunkedAsyncPlanner,
    ChunkedPlanner,
    MLPConfig,
    MLPPlanner,
    MLPPolicy,
    PerTickPlanner,
)
from runtime.protocols import Planner

from .conftest import DS, obs, small_model, small_planner_cfg, toy_normalizer, toy_spec


def _xs(n: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, DS))


def test_chunked_samples_every_ta_ticks_and_runs_open_loop_between() -> None:
    p = ChunkedPlanner(small_model(), toy_normalizer(), toy_spec(), small_planner_cfg(exec_ticks=3))
    assert isinstance(p, Planner)
    xs = _xs(10)
    p.reset(obs(xs[0]))
    chunk = p.chunk.clone()
    steps, actions = [], []
    for k in range(1, 10):
        p.observe(obs(xs[k], seq=k))
        steps.append(p.refine(0))
        actions.append(p.action().copy())
    assert steps == [0, 0, 3, 0, 0, 3, 0, 0, 3]  # K = chunk_steps = 3 on chunk ticks
    norm = toy_normalizer()
    np.testing.assert_allclose(
        actions[0], np.clip(norm.denorm_action(chunk[1].numpy()), -2, 2), rtol=1e-5
    )
    assert p.chunks_sampled == 4


def test_pertick_samples_a_fresh_chunk_every_tick() -> None:
    p = PerTickPlanner(small_model(), toy_normalizer(), toy_spec(), small_planner_cfg())
    xs = _xs(5)
    p.reset(obs(xs[0]))
    assert [p.observe(obs(xs[k], seq=k)) or p.refine(0) for k in range(1, 5)] == [3, 3, 3, 3]
    assert np.all(np.isfinite(p.action()))


def test_chunked_async_switches_to_background_chunks_without_blocking() -> None:
    p = ChunkedAsyncPlanner(
        small_model(), toy_normalizer(), toy_spec(), small_planner_cfg(exec_ticks=4)
    )
    try:
        xs = _xs(30)
        p.reset(obs(xs[0]))
        for k in range(1, 30):
            p.observe(obs(xs[k], seq=k))
            assert p.refine(0) == 0
            assert np.all(np.isfinite(p.action()))
            time.sleep(0.01)  # let the worker finish (a chunk takes ~1 ms here)
        assert p.chunks_sampled >= 5
        assert p.starved_ticks == 0
    finally:
        p.close()


def test_mlp_planner_runs_one_forward_per_tick() -> None:
    torch.manual_seed(0)
    net = MLPPolicy(MLPConfig(state_dim=DS, action_dim=1, hidden=16)).eval()
    p = MLPPlanner(net, toy_normalizer(), toy_spec(), small_planner_cfg())
    p.reset(obs(np.zeros(DS)))
    p.observe(obs(np.ones(DS), seq=1))
    assert (p.refine(0), p.refine(0)) == (1, 0)
    a = p.action()
    assert a.shape == (1,) and np.all(np.isfinite(a)) and -2 <= a[0] <= 2
