"""`swerve`: a late left-or-right decision that the sensor reveals only a few ticks after.

Design (the reasoning is in docs/tasks.md, "swerve"): the disc, block and finish line of
`bimodal`, but the disc starts near the block's axis (x0 ~ U[-0.02, 0.02] m) and the expert
drives straight ahead to y = 0.5 m, then swerves at 1 m/s for a point beside the block on a
side it picks at random. The lateral sensor has a dead band: it reads
sign(x) * max(0, |x| - 0.06), so every start and the first ticks of either swerve read 0,
and the side becomes visible once the disc is 0.06 m beyond the axis, 4-6 ticks into the
swerve.

What this makes measurable is sampling compute. Inside the dead band the demonstrations hold
both swerves at the same observation, so the conditional mean of the action (what one flow
step from noise returns, and what an MSE regressor learns) has no lateral part: it drives
straight into the block. A sample from the distribution commits to one side; if the sample
is a chunk that stays on that side for the 4-6 ticks the dead band hides it, the sensor then
shows the side and every later decision agrees. So a chunked planner that samples well (many
flow steps) passes, one that samples the mean (one step) collides, and a rolling planner
passes if its buffer carries the side it chose. Unlike `bimodal`, whose side is never
observed, a chunk's commitment is enough: the task tests the sampler, not a memory.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import mujoco
import numpy as np

from sims.tasks.bimodal import BLOCK_HALF_M, BLOCK_Y_M, FINISH_Y_M, BimodalEnv
from sims.tasks.bimodal import INFO as BIMODAL_INFO

DEAD_BAND_M = 0.06  # the lateral sensor reads 0 within this distance of the block's axis
X0_RANGE_M = 0.02  # starts inside the dead band: the start's x is not observed
SWERVE_Y_M = 0.5  # the expert goes straight until here

# bimodal's rate, episode, limits, sizes, success and disturbances; its own words and state
INFO = replace(
    BIMODAL_INFO,
    name="swerve",
    description="velocity-controlled disc swerving late round a block on a side the expert "
    "picks at random; the lateral sensor has a dead band, so the side shows only 4-6 ticks "
    "into the swerve",
    expert=f"straight ahead at 0.8 m/s to y = {SWERVE_Y_M} m, then left or right at random "
    "(p = 1/2), a fixed swerve, then waypoint following at 1 m/s",
    state_names=("x_beyond_band", "y"),
)


def dead_band(x: np.ndarray | float) -> np.ndarray:
    """The lateral sensor's reading of the signed offset `x`: sign(x) * max(0, |x| - band)."""
    x = np.asarray(x, dtype=np.float64)
    out: np.ndarray = np.sign(x) * np.maximum(0.0, np.abs(x) - DEAD_BAND_M)
    return out


class SwerveEnv(BimodalEnv):
    """`bimodal`'s model and episode end; its own info, start and sensor."""

    x0_range_m = X0_RANGE_M

    def __init__(self, **config: Any) -> None:
        super().__init__(INFO, **config)

    def _state(self) -> np.ndarray:
        return np.array([float(dead_band(self.data.qpos[0])), self.data.qpos[1]])

    def write_state(
        self, model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray, goal: np.ndarray
    ) -> None:
        # A reading of 0 is any x in the dead band; this writes the axis (x = 0) for it.
        x = float(state[0])
        data.qpos[:2] = [x + np.sign(x) * DEAD_BAND_M, state[1]]
        data.qvel[:] = 0.0
        mujoco.mj_forward(model, data)


__all__ = ["BLOCK_HALF_M", "BLOCK_Y_M", "DEAD_BAND_M", "FINISH_Y_M", "INFO", "SwerveEnv",
           "dead_band"]
