"""Real-time hygiene for a Python control process.

Python's own worst cases dwarf a well-written tick: a full garbage collection over a heap that
holds torch and MuJoCo can take tens of milliseconds, BLAS thread pools fight the tick thread
for the two cores, and the default scheduler lets any background job preempt the loop.

- `GcPolicy("frozen")`: after start-up, `gc.freeze()` moves every live object into a permanent
  generation the collector never scans again, and automatic collection is switched off. Garbage
  made while running is then collected by `collect_in_slack`, only when the tick has slack.
  `GcPolicy("default")` leaves CPython's collector alone (the baseline the benchmark compares).
- `cap_threads(n)`: caps OpenMP/MKL/OpenBLAS pools (environment, for libraries not yet loaded)
  and torch's intra-op pool if torch is already imported (never imports it).
- `try_realtime(priority, cpus)`: SCHED_FIFO and CPU affinity when the process is allowed;
  returns what it did or why not, never raises.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Literal

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class GcPolicy:
    """Garbage-collection policy for the loop.

    mode: "default" (CPython's automatic collector) or "frozen" (freeze at start, collect only
    in slack). `slack_min_ns`: the least slack before the next tick in which a collection may
    run. `gen0_threshold`: pending allocations that make a slack collection worth doing.

    Example:
        gc_policy = GcPolicy("frozen")
        gc_policy.start()                       # after all start-up allocations
        gc_policy.collect_in_slack(next_tick_ns - clock.now_ns())
        gc_policy.stop()                        # restores automatic collection
    """

    def __init__(
        self,
        mode: Literal["default", "frozen"] = "frozen",
        *,
        slack_min_ns: int = 300_000,
        gen0_threshold: int = 700,
    ) -> None:
        if mode not in ("default", "frozen"):
            raise ValueError(f"{mode=} must be 'default' or 'frozen'")
        self.mode = mode
        self.slack_min_ns = slack_min_ns
        self.gen0_threshold = gen0_threshold
        self.collections = 0
        self._was_enabled = gc.isenabled()

    def start(self) -> None:
        if self.mode == "frozen":
            self._was_enabled = gc.isenabled()
            gc.collect()
            gc.freeze()
            gc.disable()

    def collect_in_slack(self, slack_ns: int) -> bool:
        """Collect the youngest generation(s) that need it if `slack_ns` allows; True if run."""
        if self.mode != "frozen" or slack_ns < self.slack_min_ns:
            return False
        c0, c1, c2 = gc.get_count()
        if c0 < self.gen0_threshold:
            return False
        # Same escalation rule as CPython's automatic collector, only moved into slack time:
        # c1 counts gen-0 collections since the last gen-1 one, c2 gen-1 since the last gen-2.
        _, t1, t2 = gc.get_threshold()
        gen = 2 if (c1 >= t1 and c2 >= t2) else 1 if c1 >= t1 else 0
        gc.collect(gen)
        self.collections += 1
        return True

    def stop(self) -> None:
        if self.mode == "frozen":
            gc.unfreeze()
            if self._was_enabled:
                gc.enable()


def read_steal_jiffies(path: str = "/proc/stat") -> int | None:
    """The hypervisor steal counter: the "cpu" line's 8th value, in 1/CLK_TCK s; None where
    there is none (not Linux, or a kernel without it)."""
    try:
        with open(path, "rb") as f:
            fields = f.readline().split()
        return int(fields[8]) if fields[:1] == [b"cpu"] and len(fields) > 8 else None
    except (OSError, ValueError):
        return None


def read_steal_s(path: str = "/proc/stat") -> float | None:
    """Host steal so far, in seconds summed over all CPUs (`read_steal_jiffies` / CLK_TCK):
    the time the hypervisor ran someone else while this machine's CPUs had work. The
    difference of two readings is the steal of the interval between; every deadline figure
    carries it."""
    jiffies = read_steal_jiffies(path)
    if jiffies is None:
        return None
    try:
        tck = os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        tck = 100
    return jiffies / tck


def cap_threads(n: int = 1) -> list[str]:
    """Cap math-library thread pools at `n`; returns what was set."""
    if n < 1:
        raise ValueError(f"{n=} must be >= 1")
    done = []
    for var in _THREAD_VARS:
        if var not in os.environ:
            os.environ[var] = str(n)
            done.append(f"{var}={n}")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
        done.append(f"torch.set_num_threads({n})")
    return done


def try_realtime(priority: int | None = None, cpus: set[int] | None = None) -> list[str]:
    """Ask for SCHED_FIFO at `priority` and pin to `cpus`; report each outcome as a line."""
    report: list[str] = []
    if cpus:
        if hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, cpus)
                report.append(f"pinned to CPUs {sorted(cpus)}")
            except OSError as exc:
                report.append(f"CPU affinity {sorted(cpus)} refused: {exc.strerror}")
        else:
            report.append("CPU affinity is not supported on this platform")
    if priority is not None:
        if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_FIFO"):
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
                report.append(f"SCHED_FIFO priority {priority}")
            except PermissionError:
                report.append(
                    f"SCHED_FIFO priority {priority} not allowed (needs CAP_SYS_NICE or an "
                    "rtprio limit in /etc/security/limits.conf); running with the default policy"
                )
            except OSError as exc:
                report.append(f"SCHED_FIFO priority {priority} refused: {exc.strerror}")
        else:
            report.append("SCHED_FIFO is not supported on this platform")
    return report
