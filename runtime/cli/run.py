"""`rtdiff run`: wire a planner to a plant, run the loop, report deadlines and task outcome.

`--plant SPEC [--plant-arg K=V ...]` and `--policy SPEC [--policy-arg K=V ...]` are built by
`runtime.cli.plants` (sim:, mjcf:, gym:, py: plants or a bridge endpoint; expert, KIND:TASK, a
checkpoint directory or a py: policy). A `py:` policy that fails stops a lockstep run with one
line; in realtime its failures become counted fallbacks (`user_policy` in the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runtime.cli import DEFAULT_RT_PRIORITY, CliError
from runtime.cli.plants import make_planner, make_plant
from runtime.clock import MonotonicClock
from runtime.fallback import make_fallback
from runtime.loop import ControlLoop, EpisodeResult, LoopConfig, RunResult
from runtime.protocols import Anytime, KeepsAlive, PredictsStates, ReportsNoiseLevels
from runtime.rt import GcPolicy, cap_threads, try_realtime
from runtime.sidecar import Sidecar, capacity_for
from runtime.specs import SpecError, parse_kv
from runtime.trace import TraceRing
from runtime.userpolicy import CallablePolicy, PolicyError

TRANSPORT_MARGIN_S = 300e-6


def rt_priority(args: argparse.Namespace) -> int | None:
    """The SCHED_FIFO priority `rtdiff run` asks for: `--rt-priority`, else the default in
    realtime mode; None with `--no-rt` (and in lockstep unless asked)."""
    if getattr(args, "no_rt", False):
        return None
    given: int | None = getattr(args, "rt_priority", None)
    if given is not None:
        return given
    return DEFAULT_RT_PRIORITY if getattr(args, "mode", "") == "realtime" else None


def busy_warning(load_per_cpu: float = 0.5) -> str | None:
    """A warning line when the machine is busy (1-minute load above `load_per_cpu` per CPU)
    and the run has no realtime priority to protect its deadlines; None otherwise."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cpus = os.cpu_count() or 1
    if load <= load_per_cpu * cpus:
        return None
    return (f"running without SCHED_FIFO on a busy machine (load {load:.1f} on {cpus} CPUs): "
            "expect deadline misses; see --rt-priority")


