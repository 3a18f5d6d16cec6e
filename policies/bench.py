"""Refine-step latency of a planner: `python -m policies.bench --policy KIND:TASK [--json]`.

Wall-clock percentiles include whatever else the machine runs; `refine_cpu` (the thread's CPU
time per refine call, `time.thread_time_ns`) is the step's own cost without preemption.

Drives the planner with synthetic observations (a random walk around the normalization mean,
so no simulator is needed) and times each call of `observe`, `refine` and `action` with
`perf_counter_ns`, on one CPU thread by default. Reports p50/p99/p99.9/max in microseconds and
the decisions per second a tick of `observe + steps * refine + action` allows. For the chunked
baselines `refine` is a whole blocking chunk (K steps) on a chunk tick and nothing otherwise, so
their percentiles are over chunk ticks only.

`--idle-us N` leaves N microseconds between ticks (slept, or spun with `--idle-spin`), as a
control loop does between its ticks' work. Back to back (the default), each step finds the
model's weights and the interpreter's state in the caches the previous step left; after an
idle gap it may not, and on a small shared VM a step after 1.5 ms of idle can take about twice
its back-to-back latency (docs/benchmarks.md, "Refine-step latency"): the figure a realtime
loop's step budget actually sees.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import torch

from runtime.stats import percentiles


def _q(values_ns: list[int]) -> dict[str, float]:
    """`n`, then `p50_us`, `p99_us`, `p999_us` and `max_us`, rounded to 0.1 us."""
    if not values_ns:
        return {"n": 0}
    q = percentiles(np.asarray(values_ns, dtype=np.float64) / 1e3)
    return {"n": len(values_ns), **{f"{k}_us": round(v, 1) for k, v in q.items()}}


def _idle(ns: int, spin: bool) -> None:
    if spin:
        end = time.perf_counter_ns() + ns
        while time.perf_counter_ns() < end:
            pass
    else:
        time.sleep(ns * 1e-9)


def bench_planner(
    planner: Any, norm: Any, *, ticks: int, steps: int, seed: int, idle_ns: int = 0,
    idle_spin: bool = False,
) -> dict[str, Any]:
    from runtime.protocols import Observation

    rng = np.random.default_rng(seed)
    Ds = len(norm.state_mean)
    Dg = len(norm.goal_mean)
    goal = norm.goal_mean.astype(np.float64) if Dg else np.zeros(0)
    state = norm.state_mean.astype(np.float64).copy()
    planner.reset(Observation(seq=0, t_ns=0, state=state.copy(), goal=goal))
    obs_ns: list[int] = []
    ref_ns: list[int] = []
    ref_cpu_ns: list[int] = []
    act_ns: list[int] = []
    tick_ns: list[int] = []
    now = time.perf_counter_ns
    cpu = time.thread_time_ns  # CPU time of this thread: what the step costs without preemption
    for k in range(1, ticks + 1):
        state += 0.05 * norm.state_std * rng.standard_normal(Ds)
        o = Observation(seq=k, t_ns=k, state=state.copy(), goal=goal)
        t0 = now()
        planner.observe(o)
        t1 = now()
        obs_ns.append(t1 - t0)
        for _ in range(steps):
            c0, r0 = cpu(), now()
            n = planner.refine(10**9)
            r1, c1 = now(), cpu()
            if n <= 0:
                break
            ref_ns.append(r1 - r0)
            ref_cpu_ns.append(c1 - c0)
        a0 = now()
        planner.action()
        t2 = now()
        act_ns.append(t2 - a0)
        tick_ns.append(t2 - t0)
        if idle_ns > 0:
            _idle(idle_ns, idle_spin)
    tick = _q(tick_ns)
    return {
        "observe": _q(obs_ns),
        "refine": _q(ref_ns),
        "refine_cpu": _q(ref_cpu_ns),
        "action": _q(act_ns),
        "tick": tick,
        "decisions_per_s_at_p99": round(1e6 / tick["p99_us"], 0) if tick.get("p99_us") else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m policies.bench", description=__doc__.split("\n")[0])
    p.add_argument("--policy", required=True, help="KIND:TASK or a checkpoint directory")
    p.add_argument("--ticks", type=int, default=2000)
    p.add_argument("--steps", type=int, default=1, help="refine calls per tick (at most)")
    p.add_argument("--idle-us", type=float, default=0.0,
                   help="microseconds between ticks (as in a control loop); 0: back to back")
    p.add_argument("--idle-spin", action="store_true", help="spin through the idle gap")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--eager", action="store_true", help="run the model eagerly, not frozen")
    args = p.parse_args(argv)
    if not args.idle_us >= 0:
        p.error(f"--idle-us {args.idle_us:g}: must be >= 0")
    torch.set_num_threads(args.threads)
    from policies import load_checkpoint, load_planner, model_rate_hz, resolve_policy
    from runtime.protocols import PlantSpec

    directory, _ = resolve_policy(args.policy)
    ckpt = load_checkpoint(directory)
    Ds, Da, Dg = ckpt.dims
    spec = PlantSpec(
        name=ckpt.task,
        state_dim=Ds,
        action_dim=Da,
        goal_dim=Dg,
        action_low=np.full(Da, -1e9),
        action_high=np.full(Da, 1e9),
        rate_hz=model_rate_hz(ckpt) or 100.0,  # the model's own rate: one token per tick
    )
    planner = load_planner(
        args.policy, spec=spec, device=args.device, seed=args.seed, frozen=not args.eager
    )
    try:
        res = bench_planner(
            planner, ckpt.normalizer, ticks=args.ticks, steps=args.steps, seed=args.seed,
            idle_ns=round(args.idle_us * 1e3), idle_spin=args.idle_spin,
        )
    finally:
        close = getattr(planner, "close", None)
        if close is not None:
            close()
    res = {
        "policy": args.policy,
        "device": args.device,
        "threads": args.threads,
        "frozen": not args.eager,
        "steps_per_tick": args.steps,
        "idle_us": args.idle_us,
        "idle_spin": args.idle_spin,
        "ticks": args.ticks,
        **res,
    }
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
