"""`rtdiff bench soak`: one controller on one served plant for a long time; what creeps.

Short benches show what a tick costs; a soak shows what only time reveals: memory that grows
a little every episode, a trace writer that slowly falls behind, misses that cluster after
an hour. A realtime `rtdiff serve` process holds the plant (`plant_server`) and one
`rtdiff run` controller drives it for `--minutes`, episodes back to back, writing its tick
trace (`--trace OUT/trace`). Both are child processes, as in production, so what each one
holds is its own.

A sampler thread here reads, every few seconds, each child's resident memory
(`/proc/PID/status` VmRSS), its CPU time (`/proc/PID/stat` utime + stime) and the host steal
(`runtime.rt.read_steal_s`). Once a minute it prints a progress line on stderr, with the
misses so far counted from the trace chunks already on disk (new chunks only, so the count
costs nothing as the trace grows).

At the end, the trace read back (`runtime.trace.read_trace`) gives the misses per minute
(records bucketed by `scheduled_ns`; a miss is a record with `missed` set or a skipped tick),
and the records written against the records the ring committed (`meta.json` `records`, the
loop's own count, which the run JSON's `ticks_run` must match). The ring's `overflows` count
the chunks the loop had to copy aside because the writer had fallen a whole ring behind: not
a loss, but the sign of a writer that does not keep up.

RSS growth is measured after a warm-up (the first 2 minutes or 10 % of the run, whichever is
shorter): allocator pools, caches and lazily touched pages fill early in any process, and
only growth after that is a leak. (The controller's `--trace` sidecar, `runtime.sidecar`, is
bounded and touched when it is made, so it adds to the start, not to the growth.)

Both processes' clocks are CLOCK_MONOTONIC (`time.perf_counter_ns` on Linux), so the
sampler's times and the trace's `scheduled_ns` share one time base.

Targets, printed and checked: RSS growth < 1 % after the warm-up (controller and server) and
0 trace records lost. Output: a summary, or with `--json` one object; `OUT/summary.json`,
`OUT/samples.json` and the run's JSON `OUT/run.json` beside the trace.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.cli import CliError
from runtime.cli.bench_deadline import PLANNERS, runnable
from runtime.cli.bench_stalls import run_argv
from runtime.cli.plantproc import plant_server
from runtime.files import atomic_write_text, record_result
from runtime.rt import read_steal_s
from runtime.trace import read_trace

MINUTE_NS = 60_000_000_000
WARMUP_MAX_S = 120.0  # the warm-up: the first 2 minutes ...
WARMUP_FRACTION = 0.10  # ... or 10 % of the run, whichever is shorter
RSS_GROWTH_TARGET_PCT = 1.0
RECORDS_LOST_TARGET = 0
READY_TIMEOUT_S = 120.0  # loading a model takes seconds; a stuck start fails the bench


# ---- /proc readers ------------------------------------------------------------------------


def read_rss_kb(pid: int) -> int | None:
    """Resident set size of `pid` in KiB (`/proc/PID/status` VmRSS); None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def read_cpu_s(pid: int) -> float | None:
    """User + system CPU time of `pid` in seconds (`/proc/PID/stat`); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
        # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        fields = text[text.rindex(")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    except (OSError, ValueError, IndexError):
        return None
    try:
        tck = os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        tck = 100
    return (utime + stime) / tck


def child_pid(match: str, parent: int | None = None) -> int | None:
    """The pid of a child of `parent` (default: this process) whose command line contains
    `match` (`plant_server` yields only the address; its process is found by it)."""
    parent = os.getpid() if parent is None else parent
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if match in cmdline:
            return int(entry.name)
    return None


# ---- the sampler --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One reading: `t_ns` on CLOCK_MONOTONIC; per process (by role) RSS in KiB and CPU s."""

    t_ns: int
    rss_kb: dict[str, int | None]
    cpu_s: dict[str, float | None]
    steal_s: float | None


