"""A user's plants and policies, as `py:tests.byo.userstuff:NAME` specs name them."""

from __future__ import annotations

import numpy as np

from hw_bridge import FirstOrderMotor
from runtime import PlantSpec


def pd(state: np.ndarray, kp: float = 2.0) -> np.ndarray:
    """A PD controller for the first-order motor: drive the position to 1 rad."""
    return np.clip(kp * (1.0 - state[:1]) - 0.1 * state[1:2], -1.0, 1.0)


def pd_with_goal(state: np.ndarray, goal: np.ndarray) -> np.ndarray:
    return np.zeros(1) + 0.0 * goal.sum()


class Buggy:
    """Fails on purpose every `every` calls: raises, returns NaN, or the wrong shape."""

    def __init__(self, every: int = 3, how: str = "raise") -> None:
        self.every, self.how, self.calls = every, how, 0

    def __call__(self, state: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls % self.every == 0:
            if self.how == "raise":
                raise ZeroDivisionError("bad luck")
            if self.how == "nan":
                return np.array([np.nan])
            return np.zeros(3)
        return np.zeros(1)


def make_pd(spec: PlantSpec, kp: float = 1.0) -> object:
    """A factory: takes the plant's spec, returns a plain callable."""
    assert spec.action_dim == 1
    return lambda state: np.clip(kp * (1.0 - state[:1]), spec.action_low, spec.action_high)


def motor(mode: str = "lockstep", rate_hz: float = 200.0, episode_ticks: int = 50) -> object:
    """A plant factory (what `--plant py:...:motor --plant-arg episode_ticks=50` calls)."""
    return FirstOrderMotor(mode=mode, rate_hz=rate_hz, episode_ticks=episode_ticks)  # type: ignore[arg-type]


READY = FirstOrderMotor(mode="lockstep")
NOT_A_PLANT = 42


class BackwardsClock:
    """A clock that jumps 5 ms back every 10th reading (a driver stamping with a bad clock)."""

    def __init__(self) -> None:
        self.t, self.n = 1_000_000_000, 0

    def now_ns(self) -> int:
        self.n += 1
        self.t += 1_000_000 if self.n % 10 else -5_000_000
        return self.t

    def sleep_until_ns(self, t_ns: int) -> None:
        self.t = max(self.t, t_ns)


class StampsWithItsClock(FirstOrderMotor):
    """Stamps each reading with its clock as it is, even when that clock jumps back."""

    def read(self) -> tuple[np.ndarray, int]:
        x, _ = super().read()
        return x, self.clock.now_ns()


def motor_with_bad_clock(mode: str = "lockstep") -> object:
    return StampsWithItsClock(mode="realtime", clock=BackwardsClock())


class TakesAnything(FirstOrderMotor):
    """A plant that applies whatever it is given, NaN included (what rtdiff check catches)."""

    def apply(self, cmd: object) -> None:
        self.write(cmd.action)  # type: ignore[attr-defined]
