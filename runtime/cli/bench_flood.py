"""`rtdiff bench flood`: hostile local peers against a served plant while a controller runs.

Two cells in one invocation, each on a fresh realtime `rtdiff serve` process (`plant_server`)
with one legitimate `rtdiff run` controller (realtime, `--json`, `--planner`'s policy):

- `baseline`: the controller alone;
- `flood`: the same, plus `--peers` hostile peers (`hw_bridge.flood`: `hello` storms,
  `garbage`, `slow` readers, thousands of `identities`, forbidden `commands` and replays),
  dealt over a few flooder processes (`--procs`, 2-4 by default, each driving many sockets).
  The flooders connect while the controller loads and start on the `go` the bench gives
  them once the controller ticks; they stop when it is done.

So the flood's cost is a ratio within one run on one machine. Per cell: the controller's
misses (its own `rtdiff run --json`), the plant server's resident memory (start, end, max,
`/proc/PID/status`) and CPU use (% of one core, mean and max over `SAMPLE_S` intervals,
`/proc/PID/stat`), the server's counters after the flood (a heartbeat from a short observer
session), the frames each kind of peer sent, and the host steal over the cell.

The flooders are held on a leash: each reads its orders on stdin and stops when stdin ends,
so none outlives this process, also when it is interrupted or killed; on the way out every
one still running is told to stop, then killed.

Output: a table and the targets, or with `--json` one object with `cells`; each cell's
controller JSON and flooder counts in `OUT/runs/`, the summary in `OUT/summary.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from runtime.cli import CliError
from runtime.cli.bench_deadline import MISS_TARGET, PLANNERS, csv_list, runnable
from runtime.cli.bench_soak import Sample, Sampler, child_pid, read_cpu_s
from runtime.cli.bench_stalls import run_argv
from runtime.cli.plantproc import plant_server
from runtime.files import atomic_write_text, record_result
from runtime.rt import read_steal_s

SAMPLE_S = 0.25  # the server's RSS and CPU time are read this often
RSS_GROWTH_TARGET_MB = 50.0  # the server's RSS under the flood: max - start, at most, and
RSS_LATE_GROWTH_TARGET_MB = 5.0  # ... over the flood's second half (it levelled off), at most
# The server cannot stop reading a flood without delaying its controller (their frames share
# one fair-queued socket), so its CPU use follows the rate frames arrive; what it bounds is the
# work per frame (budgets drop a flooder's frames before decoding; docs/protocol.md, section 6).
CPU_US_PER_FRAME_TARGET = 20.0  # the server's CPU time per frame received, at most
READY_TIMEOUT_S = 120.0  # loading a model takes seconds; a stuck start fails the bench
FLOODER_START_S = 30.0  # a flooder connects its sockets within this
COUNTER_TRIES = 4  # heartbeats (3 s each) the server gets to answer with its counters


def default_procs(peers: int) -> int:
    """Flooder processes for `peers` peers: 2 to 4 (one per 25 peers), never more than peers."""
    return max(1, min(peers, 4, max(2, math.ceil(peers / 25))))


def parse_kinds(text: str) -> list[str]:
    from hw_bridge.flood import KINDS

    kinds = csv_list(text)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise CliError(f"unknown peer kind(s) {unknown or [text]}; known: {','.join(KINDS)}")
    return list(dict.fromkeys(kinds))


# ---- the flooder processes ----------------------------------------------------------------


def _flooder_argv(address: str, kinds: Sequence[str], *, seed: int, peer_rate: float,
                  seconds: float) -> list[str]:
    return [sys.executable, "-m", "hw_bridge.flood", "--address", address,
            "--kinds", ",".join(kinds), "--seed", str(seed), "--peer-rate", f"{peer_rate:g}",
            "--seconds", f"{seconds:g}"]


@contextlib.contextmanager
def flooders(address: str, split: list[list[str]], *, seed: int, peer_rate: float,
             seconds: float) -> Iterator[list[subprocess.Popen[str]]]:
    """One flooder process per entry of `split` (its peers' kinds), connected and waiting
    for `go` (`start`); on the way out any still running is stopped, then killed."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for i, kinds in enumerate(split):
            procs.append(subprocess.Popen(
                _flooder_argv(address, kinds, seed=seed + 1000 * i, peer_rate=peer_rate,
                              seconds=seconds),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(OSError, ValueError):
                if p.stdin is not None:
                    p.stdin.close()  # the end of stdin: stop
        for p in procs:
            try:
                p.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_flooders_ready(procs: Sequence[subprocess.Popen[str]], timeout_s: float) -> None:
    """Each flooder says `ready` on stderr once its sockets are made."""
    end = time.monotonic() + timeout_s
    for p in procs:
        assert p.stderr is not None
        line = ""
        if select.select([p.stderr], [], [], max(0.0, end - time.monotonic()))[0]:
            line = p.stderr.readline()
        if line.strip() != "ready":
            if p.poll() is None:
                p.kill()
            rest = p.stderr.read() if p.wait() is not None else ""
            last = ((line + rest).strip().splitlines() or ["no output"])[-1]
            raise CliError(f"a flooder process did not start (exit {p.returncode}): {last}")


def go(procs: Sequence[subprocess.Popen[str]]) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


def stop_and_collect(procs: Sequence[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """Tell each flooder to stop; its counts (one JSON line on stdout), killed if it hangs."""
    for p in procs:
        with contextlib.suppress(OSError, ValueError):
            assert p.stdin is not None
            p.stdin.write("stop\n")
            p.stdin.flush()
    out: list[dict[str, Any]] = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=10.0)  # closes stdin too
        except subprocess.TimeoutExpired:
            p.kill()
            text, _ = p.communicate()
        lines = (text or "").strip().splitlines()
        if p.returncode != 0 or not lines:
            raise CliError(f"a flooder process exited with {p.returncode} and no counts")
        out.append(json.loads(lines[-1]))
    return out


def merge_counts(reports: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The flooders' counts per kind, summed over processes."""
    total: dict[str, dict[str, int]] = {}
    for r in reports:
        for kind, counts in r["kinds"].items():
            mine = total.setdefault(kind, {})
            for k, v in counts.items():
                mine[k] = mine.get(k, 0) + int(v)
    return total


# ---- measurements -------------------------------------------------------------------------


def rss_mb(samples: Sequence[Sample], role: str) -> dict[str, float | None]:
    """MB: `start`, `end`, `max`, and `late_growth` (end - the first reading of the second
    half of the window): memory that is bounded stops growing, whatever it grew at first."""
    pts = [(s.t_ns, kb / 1024) for s in samples if (kb := s.rss_kb.get(role)) is not None]
    if not pts:
        return {"start": None, "end": None, "max": None, "late_growth": None}
    half = (pts[0][0] + pts[-1][0]) / 2
    mid = next(mb for t, mb in pts if t >= half)
    return {"start": round(pts[0][1], 1), "end": round(pts[-1][1], 1),
            "max": round(max(mb for _, mb in pts), 1), "late_growth": round(pts[-1][1] - mid, 1)}


def cpu_pct(samples: Sequence[Sample], role: str) -> dict[str, float | None]:
    """% of one core: over the whole window (`mean`) and the busiest interval (`max`)."""
    pts = [(s.t_ns, c) for s in samples if (c := s.cpu_s.get(role)) is not None]
    rates = [100 * (c1 - c0) / ((t1 - t0) * 1e-9)
             for (t0, c0), (t1, c1) in itertools.pairwise(pts) if t1 > t0]
    if not rates:
        return {"mean": None, "max": None}
    (ta, ca), (tb, cb) = pts[0], pts[-1]
    return {"mean": round(100 * (cb - ca) / ((tb - ta) * 1e-9), 1), "max": round(max(rates), 1)}


def server_counters(address: str) -> dict[str, int]:
    """The plant server's counters, from a heartbeat of a short session: an observer's, or
    where the observers' places are still taken by the flood's sessions (a server with a cap
    forgets them only once they are silent for its peer timeout), a controller's: the
    bench's controller has said goodbye by then, so control is free (or its lease lapses)."""
    from hw_bridge.client import BridgeError, RemotePlant

    why = "no heartbeat answered"
    for role in ("observe", "control"):
        try:
            with RemotePlant(address, role=role, name="rtdiff-bench-flood", timeout_s=3.0,
                             connect_timeout_s=10.0, give_up_s=None) as plant:
                for _ in range(COUNTER_TRIES):  # a server busy with a backlog answers late
                    plant.counters()
                    if plant.server_counters:
                        return dict(plant.server_counters)
        except BridgeError as exc:
            why = str(exc)
    sys.stderr.write(f"rtdiff bench flood: warning: no counters from the server: {why}\n")
    return {}


def _wait_ready(ctrl: subprocess.Popen[str], ready: Path) -> None:
    end = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists() and ctrl.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    if not ready.exists():
        err = ctrl.stderr.read() if ctrl.poll() is not None and ctrl.stderr else ""
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise CliError(f"the controller did not start ticking (exit {ctrl.poll()}): {last}")


def _steal(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 3)


def run_cell(name: str, *, args: argparse.Namespace, policy: str, extra: dict[str, Any],
             rt: int | None, split: list[list[str]], kinds: list[str]) -> tuple[
                 dict[str, Any], dict[str, Any]]:
    """One cell: (its summary, the raw figures: the controller's JSON, the flooders' reports
    and the server's RSS and CPU time every `SAMPLE_S`)."""
    peers = sum(len(s) for s in split)
    steal0 = read_steal_s()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rtdiff-flood-")))
        address = stack.enter_context(
            plant_server(args.task, seed=args.seed, rate_hz=args.rate, rt_priority=rt))
        server_pid = child_pid(address)
        if server_pid is None:
            raise CliError(f"cannot find the plant server process serving {address}")
        ready = tmp / "ready"
        argv = run_argv(policy, address, seed=args.seed, seconds=args.seconds,
                         plan_ahead=True, rt=rt, ready=str(ready), extra=extra)
        ctrl = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        stack.callback(_reap, ctrl)
        procs = stack.enter_context(flooders(
            address, split, seed=args.seed, peer_rate=args.peer_rate,
            seconds=args.seconds + READY_TIMEOUT_S))
        wait_flooders_ready(procs, FLOODER_START_S)
        _wait_ready(ctrl, ready)
        sampler = Sampler({"server": server_pid}, SAMPLE_S)
        sampler.start()
        stack.callback(sampler.stop)
        cpu0 = [read_cpu_s(p.pid) for p in procs]
        t0 = time.monotonic()
        go(procs)
        try:
            out, err = ctrl.communicate(timeout=args.seconds + 180.0)
        except subprocess.TimeoutExpired:
            ctrl.kill()
            out, err = ctrl.communicate()
        flood_s = time.monotonic() - t0
        cpu1 = [read_cpu_s(p.pid) for p in procs]
        reports = stop_and_collect(procs)
        sampler.read()  # the end: after the flood, before the server is asked anything
        sampler.stop()
        counters = server_counters(address)
    steal1 = read_steal_s()
    if ctrl.returncode != 0 or not out.strip():
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise CliError(f"the controller ({name} cell) exited with {ctrl.returncode}: {last}")
    run: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    counts = merge_counts(reports)
    flooder_cpu = sum(b - a for a, b in zip(cpu0, cpu1, strict=True)
                      if a is not None and b is not None)
    cell = {
        "cell": name,
        "peers": peers,
        "kinds": kinds if peers else [],
        "procs": len(split),
        "rate_hz": args.rate,
        "peer_rate": args.peer_rate,
        "seconds": round(flood_s, 2),
        "controller_ticks": run["ticks"],
        "controller_misses": run["misses"],
        "controller_miss_rate": run["miss_rate"],
        "server_rss_mb": rss_mb(sampler.samples, "server"),
        "server_cpu_pct": cpu_pct(sampler.samples, "server"),
        "server_cpu_us_per_frame": _per_frame(cpu_pct(sampler.samples, "server")["mean"],
                                              flood_s, counters.get("received")),
        "flooder_cpu_pct": round(100 * flooder_cpu / flood_s, 1) if procs else 0.0,
        "frames_sent": {k: c["sent"] for k, c in counts.items()},
        "frames_sent_total": sum(c["sent"] for c in counts.values()),
        "frames_blocked": {k: c["blocked"] for k, c in counts.items()},
        "replies_received": {k: c["received"] for k, c in counts.items()},
        "sockets_opened": {k: c["sockets"] for k, c in counts.items()},
        "server_counters": counters,
        "steal_s": _steal(steal0, steal1),
    }
    t_first = sampler.samples[0].t_ns if sampler.samples else 0
    samples = [[round((s.t_ns - t_first) * 1e-9, 3), s.rss_kb.get("server"),
                s.cpu_s.get("server")] for s in sampler.samples]
    return cell, {"run": run, "flooders": reports,
                  "server_samples": {"columns": ["t_s", "rss_kb", "cpu_s"], "rows": samples}}


def _per_frame(cpu_mean_pct: float | None, seconds: float, received: int | None) -> float | None:
    """The server's CPU time per frame it received (us), over a cell."""
    if cpu_mean_pct is None or not received:
        return None
    return round(cpu_mean_pct / 100 * seconds / received * 1e6, 2)


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def checks(flood: dict[str, Any]) -> dict[str, bool | None]:
    """The flood cell against the targets (None where a figure is missing)."""
    rss, per_frame = flood["server_rss_mb"], flood.get("server_cpu_us_per_frame")
    return {
        "misses": flood["controller_miss_rate"] <= MISS_TARGET,
        "memory": None if rss["max"] is None else (
            rss["max"] - rss["start"] <= RSS_GROWTH_TARGET_MB
            and rss["late_growth"] <= RSS_LATE_GROWTH_TARGET_MB),
        "cpu": None if per_frame is None else per_frame <= CPU_US_PER_FRAME_TARGET,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 2)


def table(result: dict[str, Any]) -> str:
    lines = [f"{'cell':<9}{'peers':>6}{'frames':>10}{'miss %':>8}{'rss MB':>18}"
             f"{'cpu %':>13}{'flood':>7}{'steal':>7}",
             f"{'':<9}{'':>6}{'sent':>10}{'':>8}{'start/end/max':>18}{'mean/max':>13}"
             f"{'cpu %':>7}{'s':>7}"]
    for c in result["cells"]:
        r, u = c["server_rss_mb"], c["server_cpu_pct"]
        rss = "/".join("-" if r[k] is None else f"{r[k]:.0f}" for k in ("start", "end", "max"))
        cpu = "/".join("-" if u[k] is None else f"{u[k]:.0f}" for k in ("mean", "max"))
        steal = "-" if c["steal_s"] is None else f"{c['steal_s']:.2f}"
        lines.append(f"{c['cell']:<9}{c['peers']:>6}{c['frames_sent_total']:>10}"
                     f"{100 * c['controller_miss_rate']:>8.3f}{rss:>18}{cpu:>13}"
                     f"{c['flooder_cpu_pct']:>7.0f}{steal:>7}")
    flood = result["cells"][-1]
    lines.append("frames sent by kind: " + ", ".join(
        f"{k} {v}" for k, v in flood["frames_sent"].items()))
    sc = flood["server_counters"]
    keys = ("received", "bad_message", "unknown_peer", "out_of_order", "unauthorized",
            "refused", "flooded", "replies_withheld", "send_dropped", "overruns", "states_sent")
    lines.append("server counted: " + ", ".join(f"{k} {sc.get(k, '-')}" for k in keys))
    ok = result["checks"]

    def mark(v: bool | None) -> str:
        return "-" if v is None else ("ok" if v else "MISSED")

    rss, cpu = flood["server_rss_mb"], flood["server_cpu_pct"]

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    growth = None if rss["max"] is None else rss["max"] - rss["start"]
    lines.append(
        f"targets under the flood: controller misses <= {100 * MISS_TARGET:g} %: "
        f"{100 * flood['controller_miss_rate']:.3f} % ({mark(ok['misses'])}); server RSS "
        f"growth <= {RSS_GROWTH_TARGET_MB:g} MB and <= {RSS_LATE_GROWTH_TARGET_MB:g} MB over "
        f"the second half: {num(growth)} and {num(rss['late_growth'])} MB "
        f"({mark(ok['memory'])}); server CPU per frame received <= "
        f"{CPU_US_PER_FRAME_TARGET:g} us: {num(flood.get('server_cpu_us_per_frame'))} us "
        f"(mean {num(cpu['mean'])} % of a core) ({mark(ok['cpu'])})")
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: every child is stopped on the way


def cli_bench_flood(args: argparse.Namespace) -> int:
    kinds = parse_kinds(args.kinds)
    planner = args.planner
    if not runnable(planner):
        raise CliError(f"unknown planner {planner!r}; known: {sorted(PLANNERS)}")
    policy_t, overrides, extra = PLANNERS.get(planner, (planner, {}, {}))
    if overrides:
        raise CliError(f"{planner}: planner overrides are not supported by bench flood")
    procs = args.procs if args.procs is not None else default_procs(args.peers)
    if procs > args.peers:
        raise CliError(f"--procs {procs} is more than --peers {args.peers}")
    from hw_bridge.flood import split_peers

    split = split_peers(args.peers, kinds, procs)
    rt = None if args.no_rt else args.rt_priority
    out_dir = Path(args.out)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    cells: list[dict[str, Any]] = []
    steal0 = read_steal_s()
    try:
        for name, cell_split in (("baseline", []), ("flood", split)):
            sys.stderr.write(f"[{len(cells) + 1}/2] {name}: {args.seconds:g} s, "
                             f"{sum(len(s) for s in cell_split)} hostile peers ...\n")
            cell, raw = run_cell(name, args=args, policy=policy_t.format(task=args.task),
                                 extra=extra, rt=rt, split=cell_split, kinds=kinds)
            (out_dir / "runs" / f"{name}.json").write_text(json.dumps(raw))
            cells.append(cell)
    finally:
        signal.signal(signal.SIGTERM, previous)
    steal1 = read_steal_s()
    base, flood = cells
    result: dict[str, Any] = {
        "task": args.task,
        "planner": planner,
        "rate_hz": args.rate,
        "seconds": args.seconds,
        "seed": args.seed,
        "rt_priority": rt,
        "peers": args.peers,
        "kinds": kinds,
        "procs": procs,
        "peer_rate": args.peer_rate,
        "targets": {"controller_miss_rate": MISS_TARGET,
                    "server_rss_growth_mb": RSS_GROWTH_TARGET_MB,
                    "server_rss_late_growth_mb": RSS_LATE_GROWTH_TARGET_MB,
                    "server_cpu_us_per_frame": CPU_US_PER_FRAME_TARGET},
        "checks": checks(flood),
        "ratio": {  # flood / baseline
            "controller_miss_rate": _ratio(flood["controller_miss_rate"],
                                           base["controller_miss_rate"]),
            "server_cpu_mean": _ratio(flood["server_cpu_pct"]["mean"],
                                      base["server_cpu_pct"]["mean"]),
            "server_rss_max": _ratio(flood["server_rss_mb"]["max"],
                                     base["server_rss_mb"]["max"]),
        },
        "steal_s": _steal(steal0, steal1),
        "cells": cells,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(result, indent=1))
    if args.results:
        record_result(args.results, "flood", result)
    if args.json:
        print(json.dumps(result))
    else:
        print(table(result))
    return 0
