"""`pusher`: gymnasium's Pusher, a 7-joint arm pushing a cylinder to a goal on a table.

gymnasium's Pusher MJCF (v5), Euler at dt 0.01 s, 2 substeps = 50 Hz (gymnasium uses 5 =
20 Hz). Contact matters: the palm and fingers push the puck, which slides with friction. The
reset follows gymnasium (puck offset drawn in [-0.3, 0] x [-0.2, 0.2] from the goal, at least
0.17 m away). State: 7 joint angles, 7 joint velocities, puck (x, y), puck velocity (2) =
18; goal: the goal (x, y) in world coordinates.

Success (gymnasium defines none): the puck's centre within 0.08 m of the goal's centre at the
end of the episode (0.08 m is the goal disc's radius in the MJCF, so the puck's centre is on
the disc).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import mujoco
import numpy as np

from sims.disturbances import DisturbanceConfig
from sims.tasks.base import TaskEnv, TaskInfo, gym_asset, mjcf_with_sensors

GOAL_TOL_M = 0.08
# The MJCF's puck has density 0.01 (an 8 mg puck). MuJoCo's soft contacts scale their
# stiffness with the bodies' effective mass, so the palm sinks ~5 cm into that puck and
# moves it at ~2 cm/s (docs/tasks.md, "pusher"). A 0.1 kg puck (density 127 kg/m^3) is
# pushed like a puck.
PUCK_DENSITY_KG_M3 = 127.0

INFO = TaskInfo(
    name="pusher",
    description="7-joint arm pushing a puck to a goal on a table (gymnasium Pusher, contact) "
    "at 50 Hz",
    rate_hz=50.0,
    episode_ticks=250,
    action_low=(-2.0,) * 7,
    action_high=(2.0,) * 7,
    state_dim=18,
    goal_dim=2,
    success_metric=f"puck centre within {GOAL_TOL_M} m of the goal centre at the end (5 s)",
    expert="task-space PD (Jacobian transpose) on the palm: get behind the puck, then push",
    disturbances=DisturbanceConfig(
        push_rate_hz=0.3,
        push_force_n=(0.1, 0.3),
        push_duration_s=0.1,
        push_axes=(0, 1),
        sensor_noise_std=0.001,
    ),
    state_names=tuple(f"q{i}" for i in range(7))
    + tuple(f"q{i}_dot" for i in range(7))
    + ("puck_x", "puck_y", "puck_vx", "puck_vy"),
    action_names=tuple(f"tau{i}" for i in range(7)),
)


def pusher_model() -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_string(pusher_xml())


def pusher_xml() -> str:
    """gymnasium's pusher_v5.xml with the task's puck density and two position sensors."""
    text = mjcf_with_sensors(
        gym_asset("pusher_v5.xml"),
        [("framepos", f"{n}_pos", "body", n) for n in ("tips_arm", "object")],
    )
    root = ET.fromstring(text)
    puck = root.find(".//body[@name='object']/geom")
    if puck is None:
        raise ValueError("pusher_v5.xml has no geom in body 'object'")
    puck.set("density", repr(PUCK_DENSITY_KG_M3))
    return ET.tostring(root, encoding="unicode")


class PusherEnv(TaskEnv):
    def __init__(self, **config: Any) -> None:
        xml = pusher_xml()
        model = mujoco.MjModel.from_xml_string(xml)
        super().__init__(
            INFO, model, mujoco.MjData(model), n_substeps=2, push_body="object", xml=xml, **config
        )
        body = mujoco.mj_name2id
        self._obj = body(model, mujoco.mjtObj.mjOBJ_BODY, "object")
        self._goal_body = body(model, mujoco.mjtObj.mjOBJ_BODY, "goal")
        self._tip = body(model, mujoco.mjtObj.mjOBJ_BODY, "tips_arm")
        # the puck's slide joints, named explicitly (y comes first in the MJCF)
        jnt = mujoco.mjtObj.mjOBJ_JOINT
        self._ox = model.jnt_qposadr[body(model, jnt, "obj_slidex")]
        self._oy = model.jnt_qposadr[body(model, jnt, "obj_slidey")]
        self._vx = model.jnt_dofadr[body(model, jnt, "obj_slidex")]
        self._vy = model.jnt_dofadr[body(model, jnt, "obj_slidey")]
        self._obj_home = model.body_pos[self._obj][:2].copy()  # world xy at zero slide

    def _init_episode(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        while True:  # gymnasium's reset distribution
            cyl = np.array([rng.uniform(-0.3, 0.0), rng.uniform(-0.2, 0.2)])
            if np.linalg.norm(cyl) > 0.17:
                break
        self.data.qpos[-4:-2] = cyl
        self.data.qpos[-2:] = 0.0
        self.data.qvel[:] = rng.uniform(-0.005, 0.005, size=self.model.nv)
        self.data.qvel[-4:] = 0.0

    def _state(self) -> np.ndarray:
        d = self.data
        return np.concatenate(
            [
                d.qpos[:7],
                d.qvel[:7],
                self._obj_home + np.array([d.qpos[self._ox], d.qpos[self._oy]]),
                [d.qvel[self._vx], d.qvel[self._vy]],
            ]
        )

    def _goal(self) -> np.ndarray:
        return np.array(self.data.xpos[self._goal_body][:2], dtype=np.float64)

    def _dist(self) -> float:
        return float(np.linalg.norm(self._state()[14:16] - self._goal()))

    def _reward(self, action: np.ndarray) -> float:
        # gymnasium's: -|puck - goal| - 0.5 |tip - puck| - 0.1 |u|^2
        tip = self.data.xpos[self._tip]
        near = float(np.linalg.norm(tip - self.data.xpos[self._obj]))
        return -self._dist() - 0.5 * near - 0.1 * float(np.sum(action**2))

    def _success(self, kind: str | None) -> bool:
        return self._dist() <= GOAL_TOL_M

    def _episode_info(self) -> dict[str, Any]:
        return {"puck_goal_dist_m": self._dist()}

    def write_state(
        self, model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray, goal: np.ndarray
    ) -> None:
        data.qpos[:7] = state[:7]
        data.qvel[:7] = state[7:14]
        off = state[14:16] - self._obj_home
        data.qpos[self._ox], data.qpos[self._oy] = off
        data.qvel[self._vx], data.qvel[self._vy] = state[16:18]
        gx = model.jnt_qposadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "goal_slidex")]
        gy = model.jnt_qposadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "goal_slidey")]
        home = model.body_pos[self._goal_body][:2]
        data.qpos[gx], data.qpos[gy] = goal - home
        mujoco.mj_forward(model, data)

    def mpc_cost(
        self,
        qpos: np.ndarray,
        qvel: np.ndarray,
        ctrl: np.ndarray,
        sensordata: np.ndarray,
        goal: np.ndarray,
    ) -> np.ndarray:
        tip, puck = sensordata[..., 0:3], sensordata[..., 3:6]  # (B, H, 3)
        to_goal = np.linalg.norm(puck[..., :2] - goal, axis=-1)
        near = np.linalg.norm(tip - puck, axis=-1)
        total: np.ndarray = np.sum(to_goal + near + 1e-4 * np.sum(ctrl**2, -1), axis=-1)
        return total
