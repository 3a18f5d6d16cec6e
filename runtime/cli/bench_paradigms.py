"""`rtdiff bench paradigms`: planner paradigms side by side on the same tasks, seeds and clock.

    rtdiff bench paradigms --tasks double-pendulum,reacher-moving --episodes 20 \
        --planners dllm,ar,rolling,chunked,mlp,expert [--realtime --rates 250,500]

The comparison follows "DLLM Agent: See Farther, Run Faster" (docs/architecture.md, Sources):
a masked discrete-diffusion planner (`dllm`), an autoregressive one (`ar`), the continuous
rolling planner, the chunked baseline, one-step behaviour cloning and the expert, each given
the same seeded episodes. A planner is anything `rtdiff run --policy` takes: a bare KIND means
KIND:TASK on each task, the `bench deadline` names (chunked-k10, ...) keep their settings, and
a checkpoint directory (an ablation, such as a dllm trained with full attention) is a row of
its own.

Per task x planner, lockstep (`runtime.lockstep.run_lockstep`: `--episodes` episodes on plant
seeds `--seed`, `--seed` + 1, ..., the same for every planner):
- `success_rate`; `mean_return`: the task's reward summed over an episode, averaged (a graded
  measure where success is all or nothing); `end_to_end_s`: the wall time of those episodes
  (loading is not in it);
- `decision_ms` {p50, p99, max, mean}: per tick, the planner's observe + refine + action (an
  episode's reset is not a decision);
- `ticks_to_success`: on a goal task (`PlantSpec.goal_dim > 0`), the mean length of the
  successful episodes; null on a goal-less task (double-pendulum, bimodal). A task that ends
  at its goal (pointmaze) makes it the time to reach the goal; one that judges success at the
  end (reacher-moving: the share of ticks on target) runs every episode to its full length,
  and there it is that length;
- `hit_rate`: the share of ticks whose emitted action is within the tolerance of the row that
  the planner's plan (`PlanSource.plan_into`, read right after the previous tick's command)
  held for this tick (a plan with no row for it, such as a chunk that ran out, misses; an
  episode's first tick is not counted); `churn`: the share of plan rows for a later tick that
  moved by more than the tolerance from one tick's plan to the next's. The tolerance, one rule
  for every planner: 5 % of the action range (`TOLERANCE_OF_RANGE`) in every action dimension;
  plan rows are clipped into the limits first, as commands are. Both are null for a planner
  without a plan (the MLP, the experts) or one that never offered a row;
- `malformed_per_1000`: per 1000 decisions, the actions that were not finite or outside the
  plant's limits as the planner returned them (before the loop's fallback and clip), plus the
  planner's own `malformed()` counters when it has them (`unmasked_at_emit`, `filled_from_plan`,
  ...: every counter but `decisions`); `malformed` gives them one by one;
- `aligned_mask`: the checkpoint's attention-mask setting (`aligned_attention` in its model
  config, or a `mask` of `aligned` / `full`); null for a planner without one.

Refine steps per lockstep tick: `--steps-per-tick` (1, as `policies.evaluate` and `rtdiff eval`
use), or more for a planner that declares `steps_per_decision`, the steps one complete action
takes it (`NeedsSteps`). `--whole-plan` asks every decision for the whole plan, not just the
next action (the plan-ahead setting, where a command carries the rows for the ticks after it,
and the paper's: a structured output is complete only when all of it is): a planner that
declares `steps_per_plan` (`DecodesPlan`: ar, one sub-token per step) gets that many steps a
tick; a diffusion planner's every step already yields a complete plan (each position's current
belief), so it keeps its steps. Rows say `whole_plan`.

`--realtime` adds realtime runs over the bridge (`rtdiff serve` in its own process, driven by
`runtime.cli.run.execute` as `bench deadline` does) at the task's rate and at each of `--rates`
for `--seconds` each: success and misses at every rate, and the highest rate whose misses stay
<= 0.1 % (`realtime.max_rate_hz`).

`--scaling-horizons 8,16,32,64` adds the compute side of that question where it is largest:
for the first task, dllm and ar models with the shipped dllm checkpoint's sizes and tokenizer
but each of those horizons (the clean ticks scaled alike; fresh weights: the time of a
forward does not depend on them, and nothing here is judged on success) run
`--scaling-ticks` lockstep ticks with `--whole-plan` decoding; `scaling` rows give each one's
decision p50/p99 and `ar_over_dllm`, the ratio of their p50s.

Output: one JSON object (`--json`) whose `rows` hold the figures above, else a markdown table
(`--markdown FILE` writes it too); `--plot FILE`: success against end-to-end time per planner,
one panel per task; `OUT/summary.json`; `--results DIR` records the run for docs/benchmarks.md.
A cell that cannot run (no checkpoint for that planner and task, an unknown name) is a row with
its one-line `error`, and the sweep goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from runtime.cli import CliError
from runtime.cli.bench_deadline import MISS_TARGET, PLANNERS, csv_list, label
from runtime.cli.plantproc import plant_server, run_args
from runtime.clock import MonotonicClock
from runtime.files import atomic_write_text, record_result
from runtime.lockstep import PlantTap, run_lockstep
from runtime.planfeed import MAX_PLAN_TICKS
from runtime.protocols import (
    Clock,
    Closes,
    Command,
    FloatArray,
    Observation,
    Planner,
    PlanSource,
    Plant,
)
from runtime.rt import read_steal_s
from runtime.specs import SpecError, one_line, parse_kv
from runtime.stats import percentiles
from runtime.userpolicy import PolicyError

TOLERANCE_OF_RANGE = 0.05  # hit and churn: within 5 % of the action range in every dimension
NOT_MALFORMED = ("decisions",)  # `malformed()` keys that count decisions, not faults


@runtime_checkable
class ReportsMalformed(Protocol):
    """A planner that counts its own malformed outputs: `malformed()` -> {name: count}, since
    it was built (the discrete planners: `unmasked_at_emit`, `filled_from_plan`, ...)."""

    def malformed(self) -> dict[str, int]: ...


@runtime_checkable
class NeedsSteps(Protocol):
    """A planner whose one complete action takes `steps_per_decision` refine steps (an
    autoregressive decoder: one sub-token per step); a lockstep tick gives it that many."""

    steps_per_decision: int


@runtime_checkable
class DecodesPlan(Protocol):
    """A planner whose whole plan (every token of its horizon) takes `steps_per_plan` refine
    steps; `--whole-plan` gives it that many a tick."""

    steps_per_plan: int


def lockstep_steps(planner: Planner, steps_per_tick: int, whole_plan: bool) -> int:
    """Refine steps per lockstep tick for `planner` (module docstring)."""
    steps = max(steps_per_tick,
                planner.steps_per_decision if isinstance(planner, NeedsSteps) else 1)
    if whole_plan and isinstance(planner, DecodesPlan):
        steps = max(steps, planner.steps_per_plan)
    return steps


# -------------------------------------------------------------------------- per-tick probes


class DecisionProbe:
    """`planner` with each tick's decision timed and its raw action checked.

    A decision is a tick's observe + refine steps + action (the loop calls `action` once a
    tick); `decision_ns` gets one entry per decision. `nonfinite` and `out_of_limit` count the
    actions as the planner returned them, before the loop's fallback and clip. The probe is a
    plain `Planner`: the capabilities of the planner inside matter to a realtime loop only."""

    def __init__(self, planner: Planner, low: FloatArray, high: FloatArray, clock: Clock) -> None:
        self.planner = planner
        self.low, self.high = low, high  # (Da,) the plant's limits
        self.clock = clock
        self.decision_ns: list[int] = []
        self.nonfinite = 0
        self.out_of_limit = 0
        self._spent = 0

    def reset(self, obs: Observation) -> None:
        self.planner.reset(obs)
        self._spent = 0

    def observe(self, obs: Observation) -> None:
        t0 = self.clock.now_ns()
        self.planner.observe(obs)
        self._spent += self.clock.now_ns() - t0

    def refine(self, budget_ns: int) -> int:
        t0 = self.clock.now_ns()
        n = self.planner.refine(budget_ns)
        self._spent += self.clock.now_ns() - t0
        return n

    def action(self) -> FloatArray:
        t0 = self.clock.now_ns()
        a = self.planner.action()
        self.decision_ns.append(self._spent + self.clock.now_ns() - t0)
        self._spent = 0
        if not np.all(np.isfinite(a)):
            self.nonfinite += 1
        elif np.any(a < self.low) or np.any(a > self.high):
            self.out_of_limit += 1
        return a


class PlanTap(PlantTap):
    """`plant`, comparing each command with the plan `source` held for its tick.

    After every command it reads the planner's plan (rows for the ticks after the command's)
    into a fresh buffer, clipped into the limits. Every later command of the episode counts:
    a hit when the old plan had a row for its tick (row 0) and the action is within `tol` (Da,)
    of it in every dimension (a plan that had run out, or offered nothing, misses); churn when
    the new plan's row j moved by more than `tol` (in any dimension) from the old plan's row
    j + 1, the same tick. An episode's first command has no plan before it."""

    def __init__(self, plant: Plant, source: PlanSource, tol: FloatArray) -> None:
        super().__init__(plant)
        spec = plant.spec()
        self.source = source
        self.tol = tol  # (Da,)
        self.low, self.high = spec.action_low, spec.action_high
        self._plans = [np.zeros((MAX_PLAN_TICKS, spec.action_dim)) for _ in range(2)]
        self._rows = -1  # rows of the previous tick's plan; -1: no previous tick (a start)
        self.compared = self.hits = 0
        self.offered = False  # any plan row at all, in the whole run
        self.rows_compared = self.rows_changed = 0

    def started(self, obs: Observation) -> None:
        self._rows = -1

    def applied(self, cmd: Command) -> None:
        old, new = self._plans
        n = self.source.plan_into(new)
        np.clip(new[:n], self.low, self.high, out=new[:n])
        self.offered |= n > 0
        if self._rows >= 0:
            self.compared += 1
            self.hits += self._rows > 0 and bool(np.all(np.abs(cmd.action - old[0]) <= self.tol))
            m = min(self._rows - 1, n)
            if m > 0:
                moved = ~np.all(np.abs(new[:m] - old[1 : m + 1]) <= self.tol, axis=1)
                self.rows_compared += m
                self.rows_changed += int(np.count_nonzero(moved))
        self._plans.reverse()
        self._rows = n


