"""Expert for `swerve`: straight ahead, then a late swerve to a side picked at random.

The side is drawn once per episode from the expert's own generator (as `bimodal`'s is), so
the demonstrations split evenly between the two swerves, and `mode` (-1 left, +1 right) is
recorded per tick. The expert holds no lateral command on the straight (it does not correct
its start's x, which the sensor's dead band hides), so the two modes' observations agree until
the swerve has carried the disc out of the dead band. Like `bimodal`'s, it reads the true
signed position from `info["xy"]`.
"""

from __future__ import annotations

import numpy as np

from runtime import PlantSpec
from sims.experts.bimodal import SIDE_X_M, BimodalExpert
from sims.tasks.swerve import SWERVE_Y_M


class SwerveExpert(BimodalExpert):
    def __init__(
        self,
        task: str = "swerve",
        spec: PlantSpec | None = None,
        *,
        seed: int = 0,
        speed_m_s: float = 0.8,
        swerve_speed_m_s: float = 1.0,
    ) -> None:
        super().__init__(task, spec, seed=seed, speed_m_s=speed_m_s)
        if not (0 < swerve_speed_m_s <= 1.0):
            raise ValueError(f"{swerve_speed_m_s=} must be in (0, 1] (the action limit)")
        self.swerve_speed_m_s = swerve_speed_m_s

    def _law(self, xy: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Straight; then a fixed swerve (lateral 0.8 of the swerve speed, forward 0.6) until
        beside the block; then the waypoints. The swerve's forward part does not depend on the
        side or the start, so the two modes' progress y agrees tick for tick."""
        if self._wp == 0 and xy[1] < SWERVE_Y_M:
            return np.array([0.0, self.speed_m_s])
        if self._wp == 0 and self.mode * xy[0] < SIDE_X_M and xy[1] < self.waypoints()[0][1]:
            return self.swerve_speed_m_s * np.array([0.8 * self.mode, 0.6])
        self._wp = max(self._wp, 1)
        return super()._law(xy, goal) / self.speed_m_s * self.swerve_speed_m_s
