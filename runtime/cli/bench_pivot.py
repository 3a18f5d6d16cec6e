"""`rtdiff bench pivot`: the rolling planner's pivot rules against keeping the plan and a blank
slate, push by push, on the same seeded episodes.

    rtdiff bench pivot --tasks double-pendulum --episodes 200 --results benchmarks/results
    rtdiff bench pivot --tasks bimodal --push-force 5,15 --episodes 400
    rtdiff bench pivot --tasks reacher-moving --push-force 1000,3000 --episodes 160

A pivot is what the planner does to its plan when an observation surprises it
(`policies.rolling`, "Pivot rules"). The rules compared (`--pivots`, any of them, in any
order):
- `uniform`: every token re-noised to sigma(surprise), as calibrated in the checkpoint (the
  `renoise` variant of `policies.evaluate`);
- `keep`: never re-noise on surprise; the plan only shifts and refines (variant `none`);
- `blank`: restart from pure noise on any surprise above the threshold (variant `blank`);
- `decay`, `shift`: the pivot rules of that name (`PlannerConfig.pivot`), on the same
  calibrated surprise map.
Goal changes re-noise every token to `goal_renoise` under every rule.

Every (task, rule) cell runs `--episodes` lockstep episodes on seeds `--seed`, `--seed` + 1,
... through the `rtdiff eval` sweep (`runtime.cli.evalsweep`: the same episode records, the
same push-recovery rules, `policies.recovery`), so the same seeds put the same pushes at the
same ticks under every rule. The default first seed, 6000, is outside the ranges the datasets
(0-999), the training evaluations (10000 on) and the earlier push studies (1000-5399) used.
`--push-force LOW,HIGH` replaces every task's push force range (reacher-moving's own pushes
never take the fingertip out of tolerance and bimodal's barely move the disc, so the stress
tests on those two are runs of their own). `--store FILE` keeps the episode records there and
resumes from it (the same store `rtdiff eval` writes); without it they go to a temporary
store, and every episode runs now. `--ray` spreads the episodes of a cell over Ray workers.

Output (`--json`: one object; else a markdown table, `--markdown FILE` writes it too): `rows`,
one per task and rule, each with
- `success_rate` over the episodes (and on bimodal `course`: the side of the obstacle kept or
  switched after the pushes before it);
- `recovery_ticks` {`mean`, `ci95`}: the mean ticks from a push's first tick to back within
  the task's tolerance over the counted pushes that recovered, and a seeded bootstrap 95 %
  interval of that mean (`--seed` seeds every bootstrap);
- `pushes` {`counted`, `censored`, ...}: pushes timed (a push that overlaps a target jump is
  not, `excluded_jump`), and those cut by the next push or the episode's end before recovering
  (`censored`: in neither the mean nor the pairs);
- `vs` {other rule: {`mean_diff`, `ci95`, `pairs`}}: this rule's recovery ticks minus the other
  rule's over the pushes both recovered from, paired push by push
  (`policies.evaluate.paired_difference`): a negative mean recovers faster.
Per cell a progress line on stderr; `--results DIR` records the run for docs/benchmarks.md
("Pivot rules after a push").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli import CliError
from runtime.cli.eval import _check_names, _check_planner, csv_list, push_force, resolve_planner
from runtime.cli.evalsweep import Episode, Progress, Setting, close_workers, run_sweep
from runtime.files import atomic_write_text, record_result

BASELINES = {"uniform": "renoise", "keep": "none", "blank": "blank"}
DEFAULT_TASKS = "double-pendulum,bimodal,reacher-moving"
RESAMPLES = 10_000


def pivot_variants() -> dict[str, str]:
    """Rule name -> the `policies.evaluate` variant that runs it: the three baselines, then
    every pivot rule of `PlannerConfig` beyond `uniform` under its own name."""
    from policies.config import PIVOTS

    return {**BASELINES, **{r: r for r in PIVOTS if r != "uniform"}}


def parse_pivots(text: str) -> list[str]:
    """`--pivots`: a comma list of known rules, duplicates dropped. One-line CliError naming
    the known rules otherwise."""
    known = pivot_variants()
    pivots = list(dict.fromkeys(csv_list(text)))
    if not pivots:
        raise CliError(f"--pivots: no rule given (known: {', '.join(known)})")
    bad = [p for p in pivots if p not in known]
    if bad:
        raise CliError(f"--pivots: unknown rule {bad[0]!r} (known: {', '.join(known)})")
    return pivots


def _check_sets(settings: Sequence[str]) -> None:
    for item in settings:
        if item.partition("=")[0].strip().removeprefix("planner.") == "pivot":
            raise CliError(f"--set {item!r}: the rules compared are chosen with --pivots")


def bootstrap_mean(values: Sequence[float], *, seed: int,
                   resamples: int = RESAMPLES) -> dict[str, Any]:
    """The mean of `values` and a seeded bootstrap 95 % interval of it (None for none)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "ci95": None}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": round(float(v.mean()), 2), "ci95": [round(float(lo), 2), round(float(hi), 2)]}


