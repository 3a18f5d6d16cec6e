"""Per-tick arrays beyond the `TickRecord`, for reports: plant state, plan noise levels, the
plan's predicted states, events.

The `TickRecord` holds what deadline accounting needs. Reports also want to see the task: the
state the controller observed, the rolling buffer's per-token noise levels (the plan diffusing,
re-noised after a push), what the plan expected the plant to do, and when disturbances
happened. Those are larger (Ds + H floats per tick, and Hmax * Ds for the predictions) and only
wanted when a run is recorded for a report, so they live in this optional sidecar:
preallocated arrays filled in place, saved once as `sidecar.npz` beside the trace.

A sidecar holds at most `MAX_SECONDS` of ticks (the first ten minutes of a run; the trace keeps
every tick), the predicted states of at most its first `MAX_PREDICTION_BYTES` worth of them,
and touches all its memory when it is made: a run's resident memory then does not grow while
it runs (a soak measures exactly that), and the tick never takes a page fault writing into a
fresh page.

Predicted states (`runtime.PredictsStates`): row i of `predicted` (Hmax, Ds) holds what the
plan at tick i expects for ticks i+1 .. i+Hmax, `predicted_n[i]` how many of those rows the
planner wrote (0: no plan at that tick). `lookahead_error` compares them with the states
observed later: the plan's predicted-state error against its lookahead.

Event bits (`events` column), from `Observation.info`:
    EVENT_PUSH (1): a push was applied (`info["push"]`)
    EVENT_GOAL (2): the goal switched (`info["goal_switch"]`)
    EVENT_RESET (4): the episode started on this tick
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
MAX_PREDICTION_BYTES = 64 << 20  # the predicted states it keeps at most (first ticks first)


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
    """Preallocated per-tick state (N, Ds), levels (N, H) and events (N,) for the first N ticks,
    and predicted states (M, Hmax, Ds) with their row counts (M,) for the first M <= N.

    Ticks beyond `capacity` are not recorded (counted in `dropped`); size it from the run length.
    `predicted_ticks` is Hmax, the most rows the planner predicts (its `predicted_ticks`; 0:
    no predictions); M is `capacity` or fewer, as `MAX_PREDICTION_BYTES` allows.

    Example:
        car = Sidecar(capacity=1000, state_dim=6, levels_dim=8, predicted_ticks=7)
        car.record(obs, levels=planner.noise_levels(), reset=False,
                   predict=planner.predicted_states_into)
        car.save("runs/r1/trace")
    """

    def __init__(
        self, capacity: int, state_dim: int, levels_dim: int = 0, predicted_ticks: int = 0
    ) -> None:
        if capacity < 1 or state_dim < 1 or levels_dim < 0 or predicted_ticks < 0:
            raise ValueError(f"{capacity=}, {state_dim=} must be >= 1 and {levels_dim=}, "
                             f"{predicted_ticks=} >= 0")
        self.capacity = capacity
        # np.empty + fill: every page written now (np.zeros maps pages lazily, and each first
        # write would fault and grow the process during the run)
        self.state = np.empty((capacity, state_dim), dtype=np.float32)
        self.levels = np.empty((capacity, levels_dim), dtype=np.float32)
        self.events = np.empty(capacity, dtype=np.int8)
        rows = 0
        if predicted_ticks:
            rows = min(capacity, MAX_PREDICTION_BYTES // (4 * predicted_ticks * state_dim))
        self.predicted = np.empty((rows, predicted_ticks, state_dim), dtype=np.float32)
        self.predicted_n = np.empty(rows, dtype=np.int16)
        # the planner writes one tick's rows here; the row is copied in whole (no view per tick)
        self._ahead = np.empty((predicted_ticks, state_dim), dtype=np.float32)
        for a in (self.state, self.levels, self.events, self.predicted_n):
            a.fill(0)
        self.predicted.fill(np.nan)
        self.n = 0
        self.dropped = 0

    def record(
        self,
        obs: Observation,
        *,
        levels: FloatArray | None,
        reset: bool,
        predict: Callable[[FloatArray], int] | None = None,
    ) -> None:
        i = self.n
        if i >= self.capacity:
            self.dropped += 1
            return
        self.state[i] = obs.state
        if levels is not None and self.levels.shape[1]:
            self.levels[i] = levels
        self.events[i] = events_of(obs, reset=reset)
        if predict is not None and i < len(self.predicted_n):
            ahead = self._ahead
            ahead.fill(np.nan)  # rows past the planner's count stay NaN
            self.predicted_n[i] = predict(ahead)
            self.predicted[i] = ahead
        self.n = i + 1

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        n = self.n
        m = min(n, len(self.predicted_n))
        return {"state": self.state[:n], "levels": self.levels[:n], "events": self.events[:n],
                "predicted": self.predicted[:m], "predicted_n": self.predicted_n[:m]}

    def save(self, directory: str | Path) -> Path:
        """Write `sidecar.npz` into `directory` atomically; returns its path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        target = d / "sidecar.npz"
        a = self.arrays()
        atomic_write(target, lambda f: np.savez(
            f, state=a["state"], levels=a["levels"], events=a["events"],
            predicted=a["predicted"], predicted_n=a["predicted_n"],
            dropped=np.array(self.dropped, dtype=np.int64)))
        return target


