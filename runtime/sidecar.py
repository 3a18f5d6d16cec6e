"""Per-tick arrays beyond the `TickRecord`, for reports: plant state, plan noise levels, events.

The `TickRecord` holds what deadline accounting needs. Reports also want to see the task: the
state the controller observed, the rolling buffer's per-token noise levels (the plan diffusing,
re-noised after a push), and when disturbances happened. Those are larger (Ds + H floats per
tick) and only wanted when a run is recorded for a report, so they live in this optional
sidecar: preallocated arrays filled in place, saved once as `sidecar.npz` beside the trace.

A sidecar holds at most `MAX_SECONDS` of ticks (the first ten minutes of a run; the trace keeps
every tick) and touches all its memory when it is made: a run's resident memory then does not
grow while it runs (a soak measures exactly that), and the tick never takes a page fault
writing into a fresh page.

Event bits (`events` column), from `Observation.info`:
    EVENT_PUSH (1): a push was applied (`info["push"]`)
    EVENT_GOAL (2): the goal switched (`info["goal_switch"]`)
    EVENT_RESET (4): the episode started on this tick
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.files import atomic_write
from runtime.protocols import FloatArray, Observation

EVENT_PUSH = 1
EVENT_GOAL = 2
EVENT_RESET = 4
MAX_SECONDS = 600.0  # what a sidecar keeps at most, in seconds of ticks


def capacity_for(expected_ticks: int, rate_hz: float) -> int:
    """Rows for a run of `expected_ticks` at `rate_hz`: all of them, up to `MAX_SECONDS`."""
    return max(1, min(expected_ticks, round(MAX_SECONDS * rate_hz)))


def events_of(obs: Observation, *, reset: bool) -> int:
    info = obs.info
    bits = EVENT_RESET if reset else 0
    if info:
        if info.get("push") is not None:
            bits |= EVENT_PUSH
        if info.get("goal_switch") is not None:
            bits |= EVENT_GOAL
    return bits


class Sidecar:
    """Preallocated per-tick state (N, Ds), levels (N, H) and events (N,) for the first N ticks.

    Ticks beyond `capacity` are not recorded (counted in `dropped`); size it from the run length.

    Example:
        car = Sidecar(capacity=1000, state_dim=6, levels_dim=8)
        car.record(obs, levels=planner.noise_levels(), reset=False)
        car.save("runs/r1/trace")
    """

    def __init__(self, capacity: int, state_dim: int, levels_dim: int = 0) -> None:
        if capacity < 1 or state_dim < 1 or levels_dim < 0:
            raise ValueError(f"{capacity=}, {state_dim=} must be >= 1 and {levels_dim=} >= 0")
        self.capacity = capacity
        # np.empty + fill: every page written now (np.zeros maps pages lazily, and each first
        # write would fault and grow the process during the run)
        self.state = np.empty((capacity, state_dim), dtype=np.float32)
        self.levels = np.empty((capacity, levels_dim), dtype=np.float32)
        self.events = np.empty(capacity, dtype=np.int8)
        for a in (self.state, self.levels, self.events):
            a.fill(0)
        self.n = 0
        self.dropped = 0

    def record(self, obs: Observation, *, levels: FloatArray | None, reset: bool) -> None:
        i = self.n
        if i >= self.capacity:
            self.dropped += 1
            return
        self.state[i] = obs.state
        if levels is not None and self.levels.shape[1]:
            self.levels[i] = levels
        self.events[i] = events_of(obs, reset=reset)
        self.n = i + 1

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        n = self.n
        return {"state": self.state[:n], "levels": self.levels[:n], "events": self.events[:n]}

    def save(self, directory: str | Path) -> Path:
        """Write `sidecar.npz` into `directory` atomically; returns its path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        target = d / "sidecar.npz"
        a = self.arrays()
        atomic_write(target, lambda f: np.savez(
            f, state=a["state"], levels=a["levels"], events=a["events"],
            dropped=np.array(self.dropped, dtype=np.int64)))
        return target


def load_sidecar(directory: str | Path) -> dict[str, npt.NDArray[Any]] | None:
    """The arrays of `directory/sidecar.npz`, or None if the run recorded none."""
    path = Path(directory) / "sidecar.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
