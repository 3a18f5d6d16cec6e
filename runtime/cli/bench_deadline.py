"""`rtdiff bench deadline`: planners x control rates, realtime, plant in its own process.

`--plant SPEC [--plant-arg K=V]` replaces `--tasks` with any plant `rtdiff serve` takes
(mjcf:, gym:, py:), and `--planners` takes any policy spec besides the names below (py:...,
KIND:TASK, a checkpoint directory), so a user's model and policy are measured like the
built-in ones.

For each task and rate, one `rtdiff serve --realtime --rate R` process holds the MuJoCo plant
behind the ZeroMQ bridge on loopback; every planner then drives it for `--seconds`, once per
seed, from this process, with a trace. Each run's JSON goes to `OUT/runs/`, its trace to
`OUT/traces/`, and a summary (the table below, the highest rate at which the rolling
planner kept misses <= 0.1 %, and its re-plans per second against the chunked baseline's at
equal or better success, `decisions_at_equal_success`) to `OUT/summary.json`.
`rtdiff report OUT --out DIR` plots them.

`--hog` repeats the rolling planner's cells with a CPU hog (a busy Python process) on the
machine, to show what a loaded second core costs.

A cell that cannot run (no shipped checkpoint for that planner and task, say) is recorded with
its one-line reason and the sweep goes on: a missing baseline must not hide the others.

`--ray [ADDRESS]` runs each cell as a Ray task (`served_cell`: a plant server of its own and the
controller) that holds `CELL_CPUS` CPUs, so two realtime cells never share cores: on a 2-core
machine they run one at a time, on a cluster side by side on different nodes or cores. Each
such cell records the host steal of its node across it (`cell_steal_s`) and where it ran
(`node`: hostname, Ray node id); its trace stays on that node (docs/scale.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.cli import CliError
from runtime.cli.plantproc import plant_server, run_args
from runtime.files import atomic_write_text, record_result
from runtime.rt import read_steal_s

# planner name -> (policy argument with {task}, planner config overrides)
# name -> (policy, planner-setting overrides, extra `rtdiff run` options)
PLANNERS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "rolling": ("rolling:{task}", {}, {}),
    "rolling-async": ("rolling:{task}", {}, {"refine": "async"}),
    "rolling-late": ("rolling:{task}", {}, {"emit_after": 0}),  # refine first, then emit
    "rolling-first": ("rolling:{task}", {}, {"emit_first": True}),  # emit, then refine
    "chunked": ("chunked:{task}", {}, {}),
    "chunked-k10": ("chunked:{task}", {"chunk_steps": 10}, {}),
    "chunked-k50": ("chunked:{task}", {"chunk_steps": 50}, {}),
    "chunked-async": ("chunked-async:{task}", {}, {}),
    "pertick": ("pertick:{task}", {}, {}),
    "mlp": ("mlp:{task}", {}, {}),
    "expert": ("expert", {}, {}),
}


def label(spec: str) -> str:
    """A file-safe name for a plant or policy spec in cell names: `mjcf:robots/arm.xml` ->
    `arm`, `py:pkg.mod:policy` -> `policy`, `gym:Hopper-v5` -> `Hopper-v5`; plain names stay."""
    if ":" not in spec and "/" not in spec:
        return spec
    last = spec.rsplit(":", 1)[-1] if spec.startswith("py:") else spec.split(":", 1)[-1]
    return Path(last).stem if last.endswith((".xml", ".py")) else Path(last).name


def runnable(planner: str) -> bool:
    """A `bench deadline` planner name, or any policy `rtdiff run` takes (KIND:TASK, a
    checkpoint directory): what the benches that drive `rtdiff run` accept."""
    return planner in PLANNERS or ":" in planner or Path(planner).is_dir()
MISS_TARGET = 0.001


def csv_list(text: str) -> list[str]:
    """A comma list from the command line, blanks dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _ordinary() -> None:
    """In a child: the default scheduling policy, whatever `--rt-priority` gave the parent."""
    if hasattr(os, "sched_setscheduler"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@contextlib.contextmanager
def cpu_hog() -> Iterator[None]:
    """A busy Python process competing for the cores while the block runs."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=_ordinary)
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def cell_name(task: str, planner: str, rate_hz: float, seed: int, tag: str = "") -> str:
    """One run's file and trace name, e.g. `double-pendulum_rolling_250hz_s0_hog`."""
    return f"{task}_{planner}_{rate_hz:g}hz_s{seed}{tag}"


def held_traces(out_dir: Path, tasks: list[str], rates: list[float], planners: list[str],
                args: argparse.Namespace) -> list[str]:
    """The trace directories under `out_dir` that this sweep would write and that already hold
    files: a run refuses to write over a trace, so the sweep checks before its first cell."""
    tags = [""] + (["_hog"] if args.hog and "rolling" in planners else [])
    names = [cell_name(label(task), label(planner), rate, seed, tag)
             for task in tasks for rate in rates for planner in planners
             for seed in range(args.seed, args.seed + args.seeds) for tag in tags
             if not tag or planner == "rolling"]
    traces = out_dir / "traces"
    return [f"traces/{n}" for n in names if (traces / n).is_dir() and any((traces / n).iterdir())]


def run_cell(*, planner: str, task: str, address: str, rate_hz: float, seconds: float,
             seed: int, out_dir: Path, tag: str = "",
             rt_priority: int | None = None) -> dict[str, Any]:
    from runtime.cli.run import execute

    # a name of the table, or any policy `rtdiff run` takes (py:..., KIND:TASK, a directory)
    policy, overrides, options = PLANNERS.get(planner, (planner, {}, {}))
    name = cell_name(label(task), label(planner), rate_hz, seed, tag)
    args = run_args(policy.format(task=task), address, seed=seed, seconds=seconds,
                    trace=str(out_dir / "traces" / name), rt_priority=rt_priority)
    args.rate = rate_hz
    args.overrides = overrides
    for key, value in options.items():
        setattr(args, key, value)
    try:
        _, out = execute(args)
    except CliError as exc:
        out = {"error": str(exc)}
    out.update(name=name, planner=label(planner), task=label(task), rate_hz=rate_hz, seed=seed,
               plant_spec=task, policy=policy,
               hog=bool(tag), **({"trace": f"traces/{name}"} if "error" not in out else {}))
    (out_dir / "runs" / f"{name}.json").write_text(json.dumps(out))
    return out


CELL_CPUS = 2  # a realtime cell: the served plant's process and the controller's


def served_cell(*, task: str, planner: str, rate_hz: float, seconds: float, seed: int,
                plant_seed: int, out_dir: str, tag: str = "", rt_priority: int | None = None,
                plant_extra: list[str] | None = None) -> dict[str, Any]:
    """`run_cell` with a plant server of its own, started and stopped around it (with a CPU hog
    for a `_hog` cell): one Ray task of `--ray`. Adds the host steal of this node across the
    cell, where it ran and when (`cell_monotonic_ns`: start and end on the node's monotonic
    clock, which its processes share)."""
    from runtime.cli.raycluster import node

    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)  # on a cluster: this node's disk
    t0 = time.monotonic_ns()
    steal0 = read_steal_s()
    try:
        with plant_server(task, seed=plant_seed, rate_hz=rate_hz, rt_priority=rt_priority,
                          extra=plant_extra or []) as address, \
                (cpu_hog() if tag else contextlib.nullcontext()):
            cell = run_cell(planner=planner, task=task, address=address, rate_hz=rate_hz,
                            seconds=seconds, seed=seed, out_dir=out, tag=tag,
                            rt_priority=rt_priority)
    except CliError as exc:  # the server refused (a rate the task refuses, say)
        cell = failed_cell(str(exc), task=task, planner=planner, rate_hz=rate_hz, seed=seed,
                           tag=tag)
    steal1 = read_steal_s()
    cell["cell_steal_s"] = None if steal0 is None or steal1 is None else steal1 - steal0
    cell["node"] = node()
    cell["cell_monotonic_ns"] = [t0, time.monotonic_ns()]
    return cell


