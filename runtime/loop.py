"""The control loop: wait for the tick, observe, refine within the budget, emit before the deadline.

Per tick `k` (period `T`, scheduled start `t0 + k*T`, deadline `t0 + k*T + T - margin`):

1. wait for the tick's start (`Ticker`; realtime mode) or start at once (lockstep mode);
2. observe the plant and hand the observation to the planner (which shifts its plan);
3. refine: sync mode calls `planner.refine` while the step-latency estimate says one more step
   fits before `refine_end = min(deadline - emit_reserve, start + budget_fraction * T)`, capped
   by `steps_per_tick`; async mode instead waits until `refine_end` while a worker refines;
4. emit: take `planner.action()`, replace it by the fallback if it is not finite or the
   deadline has already passed, clip it into the action limits, hand the `Command` to the plant;
5. record a `TickRecord` in the preallocated trace ring.

Plan-ahead (`LoopConfig.plan_ahead`, realtime): when the planner holds a plan
(`runtime.PlanSource`) and the plant executes plans (`runtime.ExecutesPlans`), each command
also carries the planner's actions for the plant ticks after the command's own, so a plant
whose controller stalls applies the plan instead of holding one stale command
(`runtime.planfeed`).

Early emit (`emit_after_steps=N`, sync mode): step 3 stops after N steps (each must fit by the
budget's tail estimate before the command), step 4 sends the command, and the planner then
refines on, for the ticks to come, until `budget_fraction` of the period (or the reserve before
the next tick). The command leaves early, so a stall after it costs no deadline; the steps after
it make the next ticks' plan. The trace's `steps` counts both, `refine_ns` the ones before.

Modes:
- `realtime`: the plant runs on its own clock; a command later than its deadline is discarded
  by the plant (which counts it: the ground truth) and the plant holds its previous command.
  The loop counts the same miss from its side and records the fallback it stands for.
- `lockstep`: the plant waits for the controller (deterministic, for evaluation). Each tick runs
  exactly `steps_per_tick` refine steps (default 1) whatever they cost; misses against the
  virtual deadline `start + T - margin` are still counted, but nothing is dropped.

The per-tick path takes no decisions that could be made at start-up: limits, buffers and the
record layout are fixed before the first tick.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable

import numpy as np

from runtime.budget import StepBudget, for_period
from runtime.fallback import CODE_NONE, CODE_NONFINITE, FALLBACK_NAMES, Fallback, HoldLast
from runtime.handover import LatestAction, RefineWorker
from runtime.loopconfig import LoopConfig
from runtime.planfeed import MAX_PLAN_TICKS
from runtime.protocols import (
    Clock,
    Command,
    ExecutesPlans,
    Observation,
    Planner,
    PlanSource,
    Plant,
)
from runtime.result import EpisodeResult, RunResult
from runtime.rt import GcPolicy, read_steal_s
from runtime.sidecar import Sidecar
from runtime.ticker import Ticker
from runtime.trace import TraceRing, read_trace

__all__ = ["ControlLoop", "EpisodeResult", "LoopConfig", "ProgressFn", "RunResult"]

_LIMIT, _BLOCKED, _IDLE = 0, 1, 2  # why a run of refine steps stopped

ProgressFn = Callable[[int, int, list[EpisodeResult]], None]  # (ticks, misses, episodes)


def _counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: int(v) - int(before.get(k, 0)) for k, v in after.items()}


class ControlLoop:
    """Drives a `Plant` with a `Planner` on a `Clock`.

    Example:
        loop = ControlLoop(plant, planner, MonotonicClock(), LoopConfig(mode="realtime"))
        result = loop.run(seconds=10)
        print(result.to_json()["miss_rate"])
    """

    def __init__(
        self,
        plant: Plant,
        planner: Planner,
        clock: Clock,
        config: LoopConfig | None = None,
        *,
        fallback: Fallback | None = None,
        trace: TraceRing | None = None,
        sidecar: Sidecar | None = None,
        gc_policy: GcPolicy | None = None,
        progress: ProgressFn | None = None,
        progress_every: int = 0,
    ) -> None:
        self.plant = plant
        self.planner = planner
        self.clock = clock
        self.config = config or LoopConfig()
        self.fallback = fallback or HoldLast()
        self.spec = plant.spec()
        rate = self.config.rate_hz or self.spec.rate_hz
        self.period_ns = round(1e9 / rate)
        self.budget = StepBudget(for_period(self.config.budget, self.period_ns))
        self.trace = trace
        self.gc_policy = gc_policy
        self.progress = progress
        self.progress_every = progress_every
        self.sidecar = sidecar
        self._last_records: np.ndarray | None = None
        da = self.spec.action_dim
        self._low = self.spec.action_low.copy()
        self._high = self.spec.action_high.copy()
        self._out = np.zeros(da)  # the action going out this tick (Da,)
        self._last = np.clip(np.zeros(da), self._low, self._high)  # last action sent (Da,)
        self._plan = np.zeros((MAX_PLAN_TICKS, da))  # the plan sent with a command (N, Da)
        self._stop = False

    def plan_source(self) -> PlanSource | None:
        """The planner, if its plan goes out with each command: plan-ahead is on, the run is
        realtime, the planner has a plan and the plant executes plans. Decided once per run."""
        cfg, planner, plant = self.config, self.planner, self.plant
        if not (cfg.plan_ahead and cfg.mode == "realtime" and isinstance(planner, PlanSource)):
            return None
        if not (isinstance(plant, ExecutesPlans) and plant.executes_plans):
            return None
        return planner

    def stop(self) -> None:
        """Ask the loop to stop after the current tick (thread-safe, e.g. from a signal)."""
        self._stop = True

    # -- set-up ---------------------------------------------------------------------------

    def warmup(self, obs: Observation) -> None:
        """Measure refine steps on `obs` to seed the latency estimate, then reset again.

        The first half of the warm-up steps is run but not recorded: first calls pay for cold
        caches, lazy initialisation and (on a GPU) kernel selection, which the loop never sees.
        A planner with nothing to refine (the MLP after its one forward pass, the chunked
        baseline between chunks) is handed the observation again until it has work, so every
        kind gets measured: with no sample the estimate stays at the (pessimistic) prior, which
        at a high rate can block every step of the run.
        """
        n_steps = self.config.warmup_steps
        i = attempts = 0
        while i < n_steps and attempts < 8 * n_steps:
            attempts += 1
            if i < 2:  # observe and action have cold first calls too (torch: lazy kernels)
                self.planner.observe(obs)
                self.planner.action()
            t = self.clock.now_ns()
            n = self.planner.refine(self.period_ns)
            if n <= 0:
                self.planner.observe(obs)
                continue
            if i >= n_steps // 2:
                self.budget.record((self.clock.now_ns() - t) // n)
            i += 1
        self.planner.reset(obs)

    # -- the run --------------------------------------------------------------------------

    def run(
        self,
        *,
        ticks: int | None = None,
        seconds: float | None = None,
        episodes: int | None = None,
        seed: int = 0,
    ) -> RunResult:
        """Run until `ticks` ticks, `seconds` of ticks, or `episodes` finished episodes."""
        if ticks is None and seconds is None and episodes is None:
            raise ValueError("give one of ticks, seconds or episodes")
        if seconds is not None:
            by_time = max(1, round(seconds * 1e9 / self.period_ns))
            ticks = by_time if ticks is None else min(ticks, by_time)
        if self.trace is None:
            expected = ticks or (max(self.spec.episode_ticks, 1) * (episodes or 1) + 16)
            self.trace = TraceRing(
                self.spec.action_dim,
                chunk_ticks=1024,
                n_chunks=max(2, math.ceil(expected / 1024) + 1),
            )
        cfg = self.config
        clock = self.clock
        now_ns = clock.now_ns  # bound once: the tick path reads the clock ~6 times per tick
        has_surprise = hasattr(self.planner, "surprise")
        bounded_reset = bool(getattr(self.planner, "bounded_reset", False))
        maximum, minimum, isfinite = np.maximum, np.minimum, math.isfinite
        planner = self.planner
        plant = self.plant
        trace = self.trace
        c = trace.cols
        period = self.period_ns
        realtime = cfg.mode == "realtime"
        phase_ns = 0
        if realtime and cfg.align_to_plant:
            phase_ns = round(cfg.phase_offset_s * 1e9) if cfg.phase_offset_s is not None else min(
                500_000, period // 5
            )
        # Aligned, tick k starts phase_ns after plant tick k: the plant applies at its tick k+1.
        deadline_off = period - phase_ns - round(cfg.deadline_margin_s * 1e9)
        # plan-ahead: row 0 of a command's plan is for the plant tick after the command's own
        plan_src = self.plan_source()
        plan_buf, plan_t0_off = self._plan, 2 * period - phase_ns
        margin_floor = margin = round(cfg.transport_margin_s * 1e9)
        # A plant behind a link may measure how long its commands take to arrive
        # (`RemotePlant.transport_margin_ns()`): the margin follows it (never below the
        # configured one, never over half a period), looked at every 32 ticks.
        measured_margin: Callable[[], int | None] | None = (
            getattr(plant, "transport_margin_ns", None) if realtime else None
        )
        margin_max = margin
        switch_s = 0.0
        if cfg.refine == "async":
            switch_s = cfg.gil_switch_s if cfg.gil_switch_s is not None else min(
                100e-6, period / 20e9
            )
        # async: the tick thread wakes at refine_end and may wait up to one switch interval
        # for the GIL the worker holds; it keeps two of them in reserve before emitting
        reserve_ns = round(max(cfg.emit_reserve_s, 2 * switch_s) * 1e9)
        budget_off = round(cfg.budget_fraction * period)

        def offsets(margin_ns: int) -> tuple[int, int]:
            """(emit_by, refine_end) offsets from the tick's start, for a transport margin."""
            emit_off = deadline_off - margin_ns  # the command must leave by then
            return emit_off, min(emit_off - reserve_ns, budget_off)

        emit_by_off, refine_off = offsets(margin)
        cap = cfg.steps_per_tick if cfg.steps_per_tick is not None else (
            1 if not realtime else 1 << 30
        )
        # early emit: the steps before the command, and where the steps after it must end
        # (before the next tick's start, less the reserve, within the budget fraction)
        early = cfg.emit_after_steps > 0 and cfg.refine == "sync"
        pre_cap = min(cap, cfg.emit_after_steps) if early else cap
        post_off = min(budget_off, period - reserve_ns)
        budget = self.budget

        def refine_until(end_ns: int, steps: int, limit: int, tail: bool) -> tuple[int, int, int]:
            """Refine while `steps < limit` and the budget says a step fits before `end_ns`
            (by the first steps' tail when `tail`: before an early command). Returns (steps,
            time spent in refine, why it stopped: _LIMIT, _BLOCKED or _IDLE)."""
            spent = 0
            while steps < limit:
                t0 = now_ns()
                left = end_ns - t0
                if realtime and not (
                    budget.fits_before_emit(left) if tail else budget.fits(left, steps == 0)
                ):
                    return steps, spent, _BLOCKED
                n = planner.refine(left)
                t1 = now_ns()
                if n <= 0:
                    return steps, spent, _IDLE  # nothing left to refine this tick
                budget.record((t1 - t0) // n, steps == 0)
                spent += t1 - t0
                steps += n
            return steps, spent, _LIMIT

        fallback = self.fallback
        out, last, low, high = self._out, self._last, self._low, self._high
        episode_results: list[EpisodeResult] = []
        ep_index, ep_ticks, ep_return, ep_seed = 0, 0, 0.0, seed

        # Everything slow happens before the episode's final reset: a realtime plant starts
        # moving at that reset, and each millisecond until the first command is uncontrolled.
        # A plant's counters run for its lifetime (a served plant outlives many controllers):
        # this run reports what changed from just before that reset to its end.
        counters_before = dict(plant.counters())
        steal_before = read_steal_s()
        gc_policy = self.gc_policy
        if gc_policy is not None:
            gc_policy.start()  # gc.collect() + freeze: tens of ms with torch loaded
        switch_before = sys.getswitchinterval()
        if switch_s > 0:
            sys.setswitchinterval(switch_s)
        try:
            obs = plant.reset(seed=ep_seed)
            planner.reset(obs)
            if cfg.refine == "sync" and cfg.warmup_steps:
                self.warmup(obs)
                # A realtime plant kept moving, uncontrolled, while the planner warmed up (and a
                # remote one may have tripped its watchdog): start the episode afresh. The same seed
                # gives the same initial state and disturbances.
                counters_before = dict(plant.counters())  # the warm-up's ticks are not the run's
                obs = plant.reset(seed=ep_seed)
                anchor = self._anchor(obs, phase_ns) if realtime and phase_ns else None
                if bounded_reset and anchor is not None:
                    # the plant is moving: the first command is due at its first tick
                    planner.reset(  # type: ignore[call-arg]
                        obs, budget_ns=anchor + refine_off - now_ns() - self.budget.estimate_ns)
                else:
                    planner.reset(obs)
            worker: RefineWorker | None = None
            steps_seen = 0
            if cfg.refine == "async":
                latest = LatestAction(self.spec.action_dim)  # the worker's hand-over slot
                latest.publish(planner.action(), obs.seq, 0)
                worker = RefineWorker(planner, latest, step_budget_ns=period)
                worker.mailbox.post(obs, reset=True)
                worker.start()
            observe: Callable[[], Observation] = plant.observe
            next_observation = getattr(plant, "next_observation", None)
            if realtime and next_observation is not None:
                wait_s = cfg.fresh_wait_s if cfg.fresh_wait_s is not None else min(
                    1e-3, period / 5e9
                )
                if wait_s > 0:
                    observe = functools.partial(next_observation, wait_s)
            ticker = Ticker(clock, period) if realtime else None
            if ticker is not None and phase_ns:
                # the planner's reset may have run past tick 0's start (bounded to end before
                # its command is due): tick 0 then starts late, its command still in time
                self._align(ticker, obs, phase_ns, late_ok_ns=refine_off - phase_ns)
            estimate_start = self.budget.estimate_ns
            fresh = True  # `obs` starts an episode: the tick does not `observe` it
            # Realtime: the planner already holds `obs` (reset above), so the first tick does
            # not pay for a second reset (and its warm-up) inside its deadline. Lockstep keeps
            # resetting in the tick, where time does not count, as it always did (the same
            # random draws: lockstep results stay reproducible across versions).
            planner_ready = realtime
            sidecar = self.sidecar
            levels_fn = getattr(planner, "noise_levels", None)
            last_seq = obs.seq
            k_local = 0
            misses = 0
            stale = 0
            self._stop = False
        except BaseException:
            if gc_policy is not None:
                gc_policy.stop()  # never leave the process with automatic GC off
            sys.setswitchinterval(switch_before)
            raise
        try:
            # `ticks` counts scheduled ticks: a run of S seconds at R Hz ends at tick S*R even
            # if some were skipped (they are counted as misses, not made up for).
            while not self._stop and (
                ticks is None or (ticker.next_k if ticker is not None else k_local) < ticks
            ):
                # 1. tick start
                if ticker is not None:
                    ts = ticker.wait()
                    k, sched, start, skipped = ts.k, ts.scheduled_ns, ts.start_ns, ts.skipped
                else:
                    start = now_ns()
                    k, sched, skipped = k_local, start, 0
                if measured_margin is not None and not k & 31:
                    m = measured_margin()
                    if m is not None:
                        m = min(max(m, margin_floor), period // 2)
                        if m != margin:
                            margin = m
                            margin_max = max(margin_max, m)
                            emit_by_off, refine_off = offsets(m)
                deadline = sched + deadline_off
                emit_by = sched + emit_by_off
                refine_end = sched + refine_off
                # 2. observe
                if not fresh:
                    obs = observe()
                    stale += obs.stale  # flagged by the plant, never invented; counted
                    if obs.seq != last_seq:
                        ep_return += obs.reward
                        last_seq = obs.seq
                    if obs.done:
                        episode_results.append(
                            EpisodeResult(ep_index, ep_ticks, ep_return,
                                          bool(obs.info.get("success", False)))
                        )
                        ep_index += 1
                        if episodes is not None and ep_index >= episodes:
                            break
                        ep_seed += 1
                        obs = plant.reset(seed=ep_seed)
                        last_seq = obs.seq
                        ep_ticks, ep_return = 0, 0.0
                        fresh = True
                        if realtime:
                            # The plant restarted its schedule at the reset: this tick's
                            # command is for the plant's first tick of the new episode, so
                            # its deadline is that tick's. Reset the planner first (its
                            # warm-up counts against that deadline), then move the ticks.
                            anchor = self._anchor(obs, phase_ns) if phase_ns else None
                            if worker is not None:
                                worker.mailbox.post(obs, reset=True)
                            elif bounded_reset and anchor is not None:
                                # a planner that can cut its warm-up short gets the time
                                # until the first command, less one step for sending it
                                planner.reset(  # type: ignore[call-arg]
                                    obs, budget_ns=anchor + refine_off - now_ns()
                                    - self.budget.estimate_ns)
                            else:
                                planner.reset(obs)
                            planner_ready = True
                            if anchor is not None and ticker is not None:
                                # plant ticks the resets already outlasted got no command:
                                # skipped, and counted as misses like any skipped tick
                                late_by = now_ns() - anchor - refine_off
                                if late_by > 0:
                                    gone = -(-late_by // period)  # ceil
                                    anchor += gone * period
                                    skipped += gone
                                sched = anchor  # the tick counts from there (lateness >= 0)
                                deadline = anchor + deadline_off
                                emit_by = anchor + emit_by_off
                                refine_end = anchor + refine_off
                                ticker.realign(anchor + period)
                t_obs = now_ns()
                started = fresh
                if fresh and planner_ready:
                    pass  # reset already, above or before the loop
                elif worker is not None:
                    worker.mailbox.post(obs, reset=fresh)
                elif fresh:
                    planner.reset(obs)
                else:
                    planner.observe(obs)
                fresh = planner_ready = False
                # 3. refine
                more = False  # early emit: the planner may take more steps after the command
                blocked, room = False, None  # for the budget: see StepBudget.end_tick
                if worker is None:
                    if early:  # before the command: by the tail; recovery waits for after
                        steps, refine_ns, stop = refine_until(refine_end, 0, pre_cap, True)
                        more = stop != _IDLE
                    else:
                        room = refine_end - now_ns()
                        steps, refine_ns, stop = refine_until(refine_end, 0, cap, False)
                        blocked = stop == _BLOCKED
                else:
                    steps = refine_ns = 0
                    clock.sleep_until_ns(refine_end)
                    worker.check()
                t_ref = now_ns()
                # 4. emit
                if worker is not None:  # async: the worker's newest published action
                    _, total = worker.latest.read(out)
                    steps, steps_seen = total - steps_seen, total
                    surprise = worker.surprise
                    action_ok = isfinite(out @ out)
                else:
                    a = planner.action()
                    # a @ a is finite iff every element is (NaN and inf propagate; the only
                    # false alarm is |a| > 1e154, which is no command to send either).
                    action_ok = isfinite(a @ a)
                    if action_ok:
                        np.copyto(out, a)
                code = CODE_NONE
                # Past the plant's deadline the command is late whatever the link does: the
                # plant will hold, the trace records what stands in. Inside the transport margin
                # (after emit_by, before the deadline) it is counted a miss below, but this
                # tick's action still goes out with the true deadline: the plant applies it if
                # it arrives in time (most do: the margin is a p99) and holds if not.
                if realtime and t_ref > deadline:
                    code = fallback.code
                    fallback.fill(out, last, obs.state)
                elif not action_ok:
                    code = CODE_NONFINITE
                    fallback.fill(out, last, obs.state)
                maximum(out, low, out=out)  # np.clip costs 2 us here, this pair 0.8 us
                minimum(out, high, out=out)
                np.copyto(last, out)
                n_plan = (
                    plan_src.plan_into(plan_buf)
                    if plan_src is not None and code == CODE_NONE else 0
                )
                t_emit0 = now_ns()
                plant.apply(Command(
                    k, t_emit0, out.copy(), deadline, FALLBACK_NAMES[code],
                    plan_buf[:n_plan] if n_plan else None, sched + plan_t0_off, period, obs.t_ns,
                ))
                t_emit = now_ns()
                missed = t_emit > emit_by
                misses += missed
                if worker is None:
                    if more and steps < cap:  # early emit: GC in the slack, then refine on
                        if gc_policy is not None and ticker is not None:
                            gc_policy.collect_in_slack(sched + post_off - t_emit)
                        room = sched + post_off - now_ns()
                        # (the trace's refine_ns keeps the time before the command only)
                        steps, _, stop = refine_until(sched + post_off, steps, cap, False)
                        blocked = stop == _BLOCKED
                    budget.end_tick(steps, blocked, room)
                    surprise = planner.surprise if has_surprise else 0.0  # type: ignore[attr-defined]
                # 5. record
                i = trace.next_slot()
                c.tick[i] = k
                c.scheduled_ns[i] = sched
                c.start_ns[i] = start
                c.observe_ns[i] = t_obs
                c.refine_end_ns[i] = t_ref
                c.emit_ns[i] = t_emit
                c.deadline_ns[i] = deadline
                c.refine_ns[i] = refine_ns
                c.steps[i] = steps
                c.missed[i] = missed
                c.lateness_ns[i] = max(0, start - sched)  # an episode's first tick may be early
                c.skipped[i] = skipped
                c.surprise[i] = surprise
                c.fallback[i] = code
                c.episode[i] = ep_index
                c.action[i] = out
                trace.commit()
                if sidecar is not None:  # levels only in sync mode: the worker owns the planner
                    levels = levels_fn() if (levels_fn is not None and worker is None) else None
                    sidecar.record(obs, levels=levels, reset=started)
                k_local += 1
                ep_ticks += 1
                if self.progress is not None and self.progress_every and (
                    k_local % self.progress_every == 0
                ):
                    self.progress(k_local, misses, episode_results)
                if gc_policy is not None and ticker is not None:
                    gc_policy.collect_in_slack(sched + period - now_ns())
        finally:
            if worker is not None:
                worker.stop()
            sys.setswitchinterval(switch_before)
            if gc_policy is not None:
                gc_policy.stop()
            trace.close()
            if self.sidecar is not None and trace.path is not None:
                self.sidecar.save(trace.path)
        steal_after = read_steal_s()
        records = trace.records() if trace.path is None else read_trace(trace.path).records
        self._last_records = records
        return RunResult(
            records=records,
            episodes=episode_results,
            plant_counters=_counter_delta(counters_before, plant.counters()),
            period_ns=period,
            mode=cfg.mode,
            trace_path=None if trace.path is None else str(trace.path),
            stale_observations=stale,
            step_estimate_ns=(estimate_start, self.budget.estimate_ns),
            transport_margin_ns=(margin_floor, margin, margin_max),
            steal_s=None if steal_before is None or steal_after is None
            else steal_after - steal_before,
        )

    def _anchor(self, obs: Observation, phase_ns: int) -> int | None:
        """`phase_ns` after the plant tick that produced `obs`, or None if implausible.

        A timestamp more than ten periods old or in the future is from another clock (or none
        was given): the schedule is left alone rather than aligned to garbage.
        """
        age = self.clock.now_ns() - obs.t_ns
        return obs.t_ns + phase_ns if 0 <= age < 10 * self.period_ns else None

    def _align(
        self, ticker: Ticker, obs: Observation, phase_ns: int, *, late_ok_ns: int = 0
    ) -> None:
        """Put the ticks `phase_ns` after the plant tick that produced `obs`, if plausible."""
        anchor = self._anchor(obs, phase_ns)
        if anchor is not None:
            ticker.realign(anchor, late_ok_ns=late_ok_ns)

    @property
    def fallback_counts(self) -> dict[str, int]:
        """Fallbacks used in the last run, by name (only those used), from its records."""
        if self._last_records is None:
            return {}
        codes = self._last_records["fallback"].astype(np.int64)
        used = np.bincount(codes, minlength=len(FALLBACK_NAMES))
        return {FALLBACK_NAMES[c]: int(n) for c, n in enumerate(used) if c != CODE_NONE and n}
