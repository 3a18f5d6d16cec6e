"""`rtdiff bench amortize`: does refining each token over many ticks buy a big sampler's quality?

    rtdiff bench amortize [--task swerve] --episodes 20 --offline-steps 1,2,5,10,20,50 \\
        --rolling-steps 1,2,4 [--big POLICY] [--big-steps 8,20] [--seconds 60]

The claim under test is amortization: the rolling planner spends a few refine steps of a small
model per tick, and because its buffer rolls, every token has been refined over many ticks by
the time it is executed; it should reach the success of a sampler that spends many flow steps
of a bigger model per decision, a sampler that would blow the deadline if it ran on the clock.
Rows, each with `planner`, `mode`, `steps`, `success_rate`, `mean_return` (the task's reward
summed over an episode, averaged: graded where success is all or nothing) and
`compute_ms_per_tick` {p50, p99, mean}:

- `offline`: the task's chunked checkpoint (`chunked:TASK`) with `chunk_steps` = K, for each K
  of `--offline-steps`, in lockstep: a whole chunk sampled from noise with K flow steps per
  decision, then executed open loop for its `exec_ticks` (`exec_ticks` in the row), with no
  clock to beat: the reference for what many steps buy. The big model (below), when there is
  one, is an offline row too, at its own K or at each K of `--big-steps`.
- `rolling`: `rolling:TASK` (or each planner of `--rolling`, e.g. a long-horizon checkpoint
  directory beside it) in lockstep at each of `--rolling-steps` refine steps per tick.
  `--chunked` names another chunked model for the offline rows.
- `realtime`: the big model (`--big`: a policy spec or a checkpoint directory; by default
  `policies/checkpoints/chunked-big-TASK` when that directory exists, else the row is skipped
  with a note), at each K of `--big-steps` (default: its checkpoint's `chunk_steps`), and
  the rolling planner capped at 1 step a tick, each driving the task's plant
  served in its own process (`rtdiff serve`, over the bridge) at the task's rate for
  `--seconds`: there a decision that takes longer than the period is a miss and the plant
  holds its previous command, so the big model's latency costs it. These rows add
  `miss_rate`, `misses`, `ticks` and `episodes` (the episodes that ended within the run;
  `success_rate` is null when none did).

Compute per tick. Lockstep rows: the planner's observe + refine + action on each tick
(`bench_paradigms.DecisionProbe`; an episode's reset, where a chunked planner samples its
first chunk, is not a decision). A chunked planner spends nothing on most ticks and K flow
steps at each chunk boundary, so its p50 is about 0, its p99 the chunk's cost, and its mean
the cost amortized over `exec_ticks`: compare means for the compute a planner really spends,
p99s for the deadline it must meet. Realtime rows: the run JSON's `compute_ms`, tick start to
command sent (the observation's arrival over the bridge, the refine steps before the command,
the action and the send), its mean from the run's tick records. The rolling planner's one
step runs before its command whenever the step budget says it fits; one it puts after the
command (`steps_per_tick` counts it) is not in this figure.

How to read it: the offline rows trace success against compute for one model; a rolling row
at the offline rows' success with a far smaller mean (and p99) compute per tick is the claim
holding; the realtime rows say what the same models reach on the clock, misses included.

`--no-realtime` leaves the realtime rows out; `--device cuda` puts the models on the GPU;
`--rt-priority P` asks SCHED_FIFO for the realtime runs (the plant one level higher).

Output: one JSON object (`--json`) with the `rows`, the host steal during the whole run
(`steal_s`, `runtime.rt.read_steal_s`) and `notes`; else a markdown table (`--markdown FILE`
writes it too). `--plot FILE`: success against mean compute per tick (log x). `--results DIR`
records the run for docs/benchmarks.md. Progress goes to stderr, one line per cell. A cell
that cannot run (no checkpoint) is a row with its one-line `error`, and the sweep goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from runtime.cli import CliError
from runtime.cli.bench_deadline import csv_list, label
from runtime.cli.bench_paradigms import (
    lockstep_cell,
    policy_for,
    realtime_run,
    save_figure,
    write_outputs,
)
from runtime.cli.plantproc import plant_server
from runtime.rt import read_steal_s

MODES = ("offline", "rolling", "realtime")


def step_list(text: str, flag: str) -> list[int]:
    """A comma list of step counts (>= 1); blanks dropped, so "" is no steps at all."""
    try:
        steps = [int(s) for s in csv_list(text)]
    except ValueError:
        raise CliError(f"{flag} must be a comma list of integers, got {text!r}") from None
    if any(s < 1 for s in steps):
        raise CliError(f"{flag} must be >= 1, got {text!r}")
    return steps


def compute_per_tick(decision_ms: dict[str, float]) -> dict[str, float | None]:
    """{p50, p99, mean} of a row's per-tick compute (`decision_ms` of `measure_lockstep`, or a
    realtime run's `compute_ms`)."""
    return {"p50": decision_ms.get("p50"), "p99": decision_ms.get("p99"),
            "mean": decision_ms.get("mean")}