def failed_cell(error: str, *, task: str, planner: str, rate_hz: float, seed: int,
                tag: str = "") -> dict[str, Any]:
    """The record of a cell that could not run, with its one-line reason."""
    return {"error": error, "name": cell_name(label(task), label(planner), rate_hz, seed, tag),
            "plant_spec": task, "planner": label(planner), "task": label(task),
            "rate_hz": rate_hz, "seed": seed, "hog": bool(tag)}


def ray_cells(args: argparse.Namespace, tasks: list[str], rates: list[float],
              planners: list[str], plant_extra: list[str], out_dir: Path) -> list[dict[str, Any]]:
    """Every cell of the sweep as a Ray task holding `CELL_CPUS` CPUs; their results, in
    order, each also written to this machine's `OUT/runs/`."""
    from runtime.cli.raycluster import ray_session, task_error

    seeds = range(args.seed, args.seed + args.seeds)
    specs: list[dict[str, Any]] = [
        {"task": t, "planner": p, "rate_hz": r, "seed": s, "tag": ""}
        for t in tasks for r in rates for p in planners for s in seeds]
    if args.hog and "rolling" in planners:
        specs += [{"task": t, "planner": "rolling", "rate_hz": r, "seed": s, "tag": "_hog"}
                  for t in tasks for r in rates for s in seeds]
    common = {"seconds": args.seconds, "plant_seed": args.seed, "out_dir": str(out_dir.resolve()),
              "rt_priority": getattr(args, "rt_priority", None), "plant_extra": plant_extra}
    cells = []
    with ray_session(args.ray) as ray:
        remote = ray.remote(num_cpus=CELL_CPUS)(served_cell)
        refs = [remote.remote(**spec, **common) for spec in specs]
        for spec, ref in zip(specs, refs, strict=True):
            try:
                cell = ray.get(ref)
            except ray.exceptions.RayError as exc:
                cell = failed_cell(task_error(exc), **spec)
            sys.stderr.write(f"bench deadline: {cell['name']} done on "
                             f"{cell.get('node', {}).get('hostname', '?')}\n")
            (out_dir / "runs" / f"{cell['name']}.json").write_text(json.dumps(cell))
            cells.append(cell)
    return cells


