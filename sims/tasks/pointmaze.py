"""`pointmaze`: gymnasium-robotics PointMaze_Medium (the D4RL maze2d lineage), flattened.

The gymnasium-robotics env is wrapped, not copied: its `PointMazeEnv` builds the medium maze
MJCF, draws the goal and start cells (with its +-0.25 m position noise) and steps the ball
(force-actuated, speed clipped to 5 m/s, 100 Hz, frame_skip 1). We flatten its goal-env
dict: `state` = [x, y, vx, vy], `goal` = the goal (x, y), and end the episode when the ball is
within 0.45 m of the goal (its success radius) or after 600 ticks (its registered limit).
Pushes act on the ball; goal switches (off by default) draw a new goal cell.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Any

import mujoco
import numpy as np

from sims.disturbances import DisturbanceConfig
from sims.tasks.base import TaskEnv, TaskInfo

GOAL_RADIUS_M = 0.45  # gymnasium-robotics' success distance

INFO = TaskInfo(
    name="pointmaze",
    description="force-actuated ball in gymnasium-robotics PointMaze_Medium (100 Hz); pushes "
    "on the ball",
    rate_hz=100.0,
    episode_ticks=600,
    action_low=(-1.0, -1.0),
    action_high=(1.0, 1.0),
    state_dim=4,
    goal_dim=2,
    success_metric=f"ball within {GOAL_RADIUS_M} m of the goal before 600 ticks (6 s)",
    expert="BFS over the maze grid + PD on the next cell centre (the goal in the goal cell)",
    disturbances=DisturbanceConfig(
        push_rate_hz=0.5,
        push_force_n=(20.0, 50.0),
        push_duration_s=0.1,
        push_axes=(0, 1),
        sensor_noise_std=0.01,
    ),
    state_names=("x", "y", "vx", "vy"),
    action_names=("fx", "fy"),
)


def _last_xml(model: mujoco.MjModel) -> str:
    """The MJCF text MuJoCo parsed last (here: the generated maze)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "maze.xml")
        mujoco.mj_saveLastXML(path, model)
        with open(path) as f:
            return f.read()


class PointMazeEnv(TaskEnv):
    def __init__(self, **config: Any) -> None:
        # gymnasium-robotics prints a notice about its Adroit envs on import; keep it off
        # rtdiff's output (exceptions still propagate)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from gymnasium_robotics.envs.maze.maps import MEDIUM_MAZE
            from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv as _PointMaze

            self.inner = _PointMaze(
                maze_map=MEDIUM_MAZE, continuing_task=False, reward_type="dense"
            )
            # the maze's MJCF is generated into a temporary file that is gone after loading:
            # keep the text of the model just loaded
            xml = _last_xml(self.inner.point_env.model)
        pe = self.inner.point_env
        super().__init__(
            INFO, pe.model, pe.data, n_substeps=1, push_body="particle", xml=xml, **config
        )

    @property
    def maze(self) -> Any:
        """gymnasium-robotics' `Maze` (map, cell <-> xy conversions)."""
        return self.inner.maze

    def _init_episode(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        self.inner.reset(seed=int(rng.integers(2**31)), options=options or None)

    def _advance(self, action: np.ndarray) -> None:
        self.inner.point_env.step(action)  # clips the speed, then steps with ctrl = action

    def _state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[:2], self.data.qvel[:2]])

    def _goal(self) -> np.ndarray:
        goal: np.ndarray = self.inner.goal.copy()
        return goal

    def _dist(self) -> float:
        return float(np.linalg.norm(self.data.qpos[:2] - self.inner.goal))

    def _switch_goal(self, rng: np.random.Generator) -> None:
        self.inner.goal = self.inner.add_xy_position_noise(self.inner.generate_target_goal())
        self.inner.update_target_site_pos()

    def _reward(self, action: np.ndarray) -> float:
        return float(np.exp(-self._dist()))  # gymnasium-robotics' dense reward

    def _terminal(self) -> str | None:
        return "goal" if self._dist() <= GOAL_RADIUS_M else None

    def _success(self, kind: str | None) -> bool:
        return kind == "goal"

    def write_state(
        self, model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray, goal: np.ndarray
    ) -> None:
        data.qpos[:2] = state[:2]
        data.qvel[:2] = state[2:4]
        mujoco.mj_forward(model, data)

    def mpc_cost(
        self,
        qpos: np.ndarray,
        qvel: np.ndarray,
        ctrl: np.ndarray,
        sensordata: np.ndarray,
        goal: np.ndarray,
    ) -> np.ndarray:
        # straight-line distance: fine within a room, blind to walls (use the maze expert)
        total: np.ndarray = np.sum(np.linalg.norm(qpos[..., :2] - goal, axis=-1), axis=-1)
        return total
