"""Small plants and planners for loop tests: pure numpy, driven by a FakeClock."""

from __future__ import annotations

import numpy as np

from runtime.clock import FakeClock
from runtime.protocols import Command, Observation, PlantSpec


class IntegratorPlant:
    """x[t+1] = x[t] + u * dt, 1-D, episodes of `episode_ticks`; success if |x| < 0.5 at the end.

    Lockstep: `apply` steps. It also plays the realtime plant's referee: a command whose
    `t_ns` is after its `deadline_ns` is counted `late` and not applied (the previous one is held).
    """

    def __init__(self, *, rate_hz: float = 1000.0, episode_ticks: int = 50, x0: float = 1.0,
                 clock: FakeClock | None = None) -> None:
        self._spec = PlantSpec(
            name="integrator", state_dim=1, action_dim=1, action_low=np.array([-1.0]),
            action_high=np.array([1.0]), rate_hz=rate_hz, episode_ticks=episode_ticks,
        )
        self.clock = clock
        self.x0 = x0
        self.x = x0
        self.seq = 0
        self.t = 0
        self.held = np.zeros(1)
        self.applied: list[Command] = []
        self.late = 0

    def spec(self) -> PlantSpec:
        return self._spec

    def reset(self, seed: int | None = None) -> Observation:
        self.x, self.t = self.x0, 0
        self.seq += 1
        return self._obs(0.0)

    def _obs(self, reward: float) -> Observation:
        done = self.t >= self._spec.episode_ticks
        now = self.clock.now_ns() if self.clock is not None else 0
        return Observation(seq=self.seq, t_ns=now, state=np.array([self.x]), reward=reward,
                           truncated=done, info={"success": abs(self.x) < 0.5} if done else {})

    def observe(self) -> Observation:
        return self._obs(-abs(self.x))

    def apply(self, cmd: Command) -> None:
        now = self.clock.now_ns() if self.clock is not None else cmd.t_ns
        if now > cmd.deadline_ns:
            self.late += 1
        else:
            self.held = cmd.action.copy()
        self.applied.append(cmd)
        self.x += float(self.held[0]) * self._spec.period_s
        self.t += 1
        self.seq += 1

    def counters(self) -> dict[str, int]:
        return {"applied": len(self.applied) - self.late, "late": self.late}

    def close(self) -> None:
        pass


class CostPlanner:
    """P-controller with an anytime veneer: each `refine` call "costs" `step_ns` of fake time.

    `step_ns` can be changed mid-run (a latency jump); `nan_ticks` makes `action()` NaN on those
    observation counts; `overrun_at` makes one refine call cost `overrun_ns` instead: that
    tick's `overrun_call`-th (1 = its first).
    """

    def __init__(self, clock: FakeClock, *, step_ns: int = 100_000, gain: float = 5.0) -> None:
        self.clock = clock
        self.step_ns = step_ns
        self.gain = gain
        self.x = 0.0
        self.observed = 0
        self.refines = 0
        self.nan_ticks: set[int] = set()
        self.overrun_at: int | None = None
        self.overrun_ns = 0
        self.overrun_call = 1
        self._tick_refines = 0
        self._a = np.zeros(1)
        self.surprise = 0.0

    def reset(self, obs: Observation) -> None:
        self.x = float(obs.state[0])
        self.observed = 0  # counts observations since the (last) start of the run

    def observe(self, obs: Observation) -> None:
        self.x = float(obs.state[0])
        self.observed += 1
        self._tick_refines = 0

    def refine(self, budget_ns: int) -> int:
        self.refines += 1
        self._tick_refines += 1
        cost = self.step_ns
        if (self.overrun_at is not None and self.observed == self.overrun_at
                and self._tick_refines == self.overrun_call):
            cost, self.overrun_at = self.overrun_ns, None
        self.clock.advance_ns(cost)
        return 1

    def action(self) -> np.ndarray:
        self._a[0] = np.nan if self.observed in self.nan_ticks else -self.gain * self.x
        return self._a
