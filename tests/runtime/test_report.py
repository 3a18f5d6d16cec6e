"""`rtdiff report` on a small synthetic run directory: files made, table rows correct."""

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.cli import CliError, main
from runtime.cli.report import load_runs, make_report
from runtime.clock import FakeClock
from runtime.loop import ControlLoop, LoopConfig
from runtime.sidecar import Sidecar
from runtime.trace import TraceRing

from .toys import CostPlanner, IntegratorPlant


class LeveledPlanner(CostPlanner):
    def noise_levels(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, 6, dtype=np.float32) * (0.5 + 0.5 * (self.observed % 7 == 0))


class PredictingPlanner(LeveledPlanner):
    """Predicts the integrator's next three states under its own clipped P-law, as a rolling
    planner's plan would (exactly: the plant is the model)."""

    predicted_ticks = 3
    dt = 0.01

    def predicted_states_into(self, out: np.ndarray) -> int:
        x = self.x
        for i in range(self.predicted_ticks):
            x += float(np.clip(-self.gain * x, -1.0, 1.0)) * self.dt
            out[i, 0] = x
        return self.predicted_ticks


def _record_run(run_dir: Path, name: str, policy: str, rate_hz: float, step_ns: int) -> dict:
    clock = FakeClock()
    plant = IntegratorPlant(rate_hz=rate_hz, episode_ticks=40, clock=clock)
    predicts = policy.startswith("rolling")
    planner = (PredictingPlanner if predicts else LeveledPlanner)(clock, step_ns=step_ns)
    planner.dt = 1.0 / rate_hz
    trace_dir = run_dir / "traces" / name
    loop = ControlLoop(
        plant, planner, clock, LoopConfig(mode="realtime", rate_hz=rate_hz, warmup_steps=2),
        trace=TraceRing(1, chunk_ticks=16, path=trace_dir),
        sidecar=Sidecar(200, 1, 6, predicted_ticks=3 if predicts else 0),
    )
    out = loop.run(episodes=2).to_json()
    out.update(policy=policy, task="integrator", seed=0, trace=f"traces/{name}")
    (run_dir / "runs").mkdir(parents=True, exist_ok=True)
    (run_dir / "runs" / f"{name}.json").write_text(json.dumps(out))
    return out


def test_report_makes_every_figure_and_a_correct_table(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    made = {}
    for policy in ("rolling:integrator", "expert"):
        for rate in (100.0, 200.0):
            name = f"{policy.split(':')[0]}-{rate:g}"
            made[name] = _record_run(run_dir, name, policy, rate, step_ns=300_000)
    failed = {"error": "this model was trained at 100 Hz and cannot run at 50 Hz",
              "name": "rolling-50", "planner": "rolling", "rate_hz": 50.0}
    (run_dir / "runs" / "rolling-50.json").write_text(json.dumps(failed))
    files = make_report(run_dir, tmp_path / "out")
    names = {p.name for p in files}
    assert names == {"latency_hist.png", "rate_sweep.png", "plan_heatmap.png",
                     "plan_lookahead_error.png", "trajectories.png", "report.md"}
    for p in files:
        assert p.stat().st_size > 1000
    md = (tmp_path / "out" / "report.md").read_text()
    # the lookahead error beside the heat map, with its numbers: one row per rolling run and j
    assert md.index("![plan_heatmap]") < md.index("![plan_lookahead_error]") < md.index(
        "![trajectories]")
    ahead = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
             if line.startswith("| rolling-")]
    assert sorted((c[0], int(c[1])) for c in ahead) == [
        (f"rolling-{rate}", j) for rate in (100, 200) for j in (1, 2, 3)]
    for c in ahead:
        rate, j = float(c[0].split("-")[1]), int(c[1])
        assert float(c[2]) == pytest.approx(1e3 * j / rate, abs=0.05)  # lookahead ms
        assert int(c[5]) == 2 * (40 - j)  # two episodes of 40 ticks: none across the reset
        assert float(c[3]) < 1e-3 and float(c[4]) < 1e-3  # the plant is the planner's model
    rows = [line for line in md.splitlines() if line.startswith("| integrator")]
    assert len(rows) == 4
    assert "1 runs did not run:" in md and "`rolling-50`: this model was trained at 100" in md
    runs = {r["name"]: r for r in load_runs(run_dir)}
    for name, out in made.items():
        row = next(r for r in rows if f"| {out['rate_hz']:g} |" in r
                   and f"| {runs[name]['policy'].split(':')[0]} |" in r)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[4]) == out["ticks"] and int(cells[5]) == out["misses"]
        assert float(cells[14]) == pytest.approx(out["replans_per_s"], abs=0.05)
        assert float(cells[17]) == pytest.approx(100 * out["success_rate"], abs=0.05)


