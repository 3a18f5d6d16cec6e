"""`rtdiff bench bridge`'s gap attribution: the timer baseline, steal and gap/stall matching,
on a fake clock and synthetic samples (no sockets, no sleeps)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from hw_bridge import platform
from hw_bridge.platform import (
    attribute_runs,
    attribute_window,
    gap_intervals,
    read_steal_jiffies,
    stream_window,
    timer_loop,
    try_mlockall,
)

P = 1_000_000  # 1 ms period, ns


class FakeTimer:
    """A clock whose sleeps end late by a scripted amount (per sleep, in order)."""

    def __init__(self, extra_ns: list[int], start: int = 10 * P) -> None:
        self.t = start
        self.extra = list(extra_ns)
        self.sleeps: list[float] = []
        self.steal = 0

    def now(self) -> int:
        self.t += 1_000  # each clock read costs 1 us
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += round(seconds * 1e9) + (self.extra.pop(0) if self.extra else 0)

    def stop(self) -> bool:
        return not self.extra

    def read_steal(self) -> int:
        self.steal += 1
        return self.steal


def test_timer_loop_records_lateness_and_drops_a_long_missed_deadline() -> None:
    clock = FakeTimer([0] * 63 + [3_500_000] + [0] * 64)
    out = timer_loop(clock.now, clock.sleep, P, clock.stop, steal=clock.read_steal)
    late = np.asarray(out["late"])
    d = np.asarray(out["deadline"])
    assert late.size == 128
    assert np.all(late[:63] == 1_000)  # one clock read after the sleep's end
    assert late[63] == 3_501_000  # the stall
    # after a wake-up more than a period past the next deadline, the schedule restarts
    # a period after the wake-up: the stall is counted once, not as four late wake-ups
    assert d[64] == d[63] + late[63] + P
    assert np.all(np.diff(d[64:]) == P) and np.all(late[65:] == 1_000)
    # sleeps go to the deadline: the period less the clock reads since the last wake-up
    assert 0.00099 < clock.sleeps[1] < 0.001


def test_timer_loop_samples_steal_every_10_ms_and_asks_stop_every_64_wakeups() -> None:
    clock = FakeTimer([0] * 200)
    asked = []

    def stop() -> bool:
        asked.append(clock.t)
        return len(asked) > 2

    out = timer_loop(clock.now, clock.sleep, P, stop, steal=clock.read_steal)
    assert len(out["late"]) == 128 and len(asked) == 3
    assert out["steal"] == list(range(1, len(out["steal"]) + 1))
    assert np.all(np.diff(out["steal_t"]) >= 10 * P) and len(out["steal"]) in (12, 13)


def test_timer_loop_without_steal_counter_records_none() -> None:
    clock = FakeTimer([0] * 64)
    out = timer_loop(clock.now, clock.sleep, P, clock.stop, steal=lambda: None)
    assert out["steal"] == [] and out["steal_t"] == [] and len(out["late"]) == 64


def test_gap_intervals_are_the_gaps_over_one_and_a_half_periods() -> None:
    a = np.array([0, 1, 2, 3.5, 4.5, 6.6, 7.6]) * P
    assert gap_intervals(a.astype(np.int64), P) == [(4_500_000, 6_600_000)]
    # exactly 1.5 periods is not a gap (the stream count uses the same rule)
    assert gap_intervals(np.array([0, 1_500_000], dtype=np.int64), P) == []
    assert gap_intervals(np.array([0, 1_500_001], dtype=np.int64), P) == [(0, 1_500_001)]


def test_stream_window_ends_at_the_last_state_not_at_the_loop_end() -> None:
    assert stream_window(5 * P, [6 * P, 7 * P], 9 * P) == (5 * P, 7 * P + 1)
    assert stream_window(5 * P, [], 9 * P) == (5 * P, 9 * P)
    # a baseline wake-up due after the last state is outside the window
    a = attribute_window(
        [],
        np.array([7 * P, 8 * P]),
        np.array([P, P]),
        np.zeros(0),
        np.zeros(0),
        stream_window(5 * P, [6 * P, 7 * P], 9 * P),
        P,
    )
    assert a["late"].size == 1


def test_attribute_window_matches_gaps_to_stalls_and_steal() -> None:
    t0 = 100 * P
    deadlines = t0 + np.arange(0, 50) * P
    late = np.full(50, 50_000)
    late[10] = 2_000_000  # stall: deadline t0+10 ms -> wake-up t0+12 ms
    late[40] = 600_000  # stall: t0+40 ms -> t0+40.6 ms
    late[45] = 500_000  # exactly half a period: not a stall
    steal_t = t0 + np.arange(0, 60, 10) * P  # samples at t0 + 0, 10, ..., 50 ms
    steal = np.array([5, 5, 5, 6, 6, 6])  # rose between the 20 and 30 ms samples
    gaps = [
        (t0 + 11 * P, t0 + 13 * P),  # overlaps the first stall
        (t0 + 26 * P, t0 + 28 * P),  # no stall; steal rose in the sample around it
        (t0 + 45 * P, t0 + 47 * P),  # neither (the 40.6 ms stall ended before it)
    ]
    a = attribute_window(gaps, deadlines, late, steal_t, steal, (t0, t0 + 50 * P), P)
    assert [(g["baseline_stall"], g["steal"]) for g in a["gaps"]] == [
        (True, False),
        (False, True),
        (False, False),
    ]
    assert a["gaps"][0] == {"t_ms": 11.0, "gap_us": 2000.0, "baseline_stall": True, "steal": False}
    assert [s["late_us"] for s in a["stalls"]] == [2000.0, 600.0]
    assert a["steal_increases"] == 1 and a["late"].size == 50


def test_attribute_window_ignores_baseline_samples_outside_the_window() -> None:
    deadlines = np.arange(0, 20) * P
    late = np.full(20, 2 * P)  # all stalls
    a = attribute_window([], deadlines, late, np.zeros(0), np.zeros(0), (5 * P, 10 * P), P)
    assert a["late"].size == 5 and len(a["stalls"]) == 5 and a["steal_increases"] == 0


def _run(arrivals: list[float], stalls: dict[int, int], steal: int | None) -> dict:
    base = np.arange(0, 100, dtype=np.int64) * P
    late = np.full(100, 20_000, dtype=np.int64)
    for k, v in stalls.items():
        late[k] = v
    return {
        "stream": {
            "arrivals": (np.asarray(arrivals) * P).astype(np.int64),
            "window": (0, 100 * P),
            "steal": steal,
            "nivcsw": (3, 5),
        },
        "server": {"nivcsw": 7},
        "baseline": {
            "deadline": base,
            "late": late,
            "steal_t": np.zeros(0, dtype=np.int64),
            "steal": np.zeros(0, dtype=np.int64),
        },
    }


def test_attribute_runs_pools_runs_into_the_documented_keys() -> None:
    runs = [
        _run([1, 2, 5, 6], {2: 2 * P}, steal=1),  # gap 2->5 ms overlaps stall 2->4 ms
        _run([1, 2, 3, 9, 10], {50: 700_000, 60: 900_000}, steal=0),  # gap 3->9: no stall
    ]
    res = attribute_runs(runs, P)
    json.dumps(res)  # JSON-ready
    assert res["steal"]["jiffies"] == 1
    assert res["nivcsw"] == {"client_thread": 6, "client_process": 10, "server_process": 14}
    assert [(g["run"], g["baseline_stall"]) for g in res["gaps"]] == [(0, True), (1, False)]
    assert res["gaps_with_baseline_stall"] == 1 and res["gaps_with_steal"] == 0
    b = res["baseline"]
    assert b["wakeups"] == 200 and b["late_over_0.5_period"] == 3
    assert b["lateness_us"]["max"] == 2000.0 and [s["run"] for s in b["stalls"]] == [0, 1, 1]


def test_attribute_runs_without_baseline_or_steal_counter() -> None:
    r = _run([1, 2], {}, steal=None)
    del r["baseline"]
    res = attribute_runs([r], P)
    assert res["steal"] == {"jiffies": None, "ms": None}
    assert "baseline" not in res and "gaps" not in res


def test_read_steal_jiffies_reads_the_8th_value_of_the_cpu_line(tmp_path: Path) -> None:
    f = tmp_path / "stat"
    f.write_text("cpu  10 20 30 40 50 60 70 1234 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert read_steal_jiffies(str(f)) == 1234
    f.write_text("cpu  10 20 30\n")
    assert read_steal_jiffies(str(f)) is None
    assert read_steal_jiffies(str(tmp_path / "missing")) is None


class FakeLibc:
    def __init__(self, rc: int) -> None:
        self.rc = rc
        self.flags: list[int] = []

    def mlockall(self, flags: int) -> int:
        self.flags.append(flags)
        return self.rc


def test_mlockall_locks_current_and_future_pages_or_says_why_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    libc = FakeLibc(0)
    monkeypatch.setattr(platform.sys, "platform", "linux")
    monkeypatch.setattr(platform.ctypes.util, "find_library", lambda name: "libc.so.6")
    monkeypatch.setattr(platform.ctypes, "CDLL", lambda name, use_errno=False: libc)
    monkeypatch.setattr(platform.ctypes, "get_errno", lambda: errno.EPERM)
    assert try_mlockall() == "locked"
    assert libc.flags == [3]  # MCL_CURRENT | MCL_FUTURE
    libc.rc = -1
    assert try_mlockall() == f"refused: {os.strerror(errno.EPERM)}"

    def no_libc(name: str, use_errno: bool = False) -> None:
        raise OSError("cannot open libc")

    monkeypatch.setattr(platform.ctypes, "CDLL", no_libc)
    assert try_mlockall() == "failed: cannot open libc"
    monkeypatch.setattr(platform.ctypes.util, "find_library", lambda name: None)
    assert try_mlockall() == "not supported on this platform"


def test_mlockall_on_this_machine_locks_or_is_refused() -> None:
    try:
        got = try_mlockall()
        assert got == "locked" or got.startswith("refused: "), got
    finally:
        platform.munlockall()  # the rest of the test process stays unlocked