def cli_bench_deadline(args: argparse.Namespace) -> int:
    planners = csv_list(args.planners)
    unknown = [p for p in planners if not runnable(p)]
    if unknown:
        raise CliError(f"unknown planner(s) {unknown}; known: {', '.join(PLANNERS)}, or a "
                       "policy spec (py:..., KIND:TASK, a checkpoint directory)")
    plant_extra: list[str] = []
    for item in getattr(args, "plant_arg", None) or []:
        plant_extra += ["--plant-arg", item]
    tasks = [args.plant] if getattr(args, "plant", None) else csv_list(args.tasks)
    try:
        rates = [float(r) for r in csv_list(args.rates)]
    except ValueError:
        raise CliError(f"--rates must be a comma list of numbers, got {args.rates!r}") from None
    if not rates or any(not r > 0 for r in rates):
        raise CliError(f"--rates must be positive, got {args.rates!r}")
    out_dir = Path(args.out)
    held = held_traces(out_dir, tasks, rates, planners, args)
    if held:
        raise CliError(f"--out {out_dir} already holds traces of this sweep's runs ({held[0]}"
                       f"{f' and {len(held) - 1} more' if len(held) > 1 else ''}): name a "
                       "fresh --out, or remove them")
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []
    steal0 = read_steal_s()
    if getattr(args, "ray", None) is not None:
        cells = ray_cells(args, tasks, rates, planners, plant_extra, out_dir)
        tasks = []  # every cell ran on Ray
    for task in tasks:
        for rate in rates:
            rt = getattr(args, "rt_priority", None)
            server = contextlib.ExitStack()
            try:
                address = server.enter_context(
                    plant_server(task, seed=args.seed, rate_hz=rate, rt_priority=rt,
                                 extra=plant_extra)
                )
            except CliError as exc:  # e.g. a rate the task refuses: every cell says so
                sys.stderr.write(f"bench deadline: {task} at {rate:g} Hz: {exc}\n")
                for planner in planners:
                    for seed in range(args.seed, args.seed + args.seeds):
                        name = cell_name(label(task), label(planner), rate, seed)
                        cell = {"error": str(exc), "name": name, "plant_spec": task,
                                "planner": label(planner), "task": label(task), "rate_hz": rate,
                                "seed": seed, "hog": False}
                        (out_dir / "runs" / f"{cell['name']}.json").write_text(json.dumps(cell))
                        cells.append(cell)
                continue
            with server:
                for planner in planners:
                    for seed in range(args.seed, args.seed + args.seeds):
                        sys.stderr.write(f"bench deadline: {task} {planner} {rate:g} Hz "
                                         f"seed {seed} ...\n")
                        cells.append(run_cell(planner=planner, task=task, address=address,
                                              rate_hz=rate, seconds=args.seconds, seed=seed,
                                              out_dir=out_dir, rt_priority=rt))
                if args.hog and "rolling" in planners:
                    with cpu_hog():
                        for seed in range(args.seed, args.seed + args.seeds):
                            sys.stderr.write(f"bench deadline: {task} rolling {rate:g} Hz "
                                             f"seed {seed} with a CPU hog ...\n")
                            cells.append(run_cell(planner="rolling", task=task,
                                                  address=address, rate_hz=rate,
                                                  seconds=args.seconds, seed=seed,
                                                  out_dir=out_dir, tag="_hog",
                                                  rt_priority=rt))
    summary = summarize(cells)
    steal1 = read_steal_s()
    summary["steal_s"] = None if steal0 is None or steal1 is None else steal1 - steal0
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    if getattr(args, "results", None):
        record_result(args.results, "deadline", summary)
    if args.json:
        print(json.dumps(summary))
    else:
        print(summary_table(summary))
        print(f"\nruns in {out_dir / 'runs'}, summary in {out_dir / 'summary.json'}; "
              f"plots: rtdiff report {out_dir} --out {out_dir / 'report'}")
    return 0


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds per (task, planner, rate, hog); the rolling planner's highest safe rate."""
    groups: dict[tuple[str, str, float, bool], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["task"], c["planner"], c["rate_hz"], c["hog"]), []).append(c)
    rows = []
    for (task, planner, rate, hog), runs in sorted(groups.items()):
        ok = [r for r in runs if "error" not in r]
        row: dict[str, Any] = {"task": task, "planner": planner, "rate_hz": rate, "hog": hog,
                               "seeds": len(runs)}
        if not ok:
            row["error"] = runs[0]["error"]
        else:
            n = len(ok)
            row.update(
                miss_rate=sum(r["miss_rate"] for r in ok) / n,
                plant_misses=sum(r.get("plant_misses", 0) for r in ok),
                misses=sum(r["misses"] for r in ok),
                ticks=sum(r["ticks"] for r in ok),
                lateness_p99_ms=max(r["lateness_ms"]["p99"] for r in ok),
                compute_p99_ms=max(r["compute_ms"]["p99"] for r in ok),
                steps_per_tick=sum(r["steps_per_tick"]["mean"] for r in ok) / n,
                replans_per_s=sum(r.get("replans_per_s", 0.0) for r in ok) / n,
                # a run that finished no episode says nothing about success: left out
                success_rate=(
                    sum(r["success_rate"] * r["episodes"] for r in ok) / eps
                    if (eps := sum(r["episodes"] for r in ok)) else None
                ),
                episodes=eps,
                mean_return=sum(r["mean_return"] for r in ok) / n,
            )
        rows.append(row)
    best: dict[str, dict[str, float | None]] = {}
    for task in sorted({r["task"] for r in rows}):
        for hog in (False, True):
            safe = [r["rate_hz"] for r in rows if r["task"] == task and r["planner"] == "rolling"
                    and r["hog"] == hog and "error" not in r and r["miss_rate"] <= MISS_TARGET]
            best.setdefault(task, {})["with_hog" if hog else "quiet"] = max(safe, default=None)
    return {"cells": rows, "rolling_max_rate_hz_misses_le_0.1pct": best,
            "decisions_at_equal_success": {t: decisions_at_equal_success(rows, t)
                                           for t in sorted({r["task"] for r in rows})}}


