"""bench deadline's bookkeeping: per-cell means, errors kept, the rolling planner's safe rate."""

import pytest

from runtime.cli import main
from runtime.cli.bench_deadline import summarize


def cell(planner: str, rate: float, miss_rate: float, seed: int = 0, hog: bool = False) -> dict:
    return {
        "task": "double-pendulum", "planner": planner, "rate_hz": rate, "seed": seed, "hog": hog,
        "miss_rate": miss_rate, "misses": int(miss_rate * 1000), "ticks": 1000,
        "plant_misses": int(miss_rate * 1000), "lateness_ms": {"p99": 0.1},
        "compute_ms": {"p99": 1.0}, "steps_per_tick": {"mean": 2.0}, "success_rate": 1.0,
        "episodes": 1, "mean_return": 10.0, "replans_per_s": rate / (4 if "chunked" in planner
                                                                      else 1),
    }


def test_summary_averages_seeds_and_finds_the_highest_safe_rate() -> None:
    cells = [
        cell("rolling", 100, 0.0, 0), cell("rolling", 100, 0.0, 1),
        cell("rolling", 250, 0.0005, 0), cell("rolling", 250, 0.0015, 1),  # mean 0.001: safe
        cell("rolling", 500, 0.02, 0), cell("rolling", 500, 0.0, 1),
        cell("rolling", 100, 0.0, 0, hog=True), cell("rolling", 250, 0.05, 0, hog=True),
        {"task": "double-pendulum", "planner": "mlp", "rate_hz": 100, "seed": 0, "hog": False,
         "error": "no shipped checkpoint for 'mlp:double-pendulum'"},
    ]
    s = summarize(cells)
    rows = {(r["planner"], r["rate_hz"], r["hog"]): r for r in s["cells"]}
    assert rows[("rolling", 250, False)]["miss_rate"] == pytest.approx(0.001)
    assert rows[("rolling", 250, False)]["seeds"] == 2
    assert rows[("mlp", 100, False)]["error"].startswith("no shipped checkpoint")
    assert rows[("rolling", 500, False)]["replans_per_s"] == pytest.approx(500.0)
    best = s["rolling_max_rate_hz_misses_le_0.1pct"]["double-pendulum"]
    assert best == {"quiet": 250, "with_hog": 100}


def test_decisions_at_equal_success_take_the_best_chunked_cell_and_the_busiest_rolling() -> None:
    def with_success(c: dict, success: float) -> dict:
        return {**c, "success_rate": success}

    cells = [
        with_success(cell("chunked", 100, 0.0), 1.0),  # 25 re-plans/s, the reference
        with_success(cell("chunked", 250, 0.15), 0.5),  # busier but worse: not the reference
        {**cell("chunked", 500, 0.01), "replans_per_s": 0.0},  # only fallbacks went out
        with_success(cell("rolling", 100, 0.0), 1.0),
        with_success(cell("rolling", 250, 0.0), 1.0),
        with_success(cell("rolling", 500, 0.002), 0.5),  # busiest, but less successful
        with_success(cell("rolling", 1000, 0.0, hog=True), 1.0),  # hog cells do not count
    ]
    d = summarize(cells)["decisions_at_equal_success"]["double-pendulum"]
    assert d["chunked"]["rate_hz"] == 100 and d["chunked"]["replans_per_s"] == 25.0
    assert d["rolling"]["rate_hz"] == 250 and d["ratio"] == pytest.approx(250 / 25)
    only_rolling = summarize([cell("rolling", 100, 0.0)])["decisions_at_equal_success"]
    assert only_rolling == {"double-pendulum": None}


def test_unknown_planner_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "deadline", "--planners", "rolling,oracle", "--out", "x"]) == 2
    assert "unknown planner(s) ['oracle']" in capsys.readouterr().err


def test_an_out_that_holds_this_sweeps_traces_is_refused_before_any_run(
        tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    held = tmp_path / "traces" / "double-pendulum_rolling-first_1000hz_s1"
    held.mkdir(parents=True)
    (held / "chunk-000000.npz").write_bytes(b"")
    argv = ["bench", "deadline", "--tasks", "double-pendulum", "--rates", "100,1000",
            "--planners", "rolling,rolling-first", "--seeds", "2", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds traces" in err and "double-pendulum_rolling-first_1000hz_s1" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "runs").exists()  # nothing ran
