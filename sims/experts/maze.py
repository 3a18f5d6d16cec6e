"""Grid planner + waypoint following for `pointmaze`.

A breadth-first search from the goal cell over the maze's free cells (4-connected) gives each
cell its distance to the goal; the waypoint is the centre of the neighbouring cell one step
closer (the goal itself inside the goal cell). Aiming at the next cell's centre from anywhere
in the current cell keeps the ball inside the two cells' union (a rectangle), so it never
cuts a wall corner; the waypoint moves on as soon as the ball crosses into the next cell, so
the ball keeps its speed through the maze. A PD law on the waypoint gives the force command.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from runtime import Observation, PlantSpec
from sims.experts.base import FeedbackExpert


class MazeExpert(FeedbackExpert):
    def __init__(
        self,
        task: str = "pointmaze",
        spec: PlantSpec | None = None,
        *,
        seed: int = 0,
        kp: float = 4.0,
        kd: float = 0.6,
    ) -> None:
        super().__init__(task, spec, seed=seed)
        self.kp, self.kd = kp, kd
        self.maze = self.env.maze  # type: ignore[attr-defined]
        self.free = np.array(self.maze.maze_map) != 1  # (rows, cols)
        self._goal_cell: tuple[int, int] | None = None
        self._dist = np.zeros(self.free.shape, dtype=np.int64)

    def _cell(self, xy: np.ndarray) -> tuple[int, int]:
        i, j = self.maze.cell_xy_to_rowcol(xy)
        rows, cols = self.free.shape
        return int(np.clip(i, 0, rows - 1)), int(np.clip(j, 0, cols - 1))

    def _plan(self, goal_cell: tuple[int, int]) -> None:
        dist = np.full(self.free.shape, -1, dtype=np.int64)
        dist[goal_cell] = 0
        queue = deque([goal_cell])
        while queue:
            i, j = queue.popleft()
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                n = (i + di, j + dj)
                if self.free[n] and dist[n] < 0:
                    dist[n] = dist[i, j] + 1
                    queue.append(n)
        self._dist = dist
        self._goal_cell = goal_cell

    def _reset_episode(self, obs: Observation) -> None:
        self._goal_cell = None

    def waypoint(self, pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The point (2,) to steer to from `pos` (2,) towards `goal` (2,)."""
        goal_cell = self._cell(goal)
        if goal_cell != self._goal_cell:
            self._plan(goal_cell)
        here = self._cell(pos)
        if here == goal_cell or self._dist[here] < 0:
            return goal
        i, j = here
        best = here
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            n = (i + di, j + dj)
            if self._dist[n] >= 0 and self._dist[n] < self._dist[best]:
                best = n
        if best == goal_cell:
            return goal
        wp: np.ndarray = self.maze.cell_rowcol_to_xy(np.array(best))
        return wp

    def _law(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        wp = self.waypoint(state[:2], goal)
        u: np.ndarray = self.kp * (wp - state[:2]) - self.kd * state[2:4]
        return u
