"""`bimodal`: pass a block on a side the expert picks at random; the side is never observed.

Design (the reasoning is in docs/tasks.md, "bimodal"): a velocity-controlled disc (the action
is the velocity command, m/s) starts at y = 0 with x0 drawn uniformly in [-0.3, 0.3] m, in
front of a block 0.6 m wide at y = 1, and must cross the finish line y = 2 within 5 s. Touching
the block ends the episode as a failure. The expert picks left or right with probability 1/2
and heads diagonally for a point beside the block, so its actions are bimodal from the first
tick.

What keeps the mode hidden: the disc senses its *unsigned* lateral offset from the block's
axis and its progress, state = (|x|, y) (a symmetric sensor, e.g. ranges to two beacons
placed symmetrically about the axis). The task is mirror-symmetric about x = 0, so a run on
the left from x0 and the mirrored run on the right from -x0 produce the same observations
tick for tick (tested): no function of the observations, however much history it sees, can
tell the side; only a controller's memory of what it already commanded can. The expert is a
privileged teacher: it reads the true signed position from `info["xy"]`, which the env reports
every tick (for the expert and for analysis; learned policies see only the state).

Why not the signed position (x, y): with a signed state an averaging policy succeeds anyway
(docs/tasks.md, "Why not the signed position"): where the two modes' paths overlap, the
regressor's mean action keeps it between them until the paths separate, and from there the
data show a feasible path to the nearer side. With the mirror-symmetric state the mean of
the two modes has a zero lateral command everywhere, which meets the block head on.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from sims.disturbances import DisturbanceConfig
from sims.tasks.base import TaskEnv, TaskInfo

BLOCK_Y_M = 1.0
BLOCK_HALF_M = (0.3, 0.1)  # half width (x), half depth (y)
FINISH_Y_M = 2.0  # success: cross this line (any x) without touching the block
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
    "random; the state (|x|, y) is mirror-symmetric, so the side is never observed",
    rate_hz=50.0,
    episode_ticks=250,
    action_low=(-1.0, -1.0),
    action_high=(1.0, 1.0),
    state_dim=2,
    goal_dim=0,
    success_metric=f"cross the finish line y = {FINISH_Y_M} m within 5 s without touching the "
    "block",
    expert="picks left/right at random (p = 1/2), then waypoint following at 0.8 m/s",
    disturbances=DisturbanceConfig(
        push_rate_hz=0.2,
        push_force_n=(0.2, 0.5),
        push_duration_s=0.1,
        push_axes=(0,),
        sensor_noise_std=0.002,
    ),
    state_names=("abs_x", "y"),
    action_names=("vx", "vy"),
)


class BimodalEnv(TaskEnv):
    """`info`: the task stated (`swerve` reuses this model and episode end with its own)."""

    x0_range_m = X0_RANGE_M  # the start's x is drawn from U[-x0_range_m, x0_range_m]

    def __init__(self, info: TaskInfo = INFO, **config: Any) -> None:
        model = mujoco.MjModel.from_xml_string(MJCF)
        super().__init__(
            info, model, mujoco.MjData(model), n_substeps=2, push_body="agent", xml=MJCF, **config
        )
        self._agent = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "agent")
        self._block = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "block")
        self.side = 0  # -1 / +1: the side the agent passed the block on; 0: not yet
        self._touched = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """`options={"x0": x}` starts at that x instead of a random one (tests, analysis)."""
        obs, info = super().reset(seed=seed, options=options)
        info["xy"] = self.xy()
        return obs, info

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        info["xy"] = self.xy()
        return obs, reward, terminated, truncated, info

    def xy(self) -> np.ndarray:
        """(2,) the true signed position (x, y), m; privileged (the state drops x's sign)."""
        return np.array(self.data.qpos[:2], dtype=np.float64)

    def _init_episode(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        r = self.x0_range_m
        x0 = rng.uniform(-r, r)  # drawn always: same stream with or without
        if "x0" in options:
            x0 = float(options["x0"])
        self.data.qpos[:] = [x0, 0.0]
        self.side = 0
        self._touched = False

    def _state(self) -> np.ndarray:
        return np.array([abs(self.data.qpos[0]), self.data.qpos[1]], dtype=np.float64)

    def _goal_dist(self) -> float:
        return float(max(0.0, FINISH_Y_M - self.data.qpos[1]))

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
        if self.data.qpos[1] >= FINISH_Y_M:
            return "goal"
        return None

    def _success(self, kind: str | None) -> bool:
        return kind == "goal"

    def _episode_info(self) -> dict[str, Any]:
        return {"side": self.side, "collided": self._touched}

    def write_state(
        self, model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray, goal: np.ndarray
    ) -> None:
        # The state does not say the side: this writes the mirror image on x >= 0, which is
        # exact up to the mirror (the task is symmetric about x = 0).
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
        to_goal = np.maximum(0.0, FINISH_Y_M - qpos[..., 1])  # (B, H)
        inside = (np.abs(qpos[..., 0]) < BLOCK_HALF_M[0] + AGENT_RADIUS_M) & (
            np.abs(qpos[..., 1] - BLOCK_Y_M) < BLOCK_HALF_M[1] + AGENT_RADIUS_M
        )
        total: np.ndarray = np.sum(to_goal + 100.0 * inside, axis=-1)
        return total
