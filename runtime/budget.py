"""How many refinement steps fit before the deadline.

The loop asks before every step: "does one more step fit in the time left?" The answer comes
from an online estimate of the per-step latency: a high quantile (p95 by default, the 'higher'
convention) over a sliding window of the last 128 steps, times a relative margin, plus an
absolute margin. Using a high quantile rather than the mean is the point: the mean step fits,
but the deadline is lost to the slow step that comes once in twenty.

Why not the window's maximum (p99 of 64 samples is the maximum): one preemption by the OS
during one step then blocks every step for the next 64 samples, and since blocked steps produce
no samples, the estimate never recovers. We saw exactly that in `rtdiff bench tick` (a 1.6 ms
outlier during warm-up starved the planner for the whole run). With p95 of 128, the estimate
moves once about seven slow samples arrived: a real 5x slow-down is picked up within the first
tick at 10 steps per tick (within seven ticks at one step per tick), a lone outlier is ignored.

If a sustained slow-down did block every step, `probe_after_ticks` ticks later one probe step
is allowed when the window's median fits, so the estimator keeps learning when the planner
speeds up again. A probe can cost at most one miss per `probe_after_ticks` ticks.

Before the first sample there is no evidence, so the estimate is `prior_step_ns` (make it
pessimistic); `ControlLoop.warmup` feeds a few measured steps before the first tick.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.stats import SlidingQuantile


@dataclass(frozen=True)
class BudgetConfig:
    """Step-latency estimator settings.

    window: samples in the sliding window (>= 1).
    quantile: which quantile of the window to plan with, in (0, 1].
    margin_frac: relative safety margin on top of the quantile (0.2 = +20%).
    margin_ns: absolute safety margin (ns) for the cost of the decision itself.
    prior_step_ns: estimate used before any step was measured.
    probe_after_ticks: ticks with every step blocked before one probe step is allowed.
    """

    window: int = 128
    quantile: float = 0.95
    margin_frac: float = 0.2
    margin_ns: int = 20_000
    prior_step_ns: int = 1_000_000
    probe_after_ticks: int = 200

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"{self.window=} must be >= 1")
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"{self.quantile=} must be in (0, 1]")
        if self.probe_after_ticks < 1:
            raise ValueError(f"{self.probe_after_ticks=} must be >= 1")
        if self.margin_frac < 0 or self.margin_ns < 0 or self.prior_step_ns <= 0:
            raise ValueError(
                f"margins must be >= 0 and the prior > 0: "
                f"{self.margin_frac=}, {self.margin_ns=}, {self.prior_step_ns=}"
            )


class StepBudget:
    """Online per-step latency estimate and the fit decision.

    Example:
        budget = StepBudget(BudgetConfig())
        budget.record(step_ns=180_000)
        if budget.fits(remaining_ns=deadline_ns - clock.now_ns()): ...
    """

    def __init__(self, config: BudgetConfig | None = None) -> None:
        self.config = config or BudgetConfig()
        self._q = SlidingQuantile(self.config.window, self.config.quantile)
        self._estimate_ns = self._with_margin(self.config.prior_step_ns)
        self._starved = 0  # consecutive ticks in which the estimate blocked every step

    def _with_margin(self, step_ns: float) -> int:
        return int(step_ns * (1.0 + self.config.margin_frac)) + self.config.margin_ns

    def record(self, step_ns: int) -> None:
        """Add one measured step duration (ns) and update the estimate."""
        self._q.push(step_ns)
        self._estimate_ns = self._with_margin(self._q.value())

    @property
    def estimate_ns(self) -> int:
        """Time (ns) to reserve for the next step, margins included."""
        return self._estimate_ns

    @property
    def samples(self) -> int:
        return self._q.count

    def fits(self, remaining_ns: int) -> bool:
        return remaining_ns >= self._estimate_ns

    def probe_ok(self, remaining_ns: int) -> bool:
        """After `probe_after_ticks` fully blocked ticks: may one step run if the median fits?"""
        if self._starved < self.config.probe_after_ticks or self._q.count == 0:
            return False
        return remaining_ns >= self._with_margin(self._q.at(0.5))

    def end_tick(self, steps: int, blocked: bool) -> None:
        """Tell the budget how the tick went: `blocked` = the estimate stopped the first step."""
        self._starved = self._starved + 1 if (steps == 0 and blocked) else 0

    def steps_that_fit(self, remaining_ns: int) -> int:
        if remaining_ns <= 0:
            return 0
        return remaining_ns // self._estimate_ns
