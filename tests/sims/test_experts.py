"""Each expert is an anytime Planner that succeeds on a few short seeded episodes."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import Command, Planner
from sims.experts import make_expert
from sims.plant import MujocoPlant


def _episode(task, seed, expert=None, refine=1, **plant_kw):
    plant = MujocoPlant(task, seed=seed, **plant_kw)
    spec = plant.spec()
    ex = expert or make_expert(task, spec)
    obs = plant.reset()
    ex.reset(obs)
    k = 0
    while not obs.done:
        for _ in range(refine):
            ex.refine(10**9)
        a = ex.action()
        assert a.shape == (spec.action_dim,) and np.all(np.isfinite(a))
        assert np.all(a >= spec.action_low) and np.all(a <= spec.action_high)
        plant.apply(Command(k, 0, a, 0))
        k += 1
        obs = plant.observe()
        ex.observe(obs)
    plant.close()
    return obs


@pytest.mark.parametrize(
    "task", ["double-pendulum", "reacher-moving", "pointmaze", "bimodal", "swerve"]
)
@pytest.mark.parametrize("seed", [11, 12])
def test_the_expert_succeeds_with_disturbances_on(task, seed):
    obs = _episode(task, seed)
    assert obs.info["success"], obs.info


def test_every_expert_is_a_planner_whose_refine_has_nothing_left_to_do():
    for task in ["double-pendulum", "reacher-moving", "pointmaze", "pusher", "bimodal"]:
        ex = make_expert(task)
        assert isinstance(ex, Planner)
        plant = MujocoPlant(task, seed=0)
        ex.reset(plant.reset())
        assert ex.refine(10**9) == 0


@pytest.mark.parametrize("seed", [8, 9])
def test_the_pusher_expert_succeeds_on_seeds_it_is_known_to_solve(seed):
    # a regression guard: the expert solves about a third of the episodes (benchmarks.md)
    obs = _episode("pusher", seed, disturbances=False)
    assert obs.info["success"], obs.info


def test_the_pusher_expert_moves_the_puck_towards_the_goal():
    plant = MujocoPlant("pusher", seed=1, disturbances=False)
    obs0 = plant.reset()
    d0 = np.linalg.norm(obs0.state[14:16] - obs0.goal)
    obs = _episode("pusher", 1, disturbances=False)
    assert obs.info["puck_goal_dist_m"] < d0


def test_the_lqr_gain_stabilises_the_linearization():
    ex = make_expert("double-pendulum")
    closed = ex.a - ex.b @ ex.gain  # type: ignore[attr-defined]
    assert np.max(np.abs(np.linalg.eigvals(closed))) < 1.0




def test_sampling_mpc_is_anytime_and_reaches_on_reacher():
    ex = make_expert("reacher-moving", kind="mpc", horizon_ticks=10, n_samples=16, seed=0)
    plant = MujocoPlant("reacher-moving", seed=2, disturbances=False)
    obs = plant.reset()
    ex.reset(obs)
    a0 = ex.action()  # zero iterations still give an action
    assert a0.shape == (2,) and np.all(np.isfinite(a0))
    assert ex.refine(10**9) == 1
    dists = []
    for k in range(60):
        ex.refine(10**9)
        plant.apply(Command(k, 0, ex.action(), 0))
        obs = plant.observe()
        ex.observe(obs)
        tip = plant.env.data.xpos[plant.env._tip][:2]  # type: ignore[attr-defined]
        dists.append(np.linalg.norm(tip - obs.goal))
    assert min(dists[-10:]) < 0.03


def test_unknown_expert_task_and_kind_are_refused():
    with pytest.raises(KeyError, match="unknown task"):
        make_expert("nope")
    with pytest.raises(ValueError, match="kind='magic'"):
        make_expert("bimodal", kind="magic")