class Progress:
    """One status line on stderr, rewritten about once a second (only on a terminal); and,
    for a supervisor, `ready_file` written at the first call (the loop is ticking)."""

    def __init__(self, enabled: bool, ready_file: str | None = None) -> None:
        self.enabled = enabled
        self.ready_file = ready_file
        self._last = 0.0

    def __call__(self, ticks: int, misses: int, episodes: list[EpisodeResult]) -> None:
        if self.ready_file is not None:
            Path(self.ready_file).write_text(f"{os.getpid()}\n")
            self.ready_file = None
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 1.0:
            return
        self._last = now
        ok = sum(e.success for e in episodes)
        sys.stderr.write(
            f"\r  ticks {ticks:>8}  misses {misses:>6}  episodes {len(episodes):>4}"
            f"  success {ok}/{len(episodes)}   "
        )
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def summary_table(out: dict[str, Any]) -> str:
    lat, comp = out["lateness_ms"], out["compute_ms"]
    lines = [
        f"rtdiff run: {out['policy']} on {out['plant_spec']} "
        f"({out['mode']}, {out['rate_hz']:g} Hz)",
        f"  ticks {out['ticks']}   misses {out['misses']} ({100 * out['miss_rate']:.3f} %)"
        + (f"   plant saw {out['plant_misses']} late" if "plant_misses" in out else ""),
        f"  lateness ms  p50 {lat['p50']:.3f}  p99 {lat['p99']:.3f}  p99.9 {lat['p999']:.3f}"
        f"  max {lat['max']:.3f}",
        f"  compute ms   p50 {comp['p50']:.3f}  p99 {comp['p99']:.3f}  p99.9 {comp['p999']:.3f}"
        f"  max {comp['max']:.3f}   (tick start to command sent)",
        f"  steps/tick   mean {out['steps_per_tick']['mean']:.2f}"
        f"  min {out['steps_per_tick']['min']:g}  max {out['steps_per_tick']['max']:g}"
        + (f"   (command sent after {n} step{'s' if n > 1 else ''}, refined on after it)"
           if (n := out.get("emit_after_steps", 0)) else ""),
        f"  episodes {out['episodes']}   success {100 * out['success_rate']:.1f} %"
        f"   mean return {out['mean_return']:.2f}",
        "  fallbacks "
        + (", ".join(f"{k} {v}" for k, v in out["fallbacks"].items() if v) or "none"),
    ]
    if "plant" in out:
        age = out["action_age_ms"]
        lines.append(
            "  plant applied  " + "  ".join(f"{k} {v}" for k, v in out["plant"].items())
            + ("" if age["p50"] is None else
               f"   action age ms p50 {age['p50']:.1f}  p99 {age['p99']:.1f}")
            + ("   (plan-ahead on)" if out.get("plan_ahead") else "")
        )
    if out.get("hit_rate") is not None:
        lines.append(f"  plan hit rate {100 * out['hit_rate']:.1f} % of "
                     f"{out['plan_hit_ticks']} ticks (the command within "
                     f"{100 * out['plan_hit_tolerance']:g} % of the action range of what the "
                     "plan held for it one tick earlier)"
                     + ("; sent before the planner observed (--emit-first)" if out.get("emit_first")
                        else ""))
    if "user_policy" in out:
        up = out["user_policy"]
        lines.append(
            f"  policy calls {up['calls']}  errors {up['errors']}  non-finite {up['nonfinite']}"
            f"  wrong shape {up['bad_shape']}  slowest call {up['call_ms_max']:.3f} ms"
            + (f"\n  first error: {up['first_error']}" if up["first_error"] else "")
        )
    if out.get("steal_s") is not None:
        lines.append(f"  host steal during the run {out['steal_s']:.2f} s")
    if "trace" in out:
        lines.append(f"  trace written to {out['trace']}")
    return "\n".join(lines)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM ask the loop to stop after its tick (`stop`):
    the run ends as if its time were up, with its trace closed and its summary printed. A
    second signal raises KeyboardInterrupt, for a loop that does not come back. Installed
    whatever the inherited disposition: a shell starts background jobs with SIGINT ignored,
    and a supervisor (`bench kills`, `bench stalls`) must still be able to stop a run cleanly.
    Only in the main thread (elsewhere signals cannot be handled); the old handlers come back
    after the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    asked = False

    def handler(signum: int, frame: object) -> None:
        nonlocal asked
        if asked:
            raise KeyboardInterrupt
        asked = True
        stop()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def execute(args: argparse.Namespace) -> tuple[RunResult, dict[str, Any]]:
    """Build plant, planner and loop from parsed `rtdiff run` arguments and run it."""
    # First, so that every thread made below (the simulated plant's, ZeroMQ's I/O thread, an
    # async refinement worker) inherits the policy.
    rt_report = try_realtime(rt_priority(args)) if rt_priority(args) else []
    for line in rt_report:
        sys.stderr.write(f"rtdiff run: {line}\n")
    if args.mode == "realtime" and not any(r.startswith("SCHED_FIFO priority") and "not" not in r
                                           and "refused" not in r for r in rt_report):
        warn = busy_warning()
        if warn:
            sys.stderr.write(f"rtdiff run: warning: {warn}\n")
    try:
        plant_args = parse_kv(getattr(args, "plant_arg", None) or [], flag="--plant-arg")
        policy_args = parse_kv(getattr(args, "policy_arg", None) or [], flag="--policy-arg")
    except SpecError as exc:
        raise CliError(str(exc)) from None
    plant = make_plant(args.plant, plant_args, mode=args.mode, seed=args.seed, rate_hz=args.rate)
    remote = args.plant.startswith(("tcp://", "ipc://"))
    served_mode = getattr(plant, "mode", args.mode)  # a served plant has its own mode
    if served_mode != args.mode:
        plant.close()
        raise CliError(
            f"the plant at {args.plant} runs in {served_mode} mode but --mode is {args.mode}; "
            f"use --mode {served_mode}" + (" or serve it with --realtime" if args.mode ==
                                           "realtime" else "")
        )
    task = plant.spec().name
    served_rate = plant.spec().rate_hz
    if args.rate is not None and abs(args.rate - served_rate) > 1e-6 * served_rate:
        plant.close()
        raise CliError(
            f"the plant {args.plant} runs at {served_rate:g} Hz but --rate is {args.rate:g}; "
            + ("set the rate where the plant is served (rtdiff serve --rate)" if remote
               else "it does not take a rate")
        )
    try:
        # loading and tracing a model takes seconds: a bridge plant keeps its session (and
        # the control lease) alive meanwhile
        with plant.kept_alive() if isinstance(plant, KeepsAlive) else contextlib.nullcontext():
            planner = make_planner(args.policy, plant, device=args.device, seed=args.seed,
                                   overrides=getattr(args, "overrides", None),
                                   policy_args=policy_args, strict=args.mode == "lockstep")
        spec = plant.spec()
        rate = args.rate or spec.rate_hz
        realtime = args.mode == "realtime"
        if realtime:
            cap_threads(1)  # the plant's own thread needs the other core
        # early emit by default for anytime planners in realtime: their plan stays valid between
        # steps; lockstep has no clock to beat and keeps refine-then-send (`--steps-per-tick K`
        # evaluations mean the action after K steps)
        emit_after = getattr(args, "emit_after", None)
        emit_first = bool(getattr(args, "emit_first", False))
        if emit_first and (emit_after or args.refine != "sync"):
            raise CliError("--emit-first is a mode of its own: not with --emit-after N or "
                           "--refine async")
        if emit_first:
            emit_after = 0
        elif emit_after is None:
            emit_after = int(isinstance(planner, Anytime) and planner.anytime
                             and args.refine == "sync" and realtime)
        config = LoopConfig(
            rate_hz=rate, mode=args.mode, refine=args.refine, steps_per_tick=args.steps_per_tick,
            emit_after_steps=emit_after, emit_first=emit_first,
            plan_ahead=not getattr(args, "no_plan_ahead", False),
            # Loopback delivery p99.9 is well under 0.3 ms (docs/benchmarks.md, bench bridge);
            # a command emitted later than that before its deadline counts as a miss here too.
            transport_margin_s=TRANSPORT_MARGIN_S if remote else 0.0,
        )
        trace = None
        if args.trace:
            trace = TraceRing(
                spec.action_dim,
                path=args.trace,
                chunk_ticks=getattr(args, "trace_chunk", 1024),
                meta={"policy": args.policy, "plant": args.plant, "mode": args.mode,
                      "rate_hz": rate, "seed": args.seed, "task": spec.name},
            )
        episodes = args.episodes
        if args.seconds is None and episodes is None:
            episodes = 1
        sidecar = None
        if args.trace:
            levels = planner.noise_levels if isinstance(planner, ReportsNoiseLevels) else None
            expected = (round(args.seconds * rate) if args.seconds is not None
                        else (episodes or 1) * max(spec.episode_ticks, 1))
            # the plan's predicted states: sync refinement only (async: the worker owns it)
            ahead = (planner.predicted_ticks
                     if isinstance(planner, PredictsStates) and args.refine == "sync" else 0)
            sidecar = Sidecar(capacity_for(expected + 16, rate), spec.state_dim,
                              len(levels()) if levels else 0, predicted_ticks=ahead)
        progress = Progress(enabled=sys.stderr.isatty() and not args.json,
                            ready_file=getattr(args, "ready_file", None))
        loop = ControlLoop(
            plant, planner, MonotonicClock(spin_ns=round(getattr(args, "spin_us", 200.0) * 1e3)),
            config,
            fallback=make_fallback(args.fallback), trace=trace, sidecar=sidecar,
            gc_policy=GcPolicy("frozen") if realtime else None,
            progress=progress, progress_every=max(1, round(rate / 10)),
        )
        plan_ahead = loop.plan_source() is not None
        try:
            with stop_on_signals(loop.stop):
                result = loop.run(seconds=args.seconds, episodes=episodes, seed=args.seed)
        except ConnectionError as exc:  # a bridge plant whose link stayed lost (BridgeError)
            raise CliError(f"the run stopped: {exc}") from None
        except PolicyError as exc:  # a py: policy failing in lockstep
            raise CliError(str(exc)) from None
        progress.done()
    finally:
        plant.close()
    out = result.to_json()
    out.update(policy=args.policy, plant_spec=args.plant, task=task, refine=args.refine,
               seed=args.seed, steps_cap=args.steps_per_tick, emit_after_steps=emit_after,
               emit_first=emit_first,
               rt=rt_report, plan_ahead=plan_ahead)
    if isinstance(planner, CallablePolicy):  # what the user's function did, counted
        out["user_policy"] = {**planner.counters(),
                         "first_error": planner.first_error,
                         "call_ms_max": planner.call_ns_max / 1e6}
    link = getattr(plant, "latency", None)  # a bridge plant: measured send-to-plant times
    if link is not None and realtime:
        out["link_latency_us"] = link.summary_us()
    return result, out


def cli_run(args: argparse.Namespace) -> int:
    _, out = execute(args)
    if args.json:
        print(json.dumps(out))
    else:
        print(summary_table(out))
    return 0
