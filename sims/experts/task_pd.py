"""Task-space PD with the fingertip Jacobian, for `reacher-moving`.

The Cartesian error e (2,) is mapped to a joint-space step with damped least squares,
dq = J^T (J J^T + lambda I)^-1 e, so the law stays bounded near the folded/stretched
singularities; joint torques are tau = Kp dq - Kd qdot, divided by the actuator gear.
"""

from __future__ import annotations

import mujoco
import numpy as np

from runtime import PlantSpec
from sims.experts.base import FeedbackExpert


class ReacherPdExpert(FeedbackExpert):
    def __init__(
        self,
        task: str = "reacher-moving",
        spec: PlantSpec | None = None,
        *,
        seed: int = 0,
        kp: float = 600.0,
        kd: float = 40.0,
        damping: float = 1e-3,
    ) -> None:
        super().__init__(task, spec, seed=seed)
        self.kp, self.kd, self.damping = kp, kd, damping
        m = self.env.model
        self._data = mujoco.MjData(m)
        self._tip = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "fingertip")
        self._jacp = np.zeros((3, m.nv))
        self._gear = m.actuator_gear[:, 0].copy()  # (Da,)

    def tip_jacobian(self, state: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fingertip (x, y) (2,) and its Jacobian (2, 2) wrt the arm joints."""
        m, d = self.env.model, self._data
        self.env.write_state(m, d, state, goal)
        mujoco.mj_jacBody(m, d, self._jacp, None, self._tip)
        return d.xpos[self._tip][:2].copy(), self._jacp[:2, :2].copy()

    def _law(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        tip, jac = self.tip_jacobian(state, goal)
        e = goal - tip  # (2,)
        dq = jac.T @ np.linalg.solve(jac @ jac.T + self.damping * np.eye(2), e)  # (2,)
        tau = self.kp * dq - self.kd * state[2:4]
        u: np.ndarray = tau / self._gear
        return u
