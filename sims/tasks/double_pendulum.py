"""`double-pendulum`: gymnasium's InvertedDoublePendulum MJCF controlled at 100 Hz.

Gymnasium runs this model at 20 Hz (frame_skip 5); here one physics step of 0.01 s (RK4, as
the MJCF says) is one control tick, so a late action shows within a few ticks. The state is
the raw joint state [cart x, hinge 1, hinge 2, their velocities] (gymnasium's observation adds
sin/cos and constraint forces, which a controller does not need). Random horizontal pushes act
on the upper pole (`xfrc_applied`).
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from sims.disturbances import DisturbanceConfig
from sims.tasks.base import TaskEnv, TaskInfo, gym_asset

TIP_Z_MIN_M = 1.0  # gymnasium's "fallen" threshold on the tip height

INFO = TaskInfo(
    name="double-pendulum",
    description="cart with two stacked poles (gymnasium InvertedDoublePendulum) at 100 Hz, "
    "random pushes on the upper pole",
    rate_hz=100.0,
    episode_ticks=1000,
    action_low=(-1.0,),
    action_high=(1.0,),
    state_dim=6,
    goal_dim=0,
    success_metric=f"tip height above {TIP_Z_MIN_M} m for the whole episode (10 s)",
    expert="discrete LQR on mjd_transitionFD's linearization at the upright (RK4, dt 0.01 s)",
    disturbances=DisturbanceConfig(
        push_rate_hz=0.5, push_force_n=(5.0, 20.0), push_duration_s=0.1, push_axes=(0,)
    ),
    state_names=("x", "theta1", "theta2", "x_dot", "theta1_dot", "theta2_dot"),
    action_names=("cart_force",),
)


class DoublePendulumEnv(TaskEnv):
    def __init__(self, **config: Any) -> None:
        path = gym_asset("inverted_double_pendulum.xml")
        model = mujoco.MjModel.from_xml_path(path)
        with open(path) as f:
            xml = f.read()
        super().__init__(
            INFO, model, mujoco.MjData(model), n_substeps=1, push_body="pole2", xml=xml, **config
        )
        self._tip = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "tip")

    def _init_episode(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        # gymnasium's reset distribution
        self.data.qpos[:] = rng.uniform(-0.1, 0.1, size=self.model.nq)
        self.data.qvel[:] = 0.1 * rng.standard_normal(self.model.nv)

    def _state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel])

    def _tip_xz(self) -> np.ndarray:
        return np.array(self.data.site_xpos[self._tip][[0, 2]], dtype=np.float64)

    def _reward(self, action: np.ndarray) -> float:
        # gymnasium's: alive bonus minus tip distance and velocity penalties
        x, z = self._tip_xz()
        dist = 0.01 * x**2 + (z - 2.0) ** 2
        vel = 1e-3 * self.data.qvel[1] ** 2 + 5e-3 * self.data.qvel[2] ** 2
        return float(10.0 - dist - vel)

    def _terminal(self) -> str | None:
        return "fail" if self._tip_xz()[1] <= TIP_Z_MIN_M else None

    def _success(self, kind: str | None) -> bool:
        return kind is None

    def write_state(
        self, model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray, goal: np.ndarray
    ) -> None:
        data.qpos[:] = state[:3]
        data.qvel[:] = state[3:6]
        mujoco.mj_forward(model, data)

    def mpc_cost(
        self,
        qpos: np.ndarray,
        qvel: np.ndarray,
        ctrl: np.ndarray,
        sensordata: np.ndarray,
        goal: np.ndarray,
    ) -> np.ndarray:
        up = (qpos[..., 1] ** 2 + (qpos[..., 1] + qpos[..., 2]) ** 2) * 10.0
        cart = 0.5 * qpos[..., 0] ** 2
        vel = 0.01 * np.sum(qvel**2, axis=-1)
        effort = 0.01 * ctrl[..., 0] ** 2
        total: np.ndarray = np.sum(up + cart + vel + effort, axis=-1)
        return total