def test_report_on_a_directory_without_runs_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="holds no run JSON"):
        make_report(tmp_path, tmp_path / "out")
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


def test_report_pools_runs_of_tasks_with_different_action_sizes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "runs").mkdir(parents=True)
    for name, da in (("a", 1), ("b", 2)):
        ring = TraceRing(da, chunk_ticks=8, path=run_dir / "traces" / name)
        for k in range(20):
            i = ring.next_slot()
            ring.cols.tick[i], ring.cols.start_ns[i] = k, k * 1_000_000
            ring.cols.scheduled_ns[i], ring.cols.emit_ns[i] = k * 1_000_000, k * 1_000_000 + 500
            ring.commit()
        ring.close()
        stats = {"ticks": 20, "misses": 0, "miss_rate": 0.0, "episodes": 0,
                 "lateness_ms": {"p50": 0.0, "p99": 0.0, "max": 0.0},
                 "compute_ms": {"p50": 0.0005, "p99": 0.0005},
                 "steps_per_tick": {"mean": 0.0}}
        (run_dir / "runs" / f"{name}.json").write_text(json.dumps(
            {**stats, "task": f"task-{name}", "planner": "rolling", "policy": "rolling:x",
             "rate_hz": 1000, "trace": f"traces/{name}"}))
    files = {p.name for p in make_report(run_dir, tmp_path / "out")}
    assert "latency_hist.png" in files and "report.md" in files


def test_one_planner_at_two_rates_is_two_timing_series() -> None:
    from runtime.cli.report import timing_labels

    runs = [{"policy": "rolling:x", "rate_hz": 100.0}, {"policy": "rolling:x", "rate_hz": 250.0},
            {"policy": "mlp:x", "rate_hz": 100.0}, {"policy": "rolling:x", "rate_hz": 100.0}]
    assert timing_labels(runs) == ["rolling @ 100 Hz", "rolling @ 250 Hz", "mlp",
                                   "rolling @ 100 Hz"]


def test_runs_beside_a_cpu_hog_are_their_own_series() -> None:
    from runtime.cli.report import _label

    assert _label({"planner": "rolling", "hog": False}) == "rolling"
    assert _label({"planner": "rolling", "hog": True}) == "rolling + hog"
    assert _label({"policy": "chunked:double-pendulum"}) == "chunked"


def test_a_trace_path_relative_to_where_the_run_was_started_is_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.cli.report import load_runs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rec" / "runs").mkdir(parents=True)
    (tmp_path / "rec" / "inside").mkdir()
    (tmp_path / "elsewhere").mkdir()
    stats = {"ticks": 1, "lateness_ms": {"p50": 0.0}}
    (tmp_path / "rec" / "runs" / "a.json").write_text(json.dumps({**stats, "trace": "inside"}))
    (tmp_path / "rec" / "runs" / "b.json").write_text(json.dumps({**stats,
                                                                  "trace": "elsewhere"}))
    a, b = load_runs(Path("rec"))
    assert a["trace"] == str(Path("rec") / "inside")  # the run directory's own layout
    assert b["trace"] == "elsewhere"  # `rtdiff run --trace elsewhere` from here
