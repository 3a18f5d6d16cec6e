"""`TaskInfo` (a task stated in one place) and `TaskEnv`, the gymnasium base of every task.

A task env owns a MuJoCo model and data and runs `n_substeps` physics steps per control tick.
The observation is a dict: `state` (Ds,) float64, the task's state vector with the goal left
out (sensor noise added when that disturbance is on), and `goal` (Dg,) when the task has one.
The goal is kept apart because the controller conditions on it while the planner predicts the
state: a goal that jumps is a new condition, not a surprising state.

Disturbances are drawn by a `Disturber` seeded from the episode seed (see `sims.disturbances`)
and reported in `info` on the tick they act: `info["push"]` (3,) N, `info["goal_switch"]` (Dg,)
the new goal. The env also keeps them in `last_push_n` / `last_goal_switch` for recorders.
`info["success"]` (bool) appears on the tick the episode ends (terminated or truncated).

The control rate can be changed at construction (`rate_hz=`): the physics timestep is scaled
so that `n_substeps` steps still make one control period, and the episode keeps its duration.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from typing import Any

import gymnasium
import mujoco
import numpy as np
from gymnasium import spaces

from runtime import PlantSpec
from sims.disturbances import DisturbanceConfig, Disturber, resolve_disturbances


@dataclass(frozen=True)
class TaskInfo:
    """A task stated in one place: rate, episode length, limits, sizes, success and disturbances."""

    name: str
    description: str
    rate_hz: float  # control rate
    episode_ticks: int  # control ticks before truncation
    action_low: tuple[float, ...]  # (Da,)
    action_high: tuple[float, ...]  # (Da,)
    state_dim: int  # Ds, goal excluded
    goal_dim: int  # Dg, 0 when the task has no goal
    success_metric: str  # what `info["success"]` means, in words
    expert: str  # what the expert is, in words
    disturbances: DisturbanceConfig = field(default_factory=DisturbanceConfig)
    state_names: tuple[str, ...] = ()
    action_names: tuple[str, ...] = ()
    dart_prob: float = 0.3  # share of ticks executing a perturbed action when collecting
    dart_noise: float = 0.3  # perturbation std as a fraction of the action half-range

    def __post_init__(self) -> None:
        if not (self.rate_hz > 0 and np.isfinite(self.rate_hz)):
            raise ValueError(f"{self.rate_hz=} must be a positive finite rate")
        if self.episode_ticks <= 0:
            raise ValueError(f"{self.episode_ticks=} must be > 0")
        if len(self.action_low) != len(self.action_high) or not self.action_low:
            raise ValueError(f"{self.action_low=} and {self.action_high=} must match, non-empty")
        if self.state_dim <= 0 or self.goal_dim < 0:
            raise ValueError(f"{self.state_dim=} must be > 0 and {self.goal_dim=} >= 0")
        if self.state_names and len(self.state_names) != self.state_dim:
            raise ValueError(f"{len(self.state_names)=} != {self.state_dim=}")
        if not (0.0 <= self.dart_prob <= 1.0) or self.dart_noise < 0:
            raise ValueError(f"{self.dart_prob=} must be in [0, 1] and {self.dart_noise=} >= 0")

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz

    @property
    def episode_s(self) -> float:
        return self.episode_ticks / self.rate_hz

    def spec(self) -> PlantSpec:
        return PlantSpec(
            name=self.name,
            state_dim=self.state_dim,
            action_dim=self.action_dim,
            action_low=np.array(self.action_low, dtype=np.float64),
            action_high=np.array(self.action_high, dtype=np.float64),
            rate_hz=self.rate_hz,
            goal_dim=self.goal_dim,
            state_names=self.state_names,
            action_names=self.action_names,
            episode_ticks=self.episode_ticks,
        )

    def with_rate(self, rate_hz: float) -> TaskInfo:
        """The same task controlled at `rate_hz`, episode duration kept."""
        if not (self.rate_hz / 10 <= rate_hz <= self.rate_hz * 10):
            raise ValueError(
                f"{rate_hz=} for task {self.name!r} must be within 10x of its "
                f"native {self.rate_hz} Hz"
            )
        ticks = max(1, round(self.episode_ticks * rate_hz / self.rate_hz))
        return replace(self, rate_hz=float(rate_hz), episode_ticks=ticks)


class TaskEnv(gymnasium.Env[dict[str, np.ndarray], np.ndarray]):
    """Base of every task: seeded resets, disturbances, truncation, success at episode end.

    Subclasses build `model`/`data` and implement `_init_episode`, `_state`, `_goal`,
    `_reward`, `_terminal`, `_success`, `write_state`; optionally `_switch_goal`, `_on_tick`
    and `mpc_cost` (for the sampling MPC).

    Example:
        env = sims.make_env("double-pendulum", seed=0)
        obs, info = env.reset(seed=0)     # obs["state"] (6,)
        obs, r, term, trunc, info = env.step(np.zeros(1))
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's convention)

    def __init__(
        self,
        task: TaskInfo,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        *,
        n_substeps: int,
        push_body: str | None,
        disturbances: bool | DisturbanceConfig | dict[str, Any] = True,
        rate_hz: float | None = None,
        xml: str = "",
    ) -> None:
        if n_substeps <= 0:
            raise ValueError(f"{n_substeps=} must be > 0")
        if rate_hz is not None and rate_hz != task.rate_hz:
            scale = task.rate_hz / rate_hz
            task = task.with_rate(rate_hz)
            model.opt.timestep *= scale
        self.task = task
        self.model = model
        self.data = data
        self.n_substeps = n_substeps
        self.dist_cfg = resolve_disturbances(task.disturbances, disturbances)
        self.xml = xml  # the model's MJCF text (`sims.generic.export_task`); empty: unknown
        self._push_body = -1  # no body to push: pushes are drawn but act on nothing
        if push_body is not None:
            self._push_body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, push_body)
            if self._push_body < 0:
                raise ValueError(f"{push_body=} is not a body of the {task.name!r} model")
        self._low = np.array(task.action_low, dtype=np.float64)
        self._high = np.array(task.action_high, dtype=np.float64)
        self.action_space = spaces.Box(self._low, self._high, dtype=np.float64)
        obs_spaces: dict[str, spaces.Space[Any]] = {
            "state": spaces.Box(-np.inf, np.inf, shape=(task.state_dim,), dtype=np.float64)
        }
        if task.goal_dim > 0:
            obs_spaces["goal"] = spaces.Box(
                -np.inf, np.inf, shape=(task.goal_dim,), dtype=np.float64
            )
        self.observation_space = spaces.Dict(obs_spaces)  # type: ignore[assignment]
        self._disturber = Disturber(
            self.dist_cfg,
            rate_hz=task.rate_hz,
            state_dim=task.state_dim,
            action_dim=task.action_dim,
        )
        self.tick = 0
        self.last_push_n = np.zeros(3)  # (3,) push force in N during the last tick
        self.last_goal_switch = False
        self.last_executed = np.zeros(task.action_dim)  # (Da,) what acted in the last tick
        self._over = True

    # ----------------------------------------------------------------- gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        dist_seed = int(self.np_random.integers(2**62))
        mujoco.mj_resetData(self.model, self.data)
        self._init_episode(self.np_random, options or {})
        mujoco.mj_forward(self.model, self.data)
        self._disturber.reset(dist_seed, self.neutral_action())
        self.tick = 0
        self.last_push_n = np.zeros(3)
        self.last_goal_switch = False
        self.last_executed = self.neutral_action()
        self._over = False
        return self._obs(), {"tick": 0}

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._over:
            raise RuntimeError(f"{self.task.name}: step() after the episode ended; call reset()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.task.action_dim,) or not np.all(np.isfinite(a)):
            raise ValueError(
                f"{self.task.name}: action must be finite with shape ({self.task.action_dim},), "
                f"got {a!r}"
            )
        a = np.clip(a, self._low, self._high)
        executed = self._disturber.delay(a)
        force = self._disturber.push_force()
        if self._push_body >= 0:
            self.data.xfrc_applied[self._push_body, :3] = force
        self._advance(executed)
        if self._push_body >= 0:
            self.data.xfrc_applied[self._push_body, :3] = 0.0
        self.tick += 1
        self.last_push_n = force
        self.last_executed = executed
        info: dict[str, Any] = {"tick": self.tick}
        if np.any(force):
            info["push"] = force
        self.last_goal_switch = self._disturber.goal_switch() and self.task.goal_dim > 0
        if self.last_goal_switch:
            self._switch_goal(self.np_random)
            mujoco.mj_forward(self.model, self.data)
            info["goal_switch"] = self._goal().copy()
        self._on_tick()
        reward = float(self._reward(executed))
        kind = self._terminal()
        terminated = kind is not None
        truncated = not terminated and self.tick >= self.task.episode_ticks
        if terminated or truncated:
            self._over = True
            info["success"] = bool(self._success(kind))
            info.update(self._episode_info())
        return self._obs(), reward, terminated, truncated, info

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"state": self._disturber.noise(self._state())}
        if self.task.goal_dim > 0:
            obs["goal"] = self._goal().copy()
        return obs

    # ------------------------------------------------------------------- task hooks

    def neutral_action(self) -> np.ndarray:
        """The action (Da,) held before any command: zero, clipped into the limits."""
        return np.clip(np.zeros(self.task.action_dim), self._low, self._high)

    def _advance(self, action: np.ndarray) -> None:
        self.data.ctrl[:] = action
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)

    def _init_episode(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        raise NotImplementedError

    def true_state(self) -> np.ndarray:
        """The noise-free state (Ds,)."""
        return self._state()

    def goal(self) -> np.ndarray:
        """The current goal (Dg,)."""
        return self._goal()

    def _state(self) -> np.ndarray:
        raise NotImplementedError

    def _goal(self) -> np.ndarray:
        return np.zeros(0)

    def _reward(self, action: np.ndarray) -> float:
        raise NotImplementedError

    def _terminal(self) -> str | None:
        """None while the episode goes on; "fail" or "goal" when it ends early."""
        return None

    def _success(self, kind: str | None) -> bool:
        raise NotImplementedError

    def _switch_goal(self, rng: np.random.Generator) -> None:
        return None

    def _on_tick(self) -> None:
        return None

    def _episode_info(self) -> dict[str, Any]:
        return {}

    def write_state(
        self, model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray, goal: np.ndarray
    ) -> None:
        """Set `data` (of a copy of this task's model) from a state (Ds,) and goal (Dg,)."""
        raise NotImplementedError

    def mpc_cost(
        self,
        qpos: np.ndarray,
        qvel: np.ndarray,
        ctrl: np.ndarray,
        sensordata: np.ndarray,
        goal: np.ndarray,
    ) -> np.ndarray:
        """Cost (B,) of rollouts: qpos (B, H, nq), qvel (B, H, nv), ctrl (B, H, nu),
        sensordata (B, H, nsensordata), goal (Dg,). Only tasks the sampling MPC can run."""
        raise NotImplementedError(f"task {self.task.name!r} defines no MPC cost")


def mjcf_with_sensors(path: str, sensors: list[tuple[str, str, str, str]]) -> str:
    """The MJCF text of file `path` with sensors appended, each (type, name, objtype, objname),
    e.g. ("framepos", "tip_pos", "body", "fingertip"). Edited as text, so every number of the
    file stays as written: the task's model and the MJCF `sims.generic.export_task` writes
    from it compile to the same physics bit for bit (a round trip through `MjSpec.to_xml`
    rounds numbers to six digits)."""
    root = ET.parse(path).getroot()
    block = root.find("sensor")
    if block is None:
        block = ET.SubElement(root, "sensor")
    for kind, name, objtype, objname in sensors:
        ET.SubElement(block, kind, name=name, objtype=objtype, objname=objname)
    return ET.tostring(root, encoding="unicode")


def gym_asset(name: str) -> str:
    """Path of an MJCF file shipped inside the gymnasium package."""
    import os

    import gymnasium.envs.mujoco as gm

    return os.path.join(os.path.dirname(gm.__file__), "assets", name)
