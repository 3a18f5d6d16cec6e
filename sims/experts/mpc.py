"""`SamplingMpc`: predictive sampling / MPPI over `mujoco.rollout`, for any task with a cost.

In the spirit of MuJoCo MPC's predictive sampling: keep a nominal open-loop plan of H ticks;
each `refine` call is one iteration (sample N-1 smooth Gaussian perturbations of the plan,
roll all N candidates out from the current state on the task's own model with
`mujoco.rollout`, score them with the task's `mpc_cost`, keep the best, or the exponentially
weighted mean for MPPI).
`observe` shifts the plan by one tick and re-reads the state. That makes it an anytime planner
in the sense of `runtime.Planner`: zero iterations still give an action (the shifted plan's
first step), more iterations a better one.

The model is the expert's own copy, built with disturbances off: the plant's pushes and noise
are unknown to it, as they would be to a real controller.
"""

from __future__ import annotations

import mujoco
import numpy as np
from mujoco import rollout

from runtime import Observation, PlantSpec
from sims.registry import make_task_env
from sims.tasks.base import TaskEnv


class SamplingMpc:
    """Predictive sampling (`method="ps"`) or MPPI (`method="mppi"`) on task `task`.

    Example:
        mpc = SamplingMpc("reacher-moving", horizon_ticks=15, n_samples=32)
        mpc.reset(obs); mpc.refine(budget_ns=5_000_000); a = mpc.action()  # (Da,)
    """

    def __init__(
        self,
        task: str,
        spec: PlantSpec | None = None,
        *,
        horizon_ticks: int = 15,
        n_samples: int = 32,
        noise: float = 0.15,
        method: str = "ps",
        temperature: float = 0.05,
        knots: int = 3,
        seed: int = 0,
    ) -> None:
        if horizon_ticks <= 0 or n_samples < 2 or not (2 <= knots <= max(2, horizon_ticks)):
            raise ValueError(
                f"{horizon_ticks=} must be > 0, {n_samples=} >= 2, 2 <= {knots=} <= horizon"
            )
            raise ValueError(f"{horizon_ticks=} must be > 0 and {n_samples=} >= 2")
        if noise <= 0 or temperature <= 0:
            raise ValueError(f"{noise=} and {temperature=} must be > 0")
        if method not in ("ps", "mppi"):
            raise ValueError(f"{method=} must be 'ps' or 'mppi'")
        rate = spec.rate_hz if spec is not None else None
        self.env: TaskEnv = make_task_env(task, disturbances=False, rate_hz=rate)
        self.model = self.env.model
        self.data = mujoco.MjData(self.model)
        self._rollout_data = mujoco.MjData(self.model)
        self.h, self.n = horizon_ticks, n_samples
        self.method, self.temperature = method, temperature
        self._ns = self.env.n_substeps
        self._low = np.array(self.env.task.action_low)
        self._high = np.array(self.env.task.action_high)
        self._sigma = noise * (self._high - self._low) / 2  # (Da,)
        self._rng = np.random.default_rng(seed)
        # perturbations are drawn at `knots` points and linearly interpolated over the
        # horizon (MuJoCo MPC's spline idea): white noise per tick mostly cancels itself out
        tk = np.linspace(0, self.h - 1, knots)
        self._interp = np.stack(
            [np.interp(np.arange(self.h), tk, np.eye(knots)[i]) for i in range(knots)], axis=1
        )  # (H, knots)
        self.nominal = np.tile(self.env.neutral_action(), (self.h, 1))  # (H, Da)
        self._da = self.nominal.shape[1]
        self._x0 = np.zeros(mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_FULLPHYSICS))
        self._goal = np.zeros(self.env.task.goal_dim)
        self._nq, self._nv = self.model.nq, self.model.nv
        self.iterations = 0

    def reset(self, obs: Observation) -> None:
        self.nominal[:] = self.env.neutral_action()
        self._read(obs)

    def observe(self, obs: Observation) -> None:
        self.nominal[:-1] = self.nominal[1:].copy()  # shift: drop the tick just executed
        self._read(obs)

    def _read(self, obs: Observation) -> None:
        self.env.write_state(self.model, self.data, obs.state, obs.goal)
        mujoco.mj_getState(self.model, self.data, self._x0, mujoco.mjtState.mjSTATE_FULLPHYSICS)
        self._goal = np.asarray(obs.goal, dtype=np.float64)

    def refine(self, budget_ns: int) -> int:
        """One sampling iteration; returns 1."""
        knot_eps = self._rng.standard_normal((self.n - 1, self._interp.shape[1], self._da))
        eps = np.einsum("hk,nkd->nhd", self._interp, knot_eps)  # (N-1, H, Da)
        cands = np.concatenate([self.nominal[None], self.nominal + eps * self._sigma])
        cands = np.clip(cands, self._low, self._high)  # (N, H, Da)
        ctrl = np.repeat(cands, self._ns, axis=1)  # (N, H * substeps, Da)
        state, sens = rollout.rollout(
            self.model, self._rollout_data, self._x0[None], ctrl, persistent_pool=False
        )
        state = state[:, self._ns - 1 :: self._ns]  # (N, H, nstate) after each tick
        sens = sens[:, self._ns - 1 :: self._ns]
        qpos = state[..., 1 : 1 + self._nq]  # FULLPHYSICS = [time, qpos, qvel, ...]
        qvel = state[..., 1 + self._nq : 1 + self._nq + self._nv]
        cost = self.env.mpc_cost(qpos, qvel, cands, sens, self._goal)  # (N,)
        if self.method == "ps":
            self.nominal = cands[int(np.argmin(cost))].copy()
        else:
            w = np.exp(-(cost - cost.min()) / (self.temperature * max(1e-9, float(np.std(cost)))))
            self.nominal = np.einsum("n,nhd->hd", w / w.sum(), cands)
        self.iterations += 1
        return 1

    def action(self) -> np.ndarray:
        a: np.ndarray = np.clip(self.nominal[0], self._low, self._high)
        return a
