"""The contracts every part of rtdiff plugs into: `Clock`, `Plant`, `Planner` and their records.

`runtime` is the floor of the project: it imports none of torch, mujoco, gymnasium or zmq.
A MuJoCo simulation (`sims`), the ZeroMQ client (`hw_bridge`) and a user's hardware driver all
implement `Plant`; the rolling diffusion planner, the chunked baselines and the task experts all
implement `Planner`. The `ControlLoop` talks only to these protocols.

Optional capabilities are protocols of their own (`PlanSource`, `ExecutesPlans`, and the
planner and plant capabilities at the end of this module). A run checks them once, at its
start, with `isinstance` (and the declared flag where the protocol has one), never per tick.

Units live in names: `*_ns` are integer nanoseconds on the clock that made them, `*_s` are float
seconds, `rate_hz` is ticks per second.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating[Any]]


@runtime_checkable
class Clock(Protocol):
    """A monotonic time source in integer nanoseconds.

    `MonotonicClock` reads `time.perf_counter_ns`; `FakeClock` moves only when told, so timing
    logic is tested without sleeping on the real clock.
    """

    def now_ns(self) -> int: ...

    def sleep_until_ns(self, t_ns: int) -> None: ...


@dataclass(frozen=True)
class PlantSpec:
    """What a plant looks like: observation/action layout, limits and control rate.

    `state_dim` is the size of `Observation.state` (Ds), `action_dim` the size of
    `Command.action` (Da), `goal_dim` the size of `Observation.goal` (Dg, 0 when the task has
    no goal). `action_low`/`action_high` are (Da,) float64 limits that every command is clipped
    to; `max_action_rate_per_s` (Da,) optionally bounds how fast a command may change.
    """

    name: str
    state_dim: int
    action_dim: int
    action_low: FloatArray
    action_high: FloatArray
    rate_hz: float
    goal_dim: int = 0
    state_names: tuple[str, ...] = ()
    action_names: tuple[str, ...] = ()
    max_action_rate_per_s: FloatArray | None = None
    episode_ticks: int = 0  # ticks per episode before truncation; 0 = unbounded

    def __post_init__(self) -> None:
        if self.state_dim <= 0 or self.action_dim <= 0 or self.goal_dim < 0:
            raise ValueError(
                f"dims must be positive: {self.state_dim=}, {self.action_dim=}, {self.goal_dim=}"
            )
        if not (self.rate_hz > 0 and np.isfinite(self.rate_hz)):
            raise ValueError(f"{self.rate_hz=} must be a positive finite rate")
        low = np.asarray(self.action_low, dtype=np.float64)
        high = np.asarray(self.action_high, dtype=np.float64)
        if low.shape != (self.action_dim,) or high.shape != (self.action_dim,):
            raise ValueError(
                f"action limits must have shape ({self.action_dim},): {low.shape=}, {high.shape=}"
            )
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low <= high)):
            raise ValueError(f"action limits must be finite with low <= high: {low=}, {high=}")
        object.__setattr__(self, "action_low", low)
        object.__setattr__(self, "action_high", high)

    @property
    def period_ns(self) -> int:
        return round(1e9 / self.rate_hz)

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz


@dataclass
class Observation:
    """One reading of the plant.

    `seq` increases by one per reading of a stream; `t_ns` is when the state was measured, on
    the plant's clock (the bridge maps it to the controller's). `state` (Ds,) and `goal` (Dg,)
    are float64. `stale` is True when the plant could not deliver a fresh reading (a remote
    plant that heard nothing new): the state is then the last one received, never invented.
    `reward`, `terminated`, `truncated` follow gymnasium; `info` carries task extras such as
    `success` (bool, at episode end) and recorded disturbances.
    """

    seq: int
    t_ns: int
    state: FloatArray
    goal: FloatArray = field(default_factory=lambda: np.zeros(0))
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    stale: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


@dataclass
class Command:
    """What the controller wants applied for tick `seq`.

    `action` (Da,) float64, already finite and within the plant's limits when it leaves a
    `ControlLoop`. `t_ns` is when it was emitted; `deadline_ns` the last instant at which the
    plant may apply it (later, the plant discards it and counts a miss). `fallback` names the
    fallback that produced the action ("" when the planner did).

    Plan-ahead (optional): `plan` (N, Da) holds the planner's actions for the plant's next
    ticks, row `j` for the tick at `plan_t0_ns + j * plan_dt_ns`; a plant that executes plans
    (`runtime.planfeed`) applies them on ticks where no fresh command arrived in time.
    `obs_t_ns` is when the observation behind the action and plan was measured (the age of
    what the plant applies counts from it); None when unknown. A plan is the sender's buffer:
    a plant that keeps it copies it.

    `src_seq`: on the plant side of the bridge, the controller's own `seq` of the message this
    command came from (`ServerCore` sets it; `seq` there is the server's order), so an audit
    at the plant can tell which controller command it applied; -1 elsewhere.
    """

    seq: int
    t_ns: int
    action: FloatArray
    deadline_ns: int
    fallback: str = ""
    plan: FloatArray | None = None
    plan_t0_ns: int = 0
    plan_dt_ns: int = 0
    obs_t_ns: int | None = None
    src_seq: int = -1


class LateCommand(Exception):
    """Raised by a realtime `Plant.apply` for a command whose deadline had passed when it
    reached the plant (counted in the plant's `late`), so that whoever handed it over (the
    bridge's server) knows it was not applied."""


class EpisodeOver(RuntimeError):
    """Raised by a realtime `Plant.apply` for a command that reached it after its episode
    ended: the plant stands still until a reset and applies nothing. Routine on a plant with
    its own clock (the episode can end between a controller's observation and its command);
    the next observation says `done`. The bridge's server answers it `plant_error`."""


@runtime_checkable
class Plant(Protocol):
    """What the controller talks to: a simulation, a remote link, or a hardware driver.

    In lockstep mode `apply` advances the plant by one control period before returning. In
    realtime mode the plant runs on its own clock and applies, at each of its ticks, the newest
    command it holds whose deadline has not passed; `counters()` then reports what the plant
    itself saw (at least `applied` and `late`, the ground truth for deadline misses). A command
    already late on arrival is counted `late` and refused with `LateCommand`.
    """

    def spec(self) -> PlantSpec: ...

    def reset(self, seed: int | None = None) -> Observation: ...

    def observe(self) -> Observation: ...

    def apply(self, cmd: Command) -> None: ...

    def counters(self) -> dict[str, int]: ...

    def close(self) -> None: ...


@runtime_checkable
class ExecutesPlans(Protocol):
    """A plant that applies a command's plan itself on its ticks (`MujocoPlant` in realtime).

    A plant server serving one leaves the plan to it; for any other plant (a `Driver` writes
    each command on arrival and has no ticks of its own) the server feeds the plan on its own
    ticks. `executes_plans` may be False for a plant that has the method but not the mode
    (lockstep). `apply_counters()` are the `runtime.planfeed` counts of what it applied."""

    executes_plans: bool

    def apply_counters(self) -> dict[str, int]: ...


@runtime_checkable
class PlanSource(Protocol):
    """A planner that holds a plan for the ticks after the current one.

    `plan_into(out)` writes the actions it plans for the next plant ticks into `out` (rows
    for ticks 1, 2, ... after the current tick's, at the rate the loop runs, in the plant's
    units) and returns how many rows it wrote (0: no plan now). It runs once per tick after
    `action()`, so it must be cheap and must not allocate on the per-tick path."""

    def plan_into(self, out: FloatArray) -> int: ...


@runtime_checkable
class Planner(Protocol):
    """An anytime planner: it always has an action, and more compute makes it better.

    - `reset(obs)`: start an episode from `obs`.
    - `observe(obs)`: advance the plan to the new tick and take in the observation.
    - `refine(budget_ns) -> steps_done`: do one unit of work (one denoising step for the
      rolling planner; a whole blocking chunk for the chunked baseline) if it is needed, and say
      how many steps it did; 0 means "nothing more to do this tick". `budget_ns` is the time left
      before the deadline; the `ControlLoop` decides from its latency estimate whether to call.
    - `action() -> (Da,)`: the best current estimate, available at any time in O(1), even if
      `refine` was never called since `observe`.
    """

    def reset(self, obs: Observation) -> None: ...

    def observe(self, obs: Observation) -> None: ...

    def refine(self, budget_ns: int) -> int: ...

    def action(self) -> FloatArray: ...


# -- optional planner capabilities ----------------------------------------------------------


@runtime_checkable
class Anytime(Protocol):
    """A planner whose every refine step leaves a valid plan and action, when `anytime` is
    True: the loop may send the command after a tick's first step and refine on for the
    ticks to come (`LoopConfig.emit_after_steps`; `rtdiff run` picks it in realtime)."""

    anytime: bool


@runtime_checkable
class BoundedReset(Protocol):
    """A planner whose reset fits a time budget, when `bounded_reset` is True.

    `reset(obs, budget_ns=...)` cuts its warm-up short once the next step would not fit
    (after at least one step); `budget_ns=None` is the full reset. The loop passes a budget
    at realtime episode starts, where the plant is already moving."""

    bounded_reset: bool

    def reset(self, obs: Observation, *, budget_ns: int | None = None) -> None: ...


@runtime_checkable
class ReportsSurprise(Protocol):
    """A planner that measures how far its observation was from its plan at `observe`
    (`surprise`, planner-defined, unitless); the trace records it every tick."""

    surprise: float


@runtime_checkable
class ReportsNoiseLevels(Protocol):
    """A planner with per-token noise levels: `noise_levels()` returns them (a planner-owned
    array, overwritten later) for the sidecar beside a trace."""

    def noise_levels(self) -> FloatArray: ...


@runtime_checkable
class PredictsStates(Protocol):
    """A planner whose plan holds the states it expects, for the sidecar beside a trace.

    `predicted_states_into(out)` writes the plan's predicted states into `out` (rows, Ds):
    row `i` for tick `i + 1` after the current one, at the rate the loop runs, in the plant's
    units, and returns how many rows it wrote (0: no plan now; never more than `out` has). A
    row the plan predicts nothing for (its tokens lie further apart than the loop's ticks,
    `policies.tokenrate`) is NaN. `predicted_ticks` is the most rows it ever writes. The loop
    calls it once per tick after the tick's refine steps, only when it records a sidecar, so
    it must be cheap and must not allocate on the per-tick path."""

    predicted_ticks: int

    def predicted_states_into(self, out: FloatArray) -> int: ...


@runtime_checkable
class Refreshes(Protocol):
    """A planner that takes in a fresh state without moving its plan: `refresh(obs)` for the
    ticks between plan tokens (`policies.tokenrate`). True when something changed."""

    def refresh(self, obs: Observation) -> bool: ...


@runtime_checkable
class Closes(Protocol):
    """A planner that holds resources (a worker thread, a device) until `close()`."""

    def close(self) -> None: ...


# -- optional plant capabilities ------------------------------------------------------------


@runtime_checkable
class FreshObservations(Protocol):
    """A plant that can wait for a new state: `next_observation(timeout_s)` returns one newer
    than the last it returned, or the last one (flagged stale) after `timeout_s` (the
    bridge's `RemotePlant`; `LoopConfig.fresh_wait_s`)."""

    def next_observation(self, timeout_s: float) -> Observation: ...


@runtime_checkable
class MeasuresTransport(Protocol):
    """A plant behind a link that measures how long commands take to reach the plant:
    `transport_margin_ns()` is how long before its deadline a command should leave, or None
    while nothing is measured. The loop's transport margin follows it."""

    def transport_margin_ns(self) -> int | None: ...


@runtime_checkable
class KeepsAlive(Protocol):
    """A plant whose session needs tending: `with plant.kept_alive():` keeps it (and its
    control lease) alive while the caller does slow set-up work without touching it."""

    def kept_alive(self) -> AbstractContextManager[Any]: ...
