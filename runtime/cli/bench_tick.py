"""`rtdiff bench tick`: how precisely can a Python loop keep a kilohertz deadline?

The real `ControlLoop` drives a synthetic anytime planner against a null plant on the wall
clock. The planner's step burns CPU for a sampled duration (lognormal around `--step-us`, and
with probability `--tail-prob` a step `--tail-x` times longer: the heavy tail real planners
have) and leaves a little cyclic garbage per step, as Python code around torch kernels does.
Before the run the process builds a large long-lived heap (`--heap-objects`), standing in for
what importing torch and MuJoCo leaves behind: that is what makes a full garbage collection
expensive, and what `gc.freeze()` takes off the table.

Each variant is one combination of
- wait: `sleep` (plain `time.sleep` to the tick start) or `spin` (sleep, then spin the last
  `--spin-us`), and
- gc: `gc` (CPython's automatic collector) or `frozen` (`gc.freeze()` at start-up, collection
  only in slack time),
run back to back for `--seconds` each, so they share the machine's state. A third part
`+async` runs refinement in a worker thread instead (the tick waits with the variant's clock and
takes the newest result), which measures the GIL hand-off: a pure-Python planner step holds the
GIL, so the tick thread can wake up to `sys.getswitchinterval()` late (`--switch-us` sets it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Literal

import numpy as np

from runtime.clock import MonotonicClock
from runtime.loop import ControlLoop, LoopConfig
from runtime.protocols import Command, FloatArray, Observation, PlantSpec
from runtime.rt import GcPolicy, read_steal_s


class NullPlant:
    """A plant that costs nothing: one fixed state, commands are stored and counted."""

    def __init__(self, rate_hz: float) -> None:
        self._spec = PlantSpec(
            name="null", state_dim=1, action_dim=1,
            action_low=np.array([-1.0]), action_high=np.array([1.0]), rate_hz=rate_hz,
        )
        self._obs = Observation(seq=0, t_ns=0, state=np.zeros(1))
        self.applied = 0

    def spec(self) -> PlantSpec:
        return self._spec

    def reset(self, seed: int | None = None) -> Observation:
        self._obs.seq = 0
        return self._obs

    def observe(self) -> Observation:
        self._obs.seq += 1  # a fresh reading each tick, without allocating one
        return self._obs

    def apply(self, cmd: Command) -> None:
        self.applied += 1

    def counters(self) -> dict[str, int]:
        return {"applied": self.applied}

    def close(self) -> None:
        pass


class _Node:
    __slots__ = ("other",)

    def __init__(self) -> None:
        self.other: object = None


class SyntheticPlanner:
    """An anytime planner whose steps burn CPU for sampled durations.

    Step durations (ns) are drawn once, up front (`n_samples`), and replayed in a cycle, so the
    per-step path does no random-number work.
    """

    def __init__(
        self, *, step_ns: float, tail_prob: float, tail_x: float, seed: int,
        garbage_per_step: int = 20, n_samples: int = 1 << 16,
    ) -> None:
        rng = np.random.default_rng(seed)
        sigma = 0.25
        base = rng.lognormal(mean=np.log(step_ns) - sigma**2 / 2, sigma=sigma, size=n_samples)
        tail = rng.random(n_samples) < tail_prob
        base[tail] *= tail_x
        self._durations = [int(d) for d in base]
        self._i = 0
        self._garbage = garbage_per_step
        self._action = np.zeros(1)
        self.surprise = 0.0

    def reset(self, obs: Observation) -> None:
        pass

    def observe(self, obs: Observation) -> None:
        pass

    def refine(self, budget_ns: int) -> int:
        d = self._durations[self._i]
        self._i = (self._i + 1) & (len(self._durations) - 1)
        for _ in range(self._garbage):  # cycles: only the collector frees them
            a, b = _Node(), _Node()
            a.other, b.other = b, a
        end = time.perf_counter_ns() + d
        while time.perf_counter_ns() < end:
            pass
        return 1

    def action(self) -> FloatArray:
        return self._action


def _build_heap(n_objects: int) -> list[Any]:
    return [{"i": i, "v": [i]} for i in range(n_objects // 2)]


VARIANT_FORM = "{sleep,spin}+{gc,frozen}[+async]"


def valid_variant(name: str) -> bool:
    parts = name.split("+")
    return (
        len(parts) in (2, 3)
        and parts[0] in ("sleep", "spin")
        and parts[1] in ("gc", "frozen")
        and (len(parts) == 2 or parts[2] == "async")
    )


def run_variant(
    name: str, *, rate_hz: float, seconds: float, step_us: float, tail_prob: float,
    tail_x: float, budget_fraction: float, spin_us: float, seed: int,
) -> dict[str, Any]:
    if not valid_variant(name):
        raise ValueError(f"unknown variant {name!r}; expected {VARIANT_FORM}")
    wait, gc_mode, *rest = name.split("+")
    refine: Literal["sync", "async"] = "async" if rest else "sync"
    clock = MonotonicClock(spin_ns=round(spin_us * 1000) if wait == "spin" else 0)
    planner = SyntheticPlanner(
        step_ns=step_us * 1000, tail_prob=tail_prob, tail_x=tail_x, seed=seed
    )
    loop = ControlLoop(
        NullPlant(rate_hz), planner, clock,
        LoopConfig(rate_hz=rate_hz, mode="realtime", budget_fraction=budget_fraction,
                   warmup_steps=64, refine=refine),
        gc_policy=GcPolicy("frozen" if gc_mode == "frozen" else "default"),
    )
    result = loop.run(seconds=seconds, seed=seed)
    out = result.stats().to_json()
    out["variant"] = name
    return out


def cli_bench_tick(args: argparse.Namespace) -> int:
    from runtime.cli import CliError

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if not valid_variant(v):
            raise CliError(f"unknown variant {v!r}; expected {VARIANT_FORM}")
    if not 0.0 <= args.tail_prob <= 1.0:
        raise CliError(f"--tail-prob must be in [0, 1], got {args.tail_prob}")
    if args.switch_us is not None:
        sys.setswitchinterval(args.switch_us * 1e-6)
    heap = _build_heap(args.heap_objects)
    import gc

    t = time.perf_counter_ns()
    gc.collect()
    full_gc_ms = (time.perf_counter_ns() - t) / 1e6
    results: dict[str, dict[str, Any]] = {}
    steal0 = read_steal_s()
    for v in variants:
        if not args.json:
            sys.stderr.write(f"bench tick: {v} for {args.seconds:g} s at {args.rate:g} Hz ...\n")
        results[v] = run_variant(
            v, rate_hz=args.rate, seconds=args.seconds, step_us=args.step_us,
            tail_prob=args.tail_prob, tail_x=args.tail_x, budget_fraction=args.budget_fraction,
            spin_us=args.spin_us, seed=args.seed,
        )
    del heap
    best = results.get("spin+frozen") or results[variants[-1]]
    summary: dict[str, Any] = {
        "bench": "tick",
        "rate_hz": args.rate,
        "seconds_per_variant": args.seconds,
        "step_us": args.step_us,
        "tail_prob": args.tail_prob,
        "tail_x": args.tail_x,
        "budget_fraction": args.budget_fraction,
        "spin_us": args.spin_us,
        "heap_objects": args.heap_objects,
        "switch_interval_us": sys.getswitchinterval() * 1e6,
        "full_gc_ms": round(full_gc_ms, 3),
        "machine": (
            f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}"
        ),
        "headline_variant": best["variant"],
    }
    for key in ("ticks", "misses", "miss_rate", "lateness_ms", "compute_ms", "overhead_us",
                "steps_per_tick", "fallbacks", "skipped"):
        summary[key] = best.get(key)
    summary["variants"] = results
    steal1 = read_steal_s()
    summary["steal_s"] = None if steal0 is None or steal1 is None else steal1 - steal0
    if getattr(args, "results", None):
        from runtime.files import record_result

        record_result(args.results, "tick", summary)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_table(summary)
    return 0


def _print_table(summary: dict[str, Any]) -> None:
    print(f"rtdiff bench tick: {summary['rate_hz']:g} Hz, {summary['seconds_per_variant']:g} s "
          f"per variant, heap {summary['heap_objects']} objects "
          f"(full gc {summary['full_gc_ms']} ms)")
    head = (f"{'variant':<20}{'ticks':>8}{'misses':>8}{'miss %':>9}{'late p50 us':>13}"
            f"{'late p99 us':>13}{'late max us':>13}{'ovh p99 us':>12}{'steps':>7}")
    print(head)
    for name, r in summary["variants"].items():
        lat = r["lateness_ms"]
        print(f"{name:<20}{r['ticks']:>8}{r['misses']:>8}{100 * r['miss_rate']:>9.3f}"
              f"{1000 * lat['p50']:>13.1f}{1000 * lat['p99']:>13.1f}{1000 * lat['max']:>13.1f}"
              f"{r['overhead_us']['p99']:>12.1f}{r['steps_per_tick']['mean']:>7.1f}")
