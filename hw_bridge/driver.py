"""`Driver`: how a user turns real hardware into a `runtime.Plant`, and an example driver.

A driver says four things, explicitly (the lerobot `Robot` habit): `connect()` opens the
device, `read()` returns the newest measured state and when it was measured, `write(action)`
sends one actuator command, `disconnect()` closes the device. The base class turns those into
the `Plant` protocol (sequence numbers, deadline checks, counters), so the same `PlantServer`
serves a simulator, a test double and an arm. `safe_action(state)` is what the watchdog applies
when the controller goes quiet: hold, damp or zero, per driver (the default is zero effort,
clipped into the action box).

`FirstOrderMotor` is the documented example and the bridge's test plant: a DC motor with a
first-order velocity lag, in pure numpy, exact in continuous time. In `realtime` mode it
evolves with the injected clock between calls (like hardware that keeps moving whether or not
anyone looks); in `lockstep` mode each `apply` advances it by exactly one control period.
"""

from __future__ import annotations

import abc
import math
from typing import Literal

import numpy as np

from runtime.clock import MonotonicClock
from runtime.protocols import Clock, Command, FloatArray, LateCommand, Observation, PlantSpec


class DriverNotConnected(RuntimeError):
    """`read`/`write` before `connect` (or after `disconnect`)."""


class Driver(abc.ABC):
    """Base class for hardware drivers; subclasses implement connect/read/write/disconnect.

    Contract:
    - `read() -> (state (Ds,) float64, t_ns)`: the newest measurement and its time on `clock`.
      It must not invent a reading; if the device has nothing new it returns the last one with
      its original `t_ns` (the base class then flags the observation stale).
    - `write(action (Da,) float64)`: already finite and within the spec's limits (`apply`
      refuses a non-finite or misshapen action with ValueError and clips into the limits, so
      a driver never sees either, whoever calls it).
    - `home(seed)`: bring the device to its start state for `reset` (default: nothing).

    Example:
        class MyArm(Driver):
            def connect(self): self.bus = open_bus("/dev/ttyUSB0")
            def read(self): return self.bus.joint_positions(), self.clock.now_ns()
            def write(self, action): self.bus.set_torques(action)
            def disconnect(self): self.bus.close()
        PlantServer(MyArm(spec), bind="tcp://0.0.0.0:5555", mode="realtime").serve_forever()
    """

    def __init__(self, spec: PlantSpec, *, clock: Clock | None = None) -> None:
        self._spec = spec
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.connected = False
        self._seq = 0
        self._last_t_ns: int | None = None
        self._counts = {"applied": 0, "late": 0, "reads": 0, "stale_reads": 0}

    # -- what a subclass writes ---------------------------------------------------------------

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def read(self) -> tuple[FloatArray, int]: ...

    @abc.abstractmethod
    def write(self, action: FloatArray) -> None: ...

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    def home(self, seed: int | None) -> None:  # noqa: B027 (optional hook, not abstract)
        """Move to the start state; real hardware usually cannot honour a seed."""

    def safe_action(self, state: FloatArray) -> FloatArray:
        """(Ds,) -> (Da,) the action the watchdog applies. Default: zero, clipped into limits."""
        return np.clip(
            np.zeros(self._spec.action_dim), self._spec.action_low, self._spec.action_high
        )

    def reward(self, state: FloatArray) -> float:
        return 0.0

    # -- the Plant protocol -------------------------------------------------------------------

    def spec(self) -> PlantSpec:
        return self._spec

    def reset(self, seed: int | None = None) -> Observation:
        if not self.connected:
            self.connect()
            self.connected = True
        self.home(seed)
        return self.observe()

    def observe(self) -> Observation:
        if not self.connected:
            raise DriverNotConnected(f"{type(self).__name__}.observe before connect")
        state, t_ns = self.read()
        stale = self._last_t_ns is not None and t_ns <= self._last_t_ns
        self._last_t_ns = t_ns
        self._seq += 1
        self._counts["reads"] += 1
        self._counts["stale_reads"] += int(stale)
        return Observation(
            seq=self._seq, t_ns=t_ns, state=state, reward=self.reward(state), stale=stale
        )

    def apply(self, cmd: Command) -> None:
        if not self.connected:
            raise DriverNotConnected(f"{type(self).__name__}.apply before connect")
        sp = self._spec
        action = np.asarray(cmd.action, dtype=np.float64)
        # defence in depth: the loop and the server already refuse or replace these
        if action.shape != (sp.action_dim,) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"command {cmd.seq}: action must be finite with shape ({sp.action_dim},), "
                f"got {action!r}"
            )
        if cmd.deadline_ns > 0 and self.clock.now_ns() > cmd.deadline_ns:
            self._counts["late"] += 1
            raise LateCommand(f"command {cmd.seq} reached the driver after its deadline")
        self.write(np.minimum(np.maximum(action, sp.action_low), sp.action_high))
        self._counts["applied"] += 1

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def close(self) -> None:
        if self.connected:
            self.disconnect()
            self.connected = False


