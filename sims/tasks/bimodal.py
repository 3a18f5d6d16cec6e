"""`bimodal`: pass a block on a side the expert picks at random; the side stays hidden.

Design (the reasoning is in docs/tasks.md): a velocity-controlled disc (the action is the
velocity command, m/s) starts at y = 0 with x0 drawn uniformly in [-0.3, 0.3] m, in front of a
block 0.6 m wide at y = 1; the goal is at (0, 2). Touching the block ends the episode as a
failure. The expert picks left or right with probability 1/2 and heads diagonally for a point
beside the block, so its actions are bimodal from the first tick.

What keeps the mode hidden: the state is the position (x, y) only. With velocity control the
measured velocity equals the last command and would reveal the side at once (the failure of a
momentum-based prototype), so it is left out; and because x0 is spread over the block's
width, the left paths from the right half and the right paths from the left half cover the
same positions for y < 0.34 m (a median 17 ticks per trajectory, measured by
`sims.experts.bimodal.ambiguity_ticks`): over that stretch
the current observation does not tell the side. The expectation, to be measured on trained
policies: an averaging policy (regressing E[a | s]) gets a lateral command near zero there
and meets the block head on (the mean of the expert's two modes does, in every tested
episode); a per-tick sampler picks a side afresh each tick and dithers; a planner that
commits passes.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from sims.disturbances import DisturbanceConfig
from sims.tasks.base import TaskEnv, TaskInfo

BLOCK_Y_M = 1.0
BLOCK_HALF_M = (0.3, 0.1)  # half width (x), half depth (y)
GOAL_XY_M = (0.0, 2.0)
GOAL_TOL_M = 0.1
X0_RANGE_M = 0.3
AGENT_RADIUS_M = 0.05

MJCF = f"""
<mujoco model="bimodal">
  <option timestep="0.01" gravity="0 0 0" integrator="implicitfast"/>
  <worldbody>
    <geom name="floor" type="plane" size="3 3 0.1" contype="0" conaffinity="0"/>
    <geom name="block" type="box" pos="0 {BLOCK_Y_M} 0.05"
          size="{BLOCK_HALF_M[0]} {BLOCK_HALF_M[1]} 0.05" contype="1" conaffinity="1"/>
    <body name="agent" pos="0 0 0.05">
      <joint name="x" type="slide" axis="1 0 0" damping="0"/>
      <joint name="y" type="slide" axis="0 1 0" damping="0"/>
      <geom name="agent" type="sphere" size="{AGENT_RADIUS_M}" mass="0.1"
            contype="1" conaffinity="1"/>
    </body>
  </worldbody>
  <actuator>
    <velocity name="vx" joint="x" kv="5" ctrlrange="-1 1" ctrllimited="true"/>
    <velocity name="vy" joint="y" kv="5" ctrlrange="-1 1" ctrllimited="true"/>
  </actuator>
</mujoco>
"""

INFO = TaskInfo(
    name="bimodal",
    description="velocity-controlled disc passing a block on a side the expert picks at "
    "random; the side is hidden from the state for a median 17 ticks",
    rate_hz=50.0,
    episode_ticks=250,
    action_low=(-1.0, -1.0),
    action_high=(1.0, 1.0),
    state_dim=2,
    goal_dim=0,
    success_metric=f"reach within {GOAL_TOL_M} m of the goal (0, 2) in 5 s without touching "
    "the block",
    expert="picks left/right at random (p = 1/2), then waypoint following at 0.8 m/s",
    disturbances=DisturbanceConfig(
        push_rate_hz=0.2,
        push_force_n=(0.2, 0.5),
        push_duration_s=0.1,
        push_axes=(0,),
        sensor_noise_std=0.002,
    ),
    state_names=("x", "y"),
    action_names=("vx", "vy"),
)


class BimodalEnv(TaskEnv):
    def __init__(self, **config: Any) -> None:
        model = mujoco.MjModel.from_xml_string(MJCF)
        super().__init__(
            INFO, model, mujoco.MjData(model), n_substeps=2, push_body="agent", **config
        )
        self._agent = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "agent")
        self._block = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "block")
        self.side = 0  # -1 / +1: the side the agent passed the block on; 0: not yet
        self._touched = False

    def _init_episode(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        self.data.qpos[:] = [rng.uniform(-X0_RANGE_M, X0_RANGE_M), 0.0]
        self.side = 0
        self._touched = False

    def _state(self) -> np.ndarray:
        return np.array(self.data.qpos[:2], dtype=np.float64)

    def _goal_dist(self) -> float:
        return float(np.linalg.norm(self.data.qpos[:2] - np.array(GOAL_XY_M)))

    def _on_tick(self) -> None:
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            if {c.geom1, c.geom2} == {self._agent, self._block}:
                self._touched = True
        if self.side == 0 and self.data.qpos[1] >= BLOCK_Y_M:
            self.side = 1 if self.data.qpos[0] > 0 else -1

    def _reward(self, action: np.ndarray) -> float:
        return -self._goal_dist()

    def _terminal(self) -> str | None:
        if self._touched:
            return "fail"
        if self._goal_dist() <= GOAL_TOL_M:
            return "goal"
        return None

    def _success(self, kind: str | None) -> bool:
        return kind == "goal"

    def _episode_info(self) -> dict[str, Any]:
        return {"side": self.side, "collided": self._touched}

    def write_state(
        self, model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray, goal: np.ndarray
    ) -> None:
        data.qpos[:2] = state[:2]
        data.qvel[:] = 0.0  # not observed; a velocity-controlled body is near its command
        mujoco.mj_forward(model, data)

    def mpc_cost(
        self,
        qpos: np.ndarray,
        qvel: np.ndarray,
        ctrl: np.ndarray,
        sensordata: np.ndarray,
        goal: np.ndarray,
    ) -> np.ndarray:
        to_goal = np.linalg.norm(qpos[..., :2] - np.array(GOAL_XY_M), axis=-1)  # (B, H)
        inside = (np.abs(qpos[..., 0]) < BLOCK_HALF_M[0] + AGENT_RADIUS_M) & (
            np.abs(qpos[..., 1] - BLOCK_Y_M) < BLOCK_HALF_M[1] + AGENT_RADIUS_M
        )
        total: np.ndarray = np.sum(to_goal + 100.0 * inside, axis=-1)
        return total
