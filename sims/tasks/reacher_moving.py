"""`reacher-moving`: gymnasium's Reacher whose target jumps to a new place at random times.

The 2-link arm (gymnasium's MJCF, RK4, dt 0.01 s, 2 substeps = 50 Hz, its native rate) must
keep its fingertip on a target that jumps (Poisson, `goal_switch_rate_hz`, at least
`goal_switch_min_interval_s` apart). The state is [joint0, joint1, their velocities]; the goal
is the target (x, y). Success is a share-of-time metric: after each jump the arm needs some
ticks to get there, so "always within tolerance" would punish the disturbance, not the
controller.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from sims.disturbances import DisturbanceConfig
from sims.tasks.base import TaskEnv, TaskInfo, gym_asset, mjcf_with_sensors

TOL_M = 0.02  # fingertip-to-target distance counted as "on target"
SHARE_MIN = 0.6  # share of ticks on target for success
TARGET_RADIUS_M = 0.2  # targets are drawn in this disc (gymnasium's)
TARGET_MIN_RADIUS_M = 0.05  # ... but not at the base, where the arm cannot fold

INFO = TaskInfo(
    name="reacher-moving",
    description="2-link planar arm (gymnasium Reacher) at 50 Hz; the target jumps at random "
    "times",
    rate_hz=50.0,
    episode_ticks=250,
    action_low=(-1.0, -1.0),
    action_high=(1.0, 1.0),
    state_dim=4,
    goal_dim=2,
    success_metric=f"fingertip within {TOL_M} m of the current target for at least "
    f"{SHARE_MIN:.0%} of the ticks (5 s episode)",
    expert="task-space PD with the fingertip Jacobian (mj_jacBody), gravity-free torque map",
    disturbances=DisturbanceConfig(
        push_rate_hz=0.3,
        push_force_n=(0.5, 1.5),
        push_duration_s=0.1,
        push_axes=(0, 1),
        goal_switch_rate_hz=0.5,
        goal_switch_min_interval_s=1.0,
        sensor_noise_std=0.002,
    ),
    state_names=("q0", "q1", "q0_dot", "q1_dot"),
    action_names=("tau0", "tau1"),
)


def _sample_target(rng: np.random.Generator) -> np.ndarray:
    while True:
        xy = rng.uniform(-TARGET_RADIUS_M, TARGET_RADIUS_M, size=2)
        if TARGET_MIN_RADIUS_M < np.linalg.norm(xy) < TARGET_RADIUS_M:
            return xy


def reacher_model() -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_string(reacher_xml())


def reacher_xml() -> str:
    """gymnasium's reacher.xml with a fingertip position sensor."""
    return mjcf_with_sensors(
        gym_asset("reacher.xml"), [("framepos", "tip_pos", "body", "fingertip")]
    )


def link_lengths_m() -> tuple[float, float]:
    """The arm's two link lengths in m, read from gymnasium's reacher.xml: how far along link0
    `body1` sits and how far along link1 the fingertip sits (the forward kinematics of the
    fingertip that analysis code uses, e.g. `policies.recovery`)."""
    model = reacher_model()
    return (
        float(np.linalg.norm(model.body("body1").pos)),
        float(np.linalg.norm(model.body("fingertip").pos)),
    )


class ReacherMovingEnv(TaskEnv):
    def __init__(self, **config: Any) -> None:
        xml = reacher_xml()
        model = mujoco.MjModel.from_xml_string(xml)
        super().__init__(
            INFO, model, mujoco.MjData(model), n_substeps=2, push_body="body1", xml=xml, **config
        )
        self._tip = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "fingertip")
        self._on_target = 0

    def _init_episode(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        self.data.qpos[:2] = rng.uniform(-0.1, 0.1, size=2)
        self.data.qvel[:2] = rng.uniform(-0.005, 0.005, size=2)
        self.data.qpos[2:] = _sample_target(rng)
        self._on_target = 0

    def _state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[:2], self.data.qvel[:2]])

    def _goal(self) -> np.ndarray:
        return np.array(self.data.qpos[2:4], dtype=np.float64)

    def _dist(self) -> float:
        return float(np.linalg.norm(self.data.xpos[self._tip][:2] - self.data.qpos[2:4]))

    def _switch_goal(self, rng: np.random.Generator) -> None:
        self.data.qpos[2:] = _sample_target(rng)
        self.data.qvel[2:] = 0.0

    def _on_tick(self) -> None:
        # the target is a slide-jointed body; keep it where it was put
        self.data.qvel[2:] = 0.0
        self._on_target += self._dist() <= TOL_M

    def _reward(self, action: np.ndarray) -> float:
        return -self._dist() - 0.1 * float(np.sum(action**2))  # gymnasium's weights

    def _success(self, kind: str | None) -> bool:
        return self._on_target >= SHARE_MIN * self.tick

    def _episode_info(self) -> dict[str, Any]:
        return {"on_target_share": self._on_target / max(1, self.tick)}

    def write_state(
        self, model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray, goal: np.ndarray
    ) -> None:
        data.qpos[:2] = state[:2]
        data.qvel[:2] = state[2:4]
        data.qpos[2:4] = goal
        data.qvel[2:4] = 0.0
        mujoco.mj_forward(model, data)

    def mpc_cost(
        self,
        qpos: np.ndarray,
        qvel: np.ndarray,
        ctrl: np.ndarray,
        sensordata: np.ndarray,
        goal: np.ndarray,
    ) -> np.ndarray:
        dist = np.linalg.norm(sensordata[..., :2] - goal, axis=-1)  # (B, H)
        vel = 2e-4 * np.sum(qvel[..., :2] ** 2, axis=-1)
        effort = 1e-3 * np.sum(ctrl**2, axis=-1)
        total: np.ndarray = np.sum(dist + vel + effort, axis=-1)
        return total
