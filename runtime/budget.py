"""How many refinement steps fit before the deadline.

The loop asks before every step: "does one more step fit in the time left?" The answer comes
from an online estimate of the per-step latency: a high quantile (p95 by default, the 'higher'
convention) over a sliding window of the last 128 steps, times a relative margin, plus an
absolute margin. Using a high quantile rather than the mean is the point: the mean step fits,
but the deadline is lost to the slow step that comes once in twenty.

Why not the window's maximum (p99 of 64 samples is the maximum): one preemption by the OS
during one step then blocks every step for the next 64 samples, and since blocked steps produce
no samples, the estimate never recovers: a single 1.6 ms outlier during warm-up is enough to
starve the planner for a whole run. With p95 of 128, the estimate moves once about seven slow
samples arrived: a real 5x slow-down is picked up within the first tick at 10 steps per tick
(within seven ticks at one step per tick), a lone outlier is ignored (docs/architecture.md,
"The step budget").

Starvation and recovery. Blocked steps produce no samples, so a window full of slow samples
(a stall during the warm-up, a slow stretch of the machine) could block every step for good,
and a planner that never refines is worse than one that misses now and then: a rolling plan
that is shifted but never denoised stops being a plan (a double-pendulum at 250 Hz falls
within half a second of a starved budget). So after `probe_after_s` (20 ms;
`probe_after_ticks` when no period is known) of ticks with every step blocked, the budget
*recovers*: one step per tick, the tick's first, when the median of the last 8 steps (same
margins) fits the room, so the plan keeps being denoised and the window refills with fresh
samples; if even that blocks for another `probe_after_s`, one probe step runs anyway at the
start of a tick (a planner that became fast shows it there), and again on the next tick while
the probes fit. It returns to the p95 as soon as the p95 estimate fits the room a tick had for
its first step. One step per tick, not as many as the median allows: a whole tick planned on
the median overshoots the tick's end often (up to a fifth of the ticks at 250 Hz on a loaded
2-core machine), each overshoot a miss and a held command. Recovery can still cost misses (a
step slower than the room, or a probe that is still slow); they are counted like any other.

Before and after the command (the loop's early emit, `LoopConfig.emit_after_steps`). A step
that overruns before the command is sent costs a deadline: the plant holds its old command. A
step that overruns after it costs only a later start of the next tick, which has the slack an
early emit leaves. So a step before the command must fit by the tail (`emit_quantile`, p99 by
default: `fits_before_emit`) of the ticks' *first* steps, kept in a window of their own, and
never runs while the budget is recovering; the steps after it plan with the p95 of all steps
and take recovery's first step and probes, where a slow one is harmless. A tick's first step
runs after the wait, the observation and the link's I/O, with colder caches, and is the slow
one: on a 2-core VM at 500 Hz its tail reaches 0.9-1.1 ms while the window of all steps holds
mostly back-to-back steps of 0.3-0.5 ms, so a first step planned with that window's p95 (or
even its p99) overruns the command's deadline on a share of ticks that the first steps' own
p99 avoids (docs/benchmarks.md, "Early emit").

Before the first sample there is no evidence, so the estimate is `prior_step_ns` (make it
pessimistic); `ControlLoop.warmup` feeds a few measured steps before the first tick.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

from runtime.stats import SlidingQuantile


@dataclass(frozen=True)
class BudgetConfig:
    """Step-latency estimator settings.

    window: samples in the sliding window (>= 1).
    quantile: which quantile of the window to plan with, in (0, 1].
    margin_frac: relative safety margin on top of the quantile (0.2 = +20%).
    margin_ns: absolute safety margin (ns) for the cost of the decision itself.
    prior_step_ns: estimate used before any step was measured.
    probe_after_ticks: ticks with every step blocked before the budget recovers (plans with the
        median), when `probe_after_s` is None or the period unknown.
    probe_after_s: the same as a time, turned into ticks by `for_period` (the control loop
        does): 20 ms is two ticks at 100 Hz, five at 250 Hz, twenty at 1 kHz.
    emit_quantile: the quantile a step must fit by before the command is sent (early emit),
        in [quantile, 1].
    """

    window: int = 128
    quantile: float = 0.95
    margin_frac: float = 0.2
    margin_ns: int = 20_000
    prior_step_ns: int = 1_000_000
    probe_after_ticks: int = 200
    probe_after_s: float | None = 0.02
    emit_quantile: float = 0.99

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"{self.window=} must be >= 1")
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"{self.quantile=} must be in (0, 1]")
        if not self.quantile <= self.emit_quantile <= 1.0:
            raise ValueError(f"{self.emit_quantile=} must be in [quantile={self.quantile}, 1]")
        if self.probe_after_ticks < 1:
            raise ValueError(f"{self.probe_after_ticks=} must be >= 1")
        if self.probe_after_s is not None and not self.probe_after_s > 0:
            raise ValueError(f"{self.probe_after_s=} must be > 0 (or None)")
        if self.margin_frac < 0 or self.margin_ns < 0 or self.prior_step_ns <= 0:
            raise ValueError(
                f"margins must be >= 0 and the prior > 0: "
                f"{self.margin_frac=}, {self.margin_ns=}, {self.prior_step_ns=}"
            )


_RECENT = 8  # steps whose median a recovering budget plans with
_FIRST_MIN = 8  # first steps seen before their own tail replaces the tail of all steps


def for_period(config: BudgetConfig, period_ns: int) -> BudgetConfig:
    """`config` with `probe_after_ticks` set from `probe_after_s` for ticks of `period_ns`."""
    if config.probe_after_s is None:
        return config
    ticks = max(1, math.ceil(config.probe_after_s * 1e9 / period_ns))
    return replace(config, probe_after_ticks=ticks)


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
        # a tick's first steps alone: after the wait and the observation they run colder
        self._first = SlidingQuantile(self.config.window, self.config.emit_quantile)
        self._estimate_ns = self._with_margin(self.config.prior_step_ns)
        self._starved = 0  # consecutive ticks in which the estimate blocked every step
        self._recovering = False
        self._recent: deque[int] = deque(maxlen=_RECENT)  # the last steps, for recovery

    def _with_margin(self, step_ns: float) -> int:
        return int(step_ns * (1.0 + self.config.margin_frac)) + self.config.margin_ns

    def record(self, step_ns: int, first: bool = False) -> None:
        """Add one measured step duration (ns) and update the estimate. `first`: it was its
        tick's first step (before or after the command), which also feeds the tail estimate."""
        self._q.push(step_ns)
        if first:
            self._first.push(step_ns)
        self._recent.append(step_ns)
        self._estimate_ns = self._with_margin(self._q.value())

    @property
    def estimate_ns(self) -> int:
        """Time (ns) to reserve for the next step, margins included."""
        return self._estimate_ns

    @property
    def samples(self) -> int:
        return self._q.count

    @property
    def recovering(self) -> bool:
        """Planning with recent samples after a starved spell (see the module docstring)."""
        return self._recovering

    @property
    def active_estimate_ns(self) -> int:
        """What `fits` compares with: the estimate, or, while recovering, the median of the
        last `_RECENT` steps with the same margins."""
        if self._recovering and self._recent:
            return self._with_margin(sorted(self._recent)[len(self._recent) // 2])
        return self._estimate_ns

    @property
    def tail_estimate_ns(self) -> int:
        """What a step before the command must fit in: the `emit_quantile` of the ticks' first
        steps (once 8 were seen; of all steps before), with the margins."""
        if self._first.count >= _FIRST_MIN:
            return self._with_margin(self._first.value())
        if not self._q.count:
            return self._estimate_ns
        return self._with_margin(self._q.at(self.config.emit_quantile))

    def fits_before_emit(self, remaining_ns: int) -> bool:
        """Does a step fit before the command must leave? By the tail estimate, and never while
        recovering (recovery's steps run after the command, where overrunning is harmless)."""
        return not self._recovering and remaining_ns >= self.tail_estimate_ns

    def fits(self, remaining_ns: int, first: bool = False) -> bool:
        """Does a step fit in `remaining_ns`? `first`: it would be the tick's first step.
        Recovering, only a first step runs: when the recent median fits, or as a probe when
        nothing fitted for `probe_after_ticks` ticks."""
        if not self._recovering:
            return remaining_ns >= self._estimate_ns
        if not first:
            return False
        return (remaining_ns >= self.active_estimate_ns
                or self._starved >= self.config.probe_after_ticks)

    def end_tick(self, steps: int, blocked: bool, room_ns: int | None = None) -> None:
        """Tell the budget how the tick went: `blocked` = the estimate stopped a step before
        the tick's cap; `room_ns` = the time the tick had left for its first step."""
        if not self._recovering:
            self._starved = self._starved + 1 if (steps == 0 and blocked) else 0
            if self._starved >= self.config.probe_after_ticks and self._q.count:
                self._recovering, self._starved = True, 0
            return
        if room_ns is not None and room_ns >= self._estimate_ns:
            self._recovering, self._starved = False, 0  # the p95 fits again: back to it
        elif steps > 0 and room_ns is not None and self._recent[-1] <= room_ns:
            # the last step fitted the tick's room: probe again on the next tick rather than
            # wait, so a planner that became fast is back to full speed within a few ticks
            self._starved = self.config.probe_after_ticks
        else:
            self._starved = self._starved + 1 if (steps == 0 and blocked) else 0
