"""Realtime plant pacing: simulated time vs clock time, with the task's expert in the loop.

    python -m sims.bench_pacing --task double-pendulum --seconds 60 [--json]

The plant runs in realtime mode (its own thread paces physics on a `MonotonicClock`); the
main thread plays a minimal controller: it waits for each new observation, runs the expert
and sends the command with the deadline `observation time + period - margin`. Reported:
simulated seconds (plant ticks x period) against elapsed clock seconds, the plant's tick
lateness (start minus schedule) quantiles, and the plant's own counters (applied, late,
held, overruns). Episode ends are followed by an immediate reset; that gap counts against
the pacing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

from runtime import Command, LateCommand, MonotonicClock
from runtime.stats import percentiles
from sims.experts import make_expert
from sims.plant import MujocoPlant


def run(
    task: str, seconds: float, *, margin_ns: int = 1_000_000, seed: int = 0
) -> dict[str, Any]:
    clock = MonotonicClock()
    plant = MujocoPlant(task, mode="realtime", clock=clock, seed=seed)
    spec = plant.spec()
    expert = make_expert(task, spec)
    obs = plant.reset()
    expert.reset(obs)
    t_start = clock.now_ns()
    end = t_start + int(seconds * 1e9)
    last_seq, k, resets = obs.seq, 0, 0
    while clock.now_ns() < end:
        obs = plant.observe()
        if obs.done:
            obs = plant.reset()
            expert.reset(obs)
            resets += 1
            last_seq = obs.seq
        elif obs.seq == last_seq:
            time.sleep(0.0002)
            continue
        else:
            expert.observe(obs)
            last_seq = obs.seq
        expert.refine(spec.period_ns)
        deadline = obs.t_ns + spec.period_ns - margin_ns
        with contextlib.suppress(LateCommand):  # counted by the plant
            plant.apply(Command(k, clock.now_ns(), expert.action(), deadline))
        k += 1
    wall_s = (clock.now_ns() - t_start) * 1e-9
    counters = plant.counters()
    lateness_ms = plant.tick_lateness_ns.values() * 1e-6
    plant.close()
    sim_s = counters["ticks"] * spec.period_s
    return {
        "task": task,
        "rate_hz": spec.rate_hz,
        "wall_s": wall_s,
        "sim_s": sim_s,
        "sim_over_wall": sim_s / wall_s,
        "tick_lateness_ms": percentiles(lateness_ms),
        "counters": counters,
        "resets": resets,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sims.bench_pacing", description=__doc__)
    p.add_argument("--task", default="double-pendulum")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not args.seconds > 0:
        sys.stderr.write(f"bench_pacing: error: --seconds must be > 0, got {args.seconds}\n")
        return 2
    r = run(args.task, args.seconds)
    if args.json:
        print(json.dumps(r))
    else:
        lat = r["tick_lateness_ms"]
        print(
            f"{r['task']} @ {r['rate_hz']:g} Hz: sim {r['sim_s']:.3f} s / wall {r['wall_s']:.3f} s"
            f" = {r['sim_over_wall']:.5f}; tick lateness ms p50 {lat['p50']:.3f} p99 "
            f"{lat['p99']:.3f} p99.9 {lat['p999']:.3f} max {lat['max']:.3f}; {r['counters']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
