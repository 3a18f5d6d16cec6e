"""The task registry: every task's `TaskInfo` and env factory, and `rtdiff tasks`.

Library calls raise `KeyError` for an unknown task (message lists the known ones); the CLI
layer (`runtime.cli`) turns it into its one-line error.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import gymnasium

from runtime import PlantSpec
from sims.tasks.base import TaskEnv, TaskInfo

# name -> "module:Class"; modules are imported on first use
_ENVS: dict[str, str] = {
    "double-pendulum": "sims.tasks.double_pendulum:DoublePendulumEnv",
    "reacher-moving": "sims.tasks.reacher_moving:ReacherMovingEnv",
    "pointmaze": "sims.tasks.pointmaze:PointMazeEnv",
    "pusher": "sims.tasks.pusher:PusherEnv",
    "bimodal": "sims.tasks.bimodal:BimodalEnv",
    "push-t": "sims.tasks.push_t:PushTEnv",
    "swerve": "sims.tasks.swerve:SwerveEnv",
}


def task_names() -> list[str]:
    return list(_ENVS)


def _unknown(name: str) -> str:
    return f"unknown task {name!r}; known: {', '.join(_ENVS)}"


def _env_class(name: str) -> Callable[..., TaskEnv]:
    if name not in _ENVS:
        raise KeyError(_unknown(name))
    module, cls = _ENVS[name].split(":")
    factory: Callable[..., TaskEnv] = getattr(importlib.import_module(module), cls)
    return factory


def get_task(name: str) -> TaskInfo:
    """The task's `TaskInfo` (rate, episode length, limits, sizes, success, disturbances)."""
    if name not in _ENVS:
        raise KeyError(_unknown(name))
    module = importlib.import_module(_ENVS[name].split(":")[0])
    info: TaskInfo = module.INFO
    return info


def make_env(name: str, *, seed: int | None = None, **config: Any) -> gymnasium.Env[Any, Any]:
    """A fresh env of task `name`; reset once with `seed` when one is given.

    `config`: `disturbances` (bool, a `DisturbanceConfig`, or a dict of its fields),
    `rate_hz` (control rate; default the task's), and task-specific options.
    """
    env = _env_class(name)(**config)
    if seed is not None:
        env.reset(seed=seed)
    return env


def make_task_env(name: str, **config: Any) -> TaskEnv:
    """Like `make_env`, typed as the `TaskEnv` (experts and the plant need its model)."""
    return _env_class(name)(**config)


def plant_spec(name: str) -> PlantSpec:
    return get_task(name).spec()


def _row(info: TaskInfo) -> dict[str, Any]:
    d = asdict(info)
    d["action_dim"] = info.action_dim
    d["period_s"] = info.period_s
    d["episode_s"] = info.episode_s
    d["disturbances"] = {k: v for k, v in asdict(info.disturbances).items()}
    return d


def cli_tasks(args: argparse.Namespace) -> int:
    """`rtdiff tasks [--json] [--export-mjcf DIR]`: a table, or one JSON object
    {"tasks": [...]}; with `--export-mjcf`, each task's model written as DIR/TASK.xml
    (`sims.generic.export_task`: `--plant mjcf:DIR/TASK.xml` runs its physics)."""
    infos = [get_task(n) for n in task_names()]
    export = getattr(args, "export_mjcf", None)
    if export:
        import os

        from sims.generic import export_task

        os.makedirs(export, exist_ok=True)
        for i in infos:
            path = export_task(i.name, os.path.join(export, f"{i.name}.xml"))
            print(f"wrote {path}")
        return 0
    if getattr(args, "json", False):
        print(json.dumps({"tasks": [_row(i) for i in infos]}))
        return 0
    header = f"{'task':<16} {'rate_hz':>7} {'ticks':>6} {'Ds':>3} {'Dg':>3} {'Da':>3}  success"
    print(header)
    print("-" * len(header))
    for i in infos:
        print(
            f"{i.name:<16} {i.rate_hz:>7g} {i.episode_ticks:>6} {i.state_dim:>3} "
            f"{i.goal_dim:>3} {i.action_dim:>3}  {i.success_metric}"
        )
    return 0
