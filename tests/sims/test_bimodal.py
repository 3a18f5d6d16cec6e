"""`bimodal`: the side is never observed, and averaging the two modes meets the block."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import Observation
from sims.experts import make_expert
from sims.registry import make_task_env
from sims.tasks.bimodal import FINISH_Y_M

from .discs import expert_rollout, mean_of_the_modes, modes_drawn


def _rollout(x0: float, mode: int, *, seed: int = 3) -> tuple[np.ndarray, np.ndarray, dict]:
    return expert_rollout("bimodal", x0, mode, seed=seed)


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
    assert modes_drawn("bimodal", range(10)) == {-1, 1}


@pytest.mark.parametrize("disturbances", [False, True])
def test_averaging_the_two_modes_over_what_is_observed_hits_the_block(disturbances):
    """What an MSE regressor tends to: given only (|x|, y), the data hold each run and its
    mirror image equally often, so the mean lateral command is 0 and the forward one the mean
    of the two modes'. That controller collides in every episode."""
    ends = mean_of_the_modes("bimodal", disturbances=disturbances, seeds=range(10),
                             lateral=False)
    for seed, end in enumerate(ends):
        assert end["collided"] and not end["success"], (seed, end)
