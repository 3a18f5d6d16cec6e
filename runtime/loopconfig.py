"""`LoopConfig`: how `ControlLoop` runs (rate, mode, refinement, margins, early emit, budget).

Every field is validated once, here, with an error that names the bad value; the loop takes no
per-tick decision that this configuration fixes (docs/runtime.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from runtime.budget import BudgetConfig


@dataclass(frozen=True)
class LoopConfig:
    """How the loop runs.

    rate_hz: control rate; `None` takes the plant's own rate.
    mode: "realtime" (plant on its own clock) or "lockstep" (plant waits for the controller).
    refine: "sync" (refine in the tick thread) or "async" (a worker refines continuously).
    steps_per_tick: cap on refine steps per tick; in lockstep the exact count (default 1).
    deadline_margin_s: the deadline sits this long before the next tick's start.
    transport_margin_s: time the command needs to reach the plant (a remote link): the loop
        counts a miss when it emits later than deadline - this; the command still carries this
        tick's action and the plant's true deadline (the plant applies it if it arrives in
        time, holds otherwise); only past the deadline itself does the fallback replace it.
    budget_fraction: refinement must end within this fraction of the period after the start.
    emit_reserve_s: time kept free before the deadline to build and send the command.
    warmup_steps: refine steps run before the first tick to seed the latency estimate; the
        second half is recorded. 40 gives 20 samples, enough for the p95 to pass over one slow
        outlier (a JIT's first optimized call, a preemption): with 5, p95 is the maximum, and
        a single 1.3 ms step at 500 Hz blocks every step for seconds.
    align_to_plant: realtime only: start each tick `phase_offset_s` after a plant tick (taken
        from the observation's timestamp after every reset), so the observation is fresh and
        the deadline falls on the plant's next tick.
    phase_offset_s: how long after the plant's tick the controller's tick starts; None picks
        min(0.5 ms, T/5), room for the plant's own jitter and the state's delivery.
    fresh_wait_s: realtime only, for plants that offer `next_observation(timeout_s)`
        (`runtime.protocols.FreshObservations`: the bridge's `RemotePlant`): wait up to this
        long at the tick's start for a state newer than the last one, before taking the stale
        one. None picks min(1 ms, T/5); 0 never waits.
    emit_after_steps: sync only: emit the action as soon as this many refine steps are done
        (or the planner has no more work, or the budget says no more fit before the command
        must leave), then keep refining the plan for the coming ticks until `budget_fraction`
        of the period (and `emit_reserve_s` before the next tick). 0 refines first and emits
        at the end, so the whole refinement stands between the tick's start and its command.
        The action after one step is the one lockstep evaluation sends (one step per tick);
        the steps after the emit still sharpen every later token, including next tick's token 0.
        What it buys: a stall (the OS, a slow step) after the emit costs no deadline.
    emit_first: sync only: send the action the plan already holds for this tick, at the
        tick's start, before the planner sees the observation or takes a step ("action
        already predicted"): row 0 of the planner's plan (`runtime.PlanSource`) as the last
        tick's steps left it. Then the planner observes, and every step of the tick refines
        the tokens to come (as after `emit_after_steps`). The plan is read at the end of
        the tick before, so the command leaves as soon as the observation arrives; the
        observation reaches the commands from the next tick on. An episode's first tick,
        and a planner without a plan, observe first and send `action()`. Excludes
        `emit_after_steps`.
    plan_hit_tolerance: the plan hit rate of the run's JSON counts a tick as a hit when its
        emitted action is within this fraction of the action range, in every dimension, of
        what the planner's plan held for that tick one tick earlier (planners with a plan,
        sync mode).
    plan_ahead: realtime only: send the planner's plan for the ticks after each command with
        it, when the planner has one (`runtime.PlanSource`) and the plant executes plans
        (`runtime.ExecutesPlans`); a plant whose controller is late then applies the plan's
        action for that tick instead of holding the last command (`runtime.planfeed`).
    gil_switch_s: async only: the interpreter's thread switch interval while the run lasts.
        A refining worker holds the GIL between torch kernels, and a woken tick thread waits up
        to this long for it (CPython's default is 5 ms, half a 100 Hz period). None picks
        min(100 us, T/20); the previous interval is restored when the run ends. The tick
        stops waiting for the worker two intervals, a tenth of the period or `emit_reserve_s`,
        whichever is longest, before it must emit.
    """

    rate_hz: float | None = None
    mode: Literal["lockstep", "realtime"] = "lockstep"
    refine: Literal["sync", "async"] = "sync"
    steps_per_tick: int | None = None
    deadline_margin_s: float = 0.0
    transport_margin_s: float = 0.0
    budget_fraction: float = 1.0
    emit_reserve_s: float = 50e-6
    warmup_steps: int = 40
    align_to_plant: bool = True
    phase_offset_s: float | None = None
    fresh_wait_s: float | None = None
    emit_after_steps: int = 0
    emit_first: bool = False
    plan_hit_tolerance: float = 0.05
    plan_ahead: bool = True
    gil_switch_s: float | None = None
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def __post_init__(self) -> None:
        if self.rate_hz is not None and not (self.rate_hz > 0 and math.isfinite(self.rate_hz)):
            raise ValueError(f"{self.rate_hz=} must be a positive finite rate")
        if self.mode not in ("lockstep", "realtime"):
            raise ValueError(f"{self.mode=} must be 'lockstep' or 'realtime'")
        if self.refine not in ("sync", "async"):
            raise ValueError(f"{self.refine=} must be 'sync' or 'async'")
        if self.steps_per_tick is not None and self.steps_per_tick < 1:
            raise ValueError(f"{self.steps_per_tick=} must be >= 1")
        if not 0.0 < self.budget_fraction <= 1.0:
            raise ValueError(f"{self.budget_fraction=} must be in (0, 1]")
        if self.fresh_wait_s is not None and self.fresh_wait_s < 0:
            raise ValueError(f"{self.fresh_wait_s=} must be >= 0")
        if self.phase_offset_s is not None and self.phase_offset_s < 0:
            raise ValueError(f"{self.phase_offset_s=} must be >= 0")
        if self.gil_switch_s is not None and not self.gil_switch_s > 0:
            raise ValueError(f"{self.gil_switch_s=} must be > 0")
        if self.emit_after_steps < 0:
            raise ValueError(f"{self.emit_after_steps=} must be >= 0")
        if self.emit_first and (self.emit_after_steps > 0 or self.refine != "sync"):
            raise ValueError("emit_first is a sync mode of its own: not with emit_after_steps "
                             "or async refinement")
        if not 0.0 < self.plan_hit_tolerance < 1.0:
            raise ValueError(f"{self.plan_hit_tolerance=} must be in (0, 1)")
        if self.transport_margin_s < 0:
            raise ValueError(f"{self.transport_margin_s=} must be >= 0")
        if self.deadline_margin_s < 0 or self.emit_reserve_s < 0 or self.warmup_steps < 0:
            raise ValueError(
                f"{self.deadline_margin_s=}, {self.emit_reserve_s=}, {self.warmup_steps=}"
                " must be >= 0"
            )