def motor_spec(*, rate_hz: float = 200.0, episode_ticks: int = 200) -> PlantSpec:
    """The example motor's layout: state [position_rad, velocity_rad_s], action [effort] in
    [-1, 1] (normalized voltage), effort rate limited to 50 /s."""
    return PlantSpec(
        name="first-order-motor",
        state_dim=2,
        action_dim=1,
        action_low=np.array([-1.0]),
        action_high=np.array([1.0]),
        rate_hz=rate_hz,
        state_names=("position_rad", "velocity_rad_s"),
        action_names=("effort",),
        max_action_rate_per_s=np.array([50.0]),
        episode_ticks=episode_ticks,
    )


class FirstOrderMotor(Driver):
    """A simulated DC motor: dv/dt = (gain * u - v) / tau, dp/dt = v; goal: position 1 rad.

    Integrated exactly (the first-order lag has a closed form), so the state at any instant is
    a pure function of the commands and when they were written. Safe action: zero effort, which
    lets the lag brake the motor. `last_action` (Da,) and `writes` record what reached the
    "hardware", for tests.

    Example:
        motor = FirstOrderMotor(mode="lockstep")
        obs = motor.reset(seed=0)
        motor.apply(Command(seq=0, t_ns=0, action=np.array([0.5]), deadline_ns=0))
    """

    def __init__(
        self,
        *,
        mode: Literal["lockstep", "realtime"] = "realtime",
        rate_hz: float = 200.0,
        episode_ticks: int = 200,
        gain_rad_s: float = 10.0,
        tau_s: float = 0.05,
        clock: Clock | None = None,
    ) -> None:
        if mode not in ("lockstep", "realtime"):
            raise ValueError(f"{mode=} must be 'lockstep' or 'realtime'")
        if not (tau_s > 0 and math.isfinite(gain_rad_s)):
            raise ValueError(f"{tau_s=} must be > 0 and {gain_rad_s=} finite")
        super().__init__(motor_spec(rate_hz=rate_hz, episode_ticks=episode_ticks), clock=clock)
        self.mode = mode
        self.gain_rad_s = gain_rad_s
        self.tau_s = tau_s
        self.goal_rad = 1.0
        self._x = np.zeros(2)  # (2,) [position_rad, velocity_rad_s]
        self._t_ns = 0  # when _x was last brought up to date (realtime) / sim time (lockstep)
        self._ticks = 0
        self.last_action = np.zeros(1)  # (1,)
        self.writes = 0

    def connect(self) -> None:
        self._t_ns = self.clock.now_ns() if self.mode == "realtime" else 0

    def disconnect(self) -> None:
        pass

    def home(self, seed: int | None) -> None:
        rng = np.random.default_rng(seed)
        self._x = np.array([rng.uniform(-0.5, 0.5), 0.0])
        self.last_action = np.zeros(1)
        self._ticks = 0
        self._t_ns = self.clock.now_ns() if self.mode == "realtime" else 0

    def _advance(self, dt_s: float) -> None:
        u = self.last_action.item(0)
        v_inf = self.gain_rad_s * u
        p0, v0 = self._x.tolist()
        decay = math.exp(-dt_s / self.tau_s)
        v = v_inf + (v0 - v_inf) * decay
        p = p0 + v_inf * dt_s + (v0 - v_inf) * self.tau_s * (1.0 - decay)
        self._x = np.array([p, v])

    def read(self) -> tuple[FloatArray, int]:
        if self.mode == "realtime":
            now = self.clock.now_ns()
            if now > self._t_ns:
                self._advance((now - self._t_ns) * 1e-9)
                self._t_ns = now
        return self._x.copy(), self._t_ns

    def write(self, action: FloatArray) -> None:
        if self.mode == "realtime":
            self.read()  # bring the state up to now under the old action first
            self.last_action = np.array(action, dtype=np.float64)
        else:
            self.last_action = np.array(action, dtype=np.float64)
            self._advance(self._spec.period_s)
            self._t_ns += self._spec.period_ns
            self._ticks += 1
        self.writes += 1

    def reward(self, state: FloatArray) -> float:
        return -float((state[0] - self.goal_rad) ** 2)

    def observe(self) -> Observation:
        obs = super().observe()
        n = self._spec.episode_ticks
        obs.truncated = self.mode == "lockstep" and n > 0 and self._ticks >= n
        if self.mode == "lockstep":
            obs.stale = False  # sim time moves only with apply; a repeat read is not stale
        return obs
