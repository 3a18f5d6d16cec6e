"""Task experts as anytime `runtime.Planner`s: the ceiling and the teacher.

`make_expert(task, spec)` gives each task's default expert; `SamplingMpc` runs on any task that
defines `mpc_cost`.
"""

from __future__ import annotations

import importlib
from typing import Any

from runtime import Planner, PlantSpec
from sims.registry import get_task

_EXPERTS: dict[str, str] = {
    "double-pendulum": "sims.experts.lqr:LqrExpert",
    "reacher-moving": "sims.experts.task_pd:ReacherPdExpert",
    "pointmaze": "sims.experts.maze:MazeExpert",
    "pusher": "sims.experts.pusher:PusherExpert",
    "bimodal": "sims.experts.bimodal:BimodalExpert",
    "push-t": "sims.experts.push_t:PushTExpert",
    "swerve": "sims.experts.swerve:SwerveExpert",
}


def make_expert(task: str, spec: PlantSpec | None = None, **kw: Any) -> Planner:
    """The task's expert. `kw` goes to its constructor; `kind="mpc"` picks the sampling MPC."""
    if task.startswith("sim:"):
        task = task[4:]
    get_task(task)  # KeyError naming the known tasks
    kind = kw.pop("kind", "default")
    if kind == "mpc":
        from sims.experts.mpc import SamplingMpc

        return SamplingMpc(task, spec, **kw)
    if kind != "default":
        raise ValueError(f"{kind=} must be 'default' or 'mpc'")
    module, cls = _EXPERTS[task].split(":")
    planner: Planner = getattr(importlib.import_module(module), cls)(task, spec, **kw)
    return planner


__all__ = ["make_expert"]