def pivot_rows(records: dict[tuple[str, str], list[dict[str, Any]]], *,
               seed: int) -> list[dict[str, Any]]:
    """One row per (task, rule) of `records` (episode records, `score_episode`'s), in their
    order: success, recovery ticks with their bootstrap interval, push counts, and `vs` every
    other rule of the same task, paired push by push (this rule minus the other)."""
    from policies.evaluate import aggregate, paired_difference

    rows: list[dict[str, Any]] = []
    logs: dict[tuple[str, str], dict[tuple[int, int], int | None]] = {}
    for (task, pivot), recs in records.items():
        agg = aggregate(recs)
        log = agg.pop("_log", None) or {}
        logs[(task, pivot)] = log
        ticks = [float(v) for _, v in sorted(log.items()) if v is not None]
        row: dict[str, Any] = {
            "task": task, "pivot": pivot, "episodes": agg["episodes"],
            "success_rate": agg["success_rate"], "mean_return": round(agg["mean_return"], 3),
            "recovery": agg.get("recovery"),
            "recovery_ticks": bootstrap_mean(ticks, seed=seed),
            "pushes": {"counted": agg.get("pushes", 0),
                       "censored": agg.get("pushes", 0) - agg.get("recovered", 0),
                       "recovered": agg.get("recovered", 0),
                       "left_tolerance": agg.get("pushes_left_tolerance", 0),
                       "excluded_jump": agg.get("pushes_excluded_jump", 0)},
            "surprise_renoise_tick_fraction": agg["surprise_renoise_tick_fraction"],
            "episode_s": round(sum(float(r.get("wall_s", 0.0)) for r in recs) / len(recs), 3),
        }
        if "side_kept" in agg:
            row["course"] = {k: agg[k] for k in ("side_kept", "side_switched",
                                                 "side_not_passed", "collisions")}
        rows.append(row)
    for row in rows:
        mine = logs[(row["task"], row["pivot"])]
        row["vs"] = {}
        for (task, other), theirs in logs.items():
            if task != row["task"] or other == row["pivot"]:
                continue
            d = paired_difference(theirs, mine, seed=seed)  # mine - theirs
            row["vs"][other] = {"mean_diff": d["mean"], "ci95": d["ci95"], "pairs": d["pairs"],
                                "faster": d["faster"], "slower": d["slower"]}
    return rows


def cell_line(row: dict[str, Any]) -> str:
    """A row in one progress line."""
    rec, pushes = row["recovery_ticks"], row["pushes"]
    ci = "-" if rec["ci95"] is None else f"{rec['ci95'][0]:g}-{rec['ci95'][1]:g}"
    mean = "-" if rec["mean"] is None else f"{rec['mean']:g}"
    return (f"success {100 * row['success_rate']:.0f} %, recovery {mean} ticks (95 % {ci}) "
            f"over {pushes['counted']} pushes ({pushes['censored']} censored), "
            f"{row['episode_s']:.2f} s an episode")


@contextmanager
def _store(path: str | None) -> Iterator[Path]:
    if path is not None:
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="rtdiff-bench-pivot-") as tmp:
        yield Path(tmp) / "episodes.jsonl"


