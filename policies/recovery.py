"""Push-recovery rules for `policies.evaluate`: when is a pushed task back within tolerance?

Push recovery: the task reports a push in `info["push"]` on every tick it acts. For each push
(a run of push ticks) we count the ticks from the push's first tick until the state is back
within the task's tolerance, judged on the first tick after the push has stopped acting
(so a push that never moved the state out of tolerance counts its own length). The tolerance is
a per-task predicate on the observed (state, goal), chosen by `--task` (`RECOVERY`):
- `angles` (double-pendulum, and any task not listed): every angle in `--angle-idx` within
  `--tol-rad` of upright (0);
- `fingertip` (reacher-moving): the fingertip, by the arm's forward kinematics, within the
  task's success tolerance (`sims.tasks.reacher_moving.TOL_M`, 0.02 m; `--tol-m`) of the
  current target;
- `course` (bimodal): back on a course that passes the block on the side the disc was headed
  for when the push began. The task has no target state to return to (after a push the expert
  itself heads for its waypoint from wherever it is), and its point is the side, which the
  state (|x|, y) never shows; so this rule reads the true signed position `info["xy"]` (which
  the env reports for analysis; the planners never see it) and the velocity over the last tick
  (the position's change; the velocity actuator tracks its command within about a tick).
  The side at the push's start: where the straight course before the push meets the line of
  the block's near face (less the disc's radius), or, from there on, the side the disc is on.
  On course: moving forward at >= 0.3 m/s and, before the block's far face (plus radius), the
  straight course meets the near face's line, or the disc is, at least 0.35 m (half the block
  plus the disc's radius) out on that side; past the far face any forward course counts. A
  planner that re-picks the other side after a push never recovers on this rule (its push is
  censored). With the shipped `rolling:bimodal` (`renoise`), 96% of the ticks with no push
  acting were on course for one side or the other (1486 of 1547; seeds 1000-1011, 5-15 N
  pushes; scratch check, 2026-11-23). Bimodal runs also report, for pushes that began before
  the block's near face, whether the episode then passed the block on the side it was headed
  for (`side_kept`), the other (`side_switched`) or not at all (`side_not_passed`), plus
  `collisions` and the mode switches per episode as `dither` counts them.
A push that has not recovered before the next push or the episode's end counts as not
recovered (its ticks are reported as censored, not averaged in).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# (state, goal) -> whether the task is back within its tolerance
RecoveryPredicate = Callable[[np.ndarray, np.ndarray], bool]

# recovery rule per task; a task not listed uses "angles"
RECOVERY = {"double-pendulum": "angles", "reacher-moving": "fingertip", "bimodal": "course"}

# gymnasium's reacher.xml: body1 sits 0.1 m along link0, the fingertip 0.11 m along link1
REACHER_LINKS_M = (0.1, 0.11)


def angles_within(angle_idx: Sequence[int], tol_rad: float) -> RecoveryPredicate:
    """Every angle `state[i]`, i in `angle_idx`, strictly within `tol_rad` of 0 (upright)."""
    idx = [int(i) for i in angle_idx]

    def recovered(state: np.ndarray, goal: np.ndarray) -> bool:
        return bool(np.all(np.abs(np.asarray(state)[idx]) < tol_rad))

    return recovered


def reacher_fingertip_xy(q0: float, q1: float) -> np.ndarray:
    """The reacher's fingertip (x, y) in m for joint angles `q0`, `q1` (rad)."""
    l0, l1 = REACHER_LINKS_M
    return np.array(
        [l0 * math.cos(q0) + l1 * math.cos(q0 + q1), l0 * math.sin(q0) + l1 * math.sin(q0 + q1)]
    )


def fingertip_on_target(tol_m: float) -> RecoveryPredicate:
    """The fingertip (state[0:2] = joint angles) within `tol_m` of the target `goal` (x, y),
    as the task counts it (distance <= tol)."""

    def recovered(state: np.ndarray, goal: np.ndarray) -> bool:
        s = np.asarray(state, dtype=np.float64)
        tip = reacher_fingertip_xy(float(s[0]), float(s[1]))
        return bool(np.linalg.norm(tip - np.asarray(goal, dtype=np.float64)[:2]) <= tol_m)

    return recovered


# sims/tasks/bimodal.py's geometry (checked against it in the tests): the block's near and far
# faces (y), its half width plus the disc's radius (x), the control period
BIMODAL_BLOCK_Y_M = (0.9, 1.1)
BIMODAL_CLEAR_X_M = 0.35
BIMODAL_DT_S = 0.02