def decisions_at_equal_success(rows: list[dict[str, Any]], task: str) -> dict[str, Any] | None:
    """Re-plans per second, rolling vs the chunked baseline, at equal success (quiet cells).

    The chunked cell is the one with the best success among those that re-planned at all
    (ties: the most re-plans; a chunked run whose every chunk overran sends only fallbacks);
    the rolling cell the one with the most re-plans among those at least as successful. None
    when a side has no such cell. The cells' miss rates come along: equal success says nothing
    about deadlines."""
    def usable(planner: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["task"] == task and r["planner"] == planner
                and not r["hog"] and "error" not in r and r["success_rate"] is not None]

    chunked = max((r for r in usable("chunked") if r["replans_per_s"] > 0),
                  key=lambda r: (r["success_rate"], r["replans_per_s"]), default=None)
    if chunked is None:
        return None
    rolling = max((r for r in usable("rolling") if r["success_rate"] >= chunked["success_rate"]),
                  key=lambda r: r["replans_per_s"], default=None)
    if rolling is None:
        return None
    side = {name: {k: r[k] for k in ("rate_hz", "replans_per_s", "success_rate", "miss_rate")}
            for name, r in (("rolling", rolling), ("chunked", chunked))}
    return {**side, "ratio": rolling["replans_per_s"] / chunked["replans_per_s"]}