def measure_lockstep(
    plant: Plant,
    planner: Planner,
    *,
    episodes: int,
    seed: int,
    steps_per_tick: int,
    clock: Clock | None = None,
    ticks: int | None = None,
) -> dict[str, Any]:
    """`episodes` seeded lockstep episodes of `planner` on `plant`, measured (module
    docstring): success, end-to-end time, decision times, ticks to success, hit rate, churn
    and malformed actions. `ticks` instead: that many ticks (the episodes they finish count)."""
    clock = clock or MonotonicClock()
    spec = plant.spec()
    probe = DecisionProbe(planner, spec.action_low, spec.action_high, clock)
    tap = (PlanTap(plant, planner, TOLERANCE_OF_RANGE * (spec.action_high - spec.action_low))
           if isinstance(planner, PlanSource) else None)
    t0 = clock.now_ns()
    result = run_lockstep(tap or plant, probe, episodes=None if ticks else episodes, seed=seed,
                          steps_per_tick=steps_per_tick, ticks=ticks)
    wall_ns = clock.now_ns() - t0
    done = result.episodes
    won = [e.ticks for e in done if e.success]
    decisions = len(probe.decision_ns)
    malformed = {"nonfinite": probe.nonfinite, "out_of_limit": probe.out_of_limit}
    if isinstance(planner, ReportsMalformed):
        malformed.update({k: int(v) for k, v in planner.malformed().items()
                          if k not in NOT_MALFORMED})
    decision_ms = np.asarray(probe.decision_ns) / 1e6
    q = percentiles(decision_ms, (50.0, 99.0))
    return {
        "episodes": len(done),
        "ticks": decisions,
        "rate_hz": spec.rate_hz,
        "success_rate": sum(e.success for e in done) / len(done) if done else None,
        "mean_return": float(np.mean([e.episode_return for e in done])) if done else None,
        "end_to_end_s": wall_ns / 1e9,
        "decision_ms": {"p50": q["p50"], "p99": q["p99"], "max": q["max"],
                        "mean": float(decision_ms.mean()) if decisions else 0.0},
        "ticks_to_success": (float(np.mean(won)) if won else None) if spec.goal_dim else None,
        "hit_rate": tap.hits / tap.compared if tap and tap.offered and tap.compared else None,
        "churn": tap.rows_changed / tap.rows_compared if tap and tap.rows_compared else None,
        "malformed_per_1000": 1000 * sum(malformed.values()) / decisions if decisions else None,
        "malformed": malformed,
        "steps_per_tick": steps_per_tick,
    }


