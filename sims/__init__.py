"""MuJoCo tasks (gymnasium), experts, disturbances, the simulated plant and datasets.

Public API:
    task_names(), get_task(name) -> TaskInfo, make_env(name, seed=..., **config),
    plant_spec(name), MujocoPlant / make_plant(task, **kw), make_expert(task, spec, **kw),
    Episode / load_episodes(path).
"""

from sims.datasets import Episode, load_episodes
from sims.disturbances import DisturbanceConfig
from sims.plant import MujocoPlant, make_plant
from sims.registry import get_task, make_env, plant_spec, task_names
from sims.tasks.base import TaskEnv, TaskInfo

__all__ = [
    "DisturbanceConfig",
    "Episode",
    "MujocoPlant",
    "TaskEnv",
    "TaskInfo",
    "get_task",
    "load_episodes",
    "make_env",
    "make_plant",
    "plant_spec",
    "task_names",
]
