"""Disturbances: pushes, goal switches, sensor noise and actuation delay, seeded and recorded.

Every disturbance draws from its own generator, seeded from the episode seed, and draws the
same number of numbers every tick whether or not anything happens. So the disturbance
sequence of an episode depends only on the seed and the tick index, never on what the
controller did: two controllers compared on seed 7 meet the same pushes at the same ticks.

Rates are per second (`*_rate_hz`), converted to per-tick probabilities with the control rate,
so changing the control rate keeps the physical disturbance the same.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DisturbanceConfig:
    """What a task throws at the controller. All off when `enabled` is False."""

    enabled: bool = True
    push_rate_hz: float = 0.0  # expected pushes per second (Poisson arrivals)
    push_force_n: tuple[float, float] = (0.0, 0.0)  # force magnitude range [low, high] in N
    push_duration_s: float = 0.1  # how long one push lasts
    push_axes: tuple[int, ...] = (0,)  # world axes a push acts along (0=x, 1=y, 2=z)
    goal_switch_rate_hz: float = 0.0  # expected goal jumps per second (tasks with a goal)
    goal_switch_min_interval_s: float = 0.5  # no second jump sooner than this after one
    sensor_noise_std: float = 0.0  # Gaussian noise added to every state entry (state units)
    action_delay_ticks: int = 0  # the action sent at tick k acts at tick k + delay

    def __post_init__(self) -> None:
        lo, hi = self.push_force_n
        if self.push_rate_hz < 0 or self.goal_switch_rate_hz < 0:
            raise ValueError(
                f"rates must be >= 0: {self.push_rate_hz=}, {self.goal_switch_rate_hz=}"
            )
        if not (0 <= lo <= hi):
            raise ValueError(f"{self.push_force_n=} must be (low, high) with 0 <= low <= high")
        if self.push_duration_s <= 0:
            raise ValueError(f"{self.push_duration_s=} must be > 0")
        if not self.push_axes or any(a not in (0, 1, 2) for a in self.push_axes):
            raise ValueError(f"{self.push_axes=} must be a non-empty subset of (0, 1, 2)")
        if self.goal_switch_min_interval_s < 0:
            raise ValueError(f"{self.goal_switch_min_interval_s=} must be >= 0")
        if self.sensor_noise_std < 0:
            raise ValueError(f"{self.sensor_noise_std=} must be >= 0")
        if self.action_delay_ticks < 0:
            raise ValueError(f"{self.action_delay_ticks=} must be >= 0")

    def off(self) -> DisturbanceConfig:
        return replace(self, enabled=False)


def resolve_disturbances(
    default: DisturbanceConfig, setting: bool | DisturbanceConfig | dict[str, Any]
) -> DisturbanceConfig:
    """Turn a user setting (True/False, a config, or field overrides) into a config."""
    if isinstance(setting, DisturbanceConfig):
        return setting
    if isinstance(setting, dict):
        return replace(default, **setting)
    if setting is True:
        return default
    if setting is False:
        return default.off()
    raise TypeError(f"disturbances must be bool, dict or DisturbanceConfig, got {setting!r}")


class Disturber:
    """Draws one episode's disturbances tick by tick.

    Example:
        d = Disturber(cfg, rate_hz=100.0, state_dim=6, action_dim=1)
        d.reset(seed=3, neutral_action=np.zeros(1))
        force = d.push_force()          # (3,) N, zeros when no push this tick
        a_exec = d.delay(a)             # (Da,) the action that acts now
        noisy = d.noise(state)          # (Ds,)
        jump = d.goal_switch()          # True when the goal jumps this tick
    """

    def __init__(
        self, cfg: DisturbanceConfig, *, rate_hz: float, state_dim: int, action_dim: int
    ) -> None:
        self.cfg = cfg
        self.rate_hz = rate_hz
        self.state_dim = state_dim
        self.action_dim = action_dim
        on = cfg.enabled
        self._p_push = min(1.0, cfg.push_rate_hz / rate_hz) if on else 0.0
        self._p_switch = min(1.0, cfg.goal_switch_rate_hz / rate_hz) if on else 0.0
        self._push_ticks = max(1, round(cfg.push_duration_s * rate_hz))
        self._switch_gap_ticks = round(cfg.goal_switch_min_interval_s * rate_hz)
        self._noise_std = cfg.sensor_noise_std if on else 0.0
        self._delay = cfg.action_delay_ticks if on else 0
        self._rng = np.random.default_rng(0)
        self._force = np.zeros(3)
        self._push_left = 0
        self._since_switch = 0
        self._queue: deque[np.ndarray] = deque()

    def reset(self, seed: int, neutral_action: np.ndarray) -> None:
        self._rng = np.random.default_rng([seed, 0x5D15])
        self._force = np.zeros(3)
        self._push_left = 0
        self._since_switch = 0
        # Before the first command arrives the delayed actuator holds the neutral action.
        self._queue = deque(neutral_action.copy() for _ in range(self._delay))

    def push_force(self) -> np.ndarray:
        """The push force (3,) in N acting on the task's push body during this tick."""
        u = self._rng.random(4)  # fixed draws per tick: start?, magnitude, sign, axis
        if self._push_left == 0 and u[0] < self._p_push:
            lo, hi = self.cfg.push_force_n
            axis = self.cfg.push_axes[int(u[3] * len(self.cfg.push_axes))]
            self._force = np.zeros(3)
            self._force[axis] = (lo + (hi - lo) * u[1]) * (1.0 if u[2] < 0.5 else -1.0)
            self._push_left = self._push_ticks
        if self._push_left > 0:
            self._push_left -= 1
            return self._force.copy()
        return np.zeros(3)

    def goal_switch(self) -> bool:
        """True when the goal jumps at this tick."""
        u = self._rng.random()
        self._since_switch += 1
        if self._since_switch > self._switch_gap_ticks and u < self._p_switch:
            self._since_switch = 0
            return True
        return False

    def noise(self, state: np.ndarray) -> np.ndarray:
        """`state` (Ds,) plus this tick's sensor noise (Ds,)."""
        eps = self._rng.standard_normal(self.state_dim)
        if self._noise_std == 0.0:
            return state.copy()
        return state + self._noise_std * eps

    def delay(self, action: np.ndarray) -> np.ndarray:
        """The action (Da,) that acts during this tick, given the one just commanded."""
        if self._delay == 0:
            return action
        self._queue.append(action.copy())
        return self._queue.popleft()
