"""Push-recovery ablation of the rolling planner's re-noising, in lockstep on a simulated plant.

    python -m policies.evaluate --policy rolling:double-pendulum --episodes 12 --json
    python -m policies.evaluate --policy rolling:reacher-moving --task reacher-moving \
        --episodes 60 --seed 2000 --json
    python -m policies.evaluate --policy rolling:bimodal --task bimodal --episodes 150 \
        --push-force 5,15 --set surprise_full=0.083 --json
    python -m policies.evaluate dither --task bimodal --episodes 50 --json

The last form runs several planners on `bimodal` and reports, beside success, how often per
episode the executed lateral command switches sign before the block (dithering between modes).

Episode i runs on seed `--seed` + i: the plant resets with it, a learned planner's generator is
reseeded with it (`reseed`) and an expert is built with it. So an episode's record
(`score_episode`) depends on its seed alone, not on the episodes run before it in the same
process, and `aggregate` combines records in seed order. `rtdiff eval` runs these same
episodes spread over processes or a Ray cluster, keeps their records in a resumable store,
and takes this study's settings as options (`--variants`, `--disturbances`, `--push-force`,
`--set`, `--steps-per-tick`).

Variants of the same checkpoint (only what the planner does on a surprise differs; the
re-noising on a goal change, `goal_renoise`, is the same in all):
- `renoise`: surprise-driven re-noising as calibrated in the checkpoint (the default planner:
  its pivot rule, `uniform` unless `--set pivot=...`);
- `none`: never re-noise on surprise (threshold at infinity): the plan only ever shifts and
  refines;
- `blank`: any surprise above the threshold restarts the plan from pure noise (level 1 for every
  token, pivot rule `uniform`), the blank-slate alternative;
- `decay`, `shift`: the calibrated surprise map under that pivot rule (`PlannerConfig.pivot`;
  `policies.rolling`, "Pivot rules").

Push recovery: the task reports a push in `info["push"]` on every tick it acts; the rules that
time its recovery are in `policies.recovery` (one per task: `RECOVERY`).

Target jumps (tasks with a goal): a push that overlaps a jump is excluded from the recovery
figures and counted apart (`pushes_excluded_jump`), because its "recovery" would time the reach
to a new target, not the push. A push overlaps a jump when the target jumps between the push's
first tick and its recovery (`jump_during_recovery`), or when the push begins before the arm
has once been within tolerance of the target it is reaching for since that target last jumped
(`jump_before_settled`; the target set at reset counts as a jump). Tasks without a goal never
exclude a push.

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

Needs `sims` (imported inside `main` and `main_dither`, which make the plants, and by
`policies.recovery` for the task geometry, all on first use), one torch thread.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from policies.config import PIVOTS, PlannerConfig
from policies.model import Denoiser
from policies.recovery import RECOVERY, BimodalCourse, RecoveryPredicate, recovery_predicate
from policies.rolling import RollingPlanner
from runtime.lockstep import PlantTap, run_lockstep
from runtime.protocols import Command, Observation
from runtime.stats import percentiles

# the pivot rules beyond `uniform` (which `renoise` runs) are variants under their own names
VARIANTS = ("renoise", "none", "blank", *(r for r in PIVOTS if r != "uniform"))


def variant_config(cfg: PlannerConfig, variant: str) -> PlannerConfig:
    if variant == "renoise":
        return cfg
    if variant == "none":
        return replace(cfg, surprise_threshold=1e30, surprise_full=2e30)
    if variant == "blank":
        return replace(cfg, renoise_max=1.0, surprise_full=cfg.surprise_threshold * (1 + 1e-6),
                       pivot="uniform")
    if variant in VARIANTS:
        return replace(cfg, pivot=variant)
    raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")


def planner_settings(settings: Sequence[str], cfg: PlannerConfig) -> PlannerConfig:
    """`cfg` with `--set KEY=VALUE` items applied (`KEY` a `PlannerConfig` field, optionally
    prefixed `planner.`; the value parsed as the field's type). Raises ValueError with a
    one-line reason for a malformed item, an unknown field, a value of the wrong type or a
    combination `PlannerConfig` refuses."""
    # every PlannerConfig field is an int, a float or a str (by its default)
    types: dict[str, type] = {f.name: type(f.default) for f in fields(PlannerConfig)}
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
            value: int | float | str = types[name](text.strip())
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
    if not rec.size:
        return {"mean": None, "p50": None, "p90": None}
    q = percentiles(rec, (50, 90))
    return {"mean": round(float(rec.mean()), 1), "p50": q["p50"], "p90": q["p90"]}


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

    def record(self) -> dict[str, Any]:
        """What `merged` needs of this tracker's episodes (JSON-able): the recovery ticks, the
        counts and the log, each push as [first tick, recovery ticks or None]."""
        return {
            "recover": list(self.recover),
            "recover_left": list(self.recover_left),
            "censored": self.censored,
            "left_tolerance": self.left_tolerance,
            "jump_before_settled": self.jump_before_settled,
            "jump_during_recovery": self.jump_during_recovery,
            "log": [[k, v] for (_, k), v in self.log.items()],
        }

    @classmethod
    def merged(cls, records: Sequence[tuple[int, dict[str, Any]]]) -> PushTracker:
        """A tracker holding the pushes of (episode id, `record()`) pairs, in their order;
        its log is keyed (episode id, first tick)."""
        t = cls(lambda state, goal: True)
        for episode, r in records:
            t.recover += [int(v) for v in r["recover"]]
            t.recover_left += [int(v) for v in r["recover_left"]]
            t.censored += int(r["censored"])
            t.left_tolerance += int(r["left_tolerance"])
            t.jump_before_settled += int(r["jump_before_settled"])
            t.jump_during_recovery += int(r["jump_during_recovery"])
            for k, v in r["log"]:
                t.log[(episode, int(k))] = None if v is None else int(v)
        return t

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


class _Switches:
    """Mode switches per episode: sign changes of the lateral command (|a| > deadband) while
    the agent is still before the obstacle (state[along] < until)."""

    def __init__(self, lateral: int, along: int, until: float, deadband: float) -> None:
        self.lateral, self.along, self.until, self.deadband = lateral, along, until, deadband
        self.per_episode: list[int] = []
        self._n, self._sign = 0, 0

    def start(self) -> None:
        self._n, self._sign = 0, 0

    def command(self, state: np.ndarray, action: np.ndarray) -> None:
        a = action[self.lateral]
        if float(np.asarray(state)[self.along]) < self.until and abs(a) > self.deadband:
            sign = 1 if a > 0 else -1
            self._n += self._sign != 0 and sign != self._sign
            self._sign = sign

    def end(self) -> None:
        self.per_episode.append(self._n)

    def summary(self) -> dict[str, Any]:
        sw = np.asarray(self.per_episode, dtype=np.float64)
        return {
            "switches_per_episode": round(float(sw.mean()), 2),
            "episodes_with_switch": int((sw > 0).sum()),
        }


class _Scored(PlantTap):
    """The evaluated plant of one episode: feeds every step to the push tracker, the bimodal
    course rule and the switch counter, and counts the ticks the planner re-noised."""

    def __init__(
        self,
        plant: Any,
        planner: Any,
        recovered: RecoveryPredicate | None,
        switches: _Switches | None,
    ) -> None:
        super().__init__(plant)
        self.planner = planner
        self.pushes = None if recovered is None else PushTracker(recovered)
        self.course = recovered if isinstance(recovered, BimodalCourse) else None
        self.switches = switches
        self.collided = 0
        self.ticks = self.renoise_ticks = self.renoise_goal_ticks = 0
        self._k = 0  # ticks stepped in this episode

    def started(self, obs: Observation) -> None:
        self._k = 0
        if self.course is not None:
            self.course.reset(obs.info)
        if self.pushes is not None:
            self.pushes.start(obs.state, obs.goal)
        if self.switches is not None:
            self.switches.start()

    def applied(self, cmd: Command) -> None:
        assert self.last is not None
        if self._k > 0:  # the planner observed `last` this tick (an episode's first: reset)
            self.ticks += 1
            renoised = getattr(self.planner, "renoise_level", 0.0) > 0.0
            self.renoise_ticks += renoised
            self.renoise_goal_ticks += renoised and "goal_switch" in self.last.info
        if self.switches is not None:
            self.switches.command(self.last.state, cmd.action)

    def observed(self, obs: Observation) -> None:
        self._k += 1
        if self.course is not None:
            self.course.update(obs.info)
        if self.pushes is not None:
            self.pushes.tick(self._k, obs.state, obs.goal, obs.info)
        if obs.done:
            if self.pushes is not None:
                self.pushes.end()
            if self.course is not None:
                self.course.end(obs.info)
            self.collided += bool(obs.info.get("collided", False))
            if self.switches is not None:
                self.switches.end()


@dataclass(frozen=True)
class Scoring:
    """What an episode's record holds besides success and return: push recovery under the
    task's rule (`pushes`; the rule's angles and tolerances) and the mode switches of the
    lateral command (`dither` = (lateral index, along index, until, deadband), or None)."""

    task: str
    pushes: bool = True
    angle_idx: tuple[int, ...] = (1, 2)
    tol_rad: float = 0.05
    tol_m: float | None = None  # the fingertip rule's; None: the reacher's success tolerance
    dither: tuple[int, int, float, float] | None = None

    @classmethod
    def for_task(cls, task: str, **kw: Any) -> Scoring:
        """The push ablation's scoring: push recovery, and on the `course` rule (bimodal) the
        switch counter too."""
        if "dither" not in kw and RECOVERY.get(task) == "course":
            kw["dither"] = (0, 1, 1.0, 0.1)
        return cls(task, **kw)

    def predicate(self) -> tuple[str, RecoveryPredicate]:
        """The rule's name and a fresh predicate (the bimodal one keeps per-episode state)."""
        tol_m = self.tol_m
        if tol_m is None:
            from sims.tasks.reacher_moving import TOL_M

            tol_m = TOL_M
        return recovery_predicate(
            self.task, angle_idx=self.angle_idx, tol_rad=self.tol_rad, tol_m=tol_m
        )