class Sampler:
    """Reads RSS and CPU time of `pids` (role -> pid) and the host steal every `every_s`
    until `stop()`, in a daemon thread; `on_sample(sample)` runs after each reading."""

    def __init__(self, pids: dict[str, int], every_s: float,
                 on_sample: Callable[[Sample], None] | None = None) -> None:
        self.pids = dict(pids)
        self.every_s = every_s
        self.on_sample = on_sample
        self.samples: list[Sample] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtdiff-soak-sampler", daemon=True)

    def read(self) -> Sample:
        s = Sample(
            t_ns=time.perf_counter_ns(),
            rss_kb={role: read_rss_kb(pid) for role, pid in self.pids.items()},
            cpu_s={role: read_cpu_s(pid) for role, pid in self.pids.items()},
            steal_s=read_steal_s(),
        )
        self.samples.append(s)
        return s

    def start(self) -> None:
        self.read()
        self._thread.start()

    def _run(self) -> None:
        next_t = time.monotonic() + self.every_s
        while not self._done.wait(max(0.0, next_t - time.monotonic())):
            s = self.read()
            if self.on_sample is not None:
                self.on_sample(s)
            next_t += self.every_s

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5.0)


class MissCounter:
    """Misses so far from the trace chunks on disk, reading each chunk once."""

    def __init__(self, trace_dir: Path) -> None:
        self.trace_dir = trace_dir
        self.misses = 0
        self.records = 0
        self._seen: set[str] = set()

    def update(self) -> int:
        with contextlib.suppress(OSError):
            for f in sorted(self.trace_dir.glob("chunk_*.npz")):
                if f.name in self._seen:
                    continue
                try:
                    with np.load(f, allow_pickle=False) as z:
                        r = z["records"]
                except (OSError, ValueError, KeyError, EOFError):
                    continue  # retried on the next call
                self._seen.add(f.name)
                self.misses += int(np.count_nonzero(r["missed"]))
                self.misses += int(r["skipped"].astype(np.int64).sum())
                self.records += len(r)
        return self.misses


# ---- the summary ----------------------------------------------------------------------------


def warmup_s(run_s: float) -> tuple[float, str]:
    """The warm-up excluded from RSS growth, and which rule chose it."""
    tenth = WARMUP_FRACTION * run_s
    if tenth < WARMUP_MAX_S:
        return tenth, f"10 % of the run ({tenth:.1f} s)"
    return WARMUP_MAX_S, f"the first {WARMUP_MAX_S / 60:g} minutes"


def rss_summary(samples: Sequence[Sample], role: str, warm_end_ns: int) -> dict[str, Any]:
    """`start`, `end`, `max` RSS (MB) of `role` over `samples`, the one at the warm-up's end
    (`after_warmup`), the growth from there to the end in % and the post-warm-up slope."""
    pts = [(s.t_ns, s.rss_kb[role]) for s in samples if s.rss_kb.get(role) is not None]
    if not pts:
        return {"start": None, "end": None, "max": None, "after_warmup": None,
                "growth_pct": None, "slope_mb_per_h": None}
    mb = [(t, kb / 1024) for t, kb in pts if kb is not None]
    after = [(t, v) for t, v in mb if t >= warm_end_ns] or mb[-1:]
    base = after[0][1]
    end = mb[-1][1]
    slope = None
    if len(after) >= 3 and after[-1][0] > after[0][0]:
        ts = np.array([t for t, _ in after], dtype=np.float64) / 3.6e12  # hours
        vs = np.array([v for _, v in after], dtype=np.float64)
        slope = float(np.polyfit(ts - ts[0], vs, 1)[0])
    return {
        "start": mb[0][1],
        "end": end,
        "max": max(v for _, v in mb),
        "after_warmup": base,
        "growth_pct": 100.0 * (end - base) / base if base > 0 else None,
        "slope_mb_per_h": slope,
    }


