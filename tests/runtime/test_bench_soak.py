"""`rtdiff bench soak`: the /proc readers, the per-minute buckets, the warm-up rule, the RSS
growth, the targets, and a 6-second soak end to end (a served plant and a controller)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.cli import main
from runtime.cli.bench_soak import (
    MINUTE_NS,
    MissCounter,
    Sample,
    check_targets,
    child_pid,
    read_cpu_s,
    read_rss_kb,
    summarize,
    warmup_s,
)
from runtime.trace import TICK_DTYPE, TraceRing

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@needs_proc
def test_the_proc_readers_see_this_process_and_a_child_and_none_once_it_is_gone() -> None:
    before = read_rss_kb(os.getpid())
    touched = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, every page written
    after = read_rss_kb(os.getpid())
    assert before is not None and after is not None and after - before >= 60 * 1024
    del touched
    spent = resource.getrusage(resource.RUSAGE_SELF)
    cpu = read_cpu_s(os.getpid())
    assert cpu is not None and abs(cpu - (spent.ru_utime + spent.ru_stime)) < 0.5
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "soak-probe"])
    try:
        t_end = time.monotonic() + 5.0
        while child_pid("soak-probe") is None and time.monotonic() < t_end:
            time.sleep(0.01)
        assert child_pid("soak-probe") == child.pid
        assert child_pid("no-such-child") is None
    finally:
        child.kill()
        child.wait()
    assert read_rss_kb(child.pid) is None and read_cpu_s(child.pid) is None


def test_the_warm_up_is_two_minutes_or_a_tenth_of_the_run_whichever_is_shorter() -> None:
    assert warmup_s(3600.0) == (120.0, "the first 2 minutes")
    assert warmup_s(600.0)[0] == pytest.approx(60.0)
    assert warmup_s(6.0)[0] == pytest.approx(0.6)
    assert "10 %" in warmup_s(6.0)[1]


def _records(n: int, t0: int, period: int) -> np.ndarray:
    r = np.zeros(n, dtype=TICK_DTYPE(1))
    r["tick"] = np.arange(n)
    r["scheduled_ns"] = t0 + np.arange(n, dtype=np.int64) * period
    return r


def test_the_summary_buckets_misses_and_steal_by_minute_and_measures_growth_after_warm_up(
) -> None:
    t0, period = 1_000 * MINUTE_NS, MINUTE_NS // 100  # 100 ticks a minute
    rec = _records(250, t0, period)  # minutes 0, 1 and half of 2
    rec["missed"][[5, 150, 160]] = True  # one miss in minute 0, two in minute 1
    rec["skipped"][210] = 3  # three skipped ticks in minute 2
    t_end = t0 + 250 * period

    def s(minute: float, ctrl_mb: float, steal: float, cpu: float) -> Sample:
        return Sample(t_ns=t0 + round(minute * MINUTE_NS),
                      rss_kb={"controller": round(ctrl_mb * 1024), "server": 50 * 1024},
                      cpu_s={"controller": cpu, "server": None}, steal_s=steal)

    samples = [
        s(-0.5, 10.0, 0.0, 0.0),  # before the loop: not in the window
        s(0.0, 100.0, 1.0, 1.0),
        s(0.2, 300.0, 1.5, 2.0),  # the warm-up of a 2.5-minute run: 15 s
        s(0.5, 200.0, 2.0, 3.0),  # first reading after the warm-up
        s(1.5, 201.0, 2.0, 5.0),
        s(2.4, 202.0, 4.0, 8.0),
    ]
    out = summarize(samples, rec, t0_ns=t0, t_end_ns=t_end, run_s=150.0)
    assert out["minutes"] == 3 and out["warmup_s"] == pytest.approx(15.0)
    assert out["misses_per_minute"] == [1, 2, 3]
    assert out["ticks_per_minute"] == [100, 100, 53]
    assert out["miss_rate_per_minute"] == pytest.approx([0.01, 0.02, 3 / 53])
    assert out["steal_s_per_minute"] == [pytest.approx(1.0), pytest.approx(0.0),
                                         pytest.approx(2.0)]
    assert out["steal_s"] == pytest.approx(3.0)
    assert out["rss_mb"] == {"start": 100.0, "end": 202.0, "max": 300.0, "after_warmup": 200.0}
    assert out["rss_growth_pct"] == pytest.approx(1.0)
    assert out["rss_slope_mb_per_h"] == pytest.approx(60.0 * 2.0 / 1.9, rel=0.1)
    assert out["server_rss_growth_pct"] == 0.0
    assert out["cpu_s"] == {"controller": 7.0, "server": None}
    assert out["samples"] == 5


def _result(growth: float | None, server: float | None, lost: int | None) -> dict:
    return {"rss_growth_pct": growth, "server_rss_growth_pct": server,
            "trace_records": {"lost": lost}}


def test_the_targets_fail_on_growth_of_one_percent_on_lost_records_or_on_no_figure() -> None:
    assert all(check_targets(_result(0.99, 0.0, 0)).values())
    assert not check_targets(_result(1.0, 0.0, 0))["controller_rss_growth"]
    assert not check_targets(_result(0.5, None, 0))["server_rss_growth"]
    assert not check_targets(_result(0.5, 0.5, 1))["trace_records_lost"]


def test_the_miss_counter_reads_each_chunk_on_disk_once(tmp_path: Path) -> None:
    ring = TraceRing(1, chunk_ticks=4, n_chunks=2, path=tmp_path / "t")
    counter = MissCounter(tmp_path / "t")
    for k in range(10):
        i = ring.next_slot()
        ring.buffer[i] = np.zeros((), dtype=ring.dtype)
        ring.cols.tick[i] = k
        ring.cols.missed[i] = k in (1, 6, 9)
        ring.cols.skipped[i] = 2 if k == 3 else 0
        ring.commit()
    assert ring.sync(5.0)
    assert counter.update() == 4 and counter.records == 8  # chunks 0 and 1; 9 not flushed
    assert counter.update() == 4
    ring.close()
    assert counter.update() == 5 and counter.records == 10


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "soak", "--planner", "nope"]) == 2
    assert main(["bench", "soak", "--minutes", "0.001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown planner" in err[0] and "--minutes" in err[1]


@needs_proc
def test_a_six_second_soak_loses_no_trace_record_and_samples_both_processes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # "minutes" of 2 s: the per-minute buckets and the progress lines within 6 s
    monkeypatch.setattr("runtime.cli.bench_soak.MINUTE_NS", 2_000_000_000)
    out = tmp_path / "soak"
    assert main(["bench", "soak", "--minutes", "0.1", "--no-rt", "--out", str(out),
                 "--json", "--results", str(tmp_path / "results")]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    progress = [ln for ln in captured.err.splitlines() if ln.startswith("soak: minute")]
    assert len(progress) >= 2 and "misses so far" in progress[-1]
    assert "rss controller" in progress[0] and " MB  server " in progress[0]
    tr = res["trace_records"]
    assert tr["written"] == tr["expected"] == tr["run_ticks_run"] > 400  # 600 scheduled
    assert tr["lost"] == 0 and tr["complete"] and tr["overflows"] == 0
    assert res["targets_met"]["trace_records_lost"]
    assert res["minutes"] in (3, 4) and len(res["miss_rate_per_minute"]) == res["minutes"]
    assert len(res["steal_s_per_minute"]) == res["minutes"]
    assert sum(res["misses_per_minute"]) == res["misses"]
    assert sum(res["ticks_per_minute"]) == res["ticks"]
    for key in ("rss_mb", "server_rss_mb"):
        mb = res[key]
        assert 10 < mb["start"] <= mb["max"] and mb["end"] <= mb["max"]
    assert res["rss_mb"]["start"] > res["server_rss_mb"]["start"]  # torch vs a plant
    assert res["cpu_s"]["controller"] > 0 and res["cpu_s"]["server"] > 0
    assert res["samples"] >= 10 and res["warmup_s"] == pytest.approx(0.6)
    assert (out / "run.json").is_file() and (out / "summary.json").is_file()
    assert len(json.loads((out / "samples.json").read_text())) >= res["samples"]
    recorded = list((tmp_path / "results").glob("soak-*.json"))
    assert len(recorded) == 1 and json.loads(recorded[0].read_text())["bench"] == "soak"
