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
  pushes). Bimodal runs also report, for pushes that began before
  the block's near face, whether the episode then passed the block on the side it was headed
  for (`side_kept`), the other (`side_switched`) or not at all (`side_not_passed`), plus
  `collisions` and the mode switches per episode as `dither` counts them.
A push that has not recovered before the next push or the episode's end counts as not
recovered (its ticks are reported as censored, not averaged in).

Task geometry is not copied here: the rules take it as parameters (`links_m`, `geometry`), and
when none is given they read it from the task modules of `sims`, the named entry points
`sims.tasks.reacher_moving.link_lengths_m()` (the arm's links, from gymnasium's reacher.xml)
and `sims.tasks.bimodal`'s `BLOCK_Y_M`, `BLOCK_HALF_M`, `AGENT_RADIUS_M` and `INFO.rate_hz`.
Those imports happen on first use, inside the functions below.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# (state, goal) -> whether the task is back within its tolerance
RecoveryPredicate = Callable[[np.ndarray, np.ndarray], bool]

# recovery rule per task; a task not listed uses "angles"
RECOVERY = {"double-pendulum": "angles", "reacher-moving": "fingertip", "bimodal": "course"}



@functools.cache
def reacher_links_m() -> tuple[float, float]:
    """The reacher's link lengths (m): body1 along link0, the fingertip along link1, as
    `sims.tasks.reacher_moving.link_lengths_m()` reads them from the task's model."""
    from sims.tasks.reacher_moving import link_lengths_m

    return link_lengths_m()


@dataclass(frozen=True)
class BimodalGeometry:
    """What the `course` rule needs of the bimodal task (m, s)."""

    block_y_m: tuple[float, float]  # the block's near and far faces (y)
    block_half_x_m: float  # the block's half width (x)
    radius_m: float  # the disc's radius
    dt_s: float  # the control period

    @property
    def clear_x_m(self) -> float:
        """How far out (x) the disc's centre passes the block clear of it."""
        return self.block_half_x_m + self.radius_m


@functools.cache
def bimodal_geometry() -> BimodalGeometry:
    """The bimodal task's geometry, read from `sims.tasks.bimodal`."""
    from sims.tasks.bimodal import AGENT_RADIUS_M, BLOCK_HALF_M, BLOCK_Y_M, INFO

    return BimodalGeometry(
        block_y_m=(BLOCK_Y_M - BLOCK_HALF_M[1], BLOCK_Y_M + BLOCK_HALF_M[1]),
        block_half_x_m=BLOCK_HALF_M[0],
        radius_m=AGENT_RADIUS_M,
        dt_s=1.0 / INFO.rate_hz,
    )


