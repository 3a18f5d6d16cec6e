"""`rtdiff bench kills`: the temp-file watch, the trace check after a kill, the summary, the
CLI's refusals, and kill -9s of each kind end to end (a served plant, expert controllers):
one of each in `make test`, three of each marked slow."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.cli import main
from runtime.cli.bench_kills import TempFileWatch, summarize, trace_check
from runtime.trace import TraceRing

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def test_the_watch_wakes_on_a_temp_file_and_not_on_other_files(tmp_path: Path) -> None:
    watch = TempFileWatch(tmp_path)
    try:
        threading.Timer(0.05, (tmp_path / "chunk_000000.npz").write_bytes, (b"x",)).start()
        assert not watch.wait(0.3)  # a final name is no write in progress
        timer = threading.Timer(0.05, (tmp_path / ".tmp-abc.part").write_bytes, (b"",))
        t0 = time.monotonic()
        timer.start()
        assert watch.wait(2.0)
        assert 0.04 < time.monotonic() - t0 < 1.0
    finally:
        watch.close()


def _ring(path: Path, n: int, period: int, t0: int) -> TraceRing:
    ring = TraceRing(1, chunk_ticks=4, n_chunks=4, path=path)
    for k in range(n):
        i = ring.next_slot()
        ring.buffer[i] = np.zeros((), dtype=ring.dtype)
        ring.cols.tick[i] = k
        ring.cols.scheduled_ns[i] = t0 + k * period
        ring.commit()
    assert ring.sync(5.0)
    return ring


def test_the_trace_check_counts_the_ticks_scheduled_before_the_kill_and_not_on_disk(
        tmp_path: Path) -> None:
    period, t0 = 10_000_000, 1_000_000_000
    ring = _ring(tmp_path / "t", 10, period, t0)  # 8 records on disk (2 chunks), 2 in memory
    # killed 5 ms after tick 11 was scheduled: ticks 8..11 were scheduled, not on disk
    out = trace_check(tmp_path / "t", t0 + 11 * period + 5_000_000, period)
    assert out["readable"] and out["records"] == 8 and not out["clean_close"]
    assert out["lost"] == 4 and out["lost_max"] == 7 and out["lost_within_bound"]
    assert out["writing"] is None
    assert trace_check(tmp_path / "t", t0 + 7 * period + 1, period)["lost"] == 0
    (tmp_path / "t" / ".tmp-x.part").write_bytes(b"PK")  # the kill landed in a write
    assert trace_check(tmp_path / "t", t0 + 11 * period, period)["writing"] == "chunk_000002.npz"
    ring.close()
    (tmp_path / "t" / ".tmp-x.part").unlink()
    clean = trace_check(tmp_path / "t", None, period)
    assert clean["complete"] and clean["lost"] == 0 and clean["records"] == 10
    bad = trace_check(tmp_path / "nothing", None, period)
    assert not bad["readable"] and "is not an rtdiff trace" in bad["error"]


def test_the_summary_counts_kills_bounds_regains_and_traces() -> None:
    def ctl(safe: float | None, regain: float | None, lost: int, mid: bool) -> dict:
        return {"target": "controller", "safe_after_ms": safe, "regain_ms": regain,
                "outage_ms": None if regain is None else regain + 100,
                "within_bound": safe is not None and safe <= 110.0,
                "first_cmd_ns": None if regain is None else 1, "aimed_at_write": mid,
                "trace": {"readable": True, "lost": lost, "lost_within_bound": lost <= 15,
                          "mid_chunk": mid}}

    srv = {"target": "server", "regain_ms": 300.0, "outage_ms": 800.0, "reconnect_ms": 30.0,
           "first_cmd_ns": 1}
    recs = [ctl(105.0, 1000.0, 3, False), ctl(109.0, 1200.0, 8, True), srv]
    final = {"readable": True, "lost": 0, "lost_within_bound": True, "complete": True}
    out = summarize(recs, final, 110.0)
    assert out["kills"] == {"controller": 2, "server": 1}
    assert out["safe_after_ms"] == {"max": 109.0, "p50": 107.0, "bound_ms": 110.0,
                                    "all_within_bound": True}
    assert out["regain_ms"]["max"] == 1200.0 and out["regain_ms"]["p50"] == 1000.0
    assert out["regain_ms"]["by_target"]["server"] == {"max": 300.0, "p50": 300.0}
    assert out["traces"] == {"read": 3, "unreadable": 0, "records_lost": {"sum": 11, "max": 8},
                             "all_within_reader_bound": True, "last_complete": True}
    assert out["mid_chunk_kills"] == 1 and out["regained"] == 3 and out["not_regained"] == 0
    late = summarize([ctl(111.0, None, 0, False)], None, 110.0)
    assert not late["safe_after_ms"]["all_within_bound"] and late["not_regained"] == 1
    assert summarize([srv], None, 110.0)["safe_after_ms"]["all_within_bound"] is None
    unread = {"target": "controller", "safe_after_ms": None, "regain_ms": 1.0,
              "first_cmd_ns": 1, "trace": {"readable": False, "error": "x"}}
    assert summarize([unread], None, 110.0)["traces"]["unreadable"] == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--targets", "controller,plant"], "--targets must be"),
        (["--planner", "nope"], "unknown planner"),
        (["--delay-s", "0.2"], "--delay-s must be above"),
        (["--restart-s", "8"], "give-up"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "kills", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@needs_proc
@pytest.mark.parametrize(
    "each", [1, pytest.param(3, marks=pytest.mark.slow)], ids=["one-each", "three-each"]
)
def test_kills_of_each_kind_control_comes_back_and_every_trace_reads(
        each: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kills"
    assert main(["bench", "kills", "--kills", str(2 * each), "--planner", "expert", "--no-rt",
                 "--delay-s", "0.4", "--restart-s", "0.3", "--seed", "1", "--out", str(out),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["kills"] == {"controller": each, "server": each}
    assert res["regained"] == 2 * each and res["not_regained"] == 0
    kills = json.loads((out / "kills.json").read_text())
    assert [k["target"] for k in kills] == ["controller", "server"] * each
    bound = res["safe_after_ms"]["bound_ms"]
    assert bound == 110.0
    for k in kills:
        assert k["first_cmd_ns"] > k["t_kill_ns"] and 0 < k["regain_ms"] < 10_000
        if k["target"] == "controller":
            assert k["safety_kind"] == "watchdog"
            # the trip comes at the plant tick after `watchdog_ms` of silence; the bench checks
            # the strict bound, this test allows one more period for a shared machine without
            # SCHED_FIFO
            assert 100.0 <= k["safe_after_ms"] <= bound + 10.0
            assert k["within_bound"] == (k["safe_after_ms"] <= bound)
            tr = k["trace"]
            assert tr["readable"] and not tr["clean_close"] and tr["lost_within_bound"]
            assert tr["mid_chunk"] == (tr["writing"] is not None)
        else:
            assert k["controller_alive"] and k["reconnect_ms"] is not None
    assert res["traces"]["read"] == each + 1 and res["traces"]["unreadable"] == 0
    assert res["traces"]["last_complete"] and res["traces"]["all_within_reader_bound"]
    assert res["aimed_at_write"] == (each + 1) // 2
    assert len(list((out / "traces").iterdir())) == each + 1
    assert (out / "summary.json").is_file()
