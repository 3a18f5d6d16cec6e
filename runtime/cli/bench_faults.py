"""`rtdiff bench faults`: link faults between a controller and a served plant, audited at the
plant.

For each cell (fault x rate x planner) and seed, three processes: a realtime served plant in a
child (`rtdiff serve --audit FILE`: `hw_bridge.audit.AuditPlant` around the plant, keyed by the
server's controller identity and written to FILE as JSON when the server stops); a
`hw_bridge.faultproxy.FaultProxy` in this process between the two, with the cell's faults;
and an `rtdiff run --mode realtime --json` controller child connected to the proxy as if it
were the plant (`bench_stalls.run_one`, no stalls).

Faults (`--faults`, names from `FAULTS`): `none`; `delay` (2 ms +- 1 ms each way, order
kept); `loss-up`, `loss-down` (5 %); `dup-up`, `dup-down` (5 %); `reorder-up`,
`reorder-down` (5 %, held 3 ms); `bandwidth` (a cap on each direction below a 500 Hz state
stream's bytes, so that states queue and the queue overflows; a 100 Hz stream fits);
`partition` (both ways for `PARTITION_S`, starting `PARTITION_AT` of the run after the
controller's first command, then healed).

Per cell (JSON `cells`): the audit's `stale_applied`, `duplicate_applied`,
`invalid_applied` (summed over seeds; the target is 0 everywhere); `controller_misses` (the
run's misses) and `plant_late` (commands the plant side counted late: the server's `late`
plus the plant's own); with a partition, `safe_after_ms` (from the last command applied before
the cut to the first safe action after it, plant clock; the target is <= `watchdog_ms` + one
period) and `regain_ms` (from the heal to the first command applied after it), the worst over
seeds, else null; `counts_agree` (the controller's figure of its commands the plant applied,
as the server last told it, against the audit's count at the plant); the proxy's counters
per direction; the server's refusals; the cell's host steal. Each run's controller JSON and
audit go to `OUT/runs/`. A cell that cannot run (its controller exits with an error) is
recorded with its one-line reason, counts as missing the target, and the sweep goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hw_bridge.audit import regain_ms, safe_after_ms
from hw_bridge.faultproxy import FaultProxy, LinkFaults
from runtime.cli import CliError
from runtime.cli.bench_deadline import PLANNERS, csv_list, runnable
from runtime.cli.bench_stalls import run_one
from runtime.cli.plantproc import plant_server
from runtime.files import atomic_write_text, record_result
from runtime.rt import read_steal_s, try_realtime

PARTITION_S = 0.3
PARTITION_AT = 0.4  # of the run, after the controller's first command
FIRST_COMMAND_TIMEOUT_S = 120.0  # a controller loads its model and ticks within this
# `bandwidth`: bits/s each way. A double-pendulum state is about 400 bytes on the wire: 500
# states a second need about 1.6 Mbit/s, 100 a second 0.33 Mbit/s
BANDWIDTH_BPS = 1_000_000.0
BANDWIDTH_QUEUE = 32  # frames: a shallow buffer, so the backlog overflows rather than bloats

# name -> (up faults, down faults, partition); LinkFaults keyword arguments
FAULTS: dict[str, tuple[dict[str, Any], dict[str, Any], bool]] = {
    "none": ({}, {}, False),
    "delay": ({"delay_ms": 2.0, "jitter_ms": 1.0}, {"delay_ms": 2.0, "jitter_ms": 1.0}, False),
    "loss-up": ({"loss": 0.05}, {}, False),
    "loss-down": ({}, {"loss": 0.05}, False),
    "dup-up": ({"duplicate": 0.05}, {}, False),
    "dup-down": ({}, {"duplicate": 0.05}, False),
    "reorder-up": ({"reorder": 0.05, "reorder_ms": 3.0}, {}, False),
    "reorder-down": ({}, {"reorder": 0.05, "reorder_ms": 3.0}, False),
    "bandwidth": ({"bandwidth_bps": BANDWIDTH_BPS, "queue_frames": BANDWIDTH_QUEUE},
                  {"bandwidth_bps": BANDWIDTH_BPS, "queue_frames": BANDWIDTH_QUEUE}, False),
    "partition": ({}, {}, True),
}


# ---- the plant's child: `rtdiff serve` with the audit ---------------------------------------


# ---- one run --------------------------------------------------------------------------------


def run_faulted(fault: str, *, task: str, rate_hz: float, planner: str, seed: int,
                seconds: float, watchdog_ms: float, rt: int | None,
                out_dir: Path) -> dict[str, Any]:
    """One controller run through the proxy with `fault`; the run, audit and proxy figures."""
    up, down, partition = FAULTS[fault]
    policy_t, _, extra = PLANNERS.get(planner, (planner, {}, {}))
    first_command = threading.Event()

    def tap(direction: str, frames: list[bytes]) -> None:
        if direction == "up" and not first_command.is_set() and b"\xa7command" in frames[0]:
            first_command.set()

    window: list[tuple[int, int]] = []
    name = f"{fault}_{planner}_{rate_hz:g}hz_s{seed}"
    steal0 = read_steal_s()
    with tempfile.TemporaryDirectory(prefix="rtdiff-faults-") as tmp:
        audit_path = Path(tmp) / "audit.json"
        with plant_server(task, seed=seed, rate_hz=rate_hz, rt_priority=rt,
                          extra=["--audit", str(audit_path),
                                 "--watchdog-ms", f"{watchdog_ms:g}"]) as address:
            proxy = FaultProxy(address, up=LinkFaults(**up), down=LinkFaults(**down),
                               seed=seed, on_frame=tap)
            with proxy:
                done = threading.Event()

                def cut() -> None:  # mid-run, counted from the controller's first command
                    if first_command.wait(FIRST_COMMAND_TIMEOUT_S) and not done.is_set():
                        window.append(proxy.partition(PARTITION_S,
                                                      start_in_s=PARTITION_AT * seconds))

                cutter = threading.Thread(target=cut, daemon=True) if partition else None
                if cutter is not None:
                    cutter.start()
                try:
                    run = run_one(policy_t.format(task=task), proxy.address, seed=seed,
                                  seconds=seconds, plan_ahead=True, stall_ms=0.0, every_s=1.0,
                                  quota=None, rt=rt, extra=extra)
                finally:
                    done.set()
                    first_command.set()
                    if cutter is not None:
                        cutter.join(timeout=5.0)
                proxy_counts = proxy.counters()
                proxy_us = proxy.added_latency_us()
        if not audit_path.exists():
            raise CliError(f"{name}: the plant process wrote no audit")
        audit: dict[str, Any] = json.loads(audit_path.read_text())
    steal1 = read_steal_s()
    atomic_write_text(out_dir / "runs" / f"{name}.json", json.dumps(
        {"run": run, "audit": audit, "proxy": proxy_counts, "partitions_ns": window}))
    return {"run": run, "audit": audit, "proxy": proxy_counts, "proxy_us": proxy_us,
            "window": window[0] if window else None,
            "steal_s": None if steal0 is None or steal1 is None else steal1 - steal0}


def _worst(values: list[float | None]) -> float | None:
    """The largest figure, or None if any run has none (a partition without a safe action
    or without control coming back is the worst case of all)."""
    if not values or any(v is None for v in values):
        return None
    return max(v for v in values if v is not None)


def summarize(fault: str, rate_hz: float, planner: str, runs: list[dict[str, Any]],
              watchdog_ms: float) -> dict[str, Any]:
    """A cell from its runs (one per seed)."""

    def audit_sum(key: str) -> int:
        return sum(int(r["audit"]["counts"].get(key, 0)) for r in runs)

    def server_sum(key: str) -> int:
        return sum(int(r["audit"]["server_counters"].get(key, 0)) for r in runs)

    partition = FAULTS[fault][2]
    safe_after: list[float | None] = []
    regain: list[float | None] = []
    for r in runs:
        if r["window"] is None:
            continue
        a, b = r["window"]
        applies, safes = r["audit"]["apply_ns"], r["audit"]["safe_ns"]
        safe_after.append(safe_after_ms(applies, safes, a))
        regain.append(regain_ms(applies, b))
    controller = sum(int(r["run"].get("plant_counters", {}).get("applied", 0)) for r in runs)
    plant, refused = audit_sum("applied"), audit_sum("late_refused")
    proxy = {d: {k: sum(int(r["proxy"][d][k]) for r in runs) for k in runs[0]["proxy"][d]}
             for d in ("up", "down")}
    steals = [r["steal_s"] for r in runs if r["steal_s"] is not None]
    episodes = sum(int(r["run"].get("episodes", 0)) for r in runs)
    successes = sum(round(r["run"].get("success_rate", 0.0) * r["run"].get("episodes", 0))
                    for r in runs)
    return {
        "fault": fault,
        "rate_hz": rate_hz,
        "planner": planner,
        "seeds": len(runs),
        "stale_applied": audit_sum("stale_applied"),
        "duplicate_applied": audit_sum("duplicate_applied"),
        "invalid_applied": audit_sum("invalid_applied"),
        "controller_misses": sum(int(r["run"].get("misses", 0)) for r in runs),
        "ticks": sum(int(r["run"].get("ticks", 0)) for r in runs),
        "plant_late": server_sum("late") + server_sum("plant_late"),
        "safe_after_ms": _worst(safe_after) if partition else None,
        "watchdog_ms": watchdog_ms,
        "period_ms": 1e3 / rate_hz,
        "regain_ms": _worst(regain) if partition else None,
        "partitions": len(safe_after),
        # the server acknowledges what it hands to the plant; a realtime plant may still
        # refuse a command as late (its own deadline check), which the controller never hears
        "counts_agree": {"agree": controller == plant, "controller": controller,
                         "plant": plant, "plant_refused_late": refused,
                         "unexplained": controller - plant - refused},
        "applied": plant,
        "watchdog_trips": server_sum("watchdog_trips"),
        "server_refused": {k: server_sum(k) for k in
                           ("out_of_order", "late", "stale_stream", "rejected", "bad_message")},
        "episodes": episodes,
        "success_rate": successes / episodes if episodes else 0.0,
        "proxy": proxy,
        "proxy_added_us_p50": max(r["proxy_us"]["p50"] for r in runs),
        "steal_s": sum(steals) if steals else None,
    }


def check_target(cells: list[dict[str, Any]]) -> list[str]:
    """What misses the target: stale, duplicate or invalid applies anywhere, a partition whose
    safe action came later than watchdog + one period (or never). Empty: the target is met."""
    misses: list[str] = []
    for c in cells:
        where = f"{c['fault']} {c['planner']} {c['rate_hz']:g} Hz"
        if "error" in c:
            misses.append(f"{where}: did not run ({c['error']})")
            continue
        for k in ("stale_applied", "duplicate_applied", "invalid_applied"):
            if c[k]:
                misses.append(f"{where}: {k} {c[k]}")
        if FAULTS[c["fault"]][2]:
            limit = c["watchdog_ms"] + c["period_ms"]
            if c["safe_after_ms"] is None:
                misses.append(f"{where}: no safe action measured after the partition")
            elif c["safe_after_ms"] > limit:
                misses.append(f"{where}: safe action {c['safe_after_ms']:.1f} ms after the "
                              f"last command (limit {limit:g} ms)")
    return misses


def _ms(x: float | None) -> str:
    return f"{x:>8.1f}" if x is not None else f"{'-':>8}"


def table(cells: list[dict[str, Any]]) -> str:
    head = (f"{'fault':<13}{'planner':<9}{'Hz':>5}{'stale':>6}{'dup':>5}{'inval':>6}"
            f"{'misses':>7}{'late':>6}{'safe ms':>8}{'regain':>8}{'agree':>6}{'dropped':>8}"
            f"{'steal s':>8}")
    lines = [head]
    for c in cells:
        if "error" in c:
            lines.append(f"{c['fault']:<13}{c['planner']:<9}{c['rate_hz']:>5g}  {c['error']}")
            continue
        p = c["proxy"]
        dropped = sum(p[d][k] for d in ("up", "down")
                      for k in ("dropped", "partition_dropped", "queue_dropped"))
        steal = f"{c['steal_s']:>8.2f}" if c["steal_s"] is not None else f"{'-':>8}"
        lines.append(
            f"{c['fault']:<13}{c['planner']:<9}{c['rate_hz']:>5g}{c['stale_applied']:>6}"
            f"{c['duplicate_applied']:>5}{c['invalid_applied']:>6}{c['controller_misses']:>7}"
            f"{c['plant_late']:>6}{_ms(c['safe_after_ms'])}{_ms(c['regain_ms'])}"
            f"{'yes' if c['counts_agree']['agree'] else 'no':>6}{dropped:>8}{steal}"
        )
    return "\n".join(lines)


def cli_bench_faults(args: argparse.Namespace) -> int:
    faults = csv_list(args.faults) if args.faults else list(FAULTS)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown or not faults:
        raise CliError(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
    planners = csv_list(args.planners)
    bad = [p for p in planners if not runnable(p)]
    if bad or not planners:
        raise CliError(f"unknown planner(s) {bad}; known: {', '.join(PLANNERS)}")
    if any(PLANNERS.get(p, ("", {}, {}))[1] for p in planners):
        raise CliError("planners with setting overrides (chunked-k10, chunked-k50) are not "
                       "supported by bench faults")
    try:
        rates = [float(r) for r in csv_list(args.rates)]
    except ValueError:
        raise CliError(f"--rates must be a comma list of numbers, got {args.rates!r}") from None
    if not rates or any(not r > 0 for r in rates):
        raise CliError(f"--rates must be positive, got {args.rates!r}")
    if "partition" in faults and args.seconds < 2.0:
        raise CliError(f"--seconds must be >= 2 with the partition fault (it starts "
                       f"{PARTITION_AT:g} of the run in and lasts {PARTITION_S:g} s), "
                       f"got {args.seconds:g}")
    rt = None if args.no_rt else args.rt_priority
    if rt:  # the proxy is the link: the controller must never hold it off a core
        for line in try_realtime(min(99, rt + 1)):
            sys.stderr.write(f"bench faults: {line}\n")
    out_dir = Path(args.out)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    total = len(faults) * len(rates) * len(planners) * args.seeds
    cells: list[dict[str, Any]] = []
    done = 0
    steal0 = read_steal_s()
    for fault in faults:
        for rate in rates:
            for planner in planners:
                runs: list[dict[str, Any]] = []
                error: str | None = None
                for s in range(args.seeds):
                    done += 1
                    seed = args.seed + s
                    sys.stderr.write(f"[{done}/{total}] {fault} {planner} {rate:g} Hz "
                                     f"seed {seed} ...\n")
                    t0 = time.monotonic()
                    try:
                        runs.append(run_faulted(fault, task=args.task, rate_hz=rate,
                                                planner=planner, seed=seed,
                                                seconds=args.seconds,
                                                watchdog_ms=args.watchdog_ms, rt=rt,
                                                out_dir=out_dir))
                    except CliError as exc:  # the cell says why; the sweep goes on
                        error = f"seed {seed}: {exc}"
                        sys.stderr.write(f"[{done}/{total}] failed: {exc}\n")
                        break
                    sys.stderr.write(f"[{done}/{total}] done in {time.monotonic() - t0:.1f} s\n")
                if error is not None:
                    cells.append({"fault": fault, "rate_hz": rate, "planner": planner,
                                  "error": error})
                    continue
                cell = summarize(fault, rate, planner, runs, args.watchdog_ms)
                sys.stderr.write("  " + table([cell]).splitlines()[1] + "\n")
                cells.append(cell)
    steal1 = read_steal_s()
    misses = check_target(cells)
    result = {
        "task": args.task,
        "seconds": args.seconds,
        "seeds": args.seeds,
        "watchdog_ms": args.watchdog_ms,
        "partition_s": PARTITION_S,
        "rt_priority": rt,
        "faults": {f: {"up": FAULTS[f][0], "down": FAULTS[f][1], "partition": FAULTS[f][2]}
                   for f in faults},
        "steal_s": None if steal0 is None or steal1 is None else steal1 - steal0,
        "target": {"met": not misses, "misses": misses},
        "cells": cells,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(result, indent=1))
    if args.results:
        record_result(args.results, "faults", result)
    sys.stderr.write("bench faults: target (0 stale, duplicate and invalid applied; safe action "
                     "within watchdog + one period) "
                     + ("met\n" if not misses else "missed:\n  " + "\n  ".join(misses) + "\n"))
    if args.json:
        print(json.dumps(result))
    else:
        print(table(cells))
        steal = result["steal_s"]
        print(f"host steal over the bench: {'-' if steal is None else f'{steal:.2f} s'}; "
              f"runs in {out_dir / 'runs'}")
    return 0