def reseed(planner: Any, seed: int) -> bool:
    """Seed the torch generator of a learned planner (through a `RateAdapter`) with `seed`.
    False when it has none (an expert: build it with the seed instead)."""
    inner = planner
    while inner is not None:
        generator = getattr(inner, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)
            return True
        inner = getattr(inner, "inner", None)
    return False


def score_episode(
    planner: Any, plant: Any, *, seed: int, steps_per_tick: int, scoring: Scoring
) -> dict[str, Any]:
    """One lockstep episode on seed `seed` (the plant reset with it, a learned planner's
    generator reseeded with it), scored: a JSON-able record that `aggregate` combines.

    Its numbers depend on the seed alone, not on the episodes the planner and the plant ran
    before, so an episode gives the same record in whatever process runs it."""
    reseed(planner, seed)
    rule, recovered = scoring.predicate() if scoring.pushes else (None, None)
    switches = None if scoring.dither is None else _Switches(*scoring.dither)
    scored = _Scored(plant, planner, recovered, switches)
    res = run_lockstep(scored, planner, episodes=1, seed=seed, steps_per_tick=steps_per_tick)
    ep = res.episodes[0]
    rec: dict[str, Any] = {
        "seed": seed,
        "success": bool(ep.success),
        "return": float(ep.episode_return),
        "ticks": int(ep.ticks),
        "scored_ticks": scored.ticks,
        "renoise_ticks": scored.renoise_ticks,
        "renoise_goal_ticks": scored.renoise_goal_ticks,
    }
    if scored.pushes is not None:
        rec["recovery"] = rule
        rec["pushes"] = scored.pushes.record()
    if scored.course is not None:
        rec["course"] = {**scored.course.summary(), "collided": bool(scored.collided)}
    if switches is not None:
        rec["switches"] = switches.per_episode[0]
    return rec


