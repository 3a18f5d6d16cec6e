"""`MujocoPlant`: any registered task as a `runtime.Plant`, in lockstep or realtime mode.

Lockstep: `apply(cmd)` steps physics one control period and returns; the plant waits for the
controller, so a run is deterministic under its seed.

Realtime: physics is paced on a clock (a `MonotonicClock` by default) at the task rate by a
background thread. Each plant tick (`step_realtime_tick`) applies the newest command it holds
and steps physics one period. The plant is the ground truth for deadline misses:

- a command whose `apply()` happens after its `deadline_ns` (plant clock) is never applied;
  it is counted in `late`;
- a command older (by `seq`) than one already held is dropped and counted in `stale`;
- a command replaced by a newer one before any tick used it is counted in `superseded`;
- a command that arrives after the episode ended (the episode can end between a controller's
  observation and its command) is refused with `runtime.EpisodeOver` and counted in
  `after_end`;
- a tick with no fresh command holds the previous action (the neutral action before the
  first command) and is counted in `held`;
- a tick that starts more than one period after its schedule is counted in `overruns` (the
  plant itself fell behind; it then catches up, tick after tick, so simulated time keeps
  tracking the clock).

Plan-ahead (`runtime.planfeed`): a command may carry the planner's actions for the next ticks.
A tick with no fresh command applies the newest accepted plan's action for that tick (counted
`plan_fed`) before it falls back to holding (`fallback`); a command marked `watchdog` (a plant
server's safe action) is held as `safe`; ticks before the first command of an episode are
`dry`. Each tick also records the age of what it applied (`runtime.planfeed.ApplyLog`).

The thread calls `step_realtime_tick()`; tests construct the plant with `run_thread=False`
and a `FakeClock` and call it themselves, so the accounting is checked without sleeping.
When an episode ends the realtime plant stops stepping physics until `reset()`.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np

from runtime import (
    Clock,
    Command,
    EpisodeOver,
    LateCommand,
    MonotonicClock,
    Observation,
    PlantSpec,
)
from runtime.planfeed import DRY, FALLBACK, FRESH, PLAN_FED, SAFE, ApplyLog, PlanFeed
from runtime.stats import IntRing
from sims.registry import make_task_env
from sims.tasks.base import TaskInfo


class PlantEnv(Protocol):
    """What the plant needs of an env: a `TaskEnv` or `sims.generic.GymEnv`."""

    task: TaskInfo
    last_executed: np.ndarray

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]: ...

    def neutral_action(self) -> np.ndarray: ...

    def close(self) -> None: ...


_COUNTERS = ("ticks", "applied", "late", "held", "stale", "superseded", "overruns", "episodes",
             "after_end")


class MujocoPlant:
    """A simulated plant for task `task`.

    Example:
        plant = MujocoPlant("double-pendulum", seed=0)
        obs = plant.reset()
        plant.apply(Command(seq=0, t_ns=0, action=np.zeros(1), deadline_ns=2**62))
        obs = plant.observe()             # obs.state (6,)
    """

    def __init__(
        self,
        task: str | None = None,
        *,
        env: PlantEnv | None = None,
        mode: str = "lockstep",
        clock: Clock | None = None,
        seed: int = 0,
        rate_hz: float | None = None,
        disturbances: bool = True,
        run_thread: bool = True,
        plan_max_age_s: float | None = None,
        **task_config: Any,
    ) -> None:
        if mode not in ("lockstep", "realtime"):
            raise ValueError(f"{mode=} must be 'lockstep' or 'realtime'")
        self.mode = mode
        if env is None:
            if task is None:
                raise ValueError("MujocoPlant needs a task name or an env")
            env = make_task_env(task, disturbances=disturbances, rate_hz=rate_hz, **task_config)
        elif task is not None or task_config:
            raise ValueError("MujocoPlant takes a task name (and its settings) or an env, not both")
        self._env: PlantEnv = env
        self._spec = self._env.task.spec()
        self._period_ns = self._spec.period_ns
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._seed = seed
        self._seeded = False
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._seq = 0
        self._obs: Observation | None = None
        self._action = self._env.neutral_action()  # (Da,) the action held by the actuator
        self._pending: Command | None = None
        self._last_seq = -1
        self._next_tick_ns = 0
        self._t0_ns = 0
        self._episode_ticks = 0
        self._running = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._run_thread = run_thread
        # realtime: tick start minus its schedule (ns), the newest 1e6 ticks
        self.tick_lateness_ns = IntRing(1 << 18)
        sp = self._spec
        self._feed = PlanFeed(
            sp.action_dim, low=sp.action_low, high=sp.action_high,
            max_rate_per_s=sp.max_action_rate_per_s,
            max_age_ns=None if plan_max_age_s is None else round(plan_max_age_s * 1e9),
        )
        self._log = ApplyLog()
        self._source = DRY  # what holding `_action` counts as: DRY, FALLBACK or SAFE
        self._held_obs_ns: int | None = None  # the observation behind the held action

    @property
    def executes_plans(self) -> bool:
        """Realtime only: in lockstep each command steps the plant, nothing is ever late."""
        return self.mode == "realtime"

    def apply_counters(self) -> dict[str, int]:
        with self._lock:
            return self._apply_counters()

    def _apply_counters(self) -> dict[str, int]:
        out = self._log.counters()
        out.update(self._feed.counts)
        return out

    # ------------------------------------------------------------------ Plant API

    def spec(self) -> PlantSpec:
        return self._spec

    @property
    def env(self) -> Any:
        """The env being stepped: a `TaskEnv` for built-in tasks and `mjcf:` models, a
        `sims.generic.GymEnv` for `gym:` envs."""
        return self._env

    def reset(self, seed: int | None = None) -> Observation:
        """Start an episode; the first reset uses the constructor's seed unless one is given."""
        if seed is None and not self._seeded:
            seed = self._seed
        self._seeded = True
        with self._lock:
            obs, info = self._env.reset(seed=seed)
            self._action = self._env.neutral_action()
            self._pending = None
            self._feed.clear()
            self._source, self._held_obs_ns = DRY, None
            self._last_seq = -1
            self._counts["episodes"] += 1
            now = self._clock.now_ns()
            self._obs = self._make_obs(obs, 0.0, False, False, info, now)
            self._t0_ns = now
            self._episode_ticks = 0
            self._next_tick_ns = now + self._period_ns
            if self.mode == "realtime":
                self._running.set()
        if self.mode == "realtime" and self._run_thread and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mujoco-plant", daemon=True)
            self._thread.start()
        return self._copy_obs()

    def observe(self) -> Observation:
        if self._obs is None:
            raise RuntimeError("observe() before reset()")
        with self._lock:
            return self._copy_obs()

    def apply(self, cmd: Command) -> None:
        action = np.asarray(cmd.action, dtype=np.float64)
        if action.shape != (self._spec.action_dim,) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"command {cmd.seq}: action must be finite with shape "
                f"({self._spec.action_dim},), got {action!r}"
            )
        if self._obs is None:
            raise RuntimeError("apply() before reset()")
        if self.mode == "lockstep":
            with self._lock:
                if self._obs.done:
                    raise RuntimeError("apply() after the episode ended; call reset()")
                self._counts["applied"] += 1
                self._step(action)
            return
        with self._lock:
            if self._obs.done and cmd.fallback != "watchdog":
                # the plant stands still until reset: say so rather than take a command it
                # would never execute (the server answers `plant_error`)
                self._counts["after_end"] += 1
                raise EpisodeOver("apply() after the episode ended; send reset")
            if self._clock.now_ns() > cmd.deadline_ns:
                self._counts["late"] += 1
                raise LateCommand(f"command {cmd.seq} reached the plant after its deadline")
            if cmd.seq <= self._last_seq:
                self._counts["stale"] += 1
                return
            if self._pending is not None:
                self._counts["superseded"] += 1
            self._last_seq = cmd.seq
            self._pending = Command(cmd.seq, cmd.t_ns, action.copy(), cmd.deadline_ns,
                                    cmd.fallback, obs_t_ns=cmd.obs_t_ns, src_seq=cmd.src_seq)
            self._feed.accept(cmd)  # copies the plan; a command without one clears it

    def counters(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._counts)
            if self.mode == "realtime":
                out.update(self._apply_counters())
            return out

    def close(self) -> None:
        self._stop.set()
        self._running.set()  # wake the thread so it sees the stop
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._env.close()

    def __enter__(self) -> MujocoPlant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ realtime

    @property
    def next_tick_ns(self) -> int:
        """When the next realtime tick is scheduled (plant clock)."""
        return self._next_tick_ns

    def pacing(self) -> dict[str, float]:
        """Simulated vs clock time since the last reset (realtime): sim_s, wall_s, ratio."""
        with self._lock:
            sim_s = self._episode_ticks * self._spec.period_s
            wall_s = (self._clock.now_ns() - self._t0_ns) * 1e-9
        return {"sim_s": sim_s, "wall_s": wall_s, "ratio": sim_s / wall_s if wall_s else 0.0}

    def step_realtime_tick(self) -> bool:
        """One realtime plant tick: apply the newest held command (or hold), step physics.

        Returns False (and does nothing) when the episode is over or not started, or when the
        clock has not reached the scheduled tick yet.
        """
        with self._lock:
            if self._obs is None or self._obs.done:
                return False
            now = self._clock.now_ns()
            scheduled = self._next_tick_ns
            if now < scheduled:  # not due (a reset moved the schedule while we slept)
                return False
            self.tick_lateness_ns.append(now - scheduled)
            if now - scheduled > self._period_ns:
                self._counts["overruns"] += 1
            self._next_tick_ns = scheduled + self._period_ns
            pending, log = self._pending, self._log
            if pending is not None:
                action = pending.action
                self._pending = None
                self._counts["applied"] += 1
                self._held_obs_ns = pending.obs_t_ns
                self._source = SAFE if pending.fallback == "watchdog" else FALLBACK
                log.record(SAFE if self._source == SAFE else FRESH, self._age(scheduled))
            else:
                planned = (
                    self._feed.action_for(scheduled, self._action)
                    if self._source == FALLBACK else None
                )
                if planned is not None:
                    action = planned.copy()
                    self._held_obs_ns = self._feed.obs_t_ns
                    log.record(PLAN_FED, scheduled - self._feed.obs_t_ns)
                else:
                    action = self._action
                    self._counts["held"] += 1
                    log.record(self._source, self._age(scheduled))
            # The state this tick computes is stamped with the tick's scheduled instant, not
            # the moment the step finished: controllers align to it, and their deadline
            # (stamp + period) is then exactly this plant's next tick.
            self._step(action, scheduled)
            if self._obs.done:
                self._running.clear()
            return True

    def _age(self, tick_ns: int) -> int | None:
        """How old the information behind the held action is at `tick_ns`; None when unknown
        (no command yet, a safe action, a command without its observation's time)."""
        if self._source != FALLBACK or self._held_obs_ns is None:
            return None
        return tick_ns - self._held_obs_ns

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._running.wait(timeout=0.05):
                continue
            if self._stop.is_set():
                break
            # ticks are scheduled at t0 + k * period, k >= 1 (t0 = the reset)
            self._clock.sleep_until_ns(self._next_tick_ns)
            self.step_realtime_tick()

    # ------------------------------------------------------------------ internals

    def _step(self, action: np.ndarray, t_ns: int | None = None) -> None:
        obs, reward, terminated, truncated, info = self._env.step(action)
        self._action = action
        self._counts["ticks"] += 1
        self._episode_ticks += 1
        stamp = self._clock.now_ns() if t_ns is None else t_ns
        self._obs = self._make_obs(obs, reward, terminated, truncated, info, stamp)

    def _make_obs(
        self,
        obs: dict[str, np.ndarray],
        reward: float,
        terminated: bool,
        truncated: bool,
        info: dict[str, Any],
        t_ns: int,
    ) -> Observation:
        self._seq += 1
        info = dict(info)
        info["executed"] = self._env.last_executed.copy()
        return Observation(
            seq=self._seq,
            t_ns=t_ns,
            state=obs["state"],
            goal=obs.get("goal", np.zeros(0)),
            reward=float(reward),
            terminated=bool(terminated),
            truncated=bool(truncated),
            info=info,
        )

    def _copy_obs(self) -> Observation:
        o = self._obs
        if o is None:
            raise RuntimeError("no observation before reset()")
        return Observation(
            seq=o.seq,
            t_ns=o.t_ns,
            state=o.state.copy(),
            goal=o.goal.copy(),
            reward=o.reward,
            terminated=o.terminated,
            truncated=o.truncated,
            stale=o.stale,
            info=dict(o.info),
        )


def make_plant(task: str, **kw: Any) -> MujocoPlant:
    """`MujocoPlant(task, **kw)`; a task name given as "sim:TASK" is accepted too."""
    if task.startswith("sim:"):
        task = task[4:]
    return MujocoPlant(task, **kw)
