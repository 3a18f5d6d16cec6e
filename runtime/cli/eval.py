"""`rtdiff eval`: lockstep evaluation sweeps (tasks x planners x settings x seeds), resumable,
in this process or on Ray; and `rtdiff bench eval`, what Ray workers buy over one process.

    rtdiff eval --tasks double-pendulum,bimodal --planners rolling,mlp,expert --episodes 50
    rtdiff eval --planners rolling --variants renoise,none,blank --disturbances pushes --ray
    rtdiff eval --tasks bimodal --planners rolling --push-force 5,15 --ray auto --json

A cell is one seeded lockstep episode of a planner on a task under a setting
(`runtime.cli.evalsweep`); episode i runs on seed `--seed` + i wherever it runs. `P` in
`--planners` without `:TASK` means `P:TASK` for each task (`expert` stays the expert, a
directory is a checkpoint). The settings are the push-recovery and dithering studies' of
`policies.evaluate`: `--variants` (re-noising: renoise, none, blank, and the pivot rules decay
and shift; learned planners only), `--disturbances` (default, pushes, none), `--push-force
LOW,HIGH`, `--set KEY=VALUE` and `--steps-per-tick`; the sweep runs every combination.

Every finished episode is appended to the store (`--store`, JSONL, fsynced per batch;
`runtime.evalstore`) as it comes back; a run with the same store skips the episodes already
there and says how many, so an interrupted sweep resumes where it stopped. The output (a table,
or `--json`: `rows` sorted by task, planner and setting, and `vs_renoise`) is aggregated from
the store's records of the episodes asked for, so it is the same with and without `--ray` and
whether the episodes ran now or before.

`--ray` starts a local Ray instance over this machine's CPUs; `--ray auto` or `--ray ADDRESS`
joins a cluster (`runtime.cli.raycluster`, docs/scale.md). One Ray task runs `--batch`
episodes (default 1 to 8: at least four tasks per CPU, `evalsweep.auto_batch`); a task whose
worker dies is run again (`--max-retries`). Without Ray a batch is what is written (and
fsynced) to the store at once.

`rtdiff bench eval` runs the same episodes three ways in one run: in this process, on Ray with
one task at a time (one worker) and with two at a time (two workers): the ratio of two workers
to the plain process, and Ray's overhead per episode (one worker against the plain process).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from runtime.cli import CliError
from runtime.cli.evalsweep import (
    DISTURBANCES,
    Episode,
    Progress,
    Setting,
    SweepResult,
    rows,
    run_sweep,
)
from runtime.files import record_result

DEFAULT_STORE = "runs/eval/episodes.jsonl"


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def resolve_planner(name: str, task: str) -> str:
    """`expert`, `KIND:TASK`, a checkpoint directory (made absolute: workers elsewhere find it
    at the same path), or a bare `KIND`, which means `KIND:task`."""
    if name == "expert" or ":" in name:
        return name
    path = Path(name)
    if path.is_dir():
        return str(path.resolve())
    return f"{name}:{task}"


def push_force(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise CliError(f"--push-force must be LOW,HIGH in N, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
        raise CliError(f"--push-force must be LOW,HIGH with 0 <= LOW <= HIGH, got {text!r}")
    return lo, hi


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in csv_list(text)]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise CliError(f"{what} must be a comma list of positive integers, got {text!r}")
    return values


def _check_names(tasks: list[str], variants: list[str], disturbances: list[str]) -> None:
    from policies.evaluate import VARIANTS
    from sims.registry import task_names

    known = task_names()
    for what, given, allowed in (("task", tasks, known), ("variant", variants, list(VARIANTS)),
                                 ("disturbance setting", disturbances, list(DISTURBANCES))):
        if not given:
            raise CliError(f"no {what} given")
        bad = [g for g in given if g not in allowed]
        if bad:
            raise CliError(f"unknown {what} {bad[0]!r}; known: {', '.join(allowed)}")


def _check_planner(planner: str, task: str, settings: list[Setting]) -> None:
    """A one-line CliError unless `planner` loads for `task` under every setting (the
    checkpoint is read and its settings checked, not traced)."""
    if planner == "expert":
        return
    from policies import load_checkpoint, resolve_policy
    from policies.base import check_dims
    from runtime.cli.evalsweep import planner_config
    from sims.registry import plant_spec

    try:
        directory, _ = resolve_policy(planner)
        ckpt = load_checkpoint(directory)
        check_dims(plant_spec(task), ckpt.normalizer.dims, f"planner {planner!r}")
        for s in settings:
            planner_config(ckpt, s)
    except (ValueError, FileNotFoundError) as exc:
        raise CliError(str(exc).strip("'\"")) from None


def sweep_episodes(args: argparse.Namespace) -> list[Episode]:
    """Every cell the arguments ask for, checked: (task, planner, setting, seed)."""
    tasks, variants = csv_list(args.tasks), csv_list(args.variants)
    disturbances = csv_list(args.disturbances)
    _check_names(tasks, variants, disturbances)
    force = push_force(args.push_force)
    steps = _ints(args.steps_per_tick, "--steps-per-tick")
    sets = tuple(args.settings)
    planners = csv_list(args.planners)
    if not planners:
        raise CliError("no planner given")
    episodes: list[Episode] = []
    for task in tasks:
        for name in planners:
            planner = resolve_planner(name, task)
            learned = planner != "expert"
            settings = [
                Setting(variant=v if learned else "renoise", disturbances=d,
                        push_force_n=None if d == "none" else force,
                        sets=sets if learned else (), steps_per_tick=k)
                for v in variants for d in disturbances for k in steps
            ]
            settings = list(dict.fromkeys(settings))  # an expert's collapse to one variant
            _check_planner(planner, task, settings)
            episodes += [Episode(task, planner, s, args.seed + i)
                         for s in settings for i in range(args.episodes)]
    return episodes


def _progress(store: str) -> Any:
    def make(todo: int, skipped: int) -> Progress:
        if skipped:
            sys.stderr.write(f"rtdiff eval: {skipped} of {todo + skipped} episodes already in "
                             f"{store}: skipped\n")
        return Progress(todo, skipped)
    return make


def evaluate(args: argparse.Namespace) -> tuple[SweepResult, dict[str, Any]]:
    """Run the sweep the arguments ask for; its result and the aggregated rows."""
    episodes = sweep_episodes(args)
    store = args.store or DEFAULT_STORE
    kw: dict[str, Any] = {"batch": args.batch, "max_retries": args.max_retries,
                          "progress": _progress(store)}
    if args.ray is None:
        result = run_sweep(episodes, store, **kw)
    else:
        from runtime.cli.raycluster import ray_session

        with ray_session(args.ray) as ray:
            result = run_sweep(episodes, store, ray=ray, **kw)
    return result, rows(episodes, result.records, seed=args.seed)


def cli_eval(args: argparse.Namespace) -> int:
    result, table = evaluate(args)
    out = {"store": str(args.store or DEFAULT_STORE), "ray": args.ray, "seed": args.seed,
           "episodes": result.episodes, "skipped": result.skipped, "ran": result.ran,
           "seconds": round(result.seconds, 3), **table}
    if args.json:
        print(json.dumps(out))
    else:
        print(summary_table(out))
    return 0


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def summary_table(out: dict[str, Any]) -> str:
    lines = [f"{'task':<16}{'planner':<26}{'variant':<9}{'disturb.':<9}{'steps':>6}"
             f"{'eps':>6}{'success %':>11}{'mean return':>13}{'pushes':>8}{'recov. p50':>11}"]
    for r in out["rows"]:
        planner = r["planner"] if len(r["planner"]) <= 25 else "..." + r["planner"][-22:]
        rec = r.get("recover_ticks") or {}
        lines.append(
            f"{r['task']:<16}{planner:<26}{r['variant']:<9}{r['disturbances']:<9}"
            f"{r['steps_per_tick']:>6}{r['episodes']:>6}{100 * r['success_rate']:>11.1f}"
            f"{r['mean_return']:>13.2f}{_fmt(r.get('pushes'), 'd'):>8}"
            f"{_fmt(rec.get('p50'), 'g'):>11}")
    for p in out["vs_renoise"]:
        lines.append(f"{p['task']} {p['planner']} {p['variant']} vs renoise: "
                     f"{_fmt(p['mean'], '+.2f')} ticks to recover over {p['pairs']} pushes "
                     f"(95% {p['ci95']})")
    lines.append(f"{out['ran']} episodes run, {out['skipped']} already in {out['store']}, "
                 f"{out['seconds']:.1f} s")
    return "\n".join(lines)


# ------------------------------------------------------------------------- rtdiff bench eval

MODES = ("plain", "ray1", "ray2")  # this process; Ray, one task at a time; two at a time


def cli_bench_eval(args: argparse.Namespace) -> int:
    from runtime.cli.raycluster import LOCAL, ray_session
    from runtime.rt import read_steal_s

    _check_names([args.task], ["renoise"], ["default"])
    planner = resolve_planner(args.planner, args.task)
    _check_planner(planner, args.task, [Setting()])
    n = args.episodes
    timed = [Episode(args.task, planner, Setting(), args.seed + i) for i in range(n)]
    warm = [Episode(args.task, planner, Setting(), args.seed + n + i) for i in range(4)]
    times: dict[str, list[float]] = {m: [] for m in MODES}
    steals: dict[str, list[float | None]] = {m: [] for m in MODES}
    results: dict[str, list[Any]] = {m: [] for m in MODES}
    steal0 = read_steal_s()
    with tempfile.TemporaryDirectory(prefix="rtdiff-bench-eval-") as tmp, \
            ray_session(LOCAL, num_cpus=2) as ray:
        # warm-up: this process and both Ray workers load (and trace) the planner first
        run_sweep(warm[:1], Path(tmp) / "warm-plain.jsonl", keep_workers=True)
        run_sweep(warm, Path(tmp) / "warm-ray.jsonl", ray=ray, in_flight=2)
        for r in range(args.rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]  # alternated: drift hits all alike
            for mode in order:
                sys.stderr.write(f"bench eval: round {r + 1}/{args.rounds}: {mode} ...\n")
                s0 = read_steal_s()
                res = run_sweep(timed, Path(tmp) / f"{mode}-{r}.jsonl", batch=args.batch,
                                ray=None if mode == "plain" else ray,
                                in_flight=1 if mode == "ray1" else 2, keep_workers=True)
                s1 = read_steal_s()
                times[mode].append(res.seconds)
                steals[mode].append(None if s0 is None or s1 is None else s1 - s0)
                results[mode].append(rows(timed, res.records)["rows"])
        ray_version = str(ray.__version__)
    from runtime.cli.evalsweep import close_workers

    close_workers()
    steal1 = read_steal_s()

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    payload = {
        "task": args.task, "planner": planner, "episodes": n, "rounds": args.rounds,
        "batch": args.batch, "cpus": os.cpu_count(), "ray": ray_version,
        "modes": {m: {"seconds": [round(t, 3) for t in times[m]],
                      "episodes_per_s": [round(n / t, 3) for t in times[m]],
                      "steal_s": steals[m]} for m in MODES},
        "episode_ms": round(1e3 * mean(times["plain"]) / n, 2),
        "speedup_2_workers": round(mean([p / t for p, t in zip(times["plain"], times["ray2"],
                                                                strict=True)]), 3),
        "ray_overhead_ms_per_episode": round(
            1e3 * mean([(t - p) / n for p, t in zip(times["plain"], times["ray1"],
                                                    strict=True)]), 2),
        # every mode's rows equal the first plain run's: the same episodes, the same numbers
        "same_results": all(rs == results["plain"][0] for m in MODES for rs in results[m]),
        "steal_s": None if steal0 is None or steal1 is None else round(steal1 - steal0, 3),
    }
    if getattr(args, "results", None):
        record_result(args.results, "eval", payload)
    if args.json:
        print(json.dumps(payload))
    else:
        print(bench_table(payload))
    return 0


def bench_table(p: dict[str, Any]) -> str:
    names = {"plain": "plain (this process)", "ray1": "Ray, 1 worker", "ray2": "Ray, 2 workers"}
    lines = [f"bench eval: {p['planner']} on {p['task']}, {p['episodes']} episodes x "
             f"{p['rounds']} round(s), batch {p['batch']}, {p['cpus']} CPUs"]
    for m in MODES:
        d = p["modes"][m]
        lines.append(f"  {names[m]:<22}" + "  ".join(
            f"{t:.2f} s ({e:.2f} episodes/s)" for t, e in zip(d["seconds"], d["episodes_per_s"],
                                                              strict=True)))
    lines.append(f"  2 workers vs the plain process: {p['speedup_2_workers']:.2f}x; Ray's "
                 f"overhead per episode {p['ray_overhead_ms_per_episode']:.1f} ms (episode "
                 f"{p['episode_ms']:.1f} ms); same results: "
                 f"{'yes' if p['same_results'] else 'NO'}; host steal "
                 f"{_fmt(p['steal_s'], '.2f')} s")
    return "\n".join(lines)