def aggregate(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary of episode records (`score_episode`), in seed order whatever order they
    came in: success, mean return, the push-recovery figures, the course and switch counts
    where recorded, and `_log` ((seed, first tick) of every counted push -> its recovery
    ticks, for `paired_difference`)."""
    recs = sorted(records, key=lambda r: int(r["seed"]))
    n = len(recs)
    if not n:
        raise ValueError("no episode records to aggregate")
    out: dict[str, Any] = {
        "episodes": n,
        "success_rate": sum(bool(r["success"]) for r in recs) / n,
        "mean_return": float(np.mean([float(r["return"]) for r in recs])),
    }
    if all("pushes" in r for r in recs):
        out["recovery"] = recs[0].get("recovery")
        tracker = PushTracker.merged([(int(r["seed"]), r["pushes"]) for r in recs])
        out.update(tracker.summary())
        out["_log"] = tracker.log
    if all("course" in r for r in recs):
        keys = ("pushes_before_block", "side_kept", "side_switched", "side_not_passed")
        out.update({k: sum(int(r["course"][k]) for r in recs) for k in keys})
        out["collisions"] = sum(bool(r["course"]["collided"]) for r in recs)
    if all("switches" in r for r in recs):
        sw = np.asarray([int(r["switches"]) for r in recs], dtype=np.float64)
        out["switches_per_episode"] = round(float(sw.mean()), 2)
        out["episodes_with_switch"] = int((sw > 0).sum())
    ticks = sum(int(r["scored_ticks"]) for r in recs)
    renoised = sum(int(r["renoise_ticks"]) for r in recs)
    goal = sum(int(r["renoise_goal_ticks"]) for r in recs)
    out["renoise_tick_fraction"] = round(renoised / max(1, ticks), 3)
    # re-noised ticks that were not a goal change (surprise alone)
    out["surprise_renoise_tick_fraction"] = round((renoised - goal) / max(1, ticks), 3)
    return out


def run_episodes(
    planner: Any,
    plant: Any,
    *,
    episodes: int,
    seed: int,
    steps_per_tick: int,
    scoring: Scoring,
) -> dict[str, Any]:
    """`episodes` scored lockstep episodes on seeds `seed`, `seed + 1`, ..., aggregated."""
    return aggregate([
        score_episode(planner, plant, seed=seed + i, steps_per_tick=steps_per_tick,
                      scoring=scoring)
        for i in range(episodes)
    ])


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
    scoring = Scoring(args.task, pushes=False,
                      dither=(args.lateral_idx, args.along_idx, args.until, args.deadband))
    for policy in args.policies.split(","):
        plant = make_plant(args.task)
        planner: Any = None
        try:
            spec = plant.spec()
            if policy != "expert":
                planner = load_planner(policy, spec=spec, seed=args.seed)
            records = []
            for i in range(args.episodes):
                seed = args.seed + i
                # an expert draws from a generator of its own (bimodal: the side it takes):
                # built for each episode with the episode's seed
                episode_planner = (make_expert(spec.name, spec, seed=seed)
                                   if policy == "expert" else planner)
                records.append(score_episode(episode_planner, plant, seed=seed,
                                             steps_per_tick=args.steps_per_tick,
                                             scoring=scoring))
            agg = aggregate(records)
            res = {k: agg[k] for k in ("episodes", "success_rate", "switches_per_episode",
                                       "episodes_with_switch")}
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
    scoring = Scoring.for_task(args.task, angle_idx=angle_idx, tol_rad=args.tol_rad, tol_m=tol_m)
    rule, _ = scoring.predicate()
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
            for k in ("surprise_threshold", "surprise_full", "renoise_max", "goal_renoise",
                      "pivot")
        },
        "variants": {},
    }
    logs: dict[str, dict[tuple[int, int], int | None]] = {}
    for variant in args.variants.split(","):
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
                scoring=scoring,
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
