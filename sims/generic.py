"""Plants from a user's models: any MJCF file (`mjcf:`) and any gymnasium env (`gym:`).

`MjcfEnv` runs any MuJoCo model that has actuators. The action is `data.ctrl`, within each
actuator's `ctrlrange` (an actuator without one is refused: a robot command needs limits). The
state is the joints' positions then velocities (`qpos`, `qvel`; all joints, or the ones named
in `joints`), or with `state="sensors"` the model's `sensordata`. Physics keeps the model's own
timestep: a control tick is `substeps = period / timestep` physics steps, so the control period
must be a whole number of timesteps. The control rate is, in order: the `rate_hz` argument, the
model's custom numeric `rtdiff_rate_hz`, else the fastest rate at or below 100 Hz that is a
whole number of timesteps. The episode lasts `episode_ticks` (or `episode_s`, or the model's
`rtdiff_episode_ticks`, else 10 s). A reset loads keyframe `keyframe` (by name or index; else
the model's reference pose) and, with `reset_noise=s`, adds U(-s, s) to each `qpos` and s*N(0, 1)
to each `qvel` (gymnasium's MuJoCo convention), from the episode's seeded generator. A generic
model has no task: reward 0, and `success` is false (`rtdiff run` reports deadlines, states and
plant counts; a success criterion is a task's, see docs/byo.md).

`GymEnv` adapts any registered gymnasium env with Box observation and action spaces (finite
action bounds) to the same plant: the state is the flattened observation, the rate the env's
control period (`env.unwrapped.dt`, else `1 / metadata["render_fps"]`, else `rate_hz`), the
episode the env's `max_episode_steps` (else `episode_ticks`), success the env's
`info["is_success"]` or `info["success"]` at the end when it reports one.

`export_task(name, path)` writes a built-in task's model as a standalone MJCF file with its rate
and episode length in `<custom>`: `mjcf:` on that file runs the task's physics through this
generic path (tests check the trajectories are bit-equal to `sim:`).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import gymnasium
import mujoco
import numpy as np
from gymnasium import spaces

from runtime import PlantSpec
from runtime.files import atomic_write_text
from sims.disturbances import DisturbanceConfig
from sims.tasks.base import TaskEnv, TaskInfo

DEFAULT_MAX_RATE_HZ = 100.0
DEFAULT_EPISODE_S = 10.0
RATE_KEY = "rtdiff_rate_hz"
EPISODE_KEY = "rtdiff_episode_ticks"


def _numeric(model: mujoco.MjModel, name: str) -> float | None:
    i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_NUMERIC, name)
    if i < 0:
        return None
    return float(model.numeric(i).data[0])


def _model_name(model: mujoco.MjModel, path: str) -> str:
    name = bytes(model.names).split(b"\0", 1)[0].decode(errors="replace")
    stem = os.path.splitext(os.path.basename(path))[0]
    return name if name and name != "MuJoCo Model" else stem


def control_substeps(timestep: float, rate_hz: float) -> int:
    """Physics steps per control tick; ValueError unless the period is a whole number of them."""
    ratio = 1.0 / (rate_hz * timestep)
    n = round(ratio)
    if n < 1 or abs(ratio - n) > 1e-6 * ratio:
        raise ValueError(
            f"a control period of 1/{rate_hz:g} s is not a whole number of the model's "
            f"{timestep:g} s timesteps"
        )
    return n


def default_rate_hz(timestep: float) -> float:
    """The fastest rate at or below 100 Hz whose period is a whole number of timesteps."""
    return 1.0 / (timestep * max(1, math.ceil(1.0 / (DEFAULT_MAX_RATE_HZ * timestep) - 1e-9)))


class MjcfEnv(TaskEnv):
    """Any MJCF model with actuators as a task env (see the module docstring).

    Example:
        env = MjcfEnv("arm.xml", rate_hz=50, reset_noise=0.01)
        obs, info = env.reset(seed=0)         # obs["state"]: qpos then qvel
        obs, r, term, trunc, info = env.step(np.zeros(env.task.action_dim))
    """

    def __init__(
        self,
        path: str,
        *,
        rate_hz: float | None = None,
        state: str = "joints",
        joints: list[str] | str | None = None,
        keyframe: str | int | None = None,
        reset_noise: float = 0.0,
        episode_ticks: int | None = None,
        episode_s: float | None = None,
        push_body: str | None = None,
        disturbances: bool | DisturbanceConfig | dict[str, Any] = False,
        name: str | None = None,
    ) -> None:
        if not os.path.isfile(path):
            raise ValueError(f"no MJCF file {path}")
        try:
            model = mujoco.MjModel.from_xml_path(path)
        except Exception as exc:  # MuJoCo reports XML and compile errors as ValueError
            raise ValueError(f"{path}: {' '.join(str(exc).split())}") from None
        if model.nu == 0:
            raise ValueError(f"{path}: the model has no actuators, so nothing to command")
        unlimited = [
            mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, i) or f"#{i}"
            for i in range(model.nu) if not model.actuator_ctrllimited[i]
        ]
        if unlimited:
            raise ValueError(
                f"{path}: actuator(s) {', '.join(unlimited)} have no ctrlrange; a command "
                "needs limits (add ctrlrange=\"lo hi\")"
            )
        if state not in ("joints", "sensors"):
            raise ValueError(f"state={state!r} must be 'joints' or 'sensors'")
        if reset_noise < 0 or not math.isfinite(reset_noise):
            raise ValueError(f"reset_noise={reset_noise!r} must be a finite number >= 0")
        dt = float(model.opt.timestep)
        rate = float(rate_hz or _numeric(model, RATE_KEY) or default_rate_hz(dt))
        substeps = control_substeps(dt, rate)
        if episode_ticks is None:
            if episode_s is not None:
                episode_ticks = max(1, round(episode_s * rate))
            else:
                from_model = _numeric(model, EPISODE_KEY)
                episode_ticks = int(from_model) if from_model else round(DEFAULT_EPISODE_S * rate)
        self._qadr, self._vadr, joint_names = self._select_joints(model, joints, path)
        self._sensors = state == "sensors"
        if self._sensors and model.nsensordata == 0:
            raise ValueError(f"{path}: state=sensors, but the model has no sensors")
        self._key = self._keyframe(model, keyframe, path)
        self._noise = float(reset_noise)
        low = tuple(float(x) for x in model.actuator_ctrlrange[:, 0])
        high = tuple(float(x) for x in model.actuator_ctrlrange[:, 1])
        if self._sensors:
            state_names: tuple[str, ...] = ()
            state_dim = int(model.nsensordata)
        else:
            state_names = tuple(f"{n}_pos" for n in joint_names) + tuple(
                f"{n}_vel" for n in joint_names
            )
            state_dim = len(self._qadr) + len(self._vadr)
            if len(state_names) != state_dim:  # ball or free joints: several entries each
                state_names = ()
        info = TaskInfo(
            name=name or _model_name(model, path),
            description=f"MJCF model {path}",
            rate_hz=rate,
            episode_ticks=int(episode_ticks),
            action_low=low,
            action_high=high,
            state_dim=state_dim,
            goal_dim=0,
            success_metric="none: a generic model has no task (success is false)",
            expert="none",
            disturbances=DisturbanceConfig(enabled=False),
            state_names=state_names,
            action_names=tuple(
                mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, i) or f"ctrl{i}"
                for i in range(model.nu)
            ),
        )
        with open(path) as f:
            xml = f.read()
        super().__init__(
            info, model, mujoco.MjData(model), n_substeps=substeps, push_body=push_body,
            disturbances=disturbances, xml=xml,
        )

    @staticmethod
    def _select_joints(
        model: mujoco.MjModel, joints: list[str] | str | None, path: str
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if joints is None:
            ids = list(range(model.njnt))
        else:
            names = joints.split(",") if isinstance(joints, str) else [str(j) for j in joints]
            ids = []
            for n in names:
                i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n.strip())
                if i < 0:
                    raise ValueError(f"{path}: no joint named {n.strip()!r}")
                ids.append(i)
        qadr: list[int] = []
        vadr: list[int] = []
        sizes = {0: (7, 6), 1: (4, 3), 2: (1, 1), 3: (1, 1)}  # free, ball, slide, hinge
        for i in ids:
            nq, nv = sizes[int(model.jnt_type[i])]
            qadr.extend(range(model.jnt_qposadr[i], model.jnt_qposadr[i] + nq))
            vadr.extend(range(model.jnt_dofadr[i], model.jnt_dofadr[i] + nv))
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, i) or f"j{i}" for i in ids]
        return np.array(qadr, dtype=np.intp), np.array(vadr, dtype=np.intp), names

    @staticmethod
    def _keyframe(model: mujoco.MjModel, key: str | int | None, path: str) -> int:
        if key is None:
            return -1
        if isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < model.nkey:
                raise ValueError(f"{path}: keyframe {key} out of range ({model.nkey} keyframes)")
            return key
        i = int(mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_KEY, str(key)))
        if i < 0:
            raise ValueError(f"{path}: no keyframe named {key!r}")
        return i

    def _init_episode(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        if self._key >= 0:
            mujoco.mj_resetDataKeyframe(self.model, self.data, self._key)
        if self._noise > 0:
            m, d, s = self.model, self.data, self._noise
            d.qpos[:] = d.qpos + rng.uniform(-s, s, size=m.nq)
            d.qvel[:] = d.qvel + s * rng.standard_normal(m.nv)

    def _state(self) -> np.ndarray:
        if self._sensors:
            return np.array(self.data.sensordata, dtype=np.float64)
        d = self.data
        return np.concatenate([d.qpos[self._qadr], d.qvel[self._vadr]])

    def _reward(self, action: np.ndarray) -> float:
        return 0.0

    def _success(self, kind: str | None) -> bool:
        return False


class GymEnv:
    """A gymnasium env with Box spaces, shaped like a task env for `sims.MujocoPlant`.

    Example:
        env = GymEnv("InvertedPendulum-v5")
        obs, info = env.reset(seed=0)          # obs["state"] (4,)
    """

    def __init__(
        self,
        env_id: str,
        *,
        rate_hz: float | None = None,
        episode_ticks: int | None = None,
        **make_kwargs: Any,
    ) -> None:
        try:
            env = gymnasium.make(env_id, **make_kwargs)
        except gymnasium.error.Error as exc:
            raise ValueError(f"gym:{env_id}: {' '.join(str(exc).split())}") from None
        except TypeError as exc:
            raise ValueError(f"gym:{env_id}: {exc}") from None
        obs_space, act_space = env.observation_space, env.action_space
        if not isinstance(act_space, spaces.Box):
            env.close()
            raise ValueError(f"gym:{env_id}: the action space is {act_space}, not a Box")
        if not isinstance(obs_space, spaces.Box):
            env.close()
            raise ValueError(f"gym:{env_id}: the observation space is {obs_space}, not a Box")
        low = np.asarray(act_space.low, dtype=np.float64).reshape(-1)
        high = np.asarray(act_space.high, dtype=np.float64).reshape(-1)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            env.close()
            raise ValueError(f"gym:{env_id}: the action space is unbounded; a command needs limits")
        native = self._native_rate(env)
        if native is not None and rate_hz is not None and abs(rate_hz - native) > 1e-9 * native:
            env.close()
            raise ValueError(
                f"gym:{env_id} steps {1 / native:g} s of simulated time per step ({native:g} Hz);"
                f" a rate of {rate_hz:g} Hz would run it faster or slower than real time"
            )
        rate = native or rate_hz
        if rate is None:
            env.close()
            raise ValueError(f"gym:{env_id}: the env states no control period; give --rate")
        steps = episode_ticks or (env.spec.max_episode_steps if env.spec else None) or 1000
        self.env = env
        self.task = TaskInfo(
            name=env_id,
            description=f"gymnasium env {env_id}",
            rate_hz=float(rate),
            episode_ticks=int(steps),
            action_low=tuple(low.tolist()),
            action_high=tuple(high.tolist()),
            state_dim=int(np.prod(obs_space.shape)),
            goal_dim=0,
            success_metric="the env's info['is_success'] / info['success'] at the end, "
            "else false",
            expert="none",
            disturbances=DisturbanceConfig(enabled=False),
        )
        self._low, self._high = low, high
        self._shape = act_space.shape
        self.last_executed = self.neutral_action()
        self._ticks = 0

    @staticmethod
    def _native_rate(env: gymnasium.Env[Any, Any]) -> float | None:
        dt = getattr(env.unwrapped, "dt", None)
        if isinstance(dt, (int, float)) and dt > 0:
            return 1.0 / float(dt)
        fps = env.metadata.get("render_fps")
        if isinstance(fps, (int, float)) and fps > 0:
            return float(fps)
        return None

    def spec(self) -> PlantSpec:
        return self.task.spec()

    def neutral_action(self) -> np.ndarray:
        return np.clip(np.zeros(len(self._low)), self._low, self._high)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._ticks = 0
        self.last_executed = self.neutral_action()
        return {"state": np.asarray(obs, dtype=np.float64).reshape(-1)}, dict(info)

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), self._low, self._high)
        obs, reward, terminated, truncated, info = self.env.step(a.reshape(self._shape))
        self._ticks += 1
        self.last_executed = a
        truncated = bool(truncated) or self._ticks >= self.task.episode_ticks
        info = dict(info)
        if terminated or truncated:
            ok = info.get("is_success", info.get("success"))
            info["success"] = bool(ok) if ok is not None else False
        return (
            {"state": np.asarray(obs, dtype=np.float64).reshape(-1)},
            float(reward), bool(terminated), truncated, info,
        )

    def close(self) -> None:
        self.env.close()


def export_task(name: str, path: str) -> str:
    """Write built-in task `name`'s model to `path` as MJCF, named after the task, with its rate
    and episode length in `<custom>`. Returns the path."""
    from sims.registry import make_task_env

    env = make_task_env(name, disturbances=False)
    try:
        if not env.xml:
            raise ValueError(f"task {name!r} does not keep its MJCF")
        # edited as text: every number stays as the task's model has it
        root = ET.fromstring(env.xml)
        root.set("model", name)
        custom = root.find("custom")
        if custom is None:
            custom = ET.SubElement(root, "custom")
        for key, value in ((RATE_KEY, env.task.rate_hz), (EPISODE_KEY, env.task.episode_ticks)):
            ET.SubElement(custom, "numeric", name=key, data=repr(float(value)))
        text = ET.tostring(root, encoding="unicode")
    finally:
        env.close()
    atomic_write_text(Path(path), text)
    return path
