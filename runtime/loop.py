"""The control loop: wait for the tick, observe, refine within the budget, emit before the deadline.

Per tick `k` (period `T`, scheduled start `t0 + k*T`, deadline `t0 + k*T + T - margin`),
`ControlLoop.run` calls one method per phase:

1. `_wait`: wait for the tick's start (`Ticker`; realtime mode) or start at once (lockstep
   mode), and follow the transport margin a plant behind a link measures;
2. `_receive`: observe the plant; when an episode ended, `_restart_episode` starts the next
   one; `_hand_over`: hand the observation to the planner (which shifts its plan);
3. `_refine`: sync mode calls `planner.refine` while the step-latency estimate says one more
   step fits before `refine_end = min(deadline - emit_reserve, start + budget_fraction * T)`,
   capped by `steps_per_tick`; async mode instead waits until `refine_end` while a worker
   refines;
4. `_emit`: take `planner.action()`, replace it by the fallback if it is not finite or the
   deadline has already passed, clip it into the action limits, hand the `Command` to the plant;
5. `_refine_on`: after an early command, refine on for the ticks to come;
6. `_record`: record a `TickRecord` in the preallocated trace ring.

Plan-ahead (`LoopConfig.plan_ahead`, realtime): when the planner holds a plan
(`runtime.PlanSource`) and the plant executes plans (`runtime.ExecutesPlans`), each command
also carries the planner's actions for the plant ticks after the command's own, so a plant
whose controller stalls applies the plan instead of holding one stale command
(`runtime.planfeed`).

Early emit (`emit_after_steps=N`, sync mode): `_refine` stops after N steps (each must fit by
the budget's tail estimate before the command), `_emit` sends the command, and `_refine_on`
lets the planner refine on, for the ticks to come, until `budget_fraction` of the period (or
the reserve before the next tick). The command leaves early, so a stall after it costs no
deadline; the steps after it make the next ticks' plan. The trace's `steps` counts both,
`refine_ns` the ones before.

Emit first (`emit_first`, sync mode, a planner with a plan): the command leaves before the
planner sees the tick's observation. `_emit_ahead` sends row 0 of the plan as the last tick
left it (`PlanSource.plan_into`, read at that tick's end by `_read_ahead`: the action
predicted for this tick, sharpened by every step since), then `_hand_over` and `_refine_on`
do all of the tick's planning for the ticks to come. Between the tick's start and its command
there is only the plant's observation, whatever the planner's `observe` and steps cost, so the
loop keeps its deadlines at a rate whose period is shorter than one `observe` plus one step.
The tick's observation reaches the commands from the next tick on. An episode's first tick
(the plan was just reset) and a planner without a plan observe first and send `action()`.

Modes:
- `realtime`: the plant runs on its own clock; a command later than its deadline is discarded
  by the plant (which counts it: the ground truth) and the plant holds its previous command.
  The loop counts the same miss from its side and records the fallback it stands for.
- `lockstep`: the plant waits for the controller (deterministic, for evaluation). Each tick runs
  exactly `steps_per_tick` refine steps (default 1) whatever they cost; misses against the
  virtual deadline `start + T - margin` are still counted, but nothing is dropped.

The per-tick path takes no decisions that could be made at start-up: limits, buffers, the
record layout and the optional capabilities of planner and plant (`runtime.protocols`) are
fixed before the first tick (`_Run`), and the phases hand each other the tick's values in one
preallocated `_Tick`.
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
    BoundedReset,
    Clock,
    Command,
    EpisodeOver,
    ExecutesPlans,
    FloatArray,
    FreshObservations,
    LateCommand,
    MeasuresTransport,
    Observation,
    Planner,
    PlanSource,
    Plant,
    PredictsStates,
    ReportsNoiseLevels,
    ReportsSurprise,
)
from runtime.result import EpisodeResult, RunResult
from runtime.rt import GcPolicy, read_steal_s
from runtime.sidecar import Sidecar
from runtime.ticker import Ticker
from runtime.trace import TickColumns, TraceRing, read_trace

__all__ = ["ControlLoop", "EpisodeResult", "LoopConfig", "ProgressFn", "RunResult"]

_LIMIT, _BLOCKED, _IDLE = 0, 1, 2  # why a run of refine steps stopped

# the per-tick path calls these every tick: looked up once
_isfinite, _maximum, _minimum, _copyto = math.isfinite, np.maximum, np.minimum, np.copyto

ProgressFn = Callable[[int, int, list[EpisodeResult]], None]  # (ticks, misses, episodes)


def _counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: int(v) - int(before.get(k, 0)) for k, v in after.items()}


class _Tick:
    """The values one tick's phases hand each other, each written by the phase that knows it.

    One instance per run, rewritten by every tick: the per-tick path allocates nothing here.
    """

    __slots__ = (
        "blocked",
        "code",
        "deadline",
        "emit_by",
        "k",
        "missed",
        "more",
        "refine_end",
        "refine_ns",
        "room",
        "sched",
        "skipped",
        "spent",
        "start",
        "started",
        "steps",
        "surprise",
        "t_emit",
        "t_obs",
        "t_ref",
    )

    def __init__(self) -> None:
        # _wait (and _restart_episode, which moves the tick onto the plant's new schedule)
        self.k = 0  # the tick's number
        self.sched = 0  # its scheduled start (ns)
        self.start = 0  # its actual start (ns)
        self.skipped = 0  # scheduled ticks that passed without running, just before it
        self.deadline = 0  # the plant's deadline for its command (ns)
        self.emit_by = 0  # the command must leave by then: the deadline less the margin
        self.refine_end = 0  # refinement before the command ends by then
        # _receive, _hand_over
        self.t_obs = 0  # the observation arrived
        self.started = False  # the tick starts an episode
        # _refine, _refine_on
        self.steps = 0  # refine steps: before the command, then also after it
        self.spent = 0  # time in refine of the last `_refine_until`
        self.refine_ns = 0  # time in refine before the command
        self.more = False  # early emit: the planner may take more steps after the command
        self.blocked = False  # the budget blocked a step (for `StepBudget.end_tick`)
        self.room: int | None = None  # time left when the steps began (for `end_tick`)
        self.t_ref = 0  # refinement before the command ended
        # _emit
        self.code = CODE_NONE  # the fallback that replaced the action, if one did
        self.t_emit = 0  # the command was in the plant's hands
        self.missed = False  # ... later than `emit_by`
        self.surprise = 0.0  # the planner's surprise at the tick's observation


class _Run:
    """What a run fixes at its start and what it carries from tick to tick.

    Fixed: the plant and planner and their optional capabilities (looked up here, once:
    `runtime.protocols`), the offsets of each tick's instants from its scheduled start, the
    step caps, the buffers. Carried: the newest observation, the episode's bookkeeping, the
    counts. One instance per run.
    """

    __slots__ = (
        "ahead",
        "ahead_buf",
        "ahead_n",
        "bounded",
        "budget",
        "budget_off",
        "cap",
        "clock",
        "cols",
        "counters_before",
        "deadline_off",
        "early",
        "emit_by_off",
        "ep_index",
        "ep_return",
        "ep_seed",
        "ep_ticks",
        "episode_results",
        "episode_start",
        "episodes",
        "estimate_start",
        "fallback",
        "gc_policy",
        "high",
        "hit_diff",
        "hit_have",
        "hit_ok",
        "hit_prev",
        "hit_row",
        "hit_src",
        "hit_ticks",
        "hit_tol",
        "hits",
        "k_local",
        "last",
        "last_seq",
        "levels_fn",
        "low",
        "margin",
        "margin_floor",
        "margin_max",
        "measured_margin",
        "misses",
        "now_ns",
        "obs",
        "observe",
        "out",
        "period",
        "phase_ns",
        "plan_buf",
        "plan_src",
        "plan_t0_off",
        "planner",
        "planner_ready",
        "plant",
        "post_off",
        "pre_cap",
        "predict_fn",
        "progress",
        "realtime",
        "refine_off",
        "reserve_ns",
        "sidecar",
        "slack_gc",
        "stale",
        "steal_before",
        "steps_seen",
        "surprising",
        "switch_before",
        "switch_s",
        "ticker",
        "trace",
        "worker",
    )

    obs: Observation  # the newest observation: the episode's first from `_start`, then `_receive`'s

    def __init__(
        self, loop: ControlLoop, trace: TraceRing, *, episodes: int | None, seed: int
    ) -> None:
        cfg = loop.config
        plant, planner = loop.plant, loop.planner
        self.plant, self.planner, self.clock = plant, planner, loop.clock
        self.now_ns = loop.clock.now_ns  # bound once: the tick path reads the clock ~6 times
        self.budget = loop.budget
        self.trace: TraceRing = trace
        self.cols: TickColumns = trace.cols
        self.fallback = loop.fallback
        self.sidecar = loop.sidecar
        self.progress = loop.progress if loop.progress_every else None
        self.gc_policy = loop.gc_policy
        self.realtime = realtime = cfg.mode == "realtime"
        self.slack_gc = loop.gc_policy if realtime else None  # collects in a realtime tick's slack
        self.period = period = loop.period_ns

        # -- offsets from a tick's scheduled start ----------------------------------------
        phase_ns = 0
        if realtime and cfg.align_to_plant:
            phase_ns = round(cfg.phase_offset_s * 1e9) if cfg.phase_offset_s is not None else min(
                500_000, period // 5
            )
        self.phase_ns = phase_ns
        # Aligned, tick k starts phase_ns after plant tick k: the plant applies at its tick k+1.
        self.deadline_off = period - phase_ns - round(cfg.deadline_margin_s * 1e9)
        self.switch_s = 0.0
        if cfg.refine == "async":
            self.switch_s = cfg.gil_switch_s if cfg.gil_switch_s is not None else min(
                100e-6, period / 20e9
            )
        # async: the tick thread wakes at refine_end and must read the worker's action and send
        # the command before emit_by, while the worker (and an in-process plant's thread) take
        # the GIL in turns with it. It keeps two switch intervals in reserve, and at least a
        # tenth of the period: measured in one process at 100 Hz, the emit took 0.4 ms p50 and
        # 1.3 ms p90 after waking, and a 0.2 ms reserve missed 72-98 % of the ticks.
        self.reserve_ns = round(max(
            cfg.emit_reserve_s, 2 * self.switch_s,
            period / 10e9 if cfg.refine == "async" else 0.0) * 1e9)
        self.budget_off = round(cfg.budget_fraction * period)
        self.margin_floor = self.margin = self.margin_max = round(cfg.transport_margin_s * 1e9)
        self.emit_by_off = self.refine_off = 0
        self.set_margin(self.margin)
        # early emit: where the steps after the command must end (before the next tick's
        # start, less the reserve, within the budget fraction)
        self.post_off = min(self.budget_off, period - self.reserve_ns)
        # plan-ahead: row 0 of a command's plan is for the plant tick after the command's own
        self.plan_t0_off = 2 * period - phase_ns

        # -- steps per tick -----------------------------------------------------------------
        self.cap: int = cfg.steps_per_tick if cfg.steps_per_tick is not None else (
            1 if not realtime else 1 << 30
        )
        # early emit: the steps before the command
        self.early = (cfg.emit_after_steps > 0 or cfg.emit_first) and cfg.refine == "sync"
        self.pre_cap = (0 if cfg.emit_first else min(self.cap, cfg.emit_after_steps)
                        ) if self.early else self.cap

        # -- buffers --------------------------------------------------------------------------
        self.out, self.last, self.low, self.high = loop._out, loop._last, loop._low, loop._high
        self.plan_buf = loop._plan

        # -- optional capabilities, looked up once ---------------------------------------------
        self.plan_src: PlanSource | None = loop.plan_source()
        # the plan hit rate: row 0 of the plan read after each command is the next tick's
        # predicted action (sync mode: in async mode the worker owns the planner)
        self.hit_src: PlanSource | None = (
            planner if isinstance(planner, PlanSource) and cfg.refine == "sync" else None
        )
        self.hit_prev = np.zeros(self.out.size)  # what the plan held for this tick
        self.hit_row = self.plan_buf[:1]  # the one plan row the hit rate reads
        self.hit_diff = np.zeros(self.out.size)  # scratch: |command - prediction|
        self.hit_ok = np.zeros(self.out.size, dtype=bool)
        self.hit_have = False
        self.hit_tol = cfg.plan_hit_tolerance * (self.high - self.low)
        self.hits = self.hit_ticks = 0
        # emit-first with a plan: the command is what the plan holds for this tick as the
        # last tick left it, read at that tick's end (`_read_ahead`) and sent at this one's
        # start, before the observation reaches the planner (`_emit_ahead`); the plan-ahead
        # rows come from the same read
        self.ahead = cfg.emit_first and self.hit_src is not None
        self.ahead_buf = np.zeros((self.plan_buf.shape[0] if self.plan_src is not None else 1,
                                   self.out.size))
        self.ahead_n = 0
        self.surprising: ReportsSurprise | None = (
            planner if isinstance(planner, ReportsSurprise) else None
        )
        self.bounded: BoundedReset | None = (
            planner if isinstance(planner, BoundedReset) and planner.bounded_reset else None
        )
        # noise levels only in sync mode: in async mode the worker owns the planner
        self.levels_fn: Callable[[], FloatArray] | None = (
            planner.noise_levels
            if isinstance(planner, ReportsNoiseLevels) and cfg.refine == "sync" else None
        )
        # the plan's predicted states, likewise, when the sidecar keeps them
        self.predict_fn: Callable[[FloatArray], int] | None = (
            planner.predicted_states_into
            if isinstance(planner, PredictsStates) and cfg.refine == "sync"
            and self.sidecar is not None and self.sidecar.predicted.shape[1] else None
        )
        # A plant behind a link may measure how long its commands take to arrive: the margin
        # follows it (never below the configured one, never over half a period), looked at
        # every 32 ticks.
        self.measured_margin: Callable[[], int | None] | None = (
            plant.transport_margin_ns
            if realtime and isinstance(plant, MeasuresTransport) else None
        )
        # A plant that can wait for a fresh state gets `fresh_wait_s` for it at each tick.
        self.observe: Callable[[], Observation] = plant.observe
        if realtime and isinstance(plant, FreshObservations):
            wait_s = cfg.fresh_wait_s if cfg.fresh_wait_s is not None else min(
                1e-3, period / 5e9
            )
            if wait_s > 0:
                self.observe = functools.partial(plant.next_observation, wait_s)

        # -- carried from tick to tick ------------------------------------------------------
        self.worker: RefineWorker | None = None  # async mode: set by `_start`
        self.ticker: Ticker | None = None  # realtime mode: set by `_start`
        self.episode_start = True  # `obs` starts an episode: the tick does not `observe` it
        # Realtime: the planner already holds `obs` (reset by `_start`), so the first tick does
        # not pay for a second reset (and its warm-up) inside its deadline. Lockstep resets it
        # again in the first tick, where time does not count (the random draws of that second
        # reset are part of every lockstep result).
        self.planner_ready = realtime
        self.last_seq = 0
        self.episodes = episodes
        self.episode_results: list[EpisodeResult] = []
        self.ep_index, self.ep_ticks, self.ep_return, self.ep_seed = 0, 0, 0.0, seed
        self.k_local = 0
        self.misses = 0
        self.stale = 0
        self.steps_seen = 0  # async mode: the worker's step count at the previous tick
        self.counters_before: dict[str, int] = {}
        self.steal_before: float | None = None
        self.switch_before = 0.0
        self.estimate_start = 0

    def set_margin(self, margin_ns: int) -> None:
        """Take `margin_ns` as the transport margin: the command's emit-by and the end of the
        refinement before it move with it."""
        self.margin = margin_ns
        self.margin_max = max(self.margin_max, margin_ns)
        self.emit_by_off = self.deadline_off - margin_ns  # the command must leave by then
        self.refine_off = min(self.emit_by_off - self.reserve_ns, self.budget_off)


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
        self._stop = False  # a stop asked from here on (a signal during the start) holds
        r = _Run(self, self._trace_for(ticks, episodes), episodes=episodes, seed=seed)
        self._start(r)
        t = _Tick()
        wait, receive, hand_over, refine, emit, refine_on, record = (
            self._wait, self._receive, self._hand_over, self._refine, self._emit,
            self._refine_on, self._record,
        )
        emit_ahead, read_ahead, plan_hit = self._emit_ahead, self._read_ahead, self._plan_hit
        ahead = r.ahead
        ticker = r.ticker
        try:
            # `ticks` counts scheduled ticks: a run of S seconds at R Hz ends at tick S*R even
            # if some were skipped (they are counted as misses, not made up for).
            while not self._stop and (
                ticks is None or (ticker.next_k if ticker is not None else r.k_local) < ticks
            ):
                wait(r, t)
                if not receive(r, t):
                    break  # the run's last episode ended
                if ahead and r.ahead_n > 0 and not t.started:
                    refine(r, t)  # no step (emit-first's cap before the command is 0)
                    emit_ahead(r, t)  # the command left; now the planner observes
                    hand_over(r, t)
                    plan_hit(r, 0)
                else:  # (emit-first too, when the last tick's read found no plan)
                    hand_over(r, t)
                    refine(r, t)
                    emit(r, t)
                refine_on(r, t)
                if ahead:
                    read_ahead(r)
                record(r, t)
        finally:
            self._finish(r)
        return self._result(r)

    def _trace_for(self, ticks: int | None, episodes: int | None) -> TraceRing:
        """The loop's trace ring; without one, an in-memory ring large enough for the run."""
        if self.trace is None:
            expected = ticks or (max(self.spec.episode_ticks, 1) * (episodes or 1) + 16)
            self.trace = TraceRing(
                self.spec.action_dim,
                chunk_ticks=1024,
                n_chunks=max(2, math.ceil(expected / 1024) + 1),
            )
        return self.trace

    def _start(self, r: _Run) -> None:
        """Reset plant and planner, warm the planner up, start the worker and the ticks.

        Everything slow happens before the episode's final reset: a realtime plant starts
        moving at that reset, and each millisecond until the first command is uncontrolled.
        A plant's counters run for its lifetime (a served plant outlives many controllers):
        the run reports what changed from just before that reset to its end.
        """
        cfg, plant, planner = self.config, r.plant, r.planner
        r.counters_before = dict(plant.counters())
        r.steal_before = read_steal_s()
        gc_policy = r.gc_policy
        if gc_policy is not None:
            gc_policy.start()  # gc.collect() + freeze: tens of ms with torch loaded
        r.switch_before = sys.getswitchinterval()
        if r.switch_s > 0:
            sys.setswitchinterval(r.switch_s)
        try:
            obs = plant.reset(seed=r.ep_seed)
            planner.reset(obs)
            if cfg.refine == "sync" and cfg.warmup_steps:
                self.warmup(obs)
                # A realtime plant kept moving, uncontrolled, while the planner warmed up (and a
                # remote one may have tripped its watchdog): start the episode afresh. The same
                # seed gives the same initial state and disturbances.
                r.counters_before = dict(plant.counters())  # the warm-up's ticks are not the run's
                obs = plant.reset(seed=r.ep_seed)
                anchor = self._anchor(obs, r.phase_ns) if r.realtime and r.phase_ns else None
                if r.bounded is not None and anchor is not None:
                    # the plant is moving: the first command is due at its first tick
                    r.bounded.reset(
                        obs, budget_ns=anchor + r.refine_off - r.now_ns() - self.budget.estimate_ns
                    )
                else:
                    planner.reset(obs)
            if cfg.refine == "async":
                latest = LatestAction(self.spec.action_dim)  # the worker's hand-over slot
                latest.publish(planner.action(), obs.seq, 0)
                worker = r.worker = RefineWorker(planner, latest, step_budget_ns=r.period)
                worker.mailbox.post(obs, reset=True)
                worker.start()
            if r.realtime:
                ticker = r.ticker = Ticker(self.clock, r.period)
                if r.phase_ns:
                    # the planner's reset may have run past tick 0's start (bounded to end
                    # before its command is due): tick 0 then starts late, its command in time
                    self._align(ticker, obs, r.phase_ns, late_ok_ns=r.refine_off - r.phase_ns)
            r.estimate_start = self.budget.estimate_ns
            r.obs, r.last_seq = obs, obs.seq
        except BaseException:
            if gc_policy is not None:
                gc_policy.stop()  # never leave the process with automatic GC off
            sys.setswitchinterval(r.switch_before)
            raise

    # -- the phases of a tick -------------------------------------------------------------

    def _wait(self, r: _Run, t: _Tick) -> None:
        """Tick start: wait for it (realtime) or start now (lockstep); follow the transport
        margin the plant measures (every 32 ticks); set the tick's deadline, emit-by and
        refine end."""
        ticker = r.ticker
        if ticker is not None:
            ts = ticker.wait()
            k, sched = ts.k, ts.scheduled_ns
            t.start, t.skipped = ts.start_ns, ts.skipped
        else:
            k, sched = r.k_local, r.now_ns()
            t.start, t.skipped = sched, 0
        t.k, t.sched = k, sched
        measured = r.measured_margin
        if measured is not None and not k & 31:
            m = measured()
            if m is not None:
                m = min(max(m, r.margin_floor), r.period // 2)
                if m != r.margin:
                    r.set_margin(m)
        t.deadline = sched + r.deadline_off
        t.emit_by = sched + r.emit_by_off
        t.refine_end = sched + r.refine_off

    def _receive(self, r: _Run, t: _Tick) -> bool:
        """Observe the plant (an episode's first observation is the reset's), count stale
        states and reward, and start the next episode when this one ended. False when the
        run's last episode ended."""
        if not r.episode_start:
            obs = r.obs = r.observe()
            r.stale += obs.stale  # flagged by the plant, never invented; counted
            if obs.seq != r.last_seq:
                r.ep_return += obs.reward
                r.last_seq = obs.seq
            if obs.done and not self._restart_episode(r, t):
                return False
        t.t_obs = r.now_ns()
        t.started = starting = r.episode_start
        if starting:
            r.hit_have = False  # the last episode's plan says nothing about this one
        return True

    def _hand_over(self, r: _Run, t: _Tick) -> None:
        """Hand the observation to the planner: reset it on an episode's first tick (unless
        that is done), post it to the worker (async), or `observe`."""
        starting = t.started
        if starting and r.planner_ready:
            pass  # reset already, by `_start` or `_restart_episode`
        elif r.worker is not None:
            r.worker.mailbox.post(r.obs, reset=starting)
        elif starting:
            r.planner.reset(r.obs)
        else:
            r.planner.observe(r.obs)
        r.episode_start = r.planner_ready = False

    def _restart_episode(self, r: _Run, t: _Tick) -> bool:
        """Close the episode `r.obs` ended and reset the plant for the next, unless it was the
        run's last (then False). Realtime: reset the planner too, and move this tick onto the
        plant's new schedule."""
        r.episode_results.append(
            EpisodeResult(r.ep_index, r.ep_ticks, r.ep_return,
                          bool(r.obs.info.get("success", False)))
        )
        r.ep_index += 1
        if r.episodes is not None and r.ep_index >= r.episodes:
            return False
        r.ep_seed += 1
        obs = r.obs = r.plant.reset(seed=r.ep_seed)
        r.last_seq = obs.seq
        r.ep_ticks, r.ep_return = 0, 0.0
        r.episode_start = True
        if not r.realtime:
            return True  # lockstep resets the planner in `_hand_over`, where time does not count
        # The plant restarted its schedule at the reset: this tick's command is for the
        # plant's first tick of the new episode, so its deadline is that tick's. Reset the
        # planner first (its warm-up counts against that deadline), then move the ticks.
        anchor = self._anchor(obs, r.phase_ns) if r.phase_ns else None
        if r.worker is not None:
            r.worker.mailbox.post(obs, reset=True)
        elif r.bounded is not None and anchor is not None:
            # a planner that can cut its warm-up short gets the time until the first
            # command, less one step for sending it
            r.bounded.reset(
                obs, budget_ns=anchor + r.refine_off - r.now_ns() - r.budget.estimate_ns
            )
        else:
            r.planner.reset(obs)
        r.planner_ready = True
        if anchor is not None and r.ticker is not None:
            # plant ticks the resets already outlasted got no command: skipped, and counted
            # as misses like any skipped tick
            late_by = r.now_ns() - anchor - r.refine_off
            if late_by > 0:
                gone = -(-late_by // r.period)  # ceil
                anchor += gone * r.period
                t.skipped += gone
            t.sched = anchor  # the tick counts from there (lateness >= 0)
            t.deadline = anchor + r.deadline_off
            t.emit_by = anchor + r.emit_by_off
            t.refine_end = anchor + r.refine_off
            r.ticker.realign(anchor + r.period)
        return True

    def _refine(self, r: _Run, t: _Tick) -> None:
        """Refine before the command: while a step fits before `refine_end` (by the tail of
        the ticks' first steps before an early command), up to the cap; async mode waits for
        `refine_end` while the worker refines."""
        t.more = t.blocked = False  # more: early emit may take steps after the command
        t.room = None
        t.steps = 0
        worker = r.worker
        if worker is None:
            if r.early:  # before the command: by the tail; recovery waits for after
                t.more = self._refine_until(r, t, t.refine_end, r.pre_cap, tail=True) != _IDLE
            else:
                t.room = t.refine_end - r.now_ns()
                t.blocked = self._refine_until(r, t, t.refine_end, r.cap, tail=False) == _BLOCKED
            t.refine_ns = t.spent
        else:
            t.refine_ns = 0
            r.clock.sleep_until_ns(t.refine_end)
            worker.check()
        t.t_ref = r.now_ns()

    def _refine_until(self, r: _Run, t: _Tick, end_ns: int, limit: int, *, tail: bool) -> int:
        """Refine while `t.steps < limit` and the budget says a step fits before `end_ns` (by
        the first steps' tail when `tail`: before an early command). Adds the steps to
        `t.steps`, puts the time they took in `t.spent`, and says why it stopped: `_LIMIT`,
        `_BLOCKED` or `_IDLE`."""
        now_ns, budget, planner, realtime = r.now_ns, r.budget, r.planner, r.realtime
        steps, spent, why = t.steps, 0, _LIMIT
        while steps < limit:
            t0 = now_ns()
            left = end_ns - t0
            if realtime and not (
                budget.fits_before_emit(left) if tail else budget.fits(left, steps == 0)
            ):
                why = _BLOCKED
                break
            n = planner.refine(left)
            t1 = now_ns()
            if n <= 0:
                why = _IDLE  # nothing left to refine this tick
                break
            budget.record((t1 - t0) // n, steps == 0)
            spent += t1 - t0
            steps += n
        t.steps, t.spent = steps, spent
        return why

    def _emit(self, r: _Run, t: _Tick) -> None:
        """Build the command and hand it to the plant: the planner's action (the worker's
        newest in async mode), the fallback's if it is not finite or the deadline passed,
        clipped into the limits; the plan for the following plant ticks when plan-ahead is
        on. Counts a miss when it left after `emit_by`."""
        out = r.out
        worker = r.worker
        if worker is not None:  # async: the worker's newest published action
            _, total = worker.latest.read(out)
            t.steps, r.steps_seen = total - r.steps_seen, total
            t.surprise = worker.surprise
            action_ok = _isfinite(out @ out)
        else:
            a = r.planner.action()
            # a @ a is finite iff every element is (NaN and inf propagate; the only false
            # alarm is |a| > 1e154, which is no command to send either).
            action_ok = _isfinite(a @ a)
            if action_ok:
                _copyto(out, a)
        code = self._settle(r, t, action_ok)
        plan_src, plan = r.plan_src, r.plan_buf
        n_plan = plan_src.plan_into(plan) if plan_src is not None and code == CODE_NONE else 0
        self._send(r, t, code, plan[:n_plan] if n_plan else None)
        if r.hit_src is not None:
            self._plan_hit(r, n_plan)

    def _read_ahead(self, r: _Run) -> None:
        """Emit-first, at the tick's end: read the plan as this tick's steps left it; its row
        0 is the next tick's command (`_emit_ahead`). Nothing touches the planner between."""
        src = r.hit_src
        r.ahead_n = src.plan_into(r.ahead_buf) if src is not None else 0

    def _emit_ahead(self, r: _Run, t: _Tick) -> None:
        """Emit-first with a plan, before the planner sees this tick's observation: the
        command is row 0 of the plan as the last tick left it (the action predicted for this
        tick, refined by every step since: `_read_ahead`, which found `r.ahead_n` > 0 rows),
        and the plan-ahead rows the rows after it."""
        buf, n = r.ahead_buf, r.ahead_n
        a = buf[0]
        action_ok = _isfinite(a @ a)
        if action_ok:
            _copyto(r.out, a)
        code = self._settle(r, t, action_ok)
        self._send(r, t, code, buf[1:n] if r.plan_src is not None and code == CODE_NONE
                   and n > 1 else None)

    def _settle(self, r: _Run, t: _Tick, action_ok: bool) -> int:
        """Make `r.out` the command to send: the fallback's action in its place when the
        deadline passed (realtime) or the action is not finite, then clipped into the limits.
        Returns the fallback code (`CODE_NONE`: the planner's own action)."""
        out = r.out
        code = CODE_NONE
        # Past the plant's deadline the command is late whatever the link does: the plant
        # will hold, the trace records what stands in. Inside the transport margin (after
        # emit_by, before the deadline) it is counted a miss in `_send`, but this tick's
        # action still goes out with the true deadline: the plant applies it if it arrives in
        # time (most do: the margin is a p99) and holds if not.
        if r.realtime and t.t_ref > t.deadline:
            code = r.fallback.code
            r.fallback.fill(out, r.last, r.obs.state)
        elif not action_ok:
            code = CODE_NONFINITE
            r.fallback.fill(out, r.last, r.obs.state)
        _maximum(out, r.low, out=out)  # np.clip costs 2 us here, this pair 0.8 us
        _minimum(out, r.high, out=out)
        _copyto(r.last, out)
        return code

    def _send(self, r: _Run, t: _Tick, code: int, plan: FloatArray | None) -> None:
        """Hand the settled command (with `plan`, the rows for the ticks after its own) to the
        plant; count a miss when it left after `emit_by`."""
        t_emit0 = r.now_ns()
        try:
            r.plant.apply(Command(
                t.k, t_emit0, r.out.copy(), t.deadline, FALLBACK_NAMES[code],
                plan, t.sched + r.plan_t0_off, r.period, r.obs.t_ns,
            ))
        except (LateCommand, EpisodeOver):
            # late: the plant counted it, and this tick's miss is counted below; episode over:
            # it ended since the observation, and the next one says done
            pass
        t_emit = t.t_emit = r.now_ns()
        t.code = code
        missed = t.missed = t_emit > t.emit_by
        r.misses += missed

    def _plan_hit(self, r: _Run, n_plan: int) -> None:
        """After the command: was it what the plan held for this tick one tick earlier? Then
        keep row 0 of the plan now (the plan-ahead rows when they went out with the command),
        the prediction for the next tick, before the steps after the command change it."""
        out = r.out
        if r.hit_have:
            r.hit_ticks += 1
            diff, ok = r.hit_diff, r.hit_ok  # preallocated: no array made per tick
            np.subtract(out, r.hit_prev, out=diff)
            np.abs(diff, out=diff)
            np.less_equal(diff, r.hit_tol, out=ok)
            r.hits += bool(ok.all())
        if n_plan:
            _copyto(r.hit_prev, r.plan_buf[0])
            r.hit_have = True
            return
        src = r.hit_src
        # the command's plan buffer is free: plan-ahead did not fill it this tick
        n = src.plan_into(r.hit_row) if src is not None else 0
        if n:
            _copyto(r.hit_prev, r.plan_buf[0])
        r.hit_have = n > 0

    def _refine_on(self, r: _Run, t: _Tick) -> None:
        """Refine after the command (early emit): collect garbage in the slack, then refine
        for the ticks to come until the budget fraction or the reserve before the next tick.
        Then close the tick's budget and read the planner's surprise (sync mode)."""
        if r.worker is not None:
            return
        if t.more and t.steps < r.cap:
            end = t.sched + r.post_off
            if r.slack_gc is not None:
                r.slack_gc.collect_in_slack(end - t.t_emit)
            t.room = end - r.now_ns()
            # (the trace's refine_ns keeps the time before the command only)
            t.blocked = self._refine_until(r, t, end, r.cap, tail=False) == _BLOCKED
        r.budget.end_tick(t.steps, t.blocked, t.room)
        surprising = r.surprising
        t.surprise = surprising.surprise if surprising is not None else 0.0

    def _record(self, r: _Run, t: _Tick) -> None:
        """Write the tick's record into the trace ring (and the sidecar), count the tick,
        report progress, and collect garbage in the slack before the next tick (realtime)."""
        trace, c = r.trace, r.cols
        i = trace.next_slot()
        c.tick[i] = t.k
        c.scheduled_ns[i] = t.sched
        c.start_ns[i] = t.start
        c.observe_ns[i] = t.t_obs
        c.refine_end_ns[i] = t.t_ref
        c.emit_ns[i] = t.t_emit
        c.deadline_ns[i] = t.deadline
        c.refine_ns[i] = t.refine_ns
        c.steps[i] = t.steps
        c.missed[i] = t.missed
        c.lateness_ns[i] = max(0, t.start - t.sched)  # an episode's first tick may be early
        c.skipped[i] = t.skipped
        c.surprise[i] = t.surprise
        c.fallback[i] = t.code
        c.episode[i] = r.ep_index
        c.action[i] = r.out
        trace.commit()
        if r.sidecar is not None:
            levels_fn = r.levels_fn
            r.sidecar.record(r.obs, levels=levels_fn() if levels_fn is not None else None,
                             reset=t.started, predict=r.predict_fn)
        r.k_local += 1
        r.ep_ticks += 1
        if r.progress is not None and r.k_local % self.progress_every == 0:
            r.progress(r.k_local, r.misses, r.episode_results)
        if r.slack_gc is not None:
            r.slack_gc.collect_in_slack(t.sched + r.period - r.now_ns())

    # -- after the run --------------------------------------------------------------------

    def _finish(self, r: _Run) -> None:
        """Stop the worker, restore the interpreter's settings, close the trace."""
        if r.worker is not None:
            r.worker.stop()
        sys.setswitchinterval(r.switch_before)
        if r.gc_policy is not None:
            r.gc_policy.stop()
        r.trace.close()
        if self.sidecar is not None and r.trace.path is not None:
            self.sidecar.save(r.trace.path)

    def _result(self, r: _Run) -> RunResult:
        steal_after = read_steal_s()
        trace = r.trace
        records = trace.records() if trace.path is None else read_trace(trace.path).records
        self._last_records = records
        return RunResult(
            records=records,
            episodes=r.episode_results,
            plant_counters=_counter_delta(r.counters_before, r.plant.counters()),
            period_ns=r.period,
            mode=self.config.mode,
            trace_path=None if trace.path is None else str(trace.path),
            stale_observations=r.stale,
            step_estimate_ns=(r.estimate_start, self.budget.estimate_ns),
            transport_margin_ns=(r.margin_floor, r.margin, r.margin_max),
            steal_s=None if r.steal_before is None or steal_after is None
            else steal_after - r.steal_before,
            plan_hits=(r.hits, r.hit_ticks) if r.hit_src is not None else None,
            plan_hit_tolerance=self.config.plan_hit_tolerance,
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