def cli_bench_pivot(args: argparse.Namespace) -> int:
    tasks = csv_list(args.tasks)
    pivots = parse_pivots(args.pivots)
    variants = pivot_variants()
    _check_names(tasks, [variants[p] for p in pivots], [args.disturbances])
    _check_sets(args.settings)
    force = push_force(args.push_force)
    sets = tuple(args.settings)
    cells: dict[tuple[str, str], list[Episode]] = {}
    for task in tasks:
        planner = resolve_planner(args.planner, task)
        if planner == "expert":
            raise CliError("--planner: an expert has no plan to pivot; give a rolling one")
        settings = {p: Setting(variant=variants[p], disturbances=args.disturbances,
                               push_force_n=None if args.disturbances == "none" else force,
                               sets=sets, steps_per_tick=args.steps_per_tick)
                    for p in pivots}
        _check_planner(planner, task, list(settings.values()))
        for p in pivots:
            cells[(task, p)] = [Episode(task, planner, settings[p], args.seed + i)
                                for i in range(args.episodes)]
    from runtime.rt import read_steal_s

    steal0, t0 = read_steal_s(), time.perf_counter()
    records: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        with _store(args.store) as store:
            if args.ray is None:
                ray_ctx: Any = nullcontext(None)
            else:
                from runtime.cli.raycluster import ray_session

                ray_ctx = ray_session(args.ray)
            with ray_ctx as ray:
                for (task, pivot), episodes in cells.items():
                    sys.stderr.write(f"bench pivot: {task} {pivot}, {len(episodes)} "
                                     f"episodes ...\n")

                    def progress(todo: int, skipped: int, _c: str = f"{task} {pivot}"
                                 ) -> Progress:
                        return Progress(todo, skipped, prefix=f"bench pivot: {_c}")

                    res = run_sweep(episodes, store, ray=ray, batch=args.batch,
                                    progress=progress, keep_workers=True)
                    records[(task, pivot)] = [res.records[e.key] for e in episodes]
                    row = pivot_rows({(task, pivot): records[(task, pivot)]},
                                     seed=args.seed)[0]
                    sys.stderr.write(f"bench pivot: {task} {pivot}: {cell_line(row)}\n")
    finally:
        close_workers()
    rows = pivot_rows(records, seed=args.seed)
    steal1 = read_steal_s()
    summary: dict[str, Any] = {
        "tasks": tasks, "pivots": pivots, "planner": args.planner, "episodes": args.episodes,
        "seed": args.seed, "disturbances": args.disturbances,
        "push_force_n": None if force is None else list(force), "set": list(sets),
        "steps_per_tick": args.steps_per_tick, "rows": rows,
        "seconds": round(time.perf_counter() - t0, 3),
        "steal_s": None if steal0 is None or steal1 is None else round(steal1 - steal0, 3),
    }
    table = markdown_table(summary)
    if args.markdown:
        atomic_write_text(Path(args.markdown), table + "\n")
    if args.results:
        record_result(args.results, "pivot", summary)
    print(json.dumps(summary) if args.json else table)
    return 0


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _ci(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{ci[0]:g}, {ci[1]:g}]"


def markdown_table(summary: dict[str, Any]) -> str:
    """The rows as a markdown table, then each pair of rules once (the later in `--pivots`
    against the earlier)."""
    head = ["task", "pivot", "episodes", "success %", "side kept / switched",
            "recovery ticks mean", "95 % CI", "pushes counted / censored", "s / episode"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        rec, pushes, course = r["recovery_ticks"], r["pushes"], r.get("course")
        lines.append("| " + " | ".join([
            r["task"], r["pivot"], str(r["episodes"]), f"{100 * r['success_rate']:.1f}",
            "-" if course is None else f"{course['side_kept']} / {course['side_switched']}",
            _num(rec["mean"], "g"), _ci(rec["ci95"]),
            f"{pushes['counted']} / {pushes['censored']}", f"{r['episode_s']:.2f}"]) + " |")
    lines += ["", "| task | pivot | vs | pairs | mean diff (ticks) | 95 % CI |",
              "|---|---|---|---|---|---|"]
    order = {p: i for i, p in enumerate(summary["pivots"])}
    for r in summary["rows"]:
        for other, d in r["vs"].items():
            if order[other] < order[r["pivot"]]:
                lines.append(f"| {r['task']} | {r['pivot']} | {other} | {d['pairs']} | "
                             f"{_num(d['mean_diff'], '+g')} | {_ci(d['ci95'])} |")
    return "\n".join(lines)
