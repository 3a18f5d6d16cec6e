"""`FeedbackExpert`: a state-feedback law wrapped as an anytime `runtime.Planner`.

A feedback law is computed once per tick, in `observe` (it costs tens of microseconds), so
`refine` has nothing left to do and returns 0, and `action()` is O(1). Each expert owns its own
copy of the task's model (built from the registry with disturbances off), never the plant's.
"""

from __future__ import annotations

import numpy as np

from runtime import Observation, PlantSpec
from sims.registry import make_task_env
from sims.tasks.base import TaskEnv


class FeedbackExpert:
    """Base: subclasses implement `_law(state (Ds,), goal (Dg,)) -> (Da,)`.

    A law that returns a non-finite action is replaced by the neutral action and counted in
    `nonfinite`, so `action()` always returns a finite (Da,) array within the limits.
    """

    def __init__(self, task: str, spec: PlantSpec | None = None, *, seed: int = 0) -> None:
        self.seed = seed  # for experts that randomize (bimodal); feedback laws ignore it
        rate = spec.rate_hz if spec is not None else None
        self.env: TaskEnv = make_task_env(task, disturbances=False, rate_hz=rate)
        self.spec = self.env.task.spec()
        self._low = self.spec.action_low
        self._high = self.spec.action_high
        self._u = self.env.neutral_action()  # (Da,)
        self.nonfinite = 0

    def reset(self, obs: Observation) -> None:
        self._reset_episode(obs)
        self.observe(obs)

    def observe(self, obs: Observation) -> None:
        u = np.asarray(self._law(obs.state, obs.goal), dtype=np.float64)
        if u.shape != self._u.shape or not np.all(np.isfinite(u)):
            self.nonfinite += 1
            u = self.env.neutral_action()
        self._u = np.clip(u, self._low, self._high)

    def refine(self, budget_ns: int) -> int:
        return 0

    def action(self) -> np.ndarray:
        return self._u.copy()

    def _reset_episode(self, obs: Observation) -> None:
        return None

    def _law(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        raise NotImplementedError
