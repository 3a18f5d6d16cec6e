"""Task-space control for `pusher`: get behind the puck, then push it to the goal.

The palm (the wrist-roll link, which carries the fork) follows a Cartesian target and a wanted
orientation: fingers level and pointing along the push, the palm capsule level and across it,
so the fork straddles the puck and the palm pushes it (without orientation control the palm
capsule spears the puck end-on, and the fingers jam into the table on the way down). The 6-D
error (position, rotation) is mapped to a joint step by damped least squares (the episode
starts with the arm stretched, a singularity), a posture pull acts in the null space, and
tau = Kp dq + Kpost null(q_post - q) - Kd qdot (the model has no gravity).

The target is a small state machine on the geometry, recomputed every tick:

1. approach: a point `standoff_m` behind the puck on the goal-puck line, at hover height
   while the palm is far from it (so it does not knock the puck on the way);
2. descend to puck height once above that point;
3. push: aim the palm `min(lead_m, distance left)` beyond its contact point with the puck,
   so the push slows down near the goal; if the puck has slid off the line (palm no longer
   behind it) go back to 1;
4. coast: once the puck's predicted rest point (it coasts tau * v on its damped slide joints)
   is within `coast_tol_m` of the goal, back off and let it slide in; if it stops short or
   is knocked away, go back to 1.
"""

from __future__ import annotations

import mujoco
import numpy as np

from runtime import Observation, PlantSpec
from sims.experts.base import FeedbackExpert

PUCK_Z_M = -0.275  # puck centre height (table surface at -0.325)
HOVER_Z_M = -0.17
PALM_TO_PUCK_M = 0.07  # palm capsule radius 0.02 + puck radius 0.05
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
        k_rot: float = 1.0,
        hover_z_m: float = HOVER_Z_M,
        reach_tol_m: float = 0.04,
        coast_tol_m: float = 0.04,
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
        self.hover_z_m, self.reach_tol_m, self.coast_tol_m = hover_z_m, reach_tol_m, coast_tol_m
        # the puck's coasting time constant: (mass + armature) / damping of its slide joint
        obj = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "object")
        dof = m.jnt_dofadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "obj_slidex")]
        self._coast_s = float((m.body_mass[obj] + m.dof_armature[dof]) / m.dof_damping[dof])

    def _reset_episode(self, obs: Observation) -> None:
        self.phase = "approach"

    def target(
        self, tip: np.ndarray, puck: np.ndarray, puck_vel: np.ndarray, goal: np.ndarray
    ) -> np.ndarray:
        """The palm's Cartesian target (3,) given palm (3,), puck (2,), its velocity (2,) and
        the goal (2,)."""
        line = goal - puck
        d = line / max(1e-6, float(np.linalg.norm(line)))  # (2,) puck -> goal
        behind = puck - self.standoff_m * d
        rel = tip[:2] - puck
        along = float(rel @ d)  # < 0: palm is behind the puck
        across = abs(float(rel @ np.array([-d[1], d[0]])))
        # where the puck comes to rest if nothing touches it again: its slide joints are
        # damped, v decays with time constant tau, so it coasts tau * v further
        rest_dist = float(np.linalg.norm(goal - (puck + self._coast_s * puck_vel)))
        if self.phase == "push" and rest_dist < self.coast_tol_m:
            self.phase = "coast"
        if self.phase == "coast":
            if rest_dist < 2 * self.coast_tol_m:  # let it slide in: back off along the line
                return np.array([behind[0], behind[1], self.push_z_m])
            self.phase = "approach"
        if self.phase == "push" and (along > 0.0 or across > 0.1):
            self.phase = "approach"
        if self.phase == "approach":
            far = np.linalg.norm(tip[:2] - behind) > self.reach_tol_m
            if not far and tip[2] < self.push_z_m + 0.03:
                self.phase = "push"
            else:
                z = self.hover_z_m if far else self.push_z_m
                return np.array([behind[0], behind[1], z])
        # the palm touches the puck at ~PALM_TO_PUCK_M behind its centre; aiming the palm
        # min(lead, distance left) beyond that point slows the push near the goal
        dist = float(np.linalg.norm(line))
        ahead = puck + (min(self.lead_m, dist) - PALM_TO_PUCK_M) * d
        return np.array([ahead[0], ahead[1], self.push_z_m])

    def _law(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        m, d = self.env.model, self._data
        self.env.write_state(m, d, state, goal)
        mujoco.mj_jacBody(m, d, self._jacp, self._jacr, self._tip)
        jac = np.vstack([self._jacp[:, :7], self._jacr[:, :7]])  # (6, 7)
        tip = d.xpos[self._tip]
        line = goal - state[14:16]
        u = line / max(1e-6, float(np.linalg.norm(line)))
        # wanted palm frame: fingers (local x) level and pointing along the push, palm capsule
        # (local y) level and across it, so the fork straddles the puck and the palm pushes it
        # instead of spearing it end-on or jamming the fingers into the table
        r_des = np.array([[u[0], -u[1], 0.0], [u[1], u[0], 0.0], [0.0, 0.0, 1.0]])
        r_cur = d.xmat[self._tip].reshape(3, 3)
        rot_err = 0.5 * sum(np.cross(r_cur[:, i], r_des[:, i]) for i in range(3))
        goal_tip = self.target(tip, state[14:16], state[16:18], goal)
        e = np.concatenate([goal_tip - tip, self.k_rot * rot_err])
        # damped least squares: a joint step that moves the palm by e, bounded near the
        # stretched-arm singularity the episode starts in; plus a posture pull in its null space
        jjt = jac @ jac.T + self.damping * np.eye(6)
        dq = jac.T @ np.linalg.solve(jjt, e)  # (7,)
        null = np.eye(7) - jac.T @ np.linalg.solve(jjt, jac)
        post = null @ (POSTURE - state[:7])
        tau: np.ndarray = self.kp * dq + self.kpost * post - self.kd * state[7:14]
        return tau