def summary_table(summary: dict[str, Any]) -> str:
    lines = [f"{'task':<20}{'planner':<15}{'Hz':>6}{'hog':>5}{'miss %':>9}{'late p99':>10}"
             f"{'cmp p99':>9}{'steps':>7}{'replan/s':>9}{'success %':>11}{'eps':>6}"]
    for r in summary["cells"]:
        head = f"{r['task']:<20}{r['planner']:<15}{r['rate_hz']:>6g}{'yes' if r['hog'] else '':>5}"
        if "error" in r:
            lines.append(f"{head}   {r['error']}")
            continue
        success = "-" if r["success_rate"] is None else f"{100 * r['success_rate']:.1f}"
        lines.append(f"{head}{100 * r['miss_rate']:>9.3f}{r['lateness_p99_ms']:>10.3f}"
                     f"{r['compute_p99_ms']:>9.3f}{r['steps_per_tick']:>7.2f}"
                     f"{r.get('replans_per_s', 0.0):>9.1f}{success:>11}"
                     f"{r['episodes']:>6}")
    for task, best in summary["rolling_max_rate_hz_misses_le_0.1pct"].items():
        lines.append(f"rolling on {task}: highest rate with misses <= 0.1 %: "
                     f"{best['quiet']} Hz quiet, {best['with_hog']} Hz with a CPU hog")
    for task, d in summary.get("decisions_at_equal_success", {}).items():
        if d is None:
            continue
        ro, ch = d["rolling"], d["chunked"]
        lines.append(
            f"rolling on {task}: {d['ratio']:.1f}x the chunked baseline's re-plans per second "
            f"at equal or better success ({ro['replans_per_s']:.0f}/s at {ro['rate_hz']:g} Hz, "
            f"{100 * ro['miss_rate']:.3f} % misses, vs {ch['replans_per_s']:.0f}/s at "
            f"{ch['rate_hz']:g} Hz, {100 * ch['success_rate']:.0f} % success)")
    return "\n".join(lines)
