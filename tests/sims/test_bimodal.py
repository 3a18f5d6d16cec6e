"""`bimodal`: the side is never observed, and averaging the two modes meets the block."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import Command, Observation
from sims.experts import make_expert
from sims.plant import MujocoPlant
from sims.registry import make_task_env
from sims.tasks.bimodal import FINISH_Y_M


def _rollout(x0: float, mode: int, *, seed: int = 3) -> tuple[np.ndarray, np.ndarray, dict]:
    """The expert in `mode` from `x0`, disturbances off, on the env directly.

    Returns the observed states (T+1, 2), the true positions (T+1, 2) and the final info."""
    env = make_task_env("bimodal", disturbances=False)
    ex = make_expert("bimodal")
    o, info = env.reset(seed=seed, options={"x0": x0})
    obs = Observation(0, 0, o["state"], info=info)
    ex.reset(obs)
    ex.mode = mode  # type: ignore[attr-defined]
    ex.observe(obs)
    states, xys, done, k = [o["state"]], [info["xy"]], False, 0
    while not done:
        o, _, term, trunc, info = env.step(ex.action())
        k += 1
        done = term or trunc
        ex.observe(Observation(k, 0, o["state"], info=info))
        states.append(o["state"])
        xys.append(info["xy"])
    return np.array(states), np.array(xys), info


@pytest.mark.parametrize("x0", [0.0, 0.12, 0.29])
def test_mirrored_runs_give_the_same_observations(x0):
    """Left from x0 and right from -x0: the same states tick for tick, so nothing computed
    from the observations (with any history) can tell the side; the true x is mirrored."""
    s_left, xy_left, info_left = _rollout(x0, -1)
    s_right, xy_right, info_right = _rollout(-x0, 1)
    assert info_left["success"] and info_right["success"]
    assert info_left["side"] == -1 and info_right["side"] == 1
    assert s_left.shape == s_right.shape
    np.testing.assert_allclose(s_left, s_right, atol=1e-9)
    np.testing.assert_allclose(xy_left[:, 0], -xy_right[:, 0], atol=1e-9)
    assert np.all(s_left[:, 0] >= 0.0)
    assert xy_left[-1, 1] >= FINISH_Y_M


def test_the_state_drops_the_sign_and_info_keeps_it():
    env = make_task_env("bimodal", disturbances=False)
    o, info = env.reset(seed=0, options={"x0": -0.2})
    np.testing.assert_allclose(o["state"], [0.2, 0.0])
    np.testing.assert_allclose(info["xy"], [-0.2, 0.0])
    o, _, _, _, info = env.step(np.array([-1.0, 0.0]))
    assert o["state"][0] > 0.2 and info["xy"][0] < -0.2


def test_the_expert_refuses_an_observation_without_the_true_position():
    ex = make_expert("bimodal")
    with pytest.raises(ValueError, match=r"info\['xy'\]"):
        ex.reset(Observation(0, 0, np.array([0.1, 0.0])))


def test_the_bimodal_expert_picks_both_sides_over_episodes():
    ex = make_expert("bimodal", seed=0)
    plant = MujocoPlant("bimodal", seed=0)
    modes = set()
    for s in range(10):
        ex.reset(plant.reset(seed=s))
        modes.add(ex.mode)  # type: ignore[attr-defined]
    assert modes == {-1, 1}


@pytest.mark.parametrize("disturbances", [False, True])
def test_averaging_the_two_modes_over_what_is_observed_hits_the_block(disturbances):
    """What an MSE regressor tends to: given only (|x|, y), the data hold each run and its
    mirror image equally often, so the mean lateral command is 0 and the forward one the mean
    of the two modes'. That controller collides in every episode."""
    plant = MujocoPlant("bimodal", disturbances=disturbances)
    left, right = make_expert("bimodal"), make_expert("bimodal")
    for seed in range(10):
        obs = plant.reset(seed=seed)
        left.reset(obs)
        right.reset(obs)
        left.mode, right.mode = -1, 1  # type: ignore[attr-defined]
        k = 0
        while not obs.done:
            left.observe(obs)
            right.observe(obs)
            mean = (left.action() + right.action()) / 2
            plant.apply(Command(k, 0, np.array([0.0, mean[1]]), 0))
            k += 1
            obs = plant.observe()
        assert obs.info["collided"] and not obs.info["success"], (seed, obs.info)
    plant.close()
