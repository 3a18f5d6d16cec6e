"""Task-space PD for `pusher`: get behind the puck, then push it to the goal.

The palm (`tips_arm`) follows a Cartesian target with a Jacobian-transpose PD law,
tau = J^T (Kp e - Kd v) - Kq qdot (the model has no gravity, so no gravity term). The target
is a small state machine on the geometry, recomputed every tick:

1. approach: a point `standoff_m` behind the puck on the goal-puck line, at hover height
   while the palm is far from it (so it does not knock the puck on the way);
2. descend to puck height once above that point;
3. push: a point `lead_m` beyond the puck towards the goal, so the palm drives the puck;
   if the puck has slid off the line (palm no longer behind it) go back to 1.
"""

from __future__ import annotations

import mujoco
import numpy as np

from runtime import Observation, PlantSpec
from sims.experts.base import FeedbackExpert

PUCK_Z_M = -0.275  # puck centre height (table surface at -0.325)
HOVER_Z_M = -0.17
POSTURE = np.array([0.0, 0.3, 0.0, -1.2, 0.0, -0.6, 0.0])  # elbow and wrist bent


class PusherExpert(FeedbackExpert):
    def __init__(
        self,
        task: str = "pusher",
        spec: PlantSpec | None = None,
        *,
        seed: int = 0,
        kp: float = 8.0,
        kd: float = 1.0,
        kpost: float = 0.5,
        damping: float = 1e-2,
        standoff_m: float = 0.1,
        lead_m: float = 0.08,
        push_z_m: float = PUCK_Z_M,
        k_rot: float = 0.5,
    ) -> None:
        super().__init__(task, spec, seed=seed)
        self.kp, self.kd, self.kpost, self.damping = kp, kd, kpost, damping
        self.standoff_m, self.lead_m, self.push_z_m = standoff_m, lead_m, push_z_m
        m = self.env.model
        self._data = mujoco.MjData(m)
        # the palm: the wrist-roll link carries the fork (palm capsule at its origin)
        self._tip = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "r_wrist_roll_link")
        self._jacp = np.zeros((3, m.nv))
        self._jacr = np.zeros((3, m.nv))
        self.phase = "approach"
        self.k_rot = k_rot

    def _reset_episode(self, obs: Observation) -> None:
        self.phase = "approach"

    def target(self, tip: np.ndarray, puck: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The palm's Cartesian target (3,) given palm (3,), puck (2,), goal (2,)."""
        line = goal - puck
        d = line / max(1e-6, float(np.linalg.norm(line)))  # (2,) puck -> goal
        behind = puck - self.standoff_m * d
        rel = tip[:2] - puck
        along = float(rel @ d)  # < 0: palm is behind the puck
        across = abs(float(rel @ np.array([-d[1], d[0]])))
        if self.phase == "push" and (along > 0.0 or across > 0.1):
            self.phase = "approach"
        if self.phase == "approach":
            far = np.linalg.norm(tip[:2] - behind) > 0.04
            if not far and tip[2] < self.push_z_m + 0.03:
                self.phase = "push"
            else:
                z = HOVER_Z_M if far else self.push_z_m
                return np.array([behind[0], behind[1], z])
        ahead = puck + self.lead_m * d
        return np.array([ahead[0], ahead[1], self.push_z_m])

    def _law(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        m, d = self.env.model, self._data
        self.env.write_state(m, d, state, goal)
        mujoco.mj_jacBody(m, d, self._jacp, self._jacr, self._tip)
        jac = np.vstack([self._jacp[:, :7], self._jacr[2:3, :7]])  # (4, 7): position, yaw
        tip = d.xpos[self._tip]
        line = goal - state[14:16]
        u = line / max(1e-6, float(np.linalg.norm(line)))
        # the palm capsule lies along the body's local y: keep it horizontal and across the
        # push direction, so the palm faces the puck instead of spearing it end-on
        y_des = np.array([-u[1], u[0], 0.0])
        y_cur = d.xmat[self._tip].reshape(3, 3)[:, 1]
        if float(y_cur @ y_des) < 0:
            y_des = -y_des
        yaw_err = float(np.cross(y_cur, y_des)[2])  # only the yaw: the palm may tilt
        e = np.concatenate([self.target(tip, state[14:16], goal) - tip, [self.k_rot * yaw_err]])
        # damped least squares: a joint step that moves the palm by e, bounded near the
        # stretched-arm singularity the episode starts in; plus a posture pull in its null space
        jjt = jac @ jac.T + self.damping * np.eye(4)
        dq = jac.T @ np.linalg.solve(jjt, e)  # (7,)
        null = np.eye(7) - jac.T @ np.linalg.solve(jjt, jac)
        post = null @ (POSTURE - state[:7])
        tau: np.ndarray = self.kp * dq + self.kpost * post - self.kd * state[7:14]
        return tau
