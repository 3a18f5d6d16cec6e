"""The platform under the bridge: what the machine itself does beside a measured stream.

Used by `rtdiff bench bridge` (`hw_bridge.bench`, module docstring: the `stream` keys these
fill) to tell the link's gaps from the platform's: a timer loop that only sleeps to each
deadline and records how late it woke (`timer_loop`), the hypervisor's steal counter
(`read_steal_jiffies`), involuntary context switches (`nivcsw`), and the mitigations
(`try_mlockall`, `pin_plan`); `attribute_window` / `attribute_runs` match a stream's gaps with
the baseline's stalls and the steal counter's increases.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import select
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from runtime.rt import read_steal_jiffies as read_steal_jiffies  # re-exported
from runtime.stats import percentiles

STEAL_SAMPLE_NS = 10_000_000  # the baseline's steal sampling interval (one jiffy here)
MAX_LISTED = 100  # stalls listed per transport (all are counted)


def quantiles_us(samples_ns: np.ndarray[Any, Any]) -> dict[str, float]:
    """`n`, then p50, p99, p99.9 (`p999`) and max in microseconds, rounded to 0.1 us; NaN for
    every quantile when there is no sample."""
    if samples_ns.size == 0:
        return {"n": 0, **dict.fromkeys(("p50", "p99", "p999", "max"), float("nan"))}
    q = percentiles(samples_ns.astype(np.float64) / 1e3)
    return {"n": int(samples_ns.size), **{k: round(v, 1) for k, v in q.items()}}


def nivcsw() -> tuple[int, int]:
    """Involuntary context switches so far: (this thread, this process)."""
    thread = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    return resource.getrusage(thread).ru_nivcsw, resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def try_mlockall() -> str:
    """mlockall(MCL_CURRENT | MCL_FUTURE): "locked", or why not (never raises)."""
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return "not supported on this platform"
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        if libc.mlockall(1 | 2) != 0:  # MCL_CURRENT | MCL_FUTURE
            return f"refused: {os.strerror(ctypes.get_errno())}"
    except (OSError, AttributeError) as exc:
        return f"failed: {exc}"
    return "locked"


def munlockall() -> None:
    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        ctypes.CDLL(name).munlockall()


def pin_plan() -> tuple[set[int], set[int]] | None:
    """(server CPUs, client CPUs) for `pin`: two different CPUs this process may use; None when
    it may use fewer than two."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, {cpus[1]}) if len(cpus) >= 2 else None


