"""Deadline statistics over tick traces, and a cheap sliding-window quantile for budgeting.

Accounting (what a real-time report must not hide):

- `ticks` counts scheduled ticks in the span: every record plus every tick the overrun policy
  skipped (`TickRecord.skipped`). A skipped tick issued no command, so it is a miss.
- `misses` = records emitted after their deadline (`missed`) + skipped ticks;
  `miss_rate` = misses / ticks. `misses_late` and `skipped` give the two parts.
- lateness = actual start - scheduled start (`lateness_ns`); jitter is its spread (std and
  p99 - p1). compute = emit - start; overhead = compute - time inside planner.refine, i.e.
  what the runtime itself costs per tick.
- Distributions are reported as p50/p99/p99.9/max (numpy's default 'linear' percentile),
  never as a mean alone. Empty input gives zeros, never NaN, so the JSON stays valid.

`SlidingQuantile` is the step-budget estimator's primitive: a q-quantile over the last W
integer samples, kept as a sorted Python list (bisect to find, list insert/delete to update:
O(log W) comparisons plus an O(W) memmove that is a few tens of ns for W in the hundreds)
and a ring of arrival order to know which sample leaves the window.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from runtime.fallback import CODE_NONE, FALLBACK_NAMES

__all__ = [
    "DeadlineStats",
    "Histogram",
    "SlidingQuantile",
    "histogram",
    "percentiles",
]

ArrayLike = npt.ArrayLike


def percentiles(
    x: ArrayLike,
    qs: Sequence[float] = (50.0, 99.0, 99.9),
    *,
    method: Literal["linear", "higher"] = "linear",
) -> dict[str, float]:
    """The `qs` percentiles and the max of `x` (any shape, flattened), as Python floats.

    Keys: "p" and the percentile with its point dropped (50 -> "p50", 99.9 -> "p999"), in the
    order of `qs`, then "max". Same numbers as `np.percentile(x, qs, method=method)`: 'linear'
    (numpy's default) interpolates between samples, 'higher' takes the sample at or above.
    Empty -> 0.0 for every key. The one percentile summary of the project: every report that
    prints quantiles builds on it.
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    keys = ["p" + f"{q:g}".replace(".", "") for q in qs]
    if a.size == 0:
        return dict.fromkeys([*keys, "max"], 0.0)
    values = np.percentile(a, list(qs), method=method)
    out = {k: float(v) for k, v in zip(keys, values, strict=True)}
    out["max"] = float(a.max())
    return out


@dataclass(frozen=True)
class Histogram:
    """`counts[i]` samples fell in [edges[i], edges[i+1]) (the last bin is closed).

    `edges` has len(counts) + 1 entries, in the unit of the data it was built from.
    """

    edges: list[float]
    counts: list[int]

    def to_json(self) -> dict[str, list[float] | list[int]]:
        return {"edges": list(self.edges), "counts": list(self.counts)}


def histogram(x: ArrayLike, bins: int | ArrayLike = 50) -> Histogram:
    """`np.histogram` of `x` (flattened) with `bins` equal bins over [min, max] or given edges.

    Empty input gives `bins` empty bins over [0, 1] (or the given edges with zero counts).
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    if isinstance(bins, int | np.integer):
        if bins < 1:
            raise ValueError(f"{bins=} must be >= 1")
        if a.size == 0:
            return Histogram(
                edges=[float(e) for e in np.linspace(0.0, 1.0, int(bins) + 1)],
                counts=[0] * int(bins),
            )
    counts, edges = np.histogram(a, bins=bins)
    return Histogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts])


def _spread(a: npt.NDArray[np.float64]) -> dict[str, float]:
    if a.size == 0:
        return {"std": 0.0, "p99_p1": 0.0}
    q = percentiles(a, (1.0, 99.0))
    return {"std": float(a.std()), "p99_p1": q["p99"] - q["p1"]}


@dataclass(frozen=True)
class DeadlineStats:
    """Deadline accounting of a run (see the module docstring for what each count means).

    Distributions are dicts {p50, p99, p999, max} in the unit their name carries.

    Example:
        stats = DeadlineStats.from_records(read_trace(path).records, period_ns=1_000_000)
        print(json.dumps(stats.to_json()))
    """

    period_ns: int
    ticks: int  # scheduled ticks: records + skipped
    ticks_run: int  # records
    misses: int  # misses_late + skipped
    misses_late: int  # records with emit after deadline
    skipped: int
    miss_rate: float  # misses / ticks (0.0 when ticks == 0)
    lateness_ms: dict[str, float]
    jitter_ms: dict[str, float]  # {std, p99_p1} of lateness
    compute_ms: dict[str, float]  # emit - start
    refine_ms: dict[str, float]  # inside planner.refine
    overhead_us: dict[str, float]  # (emit - start) - refine
    steps_per_tick: dict[str, float]  # {mean, min, max}
    fallbacks: dict[str, int]  # by name (`FALLBACK_NAMES` but code 0): ticks that used it
    histograms: dict[str, Histogram] = field(default_factory=dict)  # lateness_ms, compute_ms

    @classmethod
    def from_records(
        cls, records: npt.NDArray[np.void], *, period_ns: int, hist_bins: int = 50
    ) -> DeadlineStats:
        """Stats of `records`, (N,) `TICK_DTYPE(Da)` for any Da; `period_ns` the tick period."""
        if period_ns <= 0:
            raise ValueError(f"{period_ns=} must be > 0")
        names = records.dtype.names or ()
        missing = {"lateness_ns", "start_ns", "emit_ns", "refine_ns", "steps"} - set(names)
        if missing:
            raise ValueError(f"records lack TickRecord fields {sorted(missing)}; got {names}")
        r = records.ravel()
        n = int(r.size)
        skipped = int(r["skipped"].astype(np.int64).sum())
        misses_late = int(np.count_nonzero(r["missed"]))
        ticks = n + skipped
        misses = misses_late + skipped

        lateness_ms = r["lateness_ns"].astype(np.float64) / 1e6  # (N,)
        compute_ns = (r["emit_ns"] - r["start_ns"]).astype(np.float64)  # (N,)
        refine_ns = r["refine_ns"].astype(np.float64)  # (N,)
        steps = r["steps"].astype(np.int64)  # (N,)
        codes = r["fallback"].astype(np.int64)
        fallbacks = {
            name: int(np.count_nonzero(codes == code))
            for code, name in FALLBACK_NAMES.items()
            if code != CODE_NONE
        }
        return cls(
            period_ns=int(period_ns),
            ticks=ticks,
            ticks_run=n,
            misses=misses,
            misses_late=misses_late,
            skipped=skipped,
            miss_rate=misses / ticks if ticks else 0.0,
            lateness_ms=percentiles(lateness_ms),
            jitter_ms=_spread(lateness_ms),
            compute_ms=percentiles(compute_ns / 1e6),
            refine_ms=percentiles(refine_ns / 1e6),
            overhead_us=percentiles((compute_ns - refine_ns) / 1e3),
            steps_per_tick={
                "mean": float(steps.mean()) if n else 0.0,
                "min": float(steps.min()) if n else 0.0,
                "max": float(steps.max()) if n else 0.0,
            },
            fallbacks=fallbacks,
            histograms={
                "lateness_ms": histogram(lateness_ms, hist_bins),
                "compute_ms": histogram(compute_ns / 1e6, hist_bins),
            },
        )

    def to_json(self, *, include_histograms: bool = False) -> dict[str, Any]:
        """Plain-Python dict (json.dumps-able) with the `run --json` names (docs/architecture.md,
        "The run JSON contract") plus extras."""
        out: dict[str, Any] = {
            "ticks": self.ticks,
            "misses": self.misses,
            "miss_rate": self.miss_rate,
            "compute_ms": dict(self.compute_ms),
            "lateness_ms": dict(self.lateness_ms),
            "steps_per_tick": dict(self.steps_per_tick),
            "fallbacks": dict(self.fallbacks),
            "ticks_run": self.ticks_run,
            "misses_late": self.misses_late,
            "skipped": self.skipped,
            "period_ms": self.period_ns / 1e6,
            "jitter_ms": dict(self.jitter_ms),
            "refine_ms": dict(self.refine_ms),
            "overhead_us": dict(self.overhead_us),
        }
        if include_histograms:
            out["histograms"] = {k: h.to_json() for k, h in self.histograms.items()}
        return out


class SlidingQuantile:
    """The q-quantile of the last `window` integer samples (e.g. step latencies in ns).

    Convention: numpy's 'higher', i.e. the sorted sample at index ceil(q * (n - 1)) of the
    n <= window samples held, so the estimate is an observed value at or above the true
    quantile (conservative for budgeting). Matches `np.quantile(last, q, method="higher")`.

    Example:
        sq = SlidingQuantile(window=256, q=0.99)
        sq.push(step_ns)
        budget_steps = (deadline_ns - now_ns) // (sq.value() + margin_ns)
    """

    __slots__ = ("_idx", "_ring", "_sorted", "count", "head", "q", "window")

    def __init__(self, window: int, q: float) -> None:
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"{window=} must be an int >= 1")
        if not (0.0 <= q <= 1.0):
            raise ValueError(f"{q=} must be in [0, 1]")
        self.window = window
        self.q = float(q)
        self._sorted: list[int] = []
        self._ring: list[int] = [0] * window
        self.head = 0  # ring slot of the next sample (the oldest once full)
        self.count = 0  # samples held, <= window
        # Rank of the answer for each fill level n (index n), precomputed as numpy does it.
        self._idx: list[int] = [0] + [
            min(n - 1, math.ceil((n - 1) * self.q)) for n in range(1, window + 1)
        ]

    def push(self, x: int) -> None:
        """Add sample `x`, dropping the oldest once `window` are held. O(log W) + memmove."""
        s = self._sorted
        h = self.head
        if self.count == self.window:
            del s[bisect_left(s, self._ring[h])]
        else:
            self.count += 1
        insort(s, x)
        self._ring[h] = x
        h += 1
        self.head = 0 if h == self.window else h

    def value(self) -> int:
        """The q-quantile ('higher') of the samples held. Raises ValueError when empty."""
        n = self.count
        if n == 0:
            raise ValueError("SlidingQuantile.value() on an empty window: push a sample first")
        return self._sorted[self._idx[n]]

    def at(self, q: float) -> int:
        """Another quantile ('higher') of the same samples, e.g. the median; O(1)."""
        n = self.count
        if n == 0:
            raise ValueError("SlidingQuantile.at() on an empty window: push a sample first")
        return self._sorted[min(n - 1, math.ceil((n - 1) * q))]

    def reset(self) -> None:
        """Forget every sample (e.g. after the planner or device changed)."""
        self._sorted.clear()
        self.head = 0
        self.count = 0


class IntRing:
    """The newest `capacity` int64 samples, in one preallocated array touched when it is made.

    For per-tick samples a long-running process keeps (a plant's tick lateness, a server's
    state-to-command round trips): a `deque` of Python ints grows the process by ~36 bytes a
    sample until it is full, which a soak reads as a leak; this holds 8 bytes a sample, all of
    them resident from the start.

    Example:
        ring = IntRing(4)
        for x in range(6):
            ring.append(x)
        ring.values()  # array([2, 3, 4, 5])
    """

    __slots__ = ("_a", "_n")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"{capacity=} must be >= 1")
        self._a = np.empty(capacity, dtype=np.int64)
        self._a.fill(0)  # touch every page now
        self._n = 0

    def append(self, x: int) -> None:
        a = self._a
        a[self._n % a.shape[0]] = x
        self._n += 1

    def clear(self) -> None:
        self._n = 0

    def __len__(self) -> int:
        return min(self._n, self._a.shape[0])

    def values(self) -> npt.NDArray[np.int64]:
        """The samples held, oldest first (a copy)."""
        a, n, cap = self._a, self._n, self._a.shape[0]
        if n <= cap:
            return a[:n].copy()
        i = n % cap
        return np.concatenate((a[i:], a[:i]))
