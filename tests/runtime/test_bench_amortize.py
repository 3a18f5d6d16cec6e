"""bench amortize: compute per tick of a planner that computes in bursts (fake clock); the
command on bimodal (lockstep for real, the realtime runs on a fake served plant): its rows,
the big model missing or named wrong, bad input, the table, plot and benchmarks-page section."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from policies import CHECKPOINT_ROOT
from runtime.cli import bench_amortize as am
from runtime.cli import main
from runtime.cli.bench_paradigms import measure_lockstep
from runtime.cli.benchpage import render_page
from runtime.clock import FakeClock
from runtime.protocols import Observation
from runtime.result import RunResult
from runtime.trace import TICK_DTYPE
from tests.runtime.toys import IntegratorPlant

TICKS = 20  # per toy episode


class Bursty:
    """Spends 10 ms of fake time in `refine` on every 4th tick (a chunk boundary), nothing
    otherwise."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.tick = 0
        self._a = np.zeros(1)

    def reset(self, obs: Observation) -> None:
        pass

    def observe(self, obs: Observation) -> None:
        pass

    def refine(self, budget_ns: int) -> int:
        if self.tick % 4 == 0:
            self.clock.advance_ns(10_000_000)
        return 1

    def action(self) -> np.ndarray:
        self.tick += 1
        return self._a


def test_compute_per_tick_of_a_planner_that_computes_every_fourth_tick() -> None:
    clock = FakeClock()
    m = measure_lockstep(IntegratorPlant(rate_hz=10.0, episode_ticks=TICKS), Bursty(clock),
                         episodes=2, seed=0, steps_per_tick=1, clock=clock)
    assert m["ticks"] == 2 * TICKS
    c = am.compute_per_tick(m["decision_ms"])
    assert set(c) == {"p50", "p99", "mean"}
    assert c["p50"] == 0.0
    assert c["mean"] == pytest.approx(2.5)
    assert c["p99"] == pytest.approx(10.0)


def test_step_lists_are_integers_of_at_least_one() -> None:
    assert am.step_list("1, 2,50", "--offline-steps") == [1, 2, 50]
    assert am.step_list("", "--rolling-steps") == []
    for bad in ("1,x", "2.5", "0", "1,-3"):
        with pytest.raises(am.CliError, match="--offline-steps must be"):
            am.step_list(bad, "--offline-steps")


# ------------------------------------------------------------------ the command, on bimodal

REALTIME_COMPUTE_NS = (1_000_000, 3_000_000)  # the fake runs' ticks: 1 and 3 ms, mean 2 ms


@contextlib.contextmanager
def fake_realtime(mp: pytest.MonkeyPatch, runs: list[argparse.Namespace]) -> Iterator[None]:
    """The served plant and the realtime `rtdiff run` faked: each run is recorded in `runs`."""

    @contextlib.contextmanager
    def served(task: str, **_: Any) -> Iterator[str]:
        yield f"tcp://127.0.0.1/{task}"

    def execute(run: argparse.Namespace) -> tuple[RunResult, dict[str, Any]]:
        assert run.mode == "realtime" and run.plant == "tcp://127.0.0.1/bimodal"
        runs.append(run)
        records = np.zeros(2, TICK_DTYPE(2))
        records["start_ns"] = (0, 10_000_000)
        records["emit_ns"] = records["start_ns"] + np.asarray(REALTIME_COMPUTE_NS)
        result = RunResult(records=records, episodes=[], plant_counters={},
                           period_ns=20_000_000, mode="realtime")
        return result, {"miss_rate": 0.25, "misses": 1, "ticks": 4, "plant_misses": 1,
                        "episodes": 1, "success_rate": 1.0,
                        "compute_ms": {"p50": 1.0, "p99": 3.0, "p999": 3.0, "max": 3.0}}

    mp.setattr(am, "plant_server", served)
    mp.setattr("runtime.cli.run.execute", execute)
    yield


def run_main(argv: list[str]) -> tuple[int, str, str]:
    with contextlib.redirect_stdout(out := io.StringIO()), \
            contextlib.redirect_stderr(err := io.StringIO()):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


BIG = str(CHECKPOINT_ROOT / "chunked-bimodal")  # stands in for a big model: K = 8


