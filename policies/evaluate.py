"""Push-recovery ablation of the rolling planner's re-noising, in lockstep on a simulated plant.

    python -m policies.evaluate --policy rolling:double-pendulum --episodes 12 --json
    python -m policies.evaluate --policy rolling:reacher-moving --task reacher-moving \
        --episodes 60 --seed 2000 --json
    python -m policies.evaluate --policy rolling:bimodal --task bimodal --episodes 150 \
        --push-force 5,15 --set surprise_full=0.083 --json
    python -m policies.evaluate dither --task bimodal --episodes 50 --json

The last form runs several planners on `bimodal` and reports, beside success, how often per
episode the executed lateral command switches sign before the block (dithering between modes).

Variants of the same checkpoint (only the planner's surprise-driven re-noising differs; the
re-noising on a goal change, `goal_renoise`, is the same in all three):
- `renoise`: surprise-driven re-noising as calibrated in the checkpoint (the default planner);
- `none`: never re-noise on surprise (threshold at infinity): the plan only ever shifts and
  refines;
- `blank`: any surprise above the threshold restarts the plan from pure noise (level 1 for every
  token), the blank-slate alternative.

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

Target jumps (tasks with a goal): a push that overlaps a jump is excluded from the recovery
figures and counted apart (`pushes_excluded_jump`), because its "recovery" would time the reach
to a new target, not the push. A push overlaps a jump when the target jumps between the push's
first tick and its recovery (`jump_during_recovery`), or when the push begins before the arm
has once been within tolerance of the target it is reaching for since that target last jumped
(`jump_before_settled`; the target set at reset counts as a jump). Tasks without a goal never
exclude a push, so their figures are those of the angle-only version of this file.

`vs_renoise` in the output pairs the variants push by push (the same seeds put the same pushes
at the same ticks): the other variant's recovery ticks minus re-noising's, with a seeded
bootstrap 95% interval. `recover_ticks_left_tolerance` are the recovery figures of only the
pushes that took the state out of tolerance. `--push-force LOW,HIGH` replaces the task's push
force range, a stress test off the task defaults (reacher-moving's own pushes never move the
fingertip out of tolerance; against the velocity actuator's gain, 5 N s/m, bimodal's 0.2-0.5 N
for 0.1 s shift the disc by at most about 1 cm).
The plant is made with those forces only for this run; the task's defaults are untouched.

`--set KEY=VALUE` (repeatable) replaces a field of the checkpoint's `PlannerConfig` before the
variants are made from it, e.g. a steeper surprise-to-level map `--set surprise_full=0.35
--set renoise_max=1.0`; `none` ignores the surprise map and `blank` keeps only its threshold.
Unknown fields, values of the wrong type and combinations `PlannerConfig` refuses are a
one-line error (exit 2). The settings and the resulting surprise map are in the JSON (`set`,
`planner`).

Needs `sims` (imported only here, at the CLI boundary), one torch thread.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any

import numpy as np
import torch

from policies.config import PlannerConfig
from policies.model import Denoiser
from policies.rolling import RollingPlanner
from runtime.protocols import Command

VARIANTS = ("renoise", "none", "blank")

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


def variant_config(cfg: PlannerConfig, variant: str) -> PlannerConfig:
    if variant == "renoise":
        return cfg
    if variant == "none":
        return replace(cfg, surprise_threshold=1e30, surprise_full=2e30)
    if variant == "blank":
        return replace(cfg, renoise_max=1.0, surprise_full=cfg.surprise_threshold * (1 + 1e-6))
    raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")


def planner_settings(settings: Sequence[str], cfg: PlannerConfig) -> PlannerConfig:
    """`cfg` with `--set KEY=VALUE` items applied (`KEY` a `PlannerConfig` field, optionally
    prefixed `planner.`; the value parsed as the field's type). Raises ValueError with a
    one-line reason for a malformed item, an unknown field, a value of the wrong type or a
    combination `PlannerConfig` refuses."""
    # every PlannerConfig field is an int or a float (by its default)
    types = {f.name: int if isinstance(f.default, int) else float for f in fields(PlannerConfig)}
    changes: dict[str, Any] = {}
    for item in settings:
        key, sep, text = item.partition("=")
        name = key.strip().removeprefix("planner.")
        if not sep or not name or not text.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        if name not in types:
            raise ValueError(
                f"--set {item!r}: unknown planner setting (known: {', '.join(sorted(types))})"
            )
        try:
            value: int | float = types[name](text.strip())
        except ValueError:
            raise ValueError(
                f"--set {item!r}: {name} takes {types[name].__name__} values"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--set {item!r}: {name} must be finite")
        changes[name] = value
    try:
        return replace(cfg, **changes)
    except ValueError as exc:
        raise ValueError(f"--set {' '.join(settings)}: {exc}") from None


def _stats(ticks: list[int]) -> dict[str, float | None]:
    rec = np.asarray(ticks, dtype=np.float64)
    return {
        "mean": round(float(rec.mean()), 1) if rec.size else None,
        "p50": float(np.percentile(rec, 50)) if rec.size else None,
        "p90": float(np.percentile(rec, 90)) if rec.size else None,
    }


class PushTracker:
    """Turns a stream of (state, goal, info) per tick into push-recovery counts.

    Call `start(state, goal)` after reset, `tick(k, state, goal, info)` after every plant step
    (k = ticks stepped so far, info the step's `Observation.info`), `end()` when the episode is
    over. See the module docstring for what counts.
    """

    def __init__(self, recovered: RecoveryPredicate) -> None:
        self.recovered = recovered
        self.recover: list[int] = []  # ticks to recover, counted pushes that recovered
        self.recover_left: list[int] = []  # the same, only pushes that left tolerance
        self.censored = 0  # counted pushes that did not recover before the next push or the end
        self.left_tolerance = 0  # counted pushes that put the state out of tolerance
        self.jump_before_settled = 0
        self.jump_during_recovery = 0
        self._in_push = False
        self._start: int | None = None  # first tick of the push being timed, until recovered
        self._left = False
        self._settled = True
        self._episode = -1
        # (episode, first tick) of every counted push -> its recovery ticks (None: censored)
        self.log: dict[tuple[int, int], int | None] = {}

    def start(self, state: np.ndarray, goal: np.ndarray) -> None:
        self._episode += 1
        self._in_push, self._start, self._left = False, None, False
        # the target set at reset counts as a jump: settled once the arm has got there
        self._settled = np.asarray(goal).size == 0 or self.recovered(state, goal)

    def tick(self, k: int, state: np.ndarray, goal: np.ndarray, info: dict[str, Any]) -> None:
        ok = self.recovered(state, goal)
        jumped = "goal_switch" in info
        if jumped:
            self._settled = False
            if self._start is not None:
                self.jump_during_recovery += 1
                self._start = None
        pushed = "push" in info and bool(np.any(np.asarray(info["push"]) != 0))
        if pushed and not self._in_push:
            if self._start is not None:
                self._close_censored()  # a new push before recovering from the last one
            if self._settled and not jumped:
                self._start, self._left = k, False
            else:
                self.jump_before_settled += 1
        self._in_push = pushed
        if self._start is not None:
            self._left |= not ok
            if not self._in_push and ok:
                self.recover.append(k - self._start)
                if self._left:
                    self.recover_left.append(k - self._start)
                self.log[(self._episode, self._start)] = k - self._start
                self.left_tolerance += self._left
                self._start = None
        if ok:
            self._settled = True

    def end(self) -> None:
        if self._start is not None:
            self._close_censored()

    def _close_censored(self) -> None:
        assert self._start is not None
        self.log[(self._episode, self._start)] = None
        self.censored += 1
        self.left_tolerance += self._left
        self._start = None

    def summary(self) -> dict[str, Any]:
        excluded = self.jump_before_settled + self.jump_during_recovery
        return {
            "pushes": len(self.recover) + self.censored,
            "recovered": len(self.recover),
            "recover_ticks": _stats(self.recover),
            "pushes_left_tolerance": self.left_tolerance,
            "recover_ticks_left_tolerance": _stats(self.recover_left),
            "pushes_excluded_jump": excluded,
            "jump_before_settled": self.jump_before_settled,
            "jump_during_recovery": self.jump_during_recovery,
            "pushes_total": len(self.recover) + self.censored + excluded,
        }


def paired_difference(
    base: dict[tuple[int, int], int | None],
    other: dict[tuple[int, int], int | None],
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Recovery ticks of `other` minus `base` over the pushes both counted and both recovered
    from (the same seeds put the same pushes at the same ticks), with a seeded bootstrap 95%
    interval of the mean difference. A positive mean: `other` recovers more slowly."""
    keys = sorted(
        k for k in base.keys() & other.keys() if base[k] is not None and other[k] is not None
    )
    d = np.asarray([float(other[k]) - float(base[k]) for k in keys])  # type: ignore[arg-type]
    if d.size == 0:
        return {"pairs": 0, "mean": None, "ci95": None, "slower": 0, "faster": 0}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {
        "pairs": int(d.size),
        "mean": round(float(d.mean()), 2),
        "ci95": [round(float(lo), 2), round(float(hi), 2)],
        "slower": int((d > 0).sum()),  # pushes where `other` took more ticks than `base`
        "faster": int((d < 0).sum()),
    }


def run_episodes(
    planner: Any,
    plant: Any,
    *,
    episodes: int,
    seed: int,
    steps_per_tick: int,
    recovered: RecoveryPredicate,
    dither: tuple[int, int, float, float] | None = None,
) -> dict[str, Any]:
    """Lockstep episodes with push bookkeeping. `dither` = (lateral index, along index, until,
    deadband) also counts mode switches per episode as `run_dither` does."""
    successes = 0
    renoise_ticks = renoise_goal_ticks = ticks = 0
    pushes = PushTracker(recovered)
    course = recovered if isinstance(recovered, BimodalCourse) else None
    switches: list[int] = []
    collided = 0
    for ep in range(episodes):
        obs = plant.reset(seed=seed + ep)
        planner.reset(obs)
        if course is not None:
            course.reset(obs.info)
        pushes.start(obs.state, obs.goal)
        k, n_sw, last_sign = 0, 0, 0
        while True:
            if k > 0:
                planner.observe(obs)
                ticks += 1
                renoised = getattr(planner, "renoise_level", 0.0) > 0.0
                renoise_ticks += renoised
                renoise_goal_ticks += renoised and "goal_switch" in obs.info
            for _ in range(steps_per_tick):
                if planner.refine(0) <= 0:
                    break
            a = planner.action().copy()
            if dither is not None:  # as run_dither counts them
                lateral, along, until, deadband = dither
                if float(np.asarray(obs.state)[along]) < until and abs(a[lateral]) > deadband:
                    sign = 1 if a[lateral] > 0 else -1
                    n_sw += last_sign != 0 and sign != last_sign
                    last_sign = sign
            plant.apply(Command(seq=k, t_ns=0, action=a, deadline_ns=0))
            obs = plant.observe()
            k += 1
            if course is not None:
                course.update(obs.info)
            pushes.tick(k, obs.state, obs.goal, obs.info)
            if obs.done:
                pushes.end()
                if course is not None:
                    course.end(obs.info)
                break
        successes += bool(obs.info.get("success", False))
        collided += bool(obs.info.get("collided", False))
        switches.append(n_sw)
    extra: dict[str, Any] = {}
    if course is not None:
        extra.update(course.summary(), collisions=collided)
    if dither is not None:
        sw = np.asarray(switches, dtype=np.float64)
        extra.update(
            switches_per_episode=round(float(sw.mean()), 2),
            episodes_with_switch=int((sw > 0).sum()),
        )
    return {
        "episodes": episodes,
        "success_rate": successes / episodes,
        **pushes.summary(),
        **extra,
        "_log": pushes.log,
        "renoise_tick_fraction": round(renoise_ticks / max(1, ticks), 3),
        # re-noised ticks that were not a goal change (surprise alone)
        "surprise_renoise_tick_fraction": round(
            (renoise_ticks - renoise_goal_ticks) / max(1, ticks), 3
        ),
    }


def run_dither(
    planner: Any,
    plant: Any,
    *,
    episodes: int,
    seed: int,
    steps_per_tick: int,
    lateral_idx: int,
    along_idx: int,
    until: float,
    deadband: float,
) -> dict[str, Any]:
    """Success and mode switches: sign changes of the lateral command (|a| > deadband) while the
    agent is still before the obstacle (state[along_idx] < until)."""
    successes, switches = 0, []
    for ep in range(episodes):
        obs = plant.reset(seed=seed + ep)
        planner.reset(obs)
        k, n_sw, last_sign = 0, 0, 0
        while True:
            if k > 0:
                planner.observe(obs)
            for _ in range(steps_per_tick):
                if planner.refine(0) <= 0:
                    break
            a = planner.action().copy()
            if float(np.asarray(obs.state)[along_idx]) < until and abs(a[lateral_idx]) > deadband:
                sign = 1 if a[lateral_idx] > 0 else -1
                n_sw += last_sign != 0 and sign != last_sign
                last_sign = sign
            plant.apply(Command(seq=k, t_ns=0, action=a, deadline_ns=0))
            obs = plant.observe()
            k += 1
            if obs.done:
                break
        successes += bool(obs.info.get("success", False))
        switches.append(n_sw)
    sw = np.asarray(switches, dtype=np.float64)
    return {
        "episodes": episodes,
        "success_rate": successes / episodes,
        "switches_per_episode": round(float(sw.mean()), 2),
        "episodes_with_switch": int((sw > 0).sum()),
    }


def main_dither(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m policies.evaluate dither")
    p.add_argument(
        "--policies", default="rolling:bimodal,chunked:bimodal,pertick:bimodal,mlp:bimodal"
    )
    p.add_argument("--task", default="bimodal")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--steps-per-tick", type=int, default=1)
    p.add_argument("--lateral-idx", type=int, default=0)
    p.add_argument("--along-idx", type=int, default=1)
    p.add_argument("--until", type=float, default=1.0, help="count switches while along < this")
    p.add_argument("--deadband", type=float, default=0.1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from policies import load_planner
    from sims import make_plant
    from sims.experts import make_expert

    out: dict[str, Any] = {"task": args.task, "seed": args.seed, "results": {}}
    for policy in args.policies.split(","):
        plant = make_plant(args.task)
        planner: Any = None
        try:
            spec = plant.spec()
            if policy == "expert":
                planner = make_expert(spec.name, spec)
            else:
                planner = load_planner(policy, spec=spec, seed=args.seed)
            res = run_dither(
                planner,
                plant,
                episodes=args.episodes,
                seed=args.seed,
                steps_per_tick=args.steps_per_tick,
                lateral_idx=args.lateral_idx,
                along_idx=args.along_idx,
                until=args.until,
                deadband=args.deadband,
            )
        finally:
            plant.close()
            close = getattr(planner, "close", None)
            if close is not None:
                close()
        out["results"][policy] = res
        sys.stderr.write(f"{policy}: {res}\n")
    print(json.dumps(out) if args.json else out)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dither"]:
        return main_dither(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m policies.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--policy", default="rolling:double-pendulum")
    p.add_argument("--task", default="double-pendulum")
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--steps-per-tick", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument(
        "--angle-idx", default="1,2", help="state indices of the angles to watch (rule angles)"
    )
    p.add_argument("--tol-rad", type=float, default=0.05, help="angle tolerance (rule angles)")
    p.add_argument(
        "--tol-m",
        type=float,
        default=None,
        help="fingertip-to-target tolerance (rule fingertip; default: the task's success one)",
    )
    p.add_argument(
        "--push-force",
        default=None,
        metavar="LOW,HIGH",
        help="push force range in N instead of the task's (a stress test off the task defaults)",
    )
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the checkpoint's PlannerConfig for every variant "
        "(repeatable), e.g. --set surprise_full=0.4 --set renoise_max=1.0",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    plant_kw: dict[str, Any] = {}
    if args.push_force is not None:
        try:
            lo, hi = (float(f) for f in args.push_force.split(","))
        except ValueError:
            p.error(f"--push-force must be LOW,HIGH in N, got {args.push_force!r}")
        plant_kw["disturbances"] = {"push_force_n": (lo, hi)}
    torch.set_num_threads(1)
    from policies import load_checkpoint, resolve_policy
    from sims import make_plant

    directory, _ = resolve_policy(args.policy)
    ckpt = load_checkpoint(directory)
    if not isinstance(ckpt.model, Denoiser):
        raise SystemExit("the push ablation needs a denoiser checkpoint")
    try:
        base_cfg = planner_settings(args.settings, ckpt.planner)
    except ValueError as exc:
        sys.stderr.write(f"{p.prog}: error: {exc}\n")  # one line, as the CLI contract asks
        return 2
    angle_idx = tuple(int(i) for i in args.angle_idx.split(","))
    tol_m = args.tol_m
    if tol_m is None:
        from sims.tasks.reacher_moving import TOL_M

        tol_m = TOL_M
    rule, recovered = recovery_predicate(
        args.task, angle_idx=angle_idx, tol_rad=args.tol_rad, tol_m=tol_m
    )
    out: dict[str, Any] = {
        "policy": args.policy,
        "task": args.task,
        "steps_per_tick": args.steps_per_tick,
        "seed": args.seed,
        "recovery": rule,
        "push_force_n": [lo, hi] if args.push_force is not None else "task default",
        **({"tol_m": tol_m} if rule == "fingertip" else {"tol_rad": args.tol_rad}),
        "set": list(args.settings),
        # the surprise map every variant starts from (after --set); variant_config adapts it
        "planner": {
            k: getattr(base_cfg, k)
            for k in ("surprise_threshold", "surprise_full", "renoise_max", "goal_renoise")
        },
        "variants": {},
    }
    logs: dict[str, dict[tuple[int, int], int | None]] = {}
    for variant in args.variants.split(","):
        # a fresh predicate per variant: the bimodal one keeps per-episode state and logs
        _, recovered = recovery_predicate(
            args.task, angle_idx=angle_idx, tol_rad=args.tol_rad, tol_m=tol_m
        )
        plant = make_plant(args.task, **plant_kw)
        try:
            planner = RollingPlanner(
                ckpt.model,
                ckpt.normalizer,
                plant.spec(),
                variant_config(base_cfg, variant),
                seed=args.seed,
            )
            res = run_episodes(
                planner,
                plant,
                episodes=args.episodes,
                seed=args.seed,
                steps_per_tick=args.steps_per_tick,
                recovered=recovered,
                dither=(0, 1, 1.0, 0.1) if rule == "course" else None,
            )
        finally:
            plant.close()
        logs[variant] = res.pop("_log")
        out["variants"][variant] = res
        if not args.json:
            print(variant, res, flush=True)
        else:
            sys.stderr.write(f"{variant}: {res}\n")
    if "renoise" in logs:
        # paired by push: (other variant) - renoise; positive = renoise recovers faster
        out["vs_renoise"] = {
            v: paired_difference(logs["renoise"], log, seed=args.seed)
            for v, log in logs.items()
            if v != "renoise"
        }
        if not args.json:
            print("vs_renoise", out["vs_renoise"])
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
