"""bench paradigms: hit rate, churn, malformed actions and decision times from scripted planners
on a toy plant; the command's JSON, table, plot and benchmarks-page section on a real task."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.cli import CliError, main
from runtime.cli import bench_paradigms as bp
from runtime.cli.benchpage import render_page
from runtime.clock import FakeClock
from runtime.protocols import Observation, PlantSpec
from tests.runtime.toys import IntegratorPlant

TICKS = 20  # per toy episode; ticks 1..19 of each have a plan from the tick before


def wave(k: int) -> float:
    return 0.8 * float(np.sin(0.7 * k))


class Scripted:
    """Emits `emit(k)` on tick k of an episode (0 at the reset) and, with `plan`, plans
    `plan(k, j)` for tick k + 1 + j (five rows). `cost_ns` (observe, refine) of fake time."""

    def __init__(self, emit: Callable[[int], float], plan: Callable[[int, int], float] | None,
                 *, clock: FakeClock | None = None, cost_ns: tuple[int, int] = (0, 0)) -> None:
        self.emit, self.plan = emit, plan
        self.clock, self.cost_ns = clock, cost_ns
        self.k = 0
        self._a = np.zeros(1)

    def _spend(self, ns: int) -> None:
        if self.clock is not None:
            self.clock.advance_ns(ns)

    def reset(self, obs: Observation) -> None:
        self.k = 0

    def observe(self, obs: Observation) -> None:
        self.k += 1
        self._spend(self.cost_ns[0])

    def refine(self, budget_ns: int) -> int:
        self._spend(self.cost_ns[1])
        return 1

    def action(self) -> np.ndarray:
        self._a[0] = self.emit(self.k)
        return self._a


class PlanningScripted(Scripted):
    def plan_into(self, out: np.ndarray) -> int:
        assert self.plan is not None
        n = min(5, len(out))
        for j in range(n):
            out[j, 0] = self.plan(self.k, j)
        return n


class CountsItsOwn(Scripted):
    def __init__(self, emit: Callable[[int], float]) -> None:
        super().__init__(emit, None)
        self.decisions = 0

    def action(self) -> np.ndarray:
        self.decisions += 1
        return super().action()

    def malformed(self) -> dict[str, int]:
        return {"decisions": self.decisions, "unmasked_at_emit": 3}


def measure(planner: Any, *, episodes: int = 2, plant: Any = None,
            clock: FakeClock | None = None) -> dict[str, Any]:
    plant = plant or IntegratorPlant(rate_hz=10.0, episode_ticks=TICKS)
    return bp.measure_lockstep(plant, planner, episodes=episodes, seed=0, steps_per_tick=1,
                               clock=clock)


def test_a_plan_that_comes_true_hits_every_tick_and_never_churns() -> None:
    out = measure(PlanningScripted(wave, lambda k, j: wave(k + 1 + j)))
    assert out["hit_rate"] == 1.0
    assert out["churn"] == 0.0


def test_a_plan_that_is_always_wrong_hits_nothing_and_always_churns() -> None:
    out = measure(PlanningScripted(lambda k: 0.0, lambda k, j: 0.9 * (-1) ** k))
    assert out["hit_rate"] == 0.0
    assert out["churn"] == 1.0


def test_hit_rate_counts_ticks_against_the_previous_ticks_plan() -> None:
    # the action leaves the plan by 0.5 (over the 0.1 tolerance) on every third tick
    out = measure(PlanningScripted(lambda k: wave(k) + (0.5 if k % 3 == 0 else 0.0),
                                   lambda k, j: wave(k + 1 + j)))
    compared = list(range(1, TICKS))  # tick 0 of an episode has no plan before it
    hits = [k for k in compared if k % 3 != 0]
    assert out["hit_rate"] == pytest.approx(len(hits) / len(compared))
    # plan rows off the wave by 0.05 (row 0) or 0.2 on odd ticks (rows 1-4): tick k's rows
    # 0-3 meet tick k - 1's rows 1-4 (same ticks); rows 1-3 then always differ by 0.2 and
    # row 0 by 0.15 when k - 1 is odd, else by 0.05 (inside the tolerance)
    out = measure(PlanningScripted(
        wave, lambda k, j: wave(k + 1 + j) + (0.05 if j == 0 else 0.2 * (k % 2))))
    changed = sum(3 + (k % 2 == 0) for k in compared)
    assert out["churn"] == pytest.approx(changed / (4 * len(compared)))


class RunsOut(PlanningScripted):
    """A true plan that runs out on every fourth tick (a chunk's last), as chunks do."""

    def plan_into(self, out: np.ndarray) -> int:
        return 0 if self.k % 4 == 3 else super().plan_into(out)


def test_a_plan_that_ran_out_misses_the_tick_it_did_not_cover() -> None:
    out = measure(RunsOut(wave, lambda k, j: wave(k + 1 + j)))
    compared = range(1, TICKS)
    assert out["hit_rate"] == pytest.approx(
        sum((k - 1) % 4 != 3 for k in compared) / len(compared))
    assert out["churn"] == 0.0


class NeverPlans(Scripted):
    def plan_into(self, out: np.ndarray) -> int:
        return 0


def test_planners_without_a_plan_have_no_hit_rate_or_churn() -> None:
    for planner in (Scripted(wave, None), NeverPlans(wave, None)):
        out = measure(planner)
        assert out["hit_rate"] is None and out["churn"] is None


def test_malformed_counts_nonfinite_and_out_of_limit_actions_and_the_planners_own() -> None:
    def emit(k: int) -> float:
        return np.nan if k % 5 == 0 else 2.0 if k % 5 == 1 else 0.0

    out = measure(CountsItsOwn(emit))  # two episodes: ticks 0, 5, 10, 15 NaN, 1, 6, ... 2.0
    assert out["malformed"] == {"nonfinite": 8, "out_of_limit": 8, "unmasked_at_emit": 3}
    assert out["ticks"] == 2 * TICKS
    assert out["malformed_per_1000"] == pytest.approx(1000 * (8 + 8 + 3) / (2 * TICKS))
    assert measure(Scripted(wave, None))["malformed_per_1000"] == 0.0


def test_decision_time_is_observe_refine_and_action_and_end_to_end_the_sum() -> None:
    clock = FakeClock()
    out = measure(Scripted(wave, None, clock=clock, cost_ns=(500_000, 2_000_000)), clock=clock)
    # an episode's first tick has no observe (its reset is not a decision)
    assert out["decision_ms"]["p50"] == pytest.approx(2.5)
    assert out["decision_ms"]["max"] == pytest.approx(2.5)
    assert out["end_to_end_s"] == pytest.approx(2 * (2.0 + (TICKS - 1) * 2.5) / 1e3)


class GoalIntegrator(IntegratorPlant):
    """The integrator with a (constant) goal: a goal task."""

    def spec(self) -> PlantSpec:
        return dataclasses.replace(super().spec(), goal_dim=1)


def test_ticks_to_success_on_a_goal_task_and_null_without_a_goal() -> None:
    def push(plant: IntegratorPlant) -> dict[str, Any]:
        return measure(Scripted(lambda k: -1.0, None), plant=plant)

    # 10 ticks of -1 at 10 Hz from x = 1 end at x = 0: success after 10 ticks
    goal = push(GoalIntegrator(rate_hz=10.0, episode_ticks=10))
    assert goal["success_rate"] == 1.0 and goal["ticks_to_success"] == 10
    plain = push(IntegratorPlant(rate_hz=10.0, episode_ticks=10))
    assert plain["success_rate"] == 1.0 and plain["ticks_to_success"] is None
    never = push(GoalIntegrator(rate_hz=10.0, episode_ticks=20))  # ends at x = -1
    assert never["success_rate"] == 0.0 and never["ticks_to_success"] is None


def test_planner_names_resolve_per_task() -> None:
    assert bp.policy_for("rolling", "bimodal") == ("rolling:bimodal", {}, {})
    assert bp.policy_for("dllm", "bimodal") == ("dllm:bimodal", {}, {})
    assert bp.policy_for("chunked-k10", "bimodal") == ("chunked:bimodal",
                                                       {"chunk_steps": 10}, {})
    assert bp.policy_for("expert", "bimodal")[0] == "expert"
    assert bp.policy_for("mlp:double-pendulum", "bimodal")[0] == "mlp:double-pendulum"
    assert bp.mask_setting("rolling:bimodal") is True
    assert bp.mask_setting("mlp:bimodal") is None
    assert bp.mask_setting("expert") is None


# ------------------------------------------------------------------ the command, on bimodal


@pytest.fixture(scope="module")
def bimodal(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    d = tmp_path_factory.mktemp("paradigms")
    argv = ["bench", "paradigms", "--tasks", "bimodal", "--planners", "expert,mlp,rolling,nosuch",
            "--episodes", "1", "--out", str(d / "out"), "--markdown", str(d / "table.md"),
            "--plot", str(d / "plot.png"), "--results", str(d / "results"), "--json"]
    with contextlib.redirect_stdout(buf := io.StringIO()):
        assert main(argv) == 0
    return json.loads(buf.getvalue()), d


FIELDS = ("task", "planner", "success_rate", "mean_return", "decision_ms", "end_to_end_s",
          "ticks_to_success", "hit_rate", "churn", "malformed_per_1000", "aligned_mask")


def test_the_json_has_every_field_for_every_planner_that_ran(
        bimodal: tuple[dict[str, Any], Path]) -> None:
    out, _ = bimodal
    rows = {r["planner"]: r for r in out["rows"]}
    assert list(rows) == ["expert", "mlp", "rolling", "nosuch"]
    for name in ("expert", "mlp", "rolling"):
        r = rows[name]
        assert all(f in r for f in FIELDS), name
        assert r["episodes"] == 1 and 0.0 <= r["success_rate"] <= 1.0
        assert 0 < r["decision_ms"]["p50"] <= r["decision_ms"]["p99"]
        assert r["ticks_to_success"] is None  # bimodal has no goal
    assert rows["rolling"]["aligned_mask"] is True and rows["mlp"]["aligned_mask"] is None
    assert 0.0 <= rows["rolling"]["hit_rate"] <= 1.0 and rows["rolling"]["churn"] is not None
    assert rows["mlp"]["hit_rate"] is None and rows["expert"]["churn"] is None


def test_a_bad_planner_name_is_a_row_with_its_error(
        bimodal: tuple[dict[str, Any], Path]) -> None:
    out, d = bimodal
    bad = out["rows"][-1]
    assert bad["planner"] == "nosuch" and "unknown policy kind 'nosuch'" in bad["error"]
    assert "\n" not in bad["error"]
    table = (d / "table.md").read_text()
    assert "| bimodal | rolling | aligned |" in table and "- bimodal nosuch: unknown" in table
    assert (d / "plot.png").stat().st_size > 0
    assert json.loads((d / "out" / "summary.json").read_text())["rows"] == out["rows"]


def test_the_benchmarks_page_renders_the_recorded_run(
        bimodal: tuple[dict[str, Any], Path]) -> None:
    out, d = bimodal
    page = render_page(d / "results")
    assert "## Planner paradigms on the same tasks and clock" in page
    line = next(x for x in page.splitlines() if x.startswith("| bimodal | rolling |"))
    hit = out["rows"][2]["hit_rate"]
    assert f"| aligned | 1 | 1 | {100 * out['rows'][2]['success_rate']:.1f} |" in line
    assert f"| {100 * hit:.1f} |" in line
    assert "- bimodal nosuch: did not run (unknown policy kind" in page


# ------------------------------------------------------------------ realtime bookkeeping


def test_realtime_finds_the_highest_rate_that_kept_misses_at_or_below_0_1_percent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    misses = {50.0: 0.0, 100.0: 0.001, 200.0: 0.02}

    @contextlib.contextmanager
    def served(task: str, *, rate_hz: float, **_: Any) -> Iterator[str]:
        if rate_hz == 400.0:
            raise CliError("the plant refuses 400 Hz")
        yield f"tcp://127.0.0.1:{int(rate_hz)}"

    def execute(run: argparse.Namespace) -> tuple[None, dict[str, Any]]:
        assert run.plant == f"tcp://127.0.0.1:{int(run.rate)}" and run.mode == "realtime"
        return None, {"miss_rate": misses[run.rate], "misses": 1, "ticks": 1000,
                      "plant_misses": 0, "episodes": 2, "success_rate": 0.5}

    monkeypatch.setattr(bp, "plant_server", served)
    monkeypatch.setattr("runtime.cli.run.execute", execute)
    row: dict[str, Any] = {"task": "bimodal", "planner": "rolling", "policy": "rolling:bimodal",
                           "rate_hz": 50.0}
    failed = {"task": "bimodal", "planner": "nosuch", "error": "unknown"}
    args = argparse.Namespace(seed=0, seconds=1.0, device="cpu", rt_priority=None)
    bp.realtime_cells("bimodal", [("rolling", row), ("nosuch", failed)], [100.0, 200.0, 400.0],
                      args, [])
    rt = row["realtime"]
    assert rt["task_rate_hz"] == 50.0 and rt["max_rate_hz"] == 100.0
    assert [c["rate_hz"] for c in rt["by_rate"]] == [50.0, 100.0, 200.0, 400.0]
    assert rt["by_rate"][-1]["error"] == "the plant refuses 400 Hz"
    assert "realtime" not in failed


# ------------------------------------------------------------------ the whole plan asked for


class Decoder(Scripted):
    """One action after 2 steps, the whole plan after 9 (an autoregressive decoder's shape)."""

    steps_per_decision = 2
    steps_per_plan = 9


def test_whole_plan_gives_a_decoder_its_plan_steps_and_a_diffusion_planner_its_own() -> None:
    dec, plain = Decoder(wave, None), Scripted(wave, None)
    assert bp.lockstep_steps(dec, 1, whole_plan=False) == 2
    assert bp.lockstep_steps(dec, 1, whole_plan=True) == 9
    assert bp.lockstep_steps(dec, 12, whole_plan=True) == 12
    assert bp.lockstep_steps(plain, 1, whole_plan=True) == 1
    assert bp.lockstep_steps(plain, 3, whole_plan=True) == 3


def test_the_ar_planner_declares_the_steps_its_whole_plan_takes() -> None:
    from policies import load_planner
    from sims import make_plant

    plant = make_plant("bimodal", mode="lockstep", seed=0)
    try:
        ar = load_planner("ar:bimodal", spec=plant.spec())
        assert isinstance(ar, bp.DecodesPlan) and not isinstance(
            load_planner("dllm:bimodal", spec=plant.spec()), bp.DecodesPlan)
        assert ar.steps_per_plan == ar.P - ar.Ds  # every plan position after token 0's state
        m = bp.measure_lockstep(plant, ar, episodes=1, seed=0, ticks=6,
                                steps_per_tick=bp.lockstep_steps(ar, 1, whole_plan=True))
        assert m["ticks"] == 6 and ar.decoded == ar.P  # the whole plan, every tick
        assert m["hit_rate"] is not None  # a decoded plan has rows to hit
    finally:
        plant.close()


def test_scaling_times_dllm_against_whole_plan_ar_at_each_horizon(tmp_path: Path) -> None:
    argv = ["bench", "paradigms", "--tasks", "bimodal", "--planners", "expert", "--episodes",
            "1", "--scaling-horizons", "4,6", "--scaling-ticks", "5", "--out", str(tmp_path),
            "--json"]
    with contextlib.redirect_stdout(buf := io.StringIO()):
        assert main(argv) == 0
    rows = json.loads(buf.getvalue())["scaling"]
    assert [r["horizon"] for r in rows] == [4, 6]
    ds, da = 2, 2  # bimodal: 2 state dims, 2 action dims
    for r in rows:
        assert r["plan_sub_tokens"] == r["horizon"] * (ds + da)
        assert r["dllm"]["steps_per_tick"] == 1
        assert r["ar"]["steps_per_tick"] == r["plan_sub_tokens"] - ds  # all but token 0's state
        assert r["ar_over_dllm"] == pytest.approx(
            r["ar"]["decision_ms"]["p50"] / r["dllm"]["decision_ms"]["p50"])
    with contextlib.redirect_stderr(err := io.StringIO()):
        assert main([*argv[:8], "--scaling-horizons", "x", "--out", str(tmp_path)]) == 2
    assert "--scaling-horizons must be a comma list of integers" in err.getvalue()