def bimodal_course_side(xy: np.ndarray, vel: np.ndarray) -> int:
    """The side (-1 / +1) the disc is headed for: before the block's near face (less the disc's
    radius), the side of the point where its straight course (position `xy`, velocity `vel`,
    signed, m and m/s) meets that face's line; from there on, or when not moving forward, the
    side it is on (0 exactly on the axis)."""
    near = BIMODAL_BLOCK_Y_M[0] - (BIMODAL_CLEAR_X_M - 0.3)
    x, y = float(xy[0]), float(xy[1])
    if y < near and vel[1] > 1e-9:
        x = x + (near - y) * float(vel[0]) / float(vel[1])
    return int(np.sign(x))


def bimodal_on_course(xy: np.ndarray, vel: np.ndarray, side: int, min_forward: float) -> bool:
    """Whether the disc at `xy` moving at `vel` (signed, m, m/s) is on a course that passes
    the block on `side`: moving forward at >= `min_forward` m/s, and, before the block's far
    face, its straight course meets the near face's line (or, beside the block, is) at least
    `BIMODAL_CLEAR_X_M` out on that side. Past the far face any forward course counts (the side
    is decided)."""
    if not float(vel[1]) >= min_forward:
        return False
    r = BIMODAL_CLEAR_X_M - 0.3
    near, far = BIMODAL_BLOCK_Y_M[0] - r, BIMODAL_BLOCK_Y_M[1] + r
    x, y = float(xy[0]), float(xy[1])
    if y > far:
        return True
    if y < near:
        x = x + (near - y) * float(vel[0]) / float(vel[1])
    return side != 0 and side * x >= BIMODAL_CLEAR_X_M


class BimodalCourse:
    """Recovery rule `course` (bimodal): back on a course that passes the block on the side the
    disc was headed for when the push began. See the module docstring.

    Stateful: `reset(info)` after the plant's reset, `update(info)` after every step, before
    the `PushTracker` asks it; both read the privileged signed position `info["xy"]` (analysis
    only: the planners never see it). The velocity is the position's change over the last tick.
    `sides` logs (episode, first tick of the push, side at its start, y at its start) for every
    push; `passed` the side each episode passed the block on (`info["side"]`, 0: never).
    """

    def __init__(self, *, min_forward: float = 0.3, dt: float = BIMODAL_DT_S) -> None:
        self.min_forward = min_forward
        self.dt = dt
        self.xy = np.zeros(2)
        self.vel = np.zeros(2)
        self.side = 0
        self._pushing = False
        self._episode = -1
        self._k = 0
        self.sides: list[tuple[int, int, int, float]] = []
        self.passed: list[int] = []

    def reset(self, info: dict[str, Any]) -> None:
        self._episode += 1
        self._k = 0
        self.xy = np.asarray(info["xy"], dtype=np.float64)[:2].copy()
        self.vel = np.zeros(2)
        self.side, self._pushing = 0, False

    def update(self, info: dict[str, Any]) -> None:
        self._k += 1
        xy = np.asarray(info["xy"], dtype=np.float64)[:2]
        pushed = "push" in info and bool(np.any(np.asarray(info["push"]) != 0))
        if pushed and not self._pushing:
            # the course before this tick's step, which the push already bent
            self.side = bimodal_course_side(self.xy, self.vel)
            self.sides.append((self._episode, self._k, self.side, float(self.xy[1])))
        self._pushing = pushed
        self.vel = (xy - self.xy) / self.dt
        self.xy = xy.copy()

    def end(self, info: dict[str, Any]) -> None:
        self.passed.append(int(info.get("side", 0)))

    def __call__(self, state: np.ndarray, goal: np.ndarray) -> bool:
        return bimodal_on_course(self.xy, self.vel, self.side, self.min_forward)

    def summary(self) -> dict[str, Any]:
        """Pushes that began before the disc reached the block's near face: how many passed
        it on the side they were headed for at the push, on the other side, or not at all."""
        kept = switched = no_pass = 0
        for ep, _, side, y in self.sides:
            if y >= BIMODAL_BLOCK_Y_M[0] or ep >= len(self.passed):
                continue
            passed = self.passed[ep]
            kept += passed != 0 and passed == side
            switched += passed != 0 and passed != side
            no_pass += passed == 0
        return {
            "pushes_before_block": kept + switched + no_pass,
            "side_kept": kept,
            "side_switched": switched,
            "side_not_passed": no_pass,
        }


def recovery_predicate(
    task: str, *, angle_idx: Sequence[int], tol_rad: float, tol_m: float
) -> tuple[str, RecoveryPredicate]:
    """The recovery rule `--task` chooses: its name and its predicate."""
    rule = RECOVERY.get(task, "angles")
    if rule == "fingertip":
        return rule, fingertip_on_target(tol_m)
    if rule == "course":
        return rule, BimodalCourse()
    return rule, angles_within(angle_idx, tol_rad)
