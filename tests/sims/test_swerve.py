"""`swerve`: the side is hidden for the first ticks of the swerve; the modes' mean collides."""

from __future__ import annotations

import numpy as np
import pytest

from sims.registry import make_task_env
from sims.tasks.swerve import DEAD_BAND_M, FINISH_Y_M, SWERVE_Y_M, dead_band

from .discs import expert_rollout, mean_of_the_modes, modes_drawn


def test_the_lateral_sensor_reads_zero_inside_the_dead_band_and_the_excess_outside():
    x = np.array([-0.5, -DEAD_BAND_M, -0.01, 0.0, 0.03, DEAD_BAND_M, 0.1])
    np.testing.assert_allclose(dead_band(x), [-0.5 + DEAD_BAND_M, 0, 0, 0, 0, 0,
                                              0.1 - DEAD_BAND_M])
    env = make_task_env("swerve", disturbances=False)
    o, info = env.reset(seed=0, options={"x0": 0.015})
    np.testing.assert_allclose(o["state"], [0.0, 0.0])
    np.testing.assert_allclose(info["xy"], [0.015, 0.0])


@pytest.mark.parametrize("x0", [-0.02, 0.0, 0.02])
def test_both_swerves_pass_and_read_the_same_until_4_ticks_into_the_swerve(x0):
    s_left, xy_left, end_left = expert_rollout("swerve", x0, -1, seed=1)
    s_right, _, end_right = expert_rollout("swerve", x0, 1, seed=1)
    assert end_left["success"] and end_right["success"]
    assert (end_left["side"], end_right["side"]) == (-1, 1)
    assert xy_left[-1, 1] >= FINISH_Y_M
    swerve = int(np.argmax(xy_left[:, 1] >= SWERVE_Y_M))
    n = min(len(s_left), len(s_right))
    differ = int(np.argmax(np.abs(s_left[:n, 0] - s_right[:n, 0]) > 0))
    assert differ - swerve >= 4, (swerve, differ)  # the side is hidden for >= 4 ticks
    np.testing.assert_allclose(s_left[:differ], s_right[:differ], atol=1e-12)


def test_the_expert_picks_both_sides_over_episodes():
    assert modes_drawn("swerve", range(10)) == {-1, 1}


@pytest.mark.parametrize("disturbances", [False, True])
def test_the_mean_of_the_two_swerves_collides(disturbances):
    """What one flow step from noise (or an MSE regressor) returns inside the dead band: the
    two modes' mean, with no lateral part. It meets the block in every episode."""
    ends = mean_of_the_modes("swerve", disturbances=disturbances, seeds=range(10))
    for seed, end in enumerate(ends):
        assert end["collided"] and not end["success"], (seed, end)
