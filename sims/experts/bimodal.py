"""Expert for `bimodal`: pick a side at random, then follow waypoints past the block.

The choice is made once per episode (at `reset`), uniformly between two equally good
options, from the expert's own generator seeded by `seed`, independent of the state. So the
demonstrations are genuinely bimodal, and `mode` (-1 left, +1 right) is the label a dataset
records per tick to measure dithering later.

The expert is a privileged teacher: the task's state (|x|, y) does not say on which side of
the block's axis the disc is, so the expert reads the true signed position from the
observation's `info["xy"]` (the env reports it every tick; `MujocoPlant` and the bridge pass
it on). An observation without it is refused with a ValueError.
"""

from __future__ import annotations

import numpy as np

from runtime import Observation, PlantSpec
from sims.experts.base import FeedbackExpert
from sims.tasks.bimodal import BLOCK_HALF_M, BLOCK_Y_M, FINISH_Y_M

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

    def observe(self, obs: Observation) -> None:
        xy = obs.info.get("xy")
        if xy is None:
            raise ValueError(
                "the bimodal expert needs the true position in obs.info['xy'] "
                "(the state (|x|, y) does not say the side)"
            )
        u = np.asarray(self._law(np.asarray(xy, dtype=np.float64), obs.goal), dtype=np.float64)
        if u.shape != self._u.shape or not np.all(np.isfinite(u)):
            self.nonfinite += 1
            u = self.env.neutral_action()
        self._u = np.clip(u, self._low, self._high)

    def waypoints(self) -> np.ndarray:
        """(3, 2): beside the block's near edge, beside its far edge, past the finish line."""
        x = self.mode * SIDE_X_M
        return np.array(
            [
                [x, BLOCK_Y_M - BLOCK_HALF_M[1] - 0.05],
                [x, BLOCK_Y_M + BLOCK_HALF_M[1] + 0.05],
                [x, FINISH_Y_M + 0.3],
            ]
        )

    def _law(self, xy: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Constant speed towards the current waypoint; `xy` is the true signed position."""
        wps = self.waypoints()
        while self._wp < 2 and xy[1] >= wps[self._wp][1] - 0.02:
            self._wp += 1
        e = wps[self._wp] - xy[:2]
        v: np.ndarray = self.speed_m_s * e / max(float(np.linalg.norm(e)), 1e-9)
        return v