def lockstep_args(args: argparse.Namespace, steps_per_tick: int) -> argparse.Namespace:
    """What `lockstep_cell` reads, for one cell."""
    return argparse.Namespace(seed=args.seed, device=args.device, episodes=args.episodes,
                              steps_per_tick=steps_per_tick, whole_plan=False)


def planner_settings(policy: str) -> dict[str, Any]:
    """The `planner` settings in the config of the checkpoint behind `policy` ({} when it names
    none or cannot be read)."""
    from policies import resolve_policy

    try:
        directory, _ = resolve_policy(policy)
        settings = json.loads((directory / "config.json").read_text()).get("planner", {})
    except (ValueError, OSError):
        return {}
    return settings if isinstance(settings, dict) else {}


def lockstep_row(task: str, mode: str, name: str, steps: int | None,
                 args: argparse.Namespace,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One lockstep row: `name` on `task`; `steps` are the flow steps per chunk of an offline
    row (set by `overrides`' `chunk_steps`, or the checkpoint's own) or the refine steps per
    tick of a rolling one. An offline row's refine call samples a whole chunk: one per tick."""
    head = {"task": task, "planner": label(name), "mode": mode, "steps": steps}
    cell = f"{task} {mode} {label(name)}, {steps} step{'' if steps == 1 else 's'}"
    sys.stderr.write(f"bench amortize: {cell}, {args.episodes} episodes ...\n")
    per_tick = steps if mode == "rolling" and steps else 1
    row = lockstep_cell(task, name, lockstep_args(args, per_tick), {}, overrides)
    row.update(head)
    if "error" not in row:
        row["compute_ms_per_tick"] = compute_per_tick(row["decision_ms"])
        if mode == "offline":
            row["exec_ticks"] = planner_settings(row["policy"]).get("exec_ticks")
    sys.stderr.write(f"bench amortize: {cell}: {cell_line(row)}\n")
    return row


def big_policy(task: str, big: str | None) -> tuple[str | None, str | None]:
    """(the big model's spec, None) or (None, why there is none): `--big`, else the
    `chunked-big-TASK` checkpoint when it exists."""
    if big is None:
        from policies import CHECKPOINT_ROOT

        default = CHECKPOINT_ROOT / f"chunked-big-{task}"
        if not (default / "config.json").is_file():
            return None, (f"no big model: {default} does not exist (train it, or name one "
                          "with --big)")
        return str(default), None
    if ":" not in big and ("/" in big or big.startswith(".")) and not Path(big).is_dir():
        return None, f"--big {big}: no such checkpoint directory"
    return big, None


def big_steps(name: str, task: str) -> int | None:
    """The big model's flow steps per chunk: its name's override, else its checkpoint's."""
    policy, overrides, _ = policy_for(name, task)
    steps = overrides.get("chunk_steps", planner_settings(policy).get("chunk_steps"))
    return int(steps) if isinstance(steps, int) else None


def realtime_rows(task: str, big: str | None, args: argparse.Namespace,
                  rolling: list[str], big_ks: list[int | None]) -> list[dict[str, Any]]:
    """The realtime rows: the big model at each of `big_ks` flow steps per chunk (None: its
    checkpoint's) and each rolling planner at 1 step a tick, one after the other on one
    served plant at the task's rate."""
    from sims.registry import get_task

    rate = float(get_task(task).rate_hz)
    cells: list[tuple[str, int | None, dict[str, Any], dict[str, Any]]] = []
    if big is not None:
        cells += [(big, big_steps(big, task) if k is None else k, {},
                   {} if k is None else {"chunk_steps": k}) for k in big_ks]
    cells += [(name, 1, {"steps_per_tick": 1}, {}) for name in rolling]
    rows = []
    try:
        with plant_server(task, seed=args.seed, rt_priority=args.rt_priority) as address:
            for name, steps, options, overrides in cells:
                sys.stderr.write(f"bench amortize: {task} realtime {label(name)}, {rate:g} Hz, "
                                 f"{args.seconds:g} s ...\n")
                policy = policy_for(name, task)[0]
                run = realtime_run(name, policy, address, rate, args, options, overrides)
                row = {"task": task, "planner": label(name), "mode": "realtime",
                       "steps": steps, "policy": policy, **run}
                if "error" not in row:
                    row["compute_ms_per_tick"] = (compute_per_tick(run["compute_ms"])
                                                  if "compute_ms" in run else None)
                sys.stderr.write(f"bench amortize: {task} realtime {label(name)}: "
                                 f"{cell_line(row)}\n")
                rows.append(row)
    except CliError as exc:  # the plant would not serve: every realtime row says so
        sys.stderr.write(f"bench amortize: {task} realtime: {exc}\n")
        rows = [{"task": task, "planner": label(name), "mode": "realtime", "steps": steps,
                 "error": str(exc)} for name, steps, _, _ in cells]
    return rows


# ------------------------------------------------------------------------------ the command


def cli_bench_amortize(args: argparse.Namespace) -> int:
    from sims.registry import task_names

    task = args.task
    if task not in task_names():
        raise CliError(f"unknown task {task!r}; known: {', '.join(task_names())}")
    offline = step_list(args.offline_steps, "--offline-steps")
    rolling = step_list(args.rolling_steps, "--rolling-steps")
    rolling_names = csv_list(args.rolling)
    if not rolling_names or not args.chunked:
        raise CliError("--rolling and --chunked must name at least one planner")
    big, why_not = big_policy(task, args.big)
    big_ks: list[int | None] = (
        list(step_list(args.big_steps, "--big-steps")) if args.big_steps else [None])
    steal0 = read_steal_s()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if why_not is not None:
        notes.append(why_not)
        sys.stderr.write(f"bench amortize: {why_not}\n")
    # a --big that names nothing is an error in each mode it would have run in; no big model
    # by default skips the realtime comparison with a note
    missing = {"task": task, "planner": "big" if args.big is None else label(args.big),
               "steps": None, **({"skipped": why_not} if args.big is None else {"error": why_not})}
    for k in offline:
        rows.append(lockstep_row(task, "offline", args.chunked, k, args, {"chunk_steps": k}))
    if big is not None:
        for big_k in big_ks:
            rows.append(lockstep_row(
                task, "offline", big, big_steps(big, task) if big_k is None else big_k, args,
                None if big_k is None else {"chunk_steps": big_k}))
    elif args.big is not None:
        rows.append({**missing, "mode": "offline"})
    for name in rolling_names:
        for s in rolling:
            rows.append(lockstep_row(task, "rolling", name, s, args))
    if not args.no_realtime:
        if big is None:
            rows.append({**missing, "mode": "realtime"})
        rows += realtime_rows(task, big, args, rolling_names, big_ks)
    steal1 = read_steal_s()
    summary: dict[str, Any] = {
        "task": task, "episodes": args.episodes, "seed": args.seed, "device": args.device,
        "offline_steps": offline, "rolling_steps": rolling, "big": big,
        "big_steps": [k for k in big_ks if k is not None] or None,
        "seconds": None if args.no_realtime else args.seconds, "rows": rows, "notes": notes,
        "steal_s": None if steal0 is None or steal1 is None else steal1 - steal0,
    }
    return write_outputs(args, "amortize", summary, markdown_table(summary), plot)


def cell_line(row: dict[str, Any]) -> str:
    """A row in one progress line."""
    if "error" in row or "skipped" in row:
        return f"{'error' if 'error' in row else 'skipped'}: {row.get('error', row.get('skipped'))}"
    c = row.get("compute_ms_per_tick") or {}
    line = (f"success {_pct(row['success_rate'])} %, compute ms/tick p50 {_num(c.get('p50'))} "
            f"p99 {_num(c.get('p99'))} mean {_num(c.get('mean'))}")
    return line + (f", misses {100 * row['miss_rate']:.2f} %" if "miss_rate" in row else "")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown_table(summary: dict[str, Any]) -> str:
    """The rows as a markdown table; rows that did not run below it, one line each."""
    head = ["mode", "planner", "steps", "success %", "mean return", "compute ms/tick p50", "p99",
            "mean", "miss %", "episodes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    other = []
    for r in summary["rows"]:
        if "error" in r or "skipped" in r:
            what = f"did not run ({r['error']})" if "error" in r else f"skipped ({r['skipped']})"
            other.append(f"- {r['mode']} {r['planner']}: {what}")
            continue
        c = r.get("compute_ms_per_tick") or {}
        lines.append("| " + " | ".join([
            r["mode"], r["planner"], "-" if r["steps"] is None else str(r["steps"]),
            _pct(r["success_rate"]), _num(r.get("mean_return"), ".1f"),
            _num(c.get("p50")), _num(c.get("p99")),
            _num(c.get("mean")),
            _num(100 * r["miss_rate"], ".2f") if "miss_rate" in r else "-",
            str(r.get("episodes", "-")),
        ]) + " |")
    return "\n".join(lines + (["", *other] if other else []))


MARKERS = {"offline": "o", "rolling": "s", "realtime": "^"}
SERIES = {"offline": "offline, K flow steps a chunk", "rolling": "lockstep, steps a tick",
          "realtime": "realtime"}


def plot(summary: dict[str, Any], path: Path) -> None:
    """Success against mean compute per tick (log x): one line per (mode, planner), each point
    labelled with its steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    series: dict[tuple[str, str], list[tuple[float, float, Any]]] = {}
    for r in summary["rows"]:
        mean = (r.get("compute_ms_per_tick") or {}).get("mean")
        if "error" in r or "skipped" in r or r["success_rate"] is None or not mean or mean <= 0:
            continue
        series.setdefault((r["mode"], r["planner"]), []).append(
            (mean, 100 * r["success_rate"], r["steps"]))
    for (mode, planner), pts in series.items():
        pts.sort(key=lambda p: p[0])
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, marker=MARKERS.get(mode, "o"), label=f"{planner} ({SERIES[mode]})")
        for x, y, steps in pts:
            ax.annotate(f"{steps}", (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(title=f"{summary['task']}: success against compute",
           xlabel="mean compute per tick, ms (log)", ylabel="success %", ylim=(-5, 105))
    ax.grid(alpha=0.3, which="both")
    if series:
        ax.legend(fontsize=8)
    save_figure(fig, path)
