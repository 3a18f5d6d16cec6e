"""`RemoteEnv`: a `gymnasium.Env` whose dynamics are a plant behind the bridge.

Any gymnasium user (a training script, `check_env`, a vectorized wrapper) can drive a remote
plant without knowing about ticks or deadlines. `step(action)` sends one command and returns
the state that followed it: in lockstep the state that acknowledges the step; in realtime the
next state the plant publishes (at most one period later, `timeout_s` at worst). A stale state
(the link hiccupped) is returned as such, flagged in `info["stale"]`, never replaced by zeros.

Observation: the plant's state (Ds,), followed by its goal (Dg,) when the task has one;
action: (Da,) in the plant's action box. Both spaces come from the handshake's `PlantSpec`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from hw_bridge.client import RemotePlant
from runtime.protocols import Command, FloatArray, Observation


class RemoteEnv(gym.Env[FloatArray, FloatArray]):
    """Example:
    env = RemoteEnv("tcp://127.0.0.1:5555")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    env.close()
    """

    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium's own convention)

    def __init__(self, address: str, *, plant: RemotePlant | None = None, **kwargs: Any) -> None:
        self.plant = plant if plant is not None else RemotePlant(address, **kwargs)
        spec = self.plant.spec()
        self.spec_ = spec
        obs_dim = spec.state_dim + spec.goal_dim
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float64)
        self.action_space = gym.spaces.Box(
            spec.action_low.copy(), spec.action_high.copy(), dtype=np.float64
        )
        self._tick = 0
        self._period_ns = spec.period_ns

    def _obs(self, o: Observation) -> tuple[FloatArray, dict[str, Any]]:
        vec = np.concatenate([o.state, o.goal]).astype(np.float64)  # (Ds + Dg,)
        info = dict(o.info)
        info["stale"] = o.stale
        info["t_ns"] = o.t_ns
        return vec, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[FloatArray, dict[str, Any]]:
        super().reset(seed=seed)
        self._tick = 0
        return self._obs(self.plant.reset(seed))

    def step(self, action: FloatArray) -> tuple[FloatArray, float, bool, bool, dict[str, Any]]:
        now = self.plant.clock.now_ns()
        self.plant.apply(
            Command(
                seq=self._tick,
                t_ns=now,
                action=np.asarray(action, dtype=np.float64),
                deadline_ns=now + self._period_ns,
            )
        )
        self._tick += 1
        if self.plant.mode == "realtime":
            o = self.plant.next_observation(self.plant.timeout_ns * 1e-9)
        else:
            o = self.plant.observe()
        vec, info = self._obs(o)
        return vec, float(o.reward), bool(o.terminated), bool(o.truncated), info

    def close(self) -> None:
        self.plant.close()
