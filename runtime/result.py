"""What a `ControlLoop` run produced: tick records, episodes, the plant's counts, the JSON.

`RunResult.to_json()` is the `rtdiff run --json` contract (docs/architecture.md, "The run
JSON contract").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.planfeed import SOURCE_NAMES, age_quantiles
from runtime.stats import DeadlineStats


@dataclass
class EpisodeResult:
    index: int
    ticks: int
    episode_return: float
    success: bool


@dataclass
class RunResult:
    """What a run produced: its tick records, episode outcomes and the plant's own counts."""

    records: np.ndarray  # (N,) TICK_DTYPE
    episodes: list[EpisodeResult]
    plant_counters: dict[str, int]
    period_ns: int
    mode: str
    trace_path: str | None = None
    stale_observations: int = 0  # ticks whose observation the plant flagged as not fresh
    # the step-latency estimate (margins included) after the warm-up and at the end, ns
    step_estimate_ns: tuple[int, int] = (0, 0)
    # the transport margin (emit this long before the deadline) at the start, the end, and its
    # largest value, ns: fixed unless the plant measures its link (`transport_margin_ns()`)
    transport_margin_ns: tuple[int, int, int] = (0, 0, 0)
    steal_s: float | None = None  # host steal during the run (/proc/stat), None where unknown
    # (hits, ticks compared) of the plan hit rate; None for a planner without a plan
    plan_hits: tuple[int, int] | None = None
    plan_hit_tolerance: float = 0.05

    def stats(self) -> DeadlineStats:
        return DeadlineStats.from_records(self.records, period_ns=self.period_ns)

    def to_json(self) -> dict[str, Any]:
        """The `rtdiff run --json` contract (docs/architecture.md, "The run JSON contract")."""
        out = self.stats().to_json()
        done = self.episodes
        out["episodes"] = len(done)
        out["success_rate"] = float(np.mean([e.success for e in done])) if done else 0.0
        out["mean_return"] = float(np.mean([e.episode_return for e in done])) if done else 0.0
        out["mode"] = self.mode
        out["rate_hz"] = 1e9 / self.period_ns
        out["plant_counters"] = dict(self.plant_counters)
        out["stale_observations"] = self.stale_observations
        out["step_estimate_us"] = {"start": self.step_estimate_ns[0] / 1e3,
                                   "end": self.step_estimate_ns[1] / 1e3}
        m0, m1, mmax = self.transport_margin_ns
        out["transport_margin_us"] = {"start": m0 / 1e3, "end": m1 / 1e3, "max": mmax / 1e3}
        # re-plans: ticks on which the planner did refinement work whose action went out (not
        # a fallback). A chunked baseline re-plans on chunk ticks only; a planner that computes
        # inside action() (an expert) or in a thread of its own (chunked-async) shows 0 here.
        r = self.records
        n = len(r)
        replans = int(np.count_nonzero((r["steps"] > 0) & (r["fallback"] == 0))) if n else 0
        out["replans_per_s"] = replans / (n * self.period_ns * 1e-9) if n else 0.0
        # the share of ticks whose command was what the plan held for them one tick earlier
        # (within `plan_hit_tolerance` of the action range, every dimension)
        hits, compared = self.plan_hits or (0, 0)
        out["hit_rate"] = hits / compared if compared else None
        out["plan_hit_ticks"] = compared
        out["plan_hit_tolerance"] = self.plan_hit_tolerance
        if self.mode == "realtime":
            out["plant_misses"] = int(self.plant_counters.get("late", 0))
            pc = self.plant_counters
            if any(k in pc for k in SOURCE_NAMES):  # a plant that says what it applied
                out["plant"] = {k: int(pc.get(k, 0)) for k in SOURCE_NAMES}
                p50, p99 = age_quantiles(pc)
                out["action_age_ms"] = {"p50": p50, "p99": p99}
        out["steal_s"] = self.steal_s
        if self.trace_path is not None:
            out["trace"] = self.trace_path
        return out
