"""Expert for `bimodal`: pick a side at random, then follow waypoints past the block.

The choice is made once per episode (at `reset`), uniformly between two equally good
options, from the expert's own generator seeded by `seed`, independent of the state. So the
demonstrations are genuinely bimodal, and `mode` (-1 left, +1 right) is the label a dataset
records per episode to measure dithering later.
"""

from __future__ import annotations

import numpy as np

from runtime import Observation, PlantSpec
from sims.experts.base import FeedbackExpert
from sims.tasks.bimodal import BLOCK_HALF_M, BLOCK_Y_M, GOAL_XY_M

SIDE_X_M = BLOCK_HALF_M[0] + 0.15  # waypoint x beside the block


class BimodalExpert(FeedbackExpert):
    def __init__(
        self,
        task: str = "bimodal",
        spec: PlantSpec | None = None,
        *,
        seed: int = 0,
        speed_m_s: float = 0.8,
    ) -> None:
        super().__init__(task, spec, seed=seed)
        if not (0 < speed_m_s <= 1.0):
            raise ValueError(f"{speed_m_s=} must be in (0, 1] (the action limit)")
        self.speed_m_s = speed_m_s
        self._rng = np.random.default_rng([seed, 0xB1])
        self.mode = 1  # -1: pass on the left (x < 0), +1: on the right
        self._wp = 0

    def _reset_episode(self, obs: Observation) -> None:
        self.mode = -1 if self._rng.random() < 0.5 else 1
        self._wp = 0

    def waypoints(self) -> np.ndarray:
        """(3, 2): beside the block's near edge, beside its far edge, the goal."""
        x = self.mode * SIDE_X_M
        return np.array(
            [
                [x, BLOCK_Y_M - BLOCK_HALF_M[1] - 0.05],
                [x, BLOCK_Y_M + BLOCK_HALF_M[1] + 0.05],
                GOAL_XY_M,
            ]
        )

    def _law(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        wps = self.waypoints()
        while self._wp < 2 and state[1] >= wps[self._wp][1] - 0.02:
            self._wp += 1
        e = wps[self._wp] - state[:2]
        dist = float(np.linalg.norm(e))
        speed = min(self.speed_m_s, 4.0 * dist)  # slow down on the goal
        v: np.ndarray = speed * e / max(dist, 1e-9)
        return v


def ambiguity_ticks(n_starts: int = 60, *, tol_m: float = 0.01) -> np.ndarray:
    """How long the side stays hidden: per expert trajectory, the ticks (before the block)
    at which its position lies inside the band of the *other* mode's trajectories at the same
    height (within `tol_m`). Both modes are run from the same `n_starts` seeded starts,
    disturbances off. Returns (2 * n_starts,) tick counts.

        python -c "from sims.experts.bimodal import ambiguity_ticks as a; print(a(60))"
    """
    from runtime import Command
    from sims.plant import MujocoPlant

    plant = MujocoPlant("bimodal", disturbances=False)
    trajs: dict[int, list[np.ndarray]] = {-1: [], 1: []}
    for mode in (-1, 1):
        ex = BimodalExpert()
        for seed in range(n_starts):
            obs = plant.reset(seed=seed)
            ex.reset(obs)
            ex.mode, ex._wp = mode, 0
            ex.observe(obs)
            xy, k = [obs.state.copy()], 0
            while not obs.done:
                plant.apply(Command(k, 0, ex.action(), 0))
                k += 1
                obs = plant.observe()
                ex.observe(obs)
                xy.append(obs.state.copy())
            trajs[mode].append(np.array(xy))  # (T+1, 2)
    plant.close()
    counts = []
    for mode in (-1, 1):
        for t in trajs[mode]:
            n = 0
            for x, y in t:
                if y > BLOCK_Y_M - BLOCK_HALF_M[1]:
                    break
                others = [np.interp(y, o[:, 1], o[:, 0]) for o in trajs[-mode]]
                n += min(others) - tol_m <= x <= max(others) + tol_m
            counts.append(n)
    return np.array(counts)
