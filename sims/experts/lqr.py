"""LQR for `double-pendulum` from MuJoCo's own linearization.

Mind the integrator: the MJCF integrates with RK4, and `mujoco.mjd_transitionFD` refuses RK4
("RK4 integrator is not supported"). Linearizing a copy switched to Euler would give the gain
for different discrete dynamics than the plant's. So for RK4 models we finite-difference
`mj_step` itself (central differences, positions perturbed with `mj_integratePos`), which is
what `mjd_transitionFD` does for the other integrators; either way (A1, B1) is the discrete map
of one physics step exactly as the plant takes it. A control period of
`n_substeps` physics steps with the control held is A = A1^n, B = sum_i A1^i B1. The gain
comes from iterating the discrete Riccati equation to a fixed point (no scipy needed).
"""

from __future__ import annotations

import mujoco
import numpy as np

from runtime import PlantSpec
from sims.experts.base import FeedbackExpert


def discrete_lqr(
    a: np.ndarray, b: np.ndarray, q: np.ndarray, r: np.ndarray, *, iters: int = 5000
) -> np.ndarray:
    """Gain K (Da, Dx) of u = -K x for x' = A x + B u; A (Dx, Dx), B (Dx, Da)."""
    p = q.copy()
    for _ in range(iters):
        k = np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
        p_next = q + a.T @ p @ (a - b @ k)
        if np.max(np.abs(p_next - p)) < 1e-10 * max(1.0, float(np.max(np.abs(p)))):
            p = p_next
            break
        p = p_next
    gain: np.ndarray = np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
    return gain


def linearize(
    model: mujoco.MjModel, data: mujoco.MjData, n_substeps: int
) -> tuple[np.ndarray, np.ndarray]:
    """(A (2nv, 2nv), B (2nv, nu)) of one control period around the state in `data`."""
    nx, nu = 2 * model.nv + model.na, model.nu
    a1 = np.zeros((nx, nx))
    b1 = np.zeros((nx, nu))
    if model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4:
        a1, b1 = _step_fd(model, data)
    else:
        mujoco.mjd_transitionFD(model, data, 1e-6, True, a1, b1, None, None)
    a = np.eye(nx)
    b = np.zeros((nx, nu))
    for _ in range(n_substeps):
        a, b = a1 @ a, a1 @ b + b1
    return a, b


def _step_fd(
    model: mujoco.MjModel, data: mujoco.MjData, eps: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Central finite differences of one `mj_step` (any integrator): A1 (2nv, 2nv), B1 (2nv, nu).

    State deviations are dx = [dq (nv, tangent space), dv (nv)]; models with activations
    (na > 0) are not supported here.
    """
    if model.na:
        raise ValueError(f"{model.na=}: finite-differenced RK4 linearization needs na == 0")
    nv, nu = model.nv, model.nu
    q0, v0, u0 = data.qpos.copy(), data.qvel.copy(), data.ctrl.copy()
    d = mujoco.MjData(model)

    def step(dx: np.ndarray, du: np.ndarray) -> np.ndarray:
        d.qpos[:] = q0
        mujoco.mj_integratePos(model, d.qpos, dx[:nv], 1.0)
        d.qvel[:] = v0 + dx[nv:]
        d.ctrl[:] = u0 + du
        d.time = 0.0
        d.qacc_warmstart[:] = 0.0
        mujoco.mj_step(model, d)
        dq = np.zeros(nv)
        mujoco.mj_differentiatePos(model, dq, 1.0, q0, d.qpos)
        return np.concatenate([dq, d.qvel])

    a1 = np.zeros((2 * nv, 2 * nv))
    b1 = np.zeros((2 * nv, nu))
    zx, zu = np.zeros(2 * nv), np.zeros(nu)
    for i in range(2 * nv):
        e = zx.copy()
        e[i] = eps
        a1[:, i] = (step(e, zu) - step(-e, zu)) / (2 * eps)
    for j in range(nu):
        e = zu.copy()
        e[j] = eps
        b1[:, j] = (step(zx, e) - step(zx, -e)) / (2 * eps)
    return a1, b1


class LqrExpert(FeedbackExpert):
    """u = -K (x - x*) around the upright equilibrium x* = 0, clipped to the limits."""

    def __init__(
        self,
        task: str = "double-pendulum",
        spec: PlantSpec | None = None,
        *,
        seed: int = 0,
        q_diag: tuple[float, ...] = (5.0, 20.0, 20.0, 1.0, 1.0, 1.0),
        r: float = 1.0,
    ) -> None:
        super().__init__(task, spec, seed=seed)
        m, d = self.env.model, mujoco.MjData(self.env.model)
        if len(q_diag) != 2 * m.nv:
            raise ValueError(f"{len(q_diag)=} must be 2 * nv = {2 * m.nv}")
        mujoco.mj_resetData(m, d)
        mujoco.mj_forward(m, d)
        self.a, self.b = linearize(m, d, self.env.n_substeps)
        self.gain = discrete_lqr(self.a, self.b, np.diag(q_diag), r * np.eye(m.nu))  # (Da, Ds)

    def _law(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        u: np.ndarray = -self.gain @ state
        return u