@pytest.fixture(scope="module")
def bimodal(tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[dict[str, Any], Path, list[argparse.Namespace], str]:
    d = tmp_path_factory.mktemp("amortize")
    runs: list[argparse.Namespace] = []
    argv = ["bench", "amortize", "--task", "bimodal", "--episodes", "1", "--offline-steps",
            "1,2", "--rolling-steps", "1,2", "--big", BIG, "--seconds", "1",
            "--markdown", str(d / "table.md"), "--plot", str(d / "plot.png"),
            "--results", str(d / "results"), "--json"]
    with pytest.MonkeyPatch.context() as mp, fake_realtime(mp, runs):
        code, out, err = run_main(argv)
    assert code == 0, err
    return json.loads(out), d, runs, err


def test_every_row_has_its_mode_steps_success_and_compute_per_tick(
        bimodal: tuple[dict[str, Any], Path, list[argparse.Namespace], str]) -> None:
    out, _, _, _ = bimodal
    rows = out["rows"]
    assert [(r["mode"], r["planner"], r["steps"]) for r in rows] == [
        ("offline", "chunked", 1), ("offline", "chunked", 2), ("offline", "chunked-bimodal", 8),
        ("rolling", "rolling", 1), ("rolling", "rolling", 2),
        ("realtime", "chunked-bimodal", 8), ("realtime", "rolling", 1)]
    for r in rows:
        assert "error" not in r, r
        assert 0.0 <= r["success_rate"] <= 1.0
        c = r["compute_ms_per_tick"]
        assert set(c) == {"p50", "p99", "mean"} and c["p50"] <= c["p99"]
    for r in rows[:5]:
        assert r["episodes"] == 1 and r["policy"] in ("chunked:bimodal", "rolling:bimodal", BIG)
        assert r["compute_ms_per_tick"]["mean"] > 0
    for r in rows[:3]:  # a chunk every exec_ticks ticks: the median tick samples none
        assert r["exec_ticks"] == 4
        assert r["compute_ms_per_tick"]["p50"] < r["compute_ms_per_tick"]["mean"]
    assert out["offline_steps"] == [1, 2] and out["rolling_steps"] == [1, 2]
    assert out["big"] == BIG and out["notes"] == []
    assert "steal_s" in out


def test_realtime_rows_report_misses_and_the_runs_compute_per_tick(
        bimodal: tuple[dict[str, Any], Path, list[argparse.Namespace], str]) -> None:
    out, _, runs, _ = bimodal
    big, rolling = out["rows"][-2:]
    for r in (big, rolling):
        assert r["miss_rate"] == 0.25 and r["rate_hz"] == 50.0 and r["episodes"] == 1
        assert r["compute_ms_per_tick"] == {"p50": 1.0, "p99": 3.0, "mean": pytest.approx(2.0)}
    assert [(r.policy, r.steps_per_tick, r.seconds) for r in runs] == [
        (BIG, None, 1.0), ("rolling:bimodal", 1, 1.0)]


def test_progress_table_plot_and_page_section(
        bimodal: tuple[dict[str, Any], Path, list[argparse.Namespace], str]) -> None:
    out, d, _, err = bimodal
    assert "bench amortize: bimodal offline chunked, 2 steps, 1 episodes ..." in err
    assert "bench amortize: bimodal rolling rolling, 1 step: success " in err
    assert "bench amortize: bimodal realtime rolling: success 100 %" in err
    table = (d / "table.md").read_text()
    assert "| offline | chunked | 2 |" in table and "| realtime | rolling | 1 | 100 |" in table
    assert (d / "plot.png").stat().st_size > 0
    page = render_page(d / "results")
    assert "## Amortization: a few steps a tick against many a decision" in page
    line = next(x for x in page.splitlines() if x.startswith("| bimodal | rolling | rolling | 2 |"))
    r = out["rows"][4]
    assert f"| 1 | 1 | {100 * r['success_rate']:.1f} |" in line
    assert f"| {r['compute_ms_per_tick']['mean']:.3f} | - |" in line
    assert ("| bimodal | realtime | rolling | 1 | 1 | 1 | 100.0 | - | 1.000 | 3.000 | 2.000 "
            "| 25.00 |") in page


def test_a_missing_big_model_is_a_note_or_an_error_row_and_the_sweep_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not (CHECKPOINT_ROOT / "chunked-big-bimodal").exists()
    base = ["bench", "amortize", "--task", "bimodal", "--episodes", "1", "--offline-steps", "",
            "--rolling-steps", "1", "--seconds", "1", "--json"]
    runs: list[argparse.Namespace] = []
    with fake_realtime(monkeypatch, runs):
        code, out, _ = run_main(base)
        assert code == 0
        rows = json.loads(out)["rows"]
        assert [(r["mode"], r["planner"]) for r in rows] == [
            ("rolling", "rolling"), ("realtime", "big"), ("realtime", "rolling")]
        assert "chunked-big-bimodal does not exist" in rows[1]["skipped"]
        assert "error" not in rows[2] and len(runs) == 1  # only the rolling planner ran
        code, out, _ = run_main([*base, "--big", str(tmp_path / "nosuch"),
                                 "--markdown", str(tmp_path / "t.md")])
        assert code == 0
        rows = json.loads(out)["rows"]
        assert [(r["mode"], r["planner"]) for r in rows] == [
            ("offline", "nosuch"), ("rolling", "rolling"), ("realtime", "nosuch"),
            ("realtime", "rolling")]
        why = f"--big {tmp_path / 'nosuch'}: no such checkpoint directory"
        assert rows[0]["error"] == why and rows[2]["error"] == why
        assert "success_rate" in rows[1] and "success_rate" in rows[3]
        assert "- realtime nosuch: did not run (--big" in (tmp_path / "t.md").read_text()


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--offline-steps", "1,x", "--offline-steps must be a comma list of integers"),
    ("--rolling-steps", "0", "--rolling-steps must be >= 1"),
    ("--task", "nosuch", "unknown task 'nosuch'"),
    ("--big-steps", "2,0", "--big-steps must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(flag: str, value: str, says: str) -> None:
    code, out, err = run_main(["bench", "amortize", flag, value, "--json"])
    assert code == 2 and out == ""
    assert says in err and err.count("\n") == 1


def test_each_rolling_planner_named_gets_its_rows() -> None:
    other = str(CHECKPOINT_ROOT / "rolling-bimodal")
    code, out, _ = run_main(["bench", "amortize", "--task", "bimodal", "--episodes", "1",
                             "--offline-steps", "", "--rolling-steps", "1,2", "--no-realtime",
                             "--rolling", f"rolling,{other}", "--json"])
    assert code == 0
    rows = json.loads(out)["rows"]
    assert [(r["planner"], r["steps"]) for r in rows] == [
        ("rolling", 1), ("rolling", 2), ("rolling-bimodal", 1), ("rolling-bimodal", 2)]
    assert rows[0]["success_rate"] == rows[2]["success_rate"]  # the same checkpoint, seeds


def test_big_steps_give_the_big_model_an_offline_and_a_realtime_row_each() -> None:
    runs: list[argparse.Namespace] = []
    argv = ["bench", "amortize", "--task", "bimodal", "--episodes", "1", "--offline-steps", "",
            "--rolling-steps", "1", "--big", BIG, "--big-steps", "2,3", "--seconds", "1",
            "--json"]
    with pytest.MonkeyPatch.context() as mp, fake_realtime(mp, runs):
        code, out, err = run_main(argv)
    assert code == 0, err
    summary = json.loads(out)
    assert [(r["mode"], r["planner"], r["steps"]) for r in summary["rows"]] == [
        ("offline", "chunked-bimodal", 2), ("offline", "chunked-bimodal", 3),
        ("rolling", "rolling", 1), ("realtime", "chunked-bimodal", 2),
        ("realtime", "chunked-bimodal", 3), ("realtime", "rolling", 1)]
    assert summary["big_steps"] == [2, 3]
    # the realtime runs sample the big model with those steps; the rolling one as it is
    assert [(r.policy, r.overrides) for r in runs] == [
        (BIG, {"chunk_steps": 2}), (BIG, {"chunk_steps": 3}), ("rolling:bimodal", {})]