def setup_process(mlock: bool, cpus: set[int] | None) -> str | None:
    """In a spawned process, before it starts work: pin and lock as asked."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    return try_mlockall() if mlock else None


def timer_loop(
    now: Callable[[], int],
    sleep_s: Callable[[float], object],
    period_ns: int,
    stop: Callable[[], bool],
    *,
    steal: Callable[[], int | None] = read_steal_jiffies,
    steal_every_ns: int = STEAL_SAMPLE_NS,
) -> dict[str, list[int]]:
    """Sleep to each period's deadline and record how late each wake-up was.

    Returns `deadline` and `late` (ns, one per wake-up) and `steal_t`, `steal` (the steal
    counter, sampled every `steal_every_ns`, after a wake-up's lateness is taken). A deadline
    missed by more than a period is dropped (the next one is a period after the wake-up), as a
    paced loop does, so one long stall counts once. `stop` is asked every 64 wake-ups."""
    out: dict[str, list[int]] = {"deadline": [], "late": [], "steal_t": [], "steal": []}
    deadline = now() + period_ns
    next_steal = 0
    k = 0
    while not (k % 64 == 0 and stop()):
        k += 1
        left = deadline - now()
        if left > 0:
            sleep_s(left * 1e-9)
        woke = now()
        out["deadline"].append(deadline)
        out["late"].append(woke - deadline)
        if woke >= next_steal:
            value = steal()
            if value is not None:
                out["steal_t"].append(woke)
                out["steal"].append(value)
            next_steal = woke + steal_every_ns
        deadline += period_ns
        if woke - deadline > period_ns:
            deadline = woke + period_ns
    return out


def select_sleep(seconds: float) -> None:
    select.select([], [], [], seconds)  # the client's wait (on no fd): same timer path


def stream_window(opened_ns: int, arrivals: Sequence[int], loop_end_ns: int) -> tuple[int, int]:
    """The measured window: from its opening to just after the last state received (the server
    stops first; the client's wait for a state that no longer comes is not part of it)."""
    return (opened_ns, arrivals[-1] + 1 if len(arrivals) else loop_end_ns)


def gap_intervals(arrivals: np.ndarray[Any, Any], period_ns: int) -> list[tuple[int, int]]:
    """(start, end) of each inter-arrival gap over 1.5 periods."""
    a = np.asarray(arrivals, dtype=np.int64)
    idx = np.flatnonzero(np.diff(a) > (3 * period_ns) // 2)
    return [(int(a[i]), int(a[i + 1])) for i in idx]


def attribute_window(
    gaps: Sequence[tuple[int, int]],
    deadlines: np.ndarray[Any, Any],
    late: np.ndarray[Any, Any],
    steal_t: np.ndarray[Any, Any],
    steal: np.ndarray[Any, Any],
    window: tuple[int, int],
    period_ns: int,
) -> dict[str, Any]:
    """One run's stream gaps against its baseline, within `window` (ns, absolute).

    A stall is a wake-up over half a period late (its interval: deadline -> wake-up); a gap
    coincides with one when the intervals overlap. A gap coincides with steal when the steal
    counter rose between the last sample at or before the gap's start and the first at or
    after its end (the counter counts whole jiffies: a hint, not proof)."""
    t0, t1 = window
    d = np.asarray(deadlines, dtype=np.int64)
    lt = np.asarray(late, dtype=np.int64)
    keep = (d >= t0) & (d < t1)
    d, lt = d[keep], lt[keep]
    stall = lt > period_ns // 2
    s_start, s_end = d[stall], d[stall] + lt[stall]
    st = np.asarray(steal_t, dtype=np.int64)
    sv = np.asarray(steal, dtype=np.int64)
    rows = []
    for g0, g1 in gaps:
        overlap = bool(np.any((s_start < g1) & (s_end > g0)))
        stolen = False
        if st.size >= 2:
            i0 = max(int(np.searchsorted(st, g0, side="right")) - 1, 0)
            i1 = min(int(np.searchsorted(st, g1, side="left")), st.size - 1)
            stolen = bool(sv[i1] > sv[i0])
        rows.append(
            {
                "t_ms": round((g0 - t0) / 1e6, 3),
                "gap_us": round((g1 - g0) / 1e3, 1),
                "baseline_stall": overlap,
                "steal": stolen,
            }
        )
    in_win = (st >= t0) & (st < t1)
    return {
        "gaps": rows,
        "late": lt,
        "stalls": [
            {"t_ms": round((a - t0) / 1e6, 3), "late_us": round(b / 1e3, 1)}
            for a, b in zip(d[stall].tolist(), lt[stall].tolist(), strict=True)
        ],
        "steal_increases": int(np.sum(np.diff(sv[in_win]) > 0)) if np.any(in_win) else 0,
    }


def attribute_runs(runs: Sequence[dict[str, Any]], period_ns: int) -> dict[str, Any]:
    """The new `stream` keys (module docstring) from the bridge runs of one transport."""
    steal = [r["stream"]["steal"] for r in runs]
    known = None if any(v is None for v in steal) else sum(steal)
    tck = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    res: dict[str, Any] = {
        "steal": {"jiffies": known, "ms": None if known is None else known * 1000 / tck},
        "nivcsw": {
            "client_thread": sum(r["stream"]["nivcsw"][0] for r in runs),
            "client_process": sum(r["stream"]["nivcsw"][1] for r in runs),
            "server_process": sum(int(r["server"].get("nivcsw", 0)) for r in runs),
        },
    }
    if not all("baseline" in r for r in runs):
        return res
    rows, stalls, lates, increases = [], [], [], 0
    for i, r in enumerate(runs):
        s, b = r["stream"], r["baseline"]
        a = attribute_window(
            gap_intervals(s["arrivals"], period_ns),
            b["deadline"],
            b["late"],
            b["steal_t"],
            b["steal"],
            s["window"],
            period_ns,
        )
        rows += [{"run": i, **g} for g in a["gaps"]]
        stalls += [{"run": i, **g} for g in a["stalls"]]
        lates.append(a["late"])
        increases += a["steal_increases"]
    late = np.concatenate(lates)
    res.update(
        gaps=rows,
        gaps_with_baseline_stall=sum(g["baseline_stall"] for g in rows),
        gaps_with_steal=sum(g["steal"] for g in rows),
        steal_samples_with_increase=increases,
        baseline={
            "wakeups": int(late.size),
            "late_over_0.5_period": int(np.sum(late > period_ns // 2)),
            "lateness_us": quantiles_us(late),
            "stalls": stalls[:MAX_LISTED],
        },
    )
    return res