def load_sidecar(directory: str | Path) -> dict[str, npt.NDArray[Any]] | None:
    """The arrays of `directory/sidecar.npz`, or None if the run recorded none."""
    path = Path(directory) / "sidecar.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@dataclass(frozen=True)
class LookaheadError:
    """The plan's predicted-state error against lookahead (`lookahead_error`), per j = 1..J.

    `mean[j-1]` and `p90[j-1]` summarize, over the ticks t that count, the error of what the
    plan at tick t predicted for tick t+j against the state observed at t+j (NaN where no tick
    counts); `pairs[j-1]` is how many ticks counted. The error of one pair is the mean over
    state dimensions of |predicted - observed| / that dimension's std over the run.
    """

    mean: npt.NDArray[np.float64]  # (J,)
    p90: npt.NDArray[np.float64]  # (J,)
    pairs: npt.NDArray[np.int64]  # (J,)

    def to_json(self, rate_hz: float) -> list[dict[str, Any]]:
        """One entry per j with at least one pair: `j`, `lookahead_s`, `mean`, `p90`, `pairs`."""
        return [
            {"j": j + 1, "lookahead_s": (j + 1) / rate_hz, "mean": float(self.mean[j]),
             "p90": float(self.p90[j]), "pairs": int(self.pairs[j])}
            for j in range(len(self.pairs)) if self.pairs[j]
        ]


def lookahead_error(
    state: npt.NDArray[Any],
    predicted: npt.NDArray[Any],
    predicted_n: npt.NDArray[Any],
    events: npt.NDArray[Any],
    *,
    skipped: npt.NDArray[Any] | None = None,
) -> LookaheadError:
    """The predicted-state error against lookahead from a sidecar's arrays.

    `state` (N, Ds) the observed states, `predicted` (M, J, Ds) and `predicted_n` (M,) the
    predictions of the first M <= N ticks, `events` (N,) the event bits; `skipped` (N,), the
    trace's scheduled ticks that passed unrun before each record, when known.

    The pair (t, t+j) counts when the plan at tick t predicted tick t+j (`j <=
    predicted_n[t]`, so never for a tick that had no plan), the prediction and the observed
    state are finite, t+j < N, and no episode started (`EVENT_RESET`) and no scheduled tick was
    skipped in t+1 .. t+j (either makes record t+j something other than the tick predicted).
    Each state dimension is scaled by its std over the run's finite observed states; a
    dimension that never moved (std 0) is left out, as are all when none moved.
    """
    state = np.asarray(state, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.float64)
    count = np.asarray(predicted_n, dtype=np.int64)
    n = len(state)
    m = min(len(pred), len(count), n)
    n_ahead = pred.shape[1] if pred.ndim == 3 else 0
    mean = np.full(n_ahead, np.nan)
    p90 = np.full(n_ahead, np.nan)
    pairs = np.zeros(n_ahead, dtype=np.int64)
    finite_rows = np.all(np.isfinite(state), axis=1)
    if not finite_rows.any():
        return LookaheadError(mean, p90, pairs)
    std = state[finite_rows].std(axis=0)
    dims = np.flatnonzero(std > 0)
    if len(dims) == 0:
        return LookaheadError(mean, p90, pairs)
    # a pair (t, t+j) is broken when some tick in t+1 .. t+j started an episode or followed
    # skipped ticks: cumulative counts make that a difference
    broken = (np.asarray(events).astype(np.int64) & EVENT_RESET) != 0
    if skipped is not None:
        if len(skipped) < n:
            raise ValueError(f"skipped has {len(skipped)} entries for {n} states")
        broken |= np.asarray(skipped)[:n] > 0
    breaks = np.concatenate([[0], np.cumsum(broken)])  # breaks[k]: broken ticks before k
    obs = state[:, dims] / std[dims]
    for j in range(1, n_ahead + 1):
        t = np.arange(max(0, min(m, n - j)))
        if len(t) == 0:
            continue
        keep = (count[t] >= j) & (breaks[t + j + 1] == breaks[t + 1])
        err = np.abs(pred[t, j - 1][:, dims] / std[dims] - obs[t + j]).mean(axis=1)
        keep &= np.isfinite(err)
        if keep.any():
            e = err[keep]
            mean[j - 1], p90[j - 1] = float(e.mean()), float(np.percentile(e, 90))
            pairs[j - 1] = len(e)
    return LookaheadError(mean, p90, pairs)
