"""`rtdiff demo` (`make demo`): the rolling planner against the chunked baseline, in real time.

1. A short `rtdiff bench tick`: how precisely this machine keeps a 1 kHz schedule in Python.
2. A realtime MuJoCo double-pendulum served behind the ZeroMQ bridge in its own process, on
   loopback, with seeded random pushes on the pole.
3. The same episodes (same seeds, so the same pushes) driven by the expert (the ceiling), the
   shipped rolling diffusion planner, the shipped chunked diffusion baseline and the MLP, each
   recorded with a trace; then the rolling planner again with the plant served at `--fast-rate`
   (default 500 Hz): the same 100 Hz model, re-planning every tick (`policies.tokenrate`),
   once sending each command after its first refine step (the default, docs/runtime.md "Early
   emit") and once refining first and sending last (`-late`), to show what the order costs.
   Then the rolling planner from a controller process that is stopped for `--stall-ms`
   (default 50 ms) every second, with plan-ahead on and off (`rtdiff bench stalls`): what the
   plant does with a controller that goes silent.
4. The side-by-side table (miss rate, lateness p99, compute p99, re-plans per second, success,
   what the plant applied, the host steal during each run) and `rtdiff report`'s plots,
   written to `--out` (default `runs/demo/`), and the host steal over the whole demo.

Plant and controller ask for SCHED_FIFO (`--rt-priority`, default 10; `--no-rt` to not ask);
where the OS refuses, the demo says so and runs with the default policy.

Why the double-pendulum: it is unstable and fast (100 Hz), so a command that arrives late, or a
plan executed blind for a few ticks, shows up as a fall within a second. That is the point the
demo makes; `bimodal` makes the other one (plan quality) in `rtdiff bench deadline`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from runtime.cli import build_parser

TASK = "double-pendulum"
PLANNERS = ("expert", f"rolling:{TASK}", f"chunked:{TASK}", f"mlp:{TASK}")


def _shipped() -> set[str]:
    from policies import shipped_policies

    return set(shipped_policies())


def _row(name: str, out: dict[str, Any]) -> str:
    lat, comp = out["lateness_ms"], out["compute_ms"]
    success = f"{100 * out['success_rate']:>9.1f}" if out["episodes"] else f"{'-':>9}"
    plant = out.get("plant")
    fed = f"{plant['plan_fed']}/{plant['fallback']}" if plant else "-"
    steal = f"{out['steal_s']:>7.2f}" if out.get("steal_s") is not None else f"{'-':>7}"
    return (f"{name:<26}{out['rate_hz']:>6g}{out['ticks']:>7}{out['misses']:>8}"
            f"{out.get('plant_misses', '-'):>8}"
            f"{100 * out['miss_rate']:>9.3f}{lat['p99']:>10.3f}{comp['p99']:>10.3f}"
            f"{out['steps_per_tick']['mean']:>7.2f}{out.get('replans_per_s', 0.0):>8.0f}"
            f"{out['episodes']:>6}{success}{fed:>11}{steal}")


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"{'planner':<26}{'rate':>6}{'ticks':>7}{'misses':>8}{'plant':>8}{'miss %':>9}"
        f"{'late p99':>10}{'cmp p99':>10}{'steps':>7}{'replans':>8}{'eps':>6}{'success':>9}"
        f"{'plan/hold':>11}{'steal':>7}",
        f"{'(realtime, over the bridge)':<26}{'Hz':>6}{'':>7}{'':>8}{'late':>8}{'':>9}"
        f"{'ms':>10}{'ms':>10}{'/tick':>7}{'/s':>8}{'':>6}{'%':>9}{'ticks':>11}{'s':>7}",
    ]
    lines += [_row(name, out) for name, out in rows.items()]
    return "\n".join(lines)


def cli_demo(args: argparse.Namespace) -> int:
    from runtime.cli.bench_stalls import run_one
    from runtime.cli.bench_tick import cli_bench_tick
    from runtime.cli.plantproc import plant_server, run_args
    from runtime.cli.report import make_report
    from runtime.cli.run import execute
    from runtime.rt import read_steal_s

    out_dir = Path(args.out)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    steal0 = read_steal_s()
    rt = None if getattr(args, "no_rt", False) else getattr(args, "rt_priority", None)
    if rt:
        from runtime.rt import try_realtime

        # first: the plant server's process and every thread made later inherit it
        for line in try_realtime(rt):
            print(f"rtdiff demo: {line}")
    print("== 1/3  tick-loop jitter at 1 kHz (rtdiff bench tick) ==", flush=True)
    cli_bench_tick(build_parser().parse_args(
        ["bench", "tick", "--rate", "1000", "--seconds", f"{args.bench_seconds:g}",
         "--variants", "sleep+gc,spin+frozen", "--heap-objects", "500000",
         "--seed", str(args.seed)]
    ))

    shipped = _shipped()
    planners = [p for p in PLANNERS if p == "expert" or p in shipped]
    missing = [p for p in PLANNERS if p not in planners]
    rows: dict[str, dict[str, Any]] = {}

    def drive(policy: str, name: str, address: str, rate: float | None,
              emit_after: int | None = None, planner: str | None = None) -> None:
        print(f"   {name} ...", flush=True)
        trace = out_dir / "traces" / name
        if trace.exists():
            shutil.rmtree(trace)
        args_run = run_args(policy, address, seed=args.seed, episodes=args.episodes,
                            trace=str(trace), rt_priority=rt)
        args_run.rate = rate
        args_run.emit_after = emit_after  # None: the planner's default
        _, out = execute(args_run)
        out["trace"] = f"traces/{name}"
        if planner is not None:  # the report's series name (`bench deadline`'s planner names)
            out["planner"] = planner
        (out_dir / "runs" / f"{name}.json").write_text(json.dumps(out))
        rows[name] = out

    with plant_server(TASK, seed=args.seed, rt_priority=rt) as address:
        print(f"\n== 2/3  {TASK} served in realtime at {address}; {args.episodes} seeded "
              f"episode(s) per planner ==", flush=True)
        if missing:
            print(f"   (not shipped in this build, skipped: {', '.join(missing)})")
        for policy in planners:
            drive(policy, policy.split(":")[0], address, None)
        stall_ms = getattr(args, "stall_ms", 50.0)
        if stall_ms and f"rolling:{TASK}" in planners:
            print(f"   the rolling planner's controller process stopped {stall_ms:g} ms every "
                  "second (SIGSTOP/SIGCONT), plan-ahead on, then off:", flush=True)
            for on in (True, False):
                name = f"rolling-stop{stall_ms:g}ms-{'on' if on else 'off'}"
                print(f"   {name} ...", flush=True)
                # a little past the episodes' end, so the last one is seen to finish
                out = run_one(f"rolling:{TASK}", address, seed=args.seed,
                              seconds=10.0 * args.episodes + 1.0, plan_ahead=on,
                              stall_ms=stall_ms, every_s=1.0, quota=None, rt=rt, extra={})
                out["planner"] = f"rolling-stop{stall_ms:g}ms-{'on' if on else 'off'}"
                out.pop("trace", None)
                (out_dir / "runs" / f"{name}.json").write_text(json.dumps(out))
                rows[name] = out
    fast = f"rolling:{TASK}"
    if args.fast_rate and fast in planners:
        with plant_server(TASK, seed=args.seed, rate_hz=args.fast_rate, rt_priority=rt) as address:
            print(f"   the same plant served at {args.fast_rate:g} Hz, the same 100 Hz model, "
                  "sending after its first step, then refining first and sending last:",
                  flush=True)
            drive(fast, f"rolling-{args.fast_rate:g}hz", address, args.fast_rate)
            drive(fast, f"rolling-{args.fast_rate:g}hz-late", address, args.fast_rate,
                  emit_after=0, planner="rolling-late")

    print("\n== 3/3  results ==")
    print(table(rows))
    steal1 = read_steal_s()
    steal = None if steal0 is None or steal1 is None else steal1 - steal0
    if steal is not None:
        print(f"host steal over the demo: {steal:.2f} s (/proc/stat; the time the "
              "hypervisor gave this machine's CPUs to others)")
    if getattr(args, "results", None):
        from runtime.files import record_result

        keep = ("rate_hz", "ticks", "misses", "plant_misses", "miss_rate", "lateness_ms",
                "compute_ms", "replans_per_s", "episodes", "success_rate", "plant",
                "action_age_ms", "steal_s", "plan_ahead", "rt")
        path = record_result(args.results, "demo", {
            "steal_s": steal,
            "rows": {n: {k: r[k] for k in keep if k in r} for n, r in rows.items()},
        })
        print(f"recorded in {path}")
    made = make_report(out_dir, out_dir / "report")
    print(f"\nruns in {out_dir / 'runs'}; report with {len(made) - 1} plots in "
          f"{out_dir / 'report' / 'report.md'}")
    return 0
