"""How many refinement steps fit before the deadline.

The loop asks before every step: "does one more step fit in the time left?" The answer comes
from an online estimate of the per-step latency: a high quantile (p99 by default, the 'higher'
convention, so with a 64-sample window it is the window's maximum) over a sliding window, times
a relative margin, plus an absolute margin. Using a high quantile rather than the mean is the
point: the mean step fits, but the deadline is lost to the slow step that comes once in a
hundred.

It adapts fast upwards and slowly downwards on purpose. One slow step enters the window at once
and raises the estimate for the next decision (the loop stops scheduling steps that would not
fit); a speed-up only lowers the estimate once the slow samples leave the window.

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
    """

    window: int = 64
    quantile: float = 0.99
    margin_frac: float = 0.2
    margin_ns: int = 20_000
    prior_step_ns: int = 1_000_000

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"{self.window=} must be >= 1")
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"{self.quantile=} must be in (0, 1]")
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

    def steps_that_fit(self, remaining_ns: int) -> int:
        if remaining_ns <= 0:
            return 0
        return remaining_ns // self._estimate_ns
