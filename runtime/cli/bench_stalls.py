"""`rtdiff bench stalls`: stop the controller on purpose and measure what the plant did.

A realtime `rtdiff serve` process holds the plant; for each cell (planner x plan-ahead on/off x
stall length) and seed, a `rtdiff run` controller process drives it over the bridge while a
supervisor thread here injects stalls into that process:

- `--inject stop` (default): SIGSTOP, wait `stall_ms`, SIGCONT, every `--every-s` seconds
  (the controller is frozen whole: the OS, a debugger, a swapped-out page, a host that
  stole the CPU);
- `--quota PCT`: the CPU controller's bandwidth limit instead (cgroup v2 `cpu.max`, or v1
  `cpu.cfs_quota_us` / `cpu.cfs_period_us`): the controller may run PCT % of each
  `--every-s` period and is throttled for the rest once it used that up. CFS bandwidth does
  not throttle SCHED_FIFO threads, so quota cells run the controller without realtime
  priority. Without a writable cpu controller the bench says so and exits 2;
- `--stall-ms 0`: no injection: the host's own hiccups only (with its steal).

Every cell records the host steal (`/proc/stat`) over its runs, so every figure carries what
the machine itself took. The plant's counts (`fresh`, `plan_fed`, `fallback`, `safe`, `dry`)
come from the plant side, which is the ground truth of what was applied (`runtime.planfeed`).

Output: a table, or with `--json` one object with `cells`; each run's JSON in `OUT/runs/`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.cli import CliError
from runtime.cli.bench_deadline import PLANNERS, csv_list, runnable
from runtime.cli.plantproc import plant_server
from runtime.files import atomic_write_text, record_result
from runtime.planfeed import AGE_KEYS, SOURCE_NAMES, age_quantiles
from runtime.rt import read_steal_s

STALL_JITTER_S = 0.02  # each stall starts up to this late: any phase of a 50-100 Hz tick


class Stopper:
    """Stops process `pid` for `stall_s` every `every_s` (SIGSTOP/SIGCONT) until `stop()`.

    The first stall comes `every_s` after the start; each one starts up to `jitter_s` late
    (uniform, seeded), so stalls do not all land at the same phase of the controller's tick
    when `every_s` is a multiple of its period. A process that already exited ends it. Never
    leaves the process stopped: `stop()` always sends a final SIGCONT."""

    def __init__(self, pid: int, stall_s: float, every_s: float, *, jitter_s: float = 0.0,
                 seed: int = 0) -> None:
        self.pid, self.stall_s, self.every_s = pid, stall_s, every_s
        self.jitter_s = jitter_s
        self._rng = random.Random(seed)
        self.stalls = 0
        self.stopped_s = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtdiff-stopper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        base = time.monotonic() + self.every_s
        next_t = base + self._rng.uniform(0.0, self.jitter_s)
        while not self._done.wait(max(0.0, next_t - time.monotonic())):
            try:
                os.kill(self.pid, signal.SIGSTOP)
                t0 = time.monotonic()
                time.sleep(self.stall_s)
                os.kill(self.pid, signal.SIGCONT)
                self.stopped_s += time.monotonic() - t0
                self.stalls += 1
            except ProcessLookupError:
                return
            base += self.every_s
            next_t = base + self._rng.uniform(0.0, self.jitter_s)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5.0)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)


def cpu_cgroup() -> tuple[str, Path] | None:
    """("v2", the cgroup v2 root) or ("v1", the cpu controller's mount) where this process may
    make a child group with a bandwidth limit; None where neither is available."""
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").exists() and "cpu" in (v2 / "cgroup.controllers").read_text():
        return ("v2", v2) if os.access(v2, os.W_OK) else None
    for cand in (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpu,cpuacct")):
        if (cand / "cpu.cfs_quota_us").exists() and os.access(cand, os.W_OK):
            return ("v1", cand)
    return None


@contextlib.contextmanager
def cpu_quota(pct: float, period_s: float) -> Iterator[Path]:
    """A fresh cpu cgroup limited to `pct` % of one CPU per `period_s`; yields its
    `cgroup.procs`/`tasks` file (write a pid there to move the process in). Removed after."""
    found = cpu_cgroup()
    if found is None:
        raise CliError("no writable cpu cgroup controller here (cgroup v2 cpu.max or v1 "
                       "cpu.cfs_quota_us); --quota needs one (run as root)")
    kind, root = found
    group = root / f"rtdiff-stalls-{os.getpid()}"
    group.mkdir(exist_ok=True)
    period_us = max(1000, min(1_000_000, round(period_s * 1e6)))
    quota_us = max(1000, round(period_us * pct / 100))
    try:
        if kind == "v2":
            (group / "cpu.max").write_text(f"{quota_us} {period_us}\n")
            yield group / "cgroup.procs"
        else:
            (group / "cpu.cfs_period_us").write_text(f"{period_us}\n")
            (group / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
            yield group / "tasks"
    finally:
        procs = group / ("cgroup.procs" if kind == "v2" else "tasks")
        with contextlib.suppress(OSError):
            for pid in procs.read_text().split():  # anything left goes back to the root
                (root / procs.name).write_text(pid + "\n")
        with contextlib.suppress(OSError):
            group.rmdir()


def run_argv(policy: str, address: str, *, seed: int, seconds: float, plan_ahead: bool,
              rt: int | None, ready: str, extra: dict[str, Any]) -> list[str]:
    argv = [sys.executable, "-m", "runtime.cli", "run", "--policy", policy, "--plant", address,
            "--mode", "realtime", "--seconds", f"{seconds:g}", "--seed", str(seed), "--json",
            "--ready-file", ready]
    argv += ["--rt-priority", str(rt)] if rt else ["--no-rt"]
    if not plan_ahead:
        argv.append("--no-plan-ahead")
    if extra.get("emit_after") is not None:
        argv += ["--emit-after", str(extra["emit_after"])]
    if extra.get("refine"):
        argv += ["--refine", extra["refine"]]
    return argv


def run_one(policy: str, address: str, *, seed: int, seconds: float, plan_ahead: bool,
            stall_ms: float, every_s: float, quota: float | None, rt: int | None,
            extra: dict[str, Any]) -> dict[str, Any]:
    """One controller process with stalls injected; its run JSON plus the injection's figures."""
    with tempfile.TemporaryDirectory(prefix="rtdiff-stalls-") as tmp:
        ready = str(Path(tmp) / "ready")
        argv = run_argv(policy, address, seed=seed, seconds=seconds, plan_ahead=plan_ahead,
                         rt=None if quota is not None else rt, ready=ready, extra=extra)
        steal0 = read_steal_s()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        stopper: Stopper | None = None
        with contextlib.ExitStack() as stack:
            if quota is not None:
                procs = stack.enter_context(cpu_quota(quota, every_s))
                procs.write_text(f"{proc.pid}\n")
            # stalls start once the loop ticks (loading a model takes seconds)
            t_end = time.monotonic() + 120.0
            while not os.path.exists(ready) and proc.poll() is None and time.monotonic() < t_end:
                time.sleep(0.01)
            if quota is None and stall_ms > 0 and proc.poll() is None:
                stopper = Stopper(proc.pid, stall_ms / 1e3, every_s, seed=seed,
                                  jitter_s=min(STALL_JITTER_S, every_s - stall_ms / 1e3))
                stopper.start()
            try:
                out, err = proc.communicate(timeout=seconds + 180.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            finally:
                if stopper is not None:
                    stopper.stop()
        steal1 = read_steal_s()
    if proc.returncode != 0 or not out.strip():
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise CliError(f"{policy} (seed {seed}) exited with {proc.returncode}: {last}")
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    res["stalls_injected"] = stopper.stalls if stopper is not None else 0
    res["stopped_s"] = stopper.stopped_s if stopper is not None else 0.0
    res["steal_s_cell"] = None if steal0 is None or steal1 is None else steal1 - steal0
    return res


def summarize(planner: str, plan_ahead: bool, stall_ms: float, every_s: float,
              runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell from its runs (one per seed): sums of counts, the episodes' success rate."""
    episodes = sum(r["episodes"] for r in runs)
    successes = sum(round(r["success_rate"] * r["episodes"]) for r in runs)
    ticks = sum(r["ticks"] for r in runs)
    misses = sum(r["misses"] for r in runs)
    plant = {k: sum(int(r.get("plant", {}).get(k, 0)) for r in runs) for k in SOURCE_NAMES}
    ages: dict[str, int] = {
        k: sum(int(r.get("plant_counters", {}).get(k, 0)) for r in runs) for k in AGE_KEYS
    }
    p50, p99 = age_quantiles(ages)
    steals = [r["steal_s_cell"] for r in runs if r.get("steal_s_cell") is not None]
    return {
        "planner": planner,
        "plan_ahead": plan_ahead,
        "plan_ahead_active": any(r.get("plan_ahead") for r in runs),
        "stall_ms": stall_ms,
        "every_s": every_s,
        "seeds": len(runs),
        "episodes": episodes,
        "success_rate": successes / episodes if episodes else 0.0,
        "falls": episodes - successes,
        "miss_rate": misses / ticks if ticks else 0.0,
        "misses": misses,
        "ticks": ticks,
        "plant": plant,
        "action_age_ms": {"p50": p50, "p99": p99},
        "watchdog_trips": sum(int(r.get("plant_counters", {}).get("watchdog_trips", 0))
                              for r in runs),
        "stalls_injected": sum(r["stalls_injected"] for r in runs),
        "steal_s": sum(steals) if steals else None,
    }


def table(cells: list[dict[str, Any]]) -> str:
    head = (f"{'planner':<10}{'plan':>6}{'stall':>7}{'succ':>7}{'falls':>6}{'miss %':>8}"
            f"{'fresh':>8}{'plan':>7}{'hold':>7}{'safe':>6}{'dry':>5}{'age50':>7}{'age99':>7}"
            f"{'steal':>7}")
    unit = (f"{'':<10}{'ahead':>6}{'ms':>7}{'%':>7}{'':>6}{'':>8}{'':>8}{'fed':>7}{'':>7}"
            f"{'':>6}{'':>5}{'ms':>7}{'ms':>7}{'s':>7}")
    lines = [head, unit]
    for c in cells:
        p, a = c["plant"], c["action_age_ms"]

        def ms(x: float | None) -> str:
            return f"{x:>7.1f}" if x is not None else f"{'-':>7}"

        steal = f"{c['steal_s']:>7.2f}" if c["steal_s"] is not None else f"{'-':>7}"
        lines.append(
            f"{c['planner']:<10}{'on' if c['plan_ahead'] else 'off':>6}{c['stall_ms']:>7g}"
            f"{100 * c['success_rate']:>7.0f}{c['falls']:>6}{100 * c['miss_rate']:>8.2f}"
            f"{p['fresh']:>8}{p['plan_fed']:>7}{p['fallback']:>7}{p['safe']:>6}{p['dry']:>5}"
            f"{ms(a['p50'])}{ms(a['p99'])}{steal}"
        )
    return "\n".join(lines)


def cli_bench_stalls(args: argparse.Namespace) -> int:
    planners = csv_list(args.planners)
    # a `bench deadline` planner name, or any policy `rtdiff run` takes (KIND:TASK, a dir)
    unknown = [p for p in planners if not runnable(p)]
    if unknown:
        raise CliError(f"unknown planner(s) {unknown}; known: {sorted(PLANNERS)}")
    try:
        stalls = [float(s) for s in csv_list(args.stall_ms)]
    except ValueError:
        raise CliError(f"--stall-ms must be numbers in ms, got {args.stall_ms!r}") from None
    if any(s < 0 for s in stalls) or not stalls:
        raise CliError(f"--stall-ms must be >= 0, got {args.stall_ms!r}")
    if any(s / 1e3 >= args.every_s for s in stalls):
        raise CliError(f"every stall must be shorter than --every-s {args.every_s:g} s")
    if args.quota is not None and cpu_cgroup() is None:
        raise CliError("no writable cpu cgroup controller here (cgroup v2 cpu.max or v1 "
                       "cpu.cfs_quota_us); --quota needs one (run as root)")
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.plan_ahead]
    rt = None if args.no_rt else args.rt_priority
    out_dir = Path(args.out)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []
    steal0 = read_steal_s()
    with plant_server(args.task, seed=args.seed, rate_hz=args.rate, rt_priority=rt) as address:
        total = len(planners) * len(modes) * len(stalls) * args.seeds
        done = 0
        for planner in planners:
            policy_t, overrides, extra = PLANNERS.get(planner, (planner, {}, {}))
            if overrides:
                raise CliError(f"{planner}: planner overrides are not supported by bench stalls")
            policy = policy_t.format(task=args.task)
            for stall in stalls:
                for plan_ahead in modes:
                    runs = []
                    for s in range(args.seeds):
                        done += 1
                        label = (f"{planner} plan-ahead {'on' if plan_ahead else 'off'} "
                                 f"stall {stall:g} ms seed {args.seed + s}")
                        sys.stderr.write(f"[{done}/{total}] {label} ...\n")
                        r = run_one(policy, address, seed=args.seed + s, seconds=args.seconds,
                                    plan_ahead=plan_ahead, stall_ms=stall,
                                    every_s=args.every_s, quota=args.quota, rt=rt, extra=extra)
                        name = (f"{planner}-{'on' if plan_ahead else 'off'}-{stall:g}ms"
                                f"-s{args.seed + s}")
                        (out_dir / "runs" / f"{name}.json").write_text(json.dumps(r))
                        runs.append(r)
                    cell = summarize(planner, plan_ahead, stall, args.every_s, runs)
                    if args.quota is not None:
                        cell["quota_pct"] = args.quota
                    cells.append(cell)
    steal1 = read_steal_s()
    result = {
        "task": args.task,
        "rate_hz": args.rate,
        "every_s": args.every_s,
        "seconds": args.seconds,
        "inject": "quota" if args.quota is not None else "stop",
        "rt_priority": rt,
        "steal_s": None if steal0 is None or steal1 is None else steal1 - steal0,
        "cells": cells,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(result, indent=1))
    if args.results:
        record_result(args.results, "stalls", result)
    if args.json:
        print(json.dumps(result))
    else:
        print(table(cells))
        steal = result["steal_s"]
        print(f"host steal over the bench: {'-' if steal is None else f'{steal:.2f} s'}; "
              f"runs in {out_dir / 'runs'}")
    return 0