# the task figures under their flat names, read from sims on first access
_LAZY_NAMES: dict[str, Callable[[], Any]] = {
    "REACHER_LINKS_M": reacher_links_m,
    "BIMODAL_BLOCK_Y_M": lambda: bimodal_geometry().block_y_m,
    "BIMODAL_CLEAR_X_M": lambda: bimodal_geometry().clear_x_m,
    "BIMODAL_DT_S": lambda: bimodal_geometry().dt_s,
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        return _LAZY_NAMES[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def angles_within(angle_idx: Sequence[int], tol_rad: float) -> RecoveryPredicate:
    """Every angle `state[i]`, i in `angle_idx`, strictly within `tol_rad` of 0 (upright)."""
    idx = [int(i) for i in angle_idx]

    def recovered(state: np.ndarray, goal: np.ndarray) -> bool:
        return bool(np.all(np.abs(np.asarray(state)[idx]) < tol_rad))

    return recovered


def reacher_fingertip_xy(
    q0: float, q1: float, links_m: tuple[float, float] | None = None
) -> np.ndarray:
    """The reacher's fingertip (x, y) in m for joint angles `q0`, `q1` (rad); `links_m` the
    two link lengths (default: the task's, `reacher_links_m()`)."""
    l0, l1 = links_m if links_m is not None else reacher_links_m()
    return np.array(
        [l0 * math.cos(q0) + l1 * math.cos(q0 + q1), l0 * math.sin(q0) + l1 * math.sin(q0 + q1)]
    )


def fingertip_on_target(
    tol_m: float, links_m: tuple[float, float] | None = None
) -> RecoveryPredicate:
    """The fingertip (state[0:2] = joint angles) within `tol_m` of the target `goal` (x, y),
    as the task counts it (distance <= tol); `links_m` as in `reacher_fingertip_xy`."""
    links = links_m if links_m is not None else reacher_links_m()

    def recovered(state: np.ndarray, goal: np.ndarray) -> bool:
        s = np.asarray(state, dtype=np.float64)
        tip = reacher_fingertip_xy(float(s[0]), float(s[1]), links)
        return bool(np.linalg.norm(tip - np.asarray(goal, dtype=np.float64)[:2]) <= tol_m)

    return recovered


def bimodal_course_side(
    xy: np.ndarray, vel: np.ndarray, geometry: BimodalGeometry | None = None
) -> int:
    """The side (-1 / +1) the disc is headed for: before the block's near face (less the disc's
    radius), the side of the point where its straight course (position `xy`, velocity `vel`,
    signed, m and m/s) meets that face's line; from there on, or when not moving forward, the
    side it is on (0 exactly on the axis). `geometry` defaults to the task's."""
    g = geometry if geometry is not None else bimodal_geometry()
    near = g.block_y_m[0] - g.radius_m
    x, y = float(xy[0]), float(xy[1])
    if y < near and vel[1] > 1e-9:
        x = x + (near - y) * float(vel[0]) / float(vel[1])
    return int(np.sign(x))


def bimodal_on_course(
    xy: np.ndarray,
    vel: np.ndarray,
    side: int,
    min_forward: float,
    geometry: BimodalGeometry | None = None,
) -> bool:
    """Whether the disc at `xy` moving at `vel` (signed, m, m/s) is on a course that passes
    the block on `side`: moving forward at >= `min_forward` m/s, and, before the block's far
    face, its straight course meets the near face's line (or, beside the block, is) at least
    `clear_x_m` (half the block plus the disc's radius) out on that side. Past the far face any
    forward course counts (the side is decided). `geometry` defaults to the task's."""
    if not float(vel[1]) >= min_forward:
        return False
    g = geometry if geometry is not None else bimodal_geometry()
    near, far = g.block_y_m[0] - g.radius_m, g.block_y_m[1] + g.radius_m
    x, y = float(xy[0]), float(xy[1])
    if y > far:
        return True
    if y < near:
        x = x + (near - y) * float(vel[0]) / float(vel[1])
    return side != 0 and side * x >= g.clear_x_m


class BimodalCourse:
    """Recovery rule `course` (bimodal): back on a course that passes the block on the side the
    disc was headed for when the push began. See the module docstring.

    Stateful: `reset(info)` after the plant's reset, `update(info)` after every step, before
    the `PushTracker` asks it; both read the privileged signed position `info["xy"]` (analysis
    only: the planners never see it). The velocity is the position's change over the last tick.
    `sides` logs (episode, first tick of the push, side at its start, y at its start) for every
    push; `passed` the side each episode passed the block on (`info["side"]`, 0: never).
    """

    def __init__(
        self,
        *,
        min_forward: float = 0.3,
        dt: float | None = None,
        geometry: BimodalGeometry | None = None,
    ) -> None:
        self.geometry = geometry if geometry is not None else bimodal_geometry()
        self.min_forward = min_forward
        self.dt = self.geometry.dt_s if dt is None else dt
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
            self.side = bimodal_course_side(self.xy, self.vel, self.geometry)
            self.sides.append((self._episode, self._k, self.side, float(self.xy[1])))
        self._pushing = pushed
        self.vel = (xy - self.xy) / self.dt
        self.xy = xy.copy()

    def end(self, info: dict[str, Any]) -> None:
        self.passed.append(int(info.get("side", 0)))

    def __call__(self, state: np.ndarray, goal: np.ndarray) -> bool:
        return bimodal_on_course(self.xy, self.vel, self.side, self.min_forward, self.geometry)

    def summary(self) -> dict[str, Any]:
        """Pushes that began before the disc reached the block's near face: how many passed
        it on the side they were headed for at the push, on the other side, or not at all."""
        kept = switched = no_pass = 0
        for ep, _, side, y in self.sides:
            if y >= self.geometry.block_y_m[0] or ep >= len(self.passed):
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
    task: str,
    *,
    angle_idx: Sequence[int],
    tol_rad: float,
    tol_m: float,
    links_m: tuple[float, float] | None = None,
    geometry: BimodalGeometry | None = None,
) -> tuple[str, RecoveryPredicate]:
    """The recovery rule `--task` chooses: its name and its predicate. `links_m` (rule
    `fingertip`) and `geometry` (rule `course`) default to the task's own."""
    rule = RECOVERY.get(task, "angles")
    if rule == "fingertip":
        return rule, fingertip_on_target(tol_m, links_m)
    if rule == "course":
        return rule, BimodalCourse(geometry=geometry)
    return rule, angles_within(angle_idx, tol_rad)