def misses_per_minute(records: npt.NDArray[np.void], t0_ns: int, minutes: int) -> list[int]:
    """Misses (late records + skipped ticks) per minute of `scheduled_ns` from `t0_ns`."""
    out = [0] * minutes
    if not len(records) or minutes <= 0:
        return out
    idx = np.clip((records["scheduled_ns"].astype(np.int64) - t0_ns) // MINUTE_NS, 0, minutes - 1)
    per = records["missed"].astype(np.int64) + records["skipped"].astype(np.int64)
    counts = np.bincount(idx, weights=per, minlength=minutes)
    return [int(c) for c in counts[:minutes]]


def ticks_per_minute(records: npt.NDArray[np.void], t0_ns: int, minutes: int) -> list[int]:
    """Scheduled ticks (records + skipped) per minute, the denominators of the miss rates."""
    if not len(records) or minutes <= 0:
        return [0] * minutes
    idx = np.clip((records["scheduled_ns"].astype(np.int64) - t0_ns) // MINUTE_NS, 0, minutes - 1)
    per = 1 + records["skipped"].astype(np.int64)
    return [int(c) for c in np.bincount(idx, weights=per, minlength=minutes)[:minutes]]


def steal_per_minute(samples: Sequence[Sample], t0_ns: int, minutes: int) -> list[float | None]:
    """Host steal per minute from `t0_ns`: each interval between two samples counts in the
    minute of its end. None for a minute without two readings."""
    out: list[float | None] = [None] * minutes
    for a, b in itertools.pairwise(samples):
        if a.steal_s is None or b.steal_s is None or b.t_ns < t0_ns or minutes <= 0:
            continue
        m = min(minutes - 1, (b.t_ns - t0_ns) // MINUTE_NS)
        out[m] = (out[m] or 0.0) + (b.steal_s - a.steal_s)
    return out


def cpu_used(samples: Sequence[Sample], role: str) -> float | None:
    """CPU seconds `role` used between the first and last readings that have it."""
    vals = [v for s in samples if (v := s.cpu_s.get(role)) is not None]
    return None if len(vals) < 2 else vals[-1] - vals[0]


def summarize(samples: Sequence[Sample], records: npt.NDArray[np.void], *, t0_ns: int,
              t_end_ns: int, run_s: float) -> dict[str, Any]:
    """The soak's figures from the sampler's readings taken while the loop ran
    ([`t0_ns`, `t_end_ns`]) and the trace read back."""
    window = [s for s in samples if t0_ns <= s.t_ns <= t_end_ns] or list(samples[-1:])
    minutes = max(1, -(-(t_end_ns - t0_ns) // MINUTE_NS))
    warm_s, warm_rule = warmup_s(run_s)
    warm_end = t0_ns + round(warm_s * 1e9)
    misses = misses_per_minute(records, t0_ns, minutes)
    ticks = ticks_per_minute(records, t0_ns, minutes)
    steal = steal_per_minute(window, t0_ns, minutes)
    steals = [s.steal_s for s in window if s.steal_s is not None]
    ctrl = rss_summary(window, "controller", warm_end)
    server = rss_summary(window, "server", warm_end)
    return {
        "minutes": minutes,
        "warmup_s": warm_s,
        "warmup_rule": warm_rule,
        "rss_mb": {k: ctrl[k] for k in ("start", "end", "max", "after_warmup")},
        "rss_growth_pct": ctrl["growth_pct"],
        "rss_slope_mb_per_h": ctrl["slope_mb_per_h"],
        "server_rss_mb": {k: server[k] for k in ("start", "end", "max", "after_warmup")},
        "server_rss_growth_pct": server["growth_pct"],
        "server_rss_slope_mb_per_h": server["slope_mb_per_h"],
        "misses_per_minute": misses,
        "ticks_per_minute": ticks,
        "miss_rate_per_minute": [m / t if t else 0.0 for m, t in zip(misses, ticks, strict=True)],
        "steal_s_per_minute": steal,
        "steal_s": steals[-1] - steals[0] if len(steals) >= 2 else None,
        "cpu_s": {"controller": cpu_used(window, "controller"),
                  "server": cpu_used(window, "server")},
        "samples": len(window),
    }


def check_targets(result: dict[str, Any]) -> dict[str, bool]:
    """Each target: met (True) or not. A growth that could not be measured is not met."""
    def grew_ok(pct: float | None) -> bool:
        return pct is not None and pct < RSS_GROWTH_TARGET_PCT

    tr = result["trace_records"]
    return {
        "controller_rss_growth": grew_ok(result["rss_growth_pct"]),
        "server_rss_growth": grew_ok(result["server_rss_growth_pct"]),
        "trace_records_lost": tr["lost"] is not None and tr["lost"] <= RECORDS_LOST_TARGET,
    }


# ---- the bench ----------------------------------------------------------------------------


def _drain(stream: Any, tail: list[str], keep: int = 20) -> None:
    for line in stream:
        tail.append(line.rstrip("\n"))
        del tail[:-keep]


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    policy_t, overrides, extra = PLANNERS.get(args.planner, (args.planner, {}, {}))
    if overrides:
        raise CliError(f"{args.planner}: planner overrides are not supported by bench soak")
    policy = policy_t.format(task=args.task)
    seconds = args.minutes * 60.0
    out_dir = Path(args.out or time.strftime("runs/soak/%Y%m%dT%H%M%SZ", time.gmtime()))
    trace_dir = out_dir / "trace"
    if trace_dir.exists() and any(trace_dir.iterdir()):
        raise CliError(f"{trace_dir} already holds a trace; use a fresh --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    ready = out_dir / "ready"
    ready.unlink(missing_ok=True)
    rt = None if args.no_rt else args.rt_priority
    every_s = max(0.1, min(args.sample_s, seconds / 20))
    steal0 = read_steal_s()
    with plant_server(args.task, seed=args.seed, rate_hz=args.rate, rt_priority=rt) as address:
        server_pid = child_pid(address)
        argv = run_argv(policy, address, seed=args.seed, seconds=seconds, plan_ahead=True,
                         rt=rt, ready=str(ready), extra=extra)
        argv += ["--trace", str(trace_dir)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        err_tail: list[str] = []
        out_lines: list[str] = []
        readers = [threading.Thread(target=_drain, args=(proc.stderr, err_tail), daemon=True),
                   threading.Thread(target=_drain, args=(proc.stdout, out_lines, 5),
                                    daemon=True)]
        for t in readers:
            t.start()
        pids = {"controller": proc.pid, **({"server": server_pid} if server_pid else {})}
        counter = MissCounter(trace_dir)
        t_start = [0]
        next_minute = [1]

        def progress(s: Sample) -> None:
            if not t_start[0] or s.t_ns - t_start[0] < next_minute[0] * MINUTE_NS:
                return
            next_minute[0] += 1
            mb = {k: None if v is None else v / 1024 for k, v in s.rss_kb.items()}
            sys.stderr.write(
                f"soak: minute {next_minute[0] - 1:>3}/{args.minutes:g}  rss controller "
                f"{_fmt(mb.get('controller'))} MB  server {_fmt(mb.get('server'))} MB  "
                f"misses so far {counter.update()} (of {counter.records} records on disk)\n")
            sys.stderr.flush()

        sampler = Sampler(pids, every_s, on_sample=progress)
        try:
            sampler.start()
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            t_start[0] = time.perf_counter_ns()
            sys.stderr.write(f"soak: {policy} on {args.task} for {args.minutes:g} min, "
                             f"sampling every {every_s:g} s; trace in {trace_dir}\n")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=seconds + READY_TIMEOUT_S + 60.0)
        finally:
            sampler.stop()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for t in readers:
                t.join(timeout=5.0)
    out = "\n".join(out_lines)
    steal1 = read_steal_s()
    if proc.returncode != 0 or not out.strip():
        last = (err_tail or ["no output"])[-1]
        raise CliError(f"the controller exited with {proc.returncode}: {last}")
    run: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    atomic_write_text(out_dir / "run.json", json.dumps(run, indent=1))
    try:
        data = read_trace(trace_dir)
    except ValueError as exc:
        raise CliError(f"the trace cannot be read back: {exc}") from None
    records = data.records
    if len(records):
        t0 = int(records["scheduled_ns"][0])
        t_end = int(records["scheduled_ns"][-1]) + round(1e9 / float(run["rate_hz"]))
    else:
        t0, t_end = t_start[0], time.perf_counter_ns()
    result: dict[str, Any] = {
        "task": args.task,
        "planner": args.planner,
        "policy": policy,
        "rate_hz": run["rate_hz"],
        "minutes_asked": args.minutes,
        "seed": args.seed,
        "rt_priority": rt,
        "sample_every_s": every_s,
    }
    result.update(summarize(sampler.samples, records, t0_ns=t0, t_end_ns=t_end, run_s=seconds))
    committed = data.meta.get("records")
    expected = int(committed) if committed is not None else int(run["ticks_run"])
    result["trace_records"] = {
        "expected": expected,
        "written": len(records),
        "lost": expected - len(records),
        "run_ticks_run": int(run["ticks_run"]),
        "complete": data.complete,
        "warning": data.warning,
        "overflows": int(data.meta.get("overflows", 0)),
        "write_errors": list(data.meta.get("write_errors", [])),
    }
    result["ticks"] = run["ticks"]
    result["misses"] = run["misses"]
    result["miss_rate"] = run["miss_rate"]
    result["episodes"] = run["episodes"]
    result["success_rate"] = run["success_rate"]
    result["plant"] = run.get("plant")
    result["steal_s_bench"] = None if steal0 is None or steal1 is None else steal1 - steal0
    result["targets"] = {"rss_growth_pct_below": RSS_GROWTH_TARGET_PCT,
                         "trace_records_lost_at_most": RECORDS_LOST_TARGET}
    result["targets_met"] = check_targets(result)
    result["ok"] = all(result["targets_met"].values())
    atomic_write_text(out_dir / "samples.json",
                      json.dumps([asdict(s) for s in sampler.samples]))
    atomic_write_text(out_dir / "summary.json", json.dumps(result, indent=1))
    ready.unlink(missing_ok=True)
    return result


def report(r: dict[str, Any]) -> str:
    tr, met = r["trace_records"], r["targets_met"]

    def verdict(ok: bool) -> str:
        return "ok" if ok else "FAIL"

    rss, srv = r["rss_mb"], r["server_rss_mb"]
    rates = ", ".join(f"{100 * x:.2f}" for x in r["miss_rate_per_minute"])
    lines = [
        f"rtdiff bench soak: {r['policy']} on {r['task']} at {r['rate_hz']:g} Hz, "
        f"{r['minutes']} minute(s), {r['ticks']} ticks, {r['episodes']} episodes "
        f"(success {100 * r['success_rate']:.0f} %)",
        f"  controller RSS MB  start {_fmt(rss['start'])}  after warm-up "
        f"{_fmt(rss['after_warmup'])}  end {_fmt(rss['end'])}  max {_fmt(rss['max'])}  "
        f"growth {_fmt(r['rss_growth_pct'], '.2f')} %  ({r['warmup_rule']} excluded)",
        f"  server RSS MB      start {_fmt(srv['start'])}  after warm-up "
        f"{_fmt(srv['after_warmup'])}  end {_fmt(srv['end'])}  max {_fmt(srv['max'])}  "
        f"growth {_fmt(r['server_rss_growth_pct'], '.2f')} %",
        f"  misses {r['misses']} ({100 * r['miss_rate']:.3f} %); per minute (%): {rates}",
        f"  trace records expected {tr['expected']}  written {tr['written']}  lost {tr['lost']}"
        f"  ring overflows {tr['overflows']}",
        f"  CPU s controller {_fmt(r['cpu_s']['controller'])}  server "
        f"{_fmt(r['cpu_s']['server'])};  host steal {_fmt(r['steal_s'], '.2f')} s",
        f"  target RSS growth < {RSS_GROWTH_TARGET_PCT:g} %: controller "
        f"{verdict(met['controller_rss_growth'])}, server {verdict(met['server_rss_growth'])}",
        f"  target 0 trace records lost: {verdict(met['trace_records_lost'])}",
    ]
    return "\n".join(lines)


def cli_bench_soak(args: argparse.Namespace) -> int:
    if not runnable(args.planner):
        raise CliError(f"unknown planner {args.planner!r}; known: {sorted(PLANNERS)}")
    if args.minutes * 60.0 < 1.0:
        raise CliError(f"--minutes must give at least 1 s, got {args.minutes:g}")
    result = soak(args)
    if args.results:
        record_result(args.results, "soak", result)
    if args.json:
        print(json.dumps(result))
    else:
        print(report(result))
    return 0