# ------------------------------------------------------------------------------ the cells


def policy_for(name: str, task: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(policy spec, planner-setting overrides, extra `rtdiff run` options) for a planner name
    on `task`: a `bench deadline` name, `expert`, a spec with a scheme (KIND:TASK, py:...), a
    checkpoint directory, or a bare KIND (= KIND:task)."""
    if name in PLANNERS:
        policy, overrides, options = PLANNERS[name]
        return policy.format(task=task), overrides, options
    if ":" in name or Path(name).is_dir():
        return name, {}, {}
    return f"{name}:{task}", {}, {}


def plant_text(task: str) -> str:
    """A built-in task's name as a plant spec; any other spec as it is."""
    return task if ":" in task else f"sim:{task}"


def mask_setting(policy: str) -> bool | None:
    """True/False: the checkpoint behind `policy` trains with aligned / full attention; None
    when `policy` names no checkpoint or its model has no mask setting (the MLP)."""
    if policy == "expert" or policy.startswith("py:"):
        return None
    from policies import resolve_policy

    try:
        directory, _ = resolve_policy(policy)
        model = json.loads((directory / "config.json").read_text()).get("model", {})
    except (ValueError, OSError):
        return None
    if isinstance(model.get("aligned_attention"), bool):
        return bool(model["aligned_attention"])
    mask = model.get("mask", model.get("attention"))
    return mask == "aligned" if mask in ("aligned", "full") else None


def lockstep_cell(task: str, name: str, args: argparse.Namespace,
                  plant_args: dict[str, Any],
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row: `name` on `task` in lockstep, or the one-line reason it could not run. A bare
    KIND names the checkpoint of the plant's own name (a task's, or a plant spec's).
    `overrides`: planner settings over the name's own (`bench amortize`: `chunk_steps`)."""
    from runtime.cli.plants import make_planner, make_plant, plant_spec_of

    policy, own, _ = policy_for(name, task)
    overrides = {**own, **(overrides or {})}
    row: dict[str, Any] = {"task": label(task), "planner": label(name), "policy": policy}
    try:
        plant = make_plant(plant_text(task), plant_args, mode="lockstep", seed=args.seed)
        try:
            policy = row["policy"] = policy_for(name, plant_spec_of(plant).name)[0]
            planner = make_planner(policy, plant, device=args.device, seed=args.seed,
                                   overrides=overrides or None, strict=True)
            steps = lockstep_steps(planner, args.steps_per_tick, args.whole_plan)
            try:
                row.update(measure_lockstep(plant, planner, episodes=args.episodes,
                                            seed=args.seed, steps_per_tick=steps))
            finally:
                if isinstance(planner, Closes):
                    planner.close()
        finally:
            plant.close()
    except CliError as exc:
        return {**row, "error": str(exc)}
    except (PolicyError, ValueError) as exc:  # a planner or plant failing mid-run
        return {**row, "error": one_line(exc)}
    row["aligned_mask"] = mask_setting(policy)
    row["whole_plan"] = bool(args.whole_plan)
    return row


def realtime_cells(task: str, cells: list[tuple[str, dict[str, Any]]], rates: list[float],
                   args: argparse.Namespace, plant_extra: list[str]) -> None:
    """Realtime runs of every (planner name, row) of `task` that ran in lockstep, at the
    task's rate and at each of `rates`; each such row gets `realtime` {task_rate_hz, by_rate,
    max_rate_hz}."""
    ok = [(name, row) for name, row in cells if "error" not in row]
    if not ok:
        return
    task_rate = ok[0][1]["rate_hz"]
    by_rate: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in ok}
    for rate in [task_rate, *sorted({r for r in rates if r != task_rate})]:
        try:
            with plant_server(task, seed=args.seed, rate_hz=rate, extra=plant_extra,
                              rt_priority=args.rt_priority) as address:
                for name, row in ok:
                    sys.stderr.write(f"bench paradigms: {row['task']} {row['planner']} realtime "
                                     f"{rate:g} Hz ...\n")
                    by_rate[name].append(realtime_run(name, row["policy"], address, rate,
                                                      args))
        except CliError as exc:  # a rate the plant refuses: every planner's cell says so
            sys.stderr.write(f"bench paradigms: {task} at {rate:g} Hz: {exc}\n")
            for runs in by_rate.values():
                runs.append({"rate_hz": rate, "error": str(exc)})
    for name, row in ok:
        runs = by_rate[name]
        held = [c["rate_hz"] for c in runs if "error" not in c and c["miss_rate"] <= MISS_TARGET]
        row["realtime"] = {"task_rate_hz": task_rate, "by_rate": runs,
                           "max_rate_hz": max(held, default=None)}


def realtime_run(name: str, policy: str, address: str, rate: float,
                 args: argparse.Namespace,
                 options: dict[str, Any] | None = None,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One realtime `rtdiff run` of planner `name` (as `policy`) on the plant served at
    `address`; `options`: `rtdiff run` settings over the name's own (`steps_per_tick`, ...);
    `overrides`: planner settings over the name's own (`chunk_steps`, ...).
    `compute_ms`: the run's tick start to command sent {p50, p99, p999, max}, with its mean
    from the tick records."""
    from runtime.cli.run import execute

    _, own_settings, own = policy_for(name, "")
    run = run_args(policy, address, seed=args.seed, seconds=args.seconds,
                   rt_priority=args.rt_priority)
    run.rate, run.device, run.overrides = rate, args.device, {**own_settings,
                                                              **(overrides or {})}
    for key, value in {**own, **(options or {})}.items():
        setattr(run, key, value)
    try:
        result, out = execute(run)
    except CliError as exc:
        return {"rate_hz": rate, "error": str(exc)}
    cell = {"rate_hz": rate, "miss_rate": out["miss_rate"], "misses": out["misses"],
            "ticks": out["ticks"], "plant_misses": out.get("plant_misses", 0),
            "episodes": out["episodes"],
            "success_rate": out["success_rate"] if out["episodes"] else None,
            "mean_return": out.get("mean_return") if out["episodes"] else None}
    if "compute_ms" in out:
        r = result.records if result is not None else None
        mean = (float(np.mean(r["emit_ns"] - r["start_ns"])) / 1e6
                if r is not None and len(r) else None)
        cell["compute_ms"] = {**out["compute_ms"], "mean": mean}
    return cell


def plan_scaling(task: str, horizons: list[int], args: argparse.Namespace,
                 plant_args: dict[str, Any]) -> list[dict[str, Any]]:
    """Decision time of dllm against whole-plan ar at each horizon (module docstring)."""
    import dataclasses

    import torch

    from policies import planner_from_checkpoint, resolve_policy
    from policies.checkpoint import load_checkpoint
    from policies.discrete import SubTokenTransformer
    from runtime.cli.plants import make_plant, plant_spec_of

    plant = make_plant(plant_text(task), plant_args, mode="lockstep", seed=args.seed)
    rows: list[dict[str, Any]] = []
    try:
        spec = plant_spec_of(plant)
        try:
            base = load_checkpoint(resolve_policy(f"dllm:{spec.name}")[0])
        except ValueError as exc:
            raise CliError(f"--scaling-horizons: {one_line(exc)}") from None
        if not isinstance(base.model, SubTokenTransformer):
            raise CliError(f"--scaling-horizons: dllm:{spec.name} is not a discrete model")
        dllm_mask = base.model.cfg.mask
        for horizon in horizons:
            row: dict[str, Any] = {"task": label(task), "horizon": horizon,
                                   "plan_sub_tokens": horizon * base.model.cfg.group}
            for kind, mask in (("dllm", dllm_mask), ("ar", "causal")):
                torch.manual_seed(args.seed)
                model = SubTokenTransformer(dataclasses.replace(base.model.cfg, horizon=horizon,
                                                                mask=mask))
                model.set_tokenizer(base.model.tokenizer())
                model.eval()
                clean = round(base.planner.clean_ticks * horizon / base.model.cfg.horizon)
                clean = min(max(1, clean), horizon - 1)
                pcfg = dataclasses.replace(base.planner, clean_ticks=clean)
                ckpt = dataclasses.replace(base, kind=kind, model=model, planner=pcfg)
                planner = planner_from_checkpoint(ckpt, spec=spec, kind=kind,
                                                  device=args.device, seed=args.seed)
                steps = lockstep_steps(planner, args.steps_per_tick, True)
                sys.stderr.write(f"bench paradigms: scaling H={horizon} {kind}, {steps} steps "
                                 f"a tick ...\n")
                m = measure_lockstep(plant, planner, episodes=1, seed=args.seed,
                                     steps_per_tick=steps, ticks=args.scaling_ticks)
                if isinstance(planner, Closes):
                    planner.close()
                row[kind] = {"steps_per_tick": steps, "decision_ms": m["decision_ms"]}
            row["ar_over_dllm"] = (row["ar"]["decision_ms"]["p50"]
                                   / row["dllm"]["decision_ms"]["p50"])
            rows.append(row)
    finally:
        plant.close()
    return rows


# ------------------------------------------------------------------------------ the command


def cli_bench_paradigms(args: argparse.Namespace) -> int:
    tasks, planners = csv_list(args.tasks), csv_list(args.planners)
    if not tasks or not planners:
        raise CliError("give at least one task (--tasks) and one planner (--planners)")
    try:
        rates = [float(r) for r in csv_list(args.rates)]
    except ValueError:
        raise CliError(f"--rates must be a comma list of numbers, got {args.rates!r}") from None
    if any(not r > 0 for r in rates):
        raise CliError(f"--rates must be positive, got {args.rates!r}")
    try:
        horizons = [int(h) for h in csv_list(args.scaling_horizons)]
    except ValueError:
        raise CliError("--scaling-horizons must be a comma list of integers, got "
                       f"{args.scaling_horizons!r}") from None
    if any(h < 2 for h in horizons):
        raise CliError(f"--scaling-horizons must be >= 2, got {args.scaling_horizons!r}")
    try:
        plant_args = parse_kv(args.plant_arg or [], flag="--plant-arg")
    except SpecError as exc:
        raise CliError(str(exc)) from None
    plant_extra = [x for item in args.plant_arg or [] for x in ("--plant-arg", item)]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    steal0 = read_steal_s()
    rows: list[dict[str, Any]] = []
    for task in tasks:
        cells = []
        for name in planners:
            sys.stderr.write(f"bench paradigms: {task} {name} lockstep, {args.episodes} "
                             f"episodes ...\n")
            row = lockstep_cell(task, name, args, plant_args)
            sys.stderr.write(f"bench paradigms: {task} {name}: {cell_line(row)}\n")
            cells.append((name, row))
        if args.realtime:
            realtime_cells(task, cells, rates, args, plant_extra)
        rows += [row for _, row in cells]
    scaling = plan_scaling(tasks[0], horizons, args, plant_args) if horizons else []
    steal1 = read_steal_s()
    summary: dict[str, Any] = {
        "tasks": [label(t) for t in tasks], "planners": [label(p) for p in planners],
        "episodes": args.episodes, "seed": args.seed, "steps_per_tick": args.steps_per_tick,
        "device": args.device, "tolerance_of_range": TOLERANCE_OF_RANGE,
        "whole_plan": bool(args.whole_plan),
        "realtime": bool(args.realtime), "rows": rows, "scaling": scaling,
        "steal_s": None if steal0 is None or steal1 is None else steal1 - steal0,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return write_outputs(args, "paradigms", summary, markdown_table(summary), plot)


def write_outputs(args: argparse.Namespace, kind: str, summary: dict[str, Any], table: str,
                  draw: Callable[[dict[str, Any], Path], None]) -> int:
    """A bench's outputs: `--markdown` (the table), `--plot` (`draw`), `--results` (recorded
    as `kind` for the benchmarks page), and on stdout the JSON (`--json`) or the table."""
    if args.markdown:
        atomic_write_text(Path(args.markdown), table + "\n")
    if args.plot:
        draw(summary, Path(args.plot))
    if args.results:
        record_result(args.results, kind, summary)
    print(json.dumps(summary) if args.json else table)
    return 0


def cell_line(row: dict[str, Any]) -> str:
    """A row in one progress line."""
    if "error" in row:
        return f"error: {row['error']}"
    return (f"success {_pct(row['success_rate'])} %, {row['end_to_end_s']:.1f} s, decision p99 "
            f"{row['decision_ms']['p99']:.2f} ms, hit {_pct(row['hit_rate'])} %")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown_table(summary: dict[str, Any]) -> str:
    """The rows as a markdown table; failed cells below it, one line each."""
    head = ["task", "planner", "aligned mask", "success %", "decision ms p50 / p99",
            "end-to-end s", "ticks to success", "hit %", "churn %", "malformed / 1000"]
    realtime = summary.get("realtime")
    if realtime:
        head += ["misses % at task rate", "max Hz (misses <= 0.1 %)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    failed = []
    for r in summary["rows"]:
        if "error" in r:
            failed.append(f"- {r['task']} {r['planner']}: {r['error']}")
            continue
        mask = r.get("aligned_mask")
        cells = [r["task"], r["planner"], "-" if mask is None else ("aligned" if mask else "full"),
                 _pct(r["success_rate"]),
                 f"{r['decision_ms']['p50']:.3f} / {r['decision_ms']['p99']:.3f}",
                 f"{r['end_to_end_s']:.1f}", _num(r["ticks_to_success"], ".0f"),
                 _num(None if r["hit_rate"] is None else 100 * r["hit_rate"], ".1f"),
                 _num(None if r["churn"] is None else 100 * r["churn"], ".1f"),
                 _num(r["malformed_per_1000"], ".1f")]
        if realtime:
            rt = r.get("realtime") or {}
            at = next((c for c in rt.get("by_rate", []) if c["rate_hz"] == rt.get("task_rate_hz")
                       and "error" not in c), None)
            cells += [_num(None if at is None else 100 * at["miss_rate"], ".3f"),
                      _num(rt.get("max_rate_hz"), "g")]
        lines.append("| " + " | ".join(cells) + " |")
    out = lines + (["", *failed] if failed else [])
    if summary.get("scaling"):
        out += ["", "| task | horizon | plan sub-tokens | dllm steps / ms p50 | "
                "ar steps / ms p50 | ar / dllm |", "|---|---|---|---|---|---|"]
        for r in summary["scaling"]:
            d, a = r["dllm"], r["ar"]
            out.append(f"| {r['task']} | {r['horizon']} | {r['plan_sub_tokens']} | "
                       f"{d['steps_per_tick']} / {d['decision_ms']['p50']:.2f} | "
                       f"{a['steps_per_tick']} / {a['decision_ms']['p50']:.2f} | "
                       f"{r['ar_over_dllm']:.1f}x |")
    return "\n".join(out)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Success against end-to-end time, one point per planner, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = summary["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for r in summary["rows"]:
            if r["task"] != task or "error" in r or r["success_rate"] is None:
                continue
            ax.scatter(r["end_to_end_s"], 100 * r["success_rate"])
            ax.annotate(r["planner"], (r["end_to_end_s"], 100 * r["success_rate"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set(title=task, xlabel=f"end-to-end s ({summary['episodes']} lockstep episodes)",
               ylabel="success %", ylim=(-5, 105))
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> None:
    """Lay `fig` out, write it as a PNG at `path` (folders made) and close it, written or not."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
