"""Plan-ahead, plant side: what a plant applies on a tick when the controller's command is late.

A command may carry the planner's actions for the plant's next ticks (`Command.plan`, row `j`
for the plant tick at `plan_t0_ns + j * plan_dt_ns`). The plant keeps the newest accepted plan
in a `PlanFeed` and, on each of its ticks, applies in this order of preference:

1. `fresh`: the command for this tick, if it arrived before its deadline;
2. `plan_fed`: else the action the newest accepted plan holds for this tick, if the plan is not
   older than `max_age_ns` (measured from the observation it was computed from);
3. `fallback`: else the plant's fallback: hold the last applied action;
4. `safe`: once the watchdog tripped (or the controller said goodbye), its safe action;
5. `dry`: a tick of an episode before the controller's first command (the plant's start action).

`ApplyLog` counts each case and the age of the information behind every applied action (tick
instant minus the measurement instant of the observation the action was computed from) in a
fixed histogram, so counts from two moments subtract into the counts of the interval between
(a run's delta, a plant serving many controllers).

A plan is refused whole (counted, the held plan cleared) when any row is not finite or lies
outside the action box; row `j` is clamped to the rate limit against the action applied just
before it when it is handed out. A plan computed from an observation older than the held
plan's never replaces it (reordering), and rows for ticks before the current one are never
looked at. Everything is preallocated: `accept` copies into a fixed buffer, `action_for`
returns a view of it.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from runtime.protocols import Command, FloatArray

MAX_PLAN_TICKS: Final = 512  # rows a plan may carry (the wire's array limit bounds rows * Da too)

FRESH, PLAN_FED, FALLBACK, SAFE, DRY = 0, 1, 2, 3, 4
SOURCE_NAMES: Final = ("fresh", "plan_fed", "fallback", "safe", "dry")

# Upper edges (ms) of the action-age histogram's bins; ages above the last fall in `age_gt_*`.
AGE_EDGES_MS: Final = (
    1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 300, 500, 1000,
)
AGE_KEYS: Final = (*(f"age_le_{e}ms" for e in AGE_EDGES_MS), f"age_gt_{AGE_EDGES_MS[-1]}ms")
PLAN_COUNTS: Final = (
    "plans_accepted", "plans_refused", "plans_reordered", "plan_expired", "plan_rate_limited",
)
APPLY_KEYS: Final = (*SOURCE_NAMES, *AGE_KEYS, *PLAN_COUNTS)  # a plant's `apply_counters()`
_AGE_EDGES_NS = np.array([e * 1_000_000 for e in AGE_EDGES_MS], dtype=np.int64)


class PlanFeed:
    """Holds the newest accepted plan and hands out its action for a plant tick.

    Example:
        feed = PlanFeed(1, low=np.array([-1.0]), high=np.array([1.0]))
        feed.accept(Command(7, 0, np.zeros(1), 10_000_000, plan=np.full((4, 1), 0.5),
                            plan_t0_ns=20_000_000, plan_dt_ns=10_000_000, obs_t_ns=0))
        feed.action_for(30_000_000, last=np.zeros(1))   # row 1: array([0.5])
    """

    def __init__(
        self,
        action_dim: int,
        *,
        low: FloatArray,
        high: FloatArray,
        max_rate_per_s: FloatArray | None = None,
        max_age_ns: int | None = None,
        max_ticks: int = MAX_PLAN_TICKS,
    ) -> None:
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        self.max_rate = None if max_rate_per_s is None else np.asarray(max_rate_per_s, np.float64)
        self.max_age_ns = max_age_ns
        self._buf = np.zeros((max_ticks, action_dim))  # the held plan, rows [0, n)
        self._out = np.zeros(action_dim)  # the rate-limited row handed out
        self._step = np.zeros(action_dim)
        self.n = 0  # rows held; 0: no plan
        self.t0_ns = 0
        self.dt_ns = 1
        self.obs_t_ns = 0
        self.counts = dict.fromkeys(PLAN_COUNTS, 0)

    def clear(self) -> None:
        self.n = 0

    def accept(self, cmd: Command) -> bool:
        """Take `cmd`'s plan as the newest one; a command without a plan clears the held one
        (its action supersedes whatever was planned). Returns whether a plan is held now."""
        plan = cmd.plan
        if plan is None or cmd.plan_dt_ns <= 0 or len(plan) == 0:
            self.n = 0
            return False
        obs_t = cmd.obs_t_ns if cmd.obs_t_ns is not None else cmd.t_ns
        if self.n and obs_t < self.obs_t_ns:
            self.counts["plans_reordered"] += 1
            return True  # an older plan never replaces a newer one
        p = np.asarray(plan)
        rows = p.shape[0] if p.ndim == 2 else 0
        if (
            p.ndim != 2
            or p.shape[1] != self._buf.shape[1]
            or rows > self._buf.shape[0]
            or not math.isfinite(float(np.sum(p)))  # NaN/inf anywhere propagate into the sum
            or bool(np.any(p < self.low))
            or bool(np.any(p > self.high))
        ):
            self.counts["plans_refused"] += 1
            self.n = 0
            return False
        self._buf[:rows] = p
        self.n = rows
        self.t0_ns, self.dt_ns, self.obs_t_ns = int(cmd.plan_t0_ns), int(cmd.plan_dt_ns), obs_t
        self.counts["plans_accepted"] += 1
        return True

    def row_for(self, tick_ns: int) -> int:
        """The row for the plant tick at `tick_ns` (the nearest on the plan's grid), or -1:
        no plan, a tick before the plan's first or after its last, or a plan too old."""
        if not self.n:
            return -1
        j = (tick_ns - self.t0_ns + self.dt_ns // 2) // self.dt_ns
        if j < 0 or j >= self.n:
            return -1
        if self.max_age_ns is not None and tick_ns - self.obs_t_ns > self.max_age_ns:
            self.counts["plan_expired"] += 1
            self.n = 0
            return -1
        return int(j)

    def action_for(self, tick_ns: int, last: FloatArray, dt_s: float = 0.0) -> FloatArray | None:
        """The planned action for the tick at `tick_ns` (a view, valid until the next call),
        rate-limited against `last` over `dt_s` (default: the plan's own spacing); None when
        the plan holds nothing for that tick."""
        j = self.row_for(tick_ns)
        if j < 0:
            return None
        out = self._out
        np.copyto(out, self._buf[j])
        if self.max_rate is not None:
            step = self._step
            np.multiply(self.max_rate, dt_s if dt_s > 0 else self.dt_ns * 1e-9, out=step)
            lo, hi = last - step, last + step
            if bool(np.any(out < lo)) or bool(np.any(out > hi)):
                self.counts["plan_rate_limited"] += 1
                np.clip(out, lo, hi, out=out)
                np.clip(out, self.low, self.high, out=out)
        return out


class ApplyLog:
    """Counts what a plant applied on each tick (`SOURCE_NAMES`) and the age histogram."""

    def __init__(self) -> None:
        self.by_source = [0] * len(SOURCE_NAMES)
        self.ages = np.zeros(len(AGE_KEYS), dtype=np.int64)

    def record(self, source: int, age_ns: int | None) -> None:
        self.by_source[source] += 1
        if age_ns is not None and age_ns >= 0:
            self.ages[int(np.searchsorted(_AGE_EDGES_NS, age_ns))] += 1

    def counters(self) -> dict[str, int]:
        out = dict(zip(SOURCE_NAMES, self.by_source, strict=True))
        out.update(zip(AGE_KEYS, (int(a) for a in self.ages), strict=True))
        return out


def age_quantiles(
    counts: dict[str, int], qs: tuple[float, ...] = (0.5, 0.99)
) -> list[float | None]:
    """Quantiles (ms) of the action ages in histogram counters (`AGE_KEYS`, any prefix-free
    dict holding them), interpolated linearly inside a bin; None without samples. Resolution:
    the bin widths of `AGE_EDGES_MS` (1 ms up to 6 ms, coarser above)."""
    hist = np.array([max(0, int(counts.get(k, 0))) for k in AGE_KEYS], dtype=np.float64)
    total = hist.sum()
    if total <= 0:
        return [None for _ in qs]
    edges = np.array((0.0, *AGE_EDGES_MS, 2.0 * AGE_EDGES_MS[-1]))
    cum = np.cumsum(hist)
    out: list[float | None] = []
    for q in qs:
        target = q * total
        i = int(np.searchsorted(cum, target))
        i = min(i, len(hist) - 1)
        below = cum[i] - hist[i]
        frac = (target - below) / hist[i] if hist[i] > 0 else 0.0
        out.append(float(edges[i] + frac * (edges[i + 1] - edges[i])))
    return out
