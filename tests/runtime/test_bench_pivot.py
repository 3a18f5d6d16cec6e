"""rtdiff bench pivot: the JSON of a tiny run (one double-pendulum episode per rule), the
pairing arithmetic on scripted episode records, one-line errors, and its benchmarks page
section."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from runtime.cli import main
from runtime.cli.bench_pivot import bootstrap_mean, markdown_table, pivot_rows
from runtime.cli.benchpage import render_page
from runtime.files import record_result

PIVOTS = "uniform,keep,blank,decay,shift"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    d = tmp_path_factory.mktemp("pivot")
    argv = ["bench", "pivot", "--tasks", "double-pendulum", "--pivots", PIVOTS, "--episodes",
            "1", "--results", str(d / "results"), "--markdown", str(d / "table.md"), "--json"]
    with contextlib.redirect_stdout(out := io.StringIO()), \
            contextlib.redirect_stderr(err := io.StringIO()):
        assert main(argv) == 0
    return json.loads(out.getvalue()), d, err.getvalue()


def test_a_tiny_run_has_every_field_for_every_rule(
        tiny: tuple[dict[str, Any], Path, str]) -> None:
    out, _, _ = tiny
    assert out["seed"] == 6000 and out["episodes"] == 1 and out["pivots"] == PIVOTS.split(",")
    rows = out["rows"]
    assert [(r["task"], r["pivot"]) for r in rows] == [
        ("double-pendulum", p) for p in PIVOTS.split(",")]
    for r in rows:
        assert 0.0 <= r["success_rate"] <= 1.0 and r["episodes"] == 1
        rec, pushes = r["recovery_ticks"], r["pushes"]
        assert set(rec) == {"mean", "ci95"} and {"counted", "censored"} <= set(pushes)
        assert 0 <= pushes["censored"] <= pushes["counted"]
        if rec["mean"] is not None:
            lo, hi = rec["ci95"]
            assert lo <= rec["mean"] <= hi
        assert set(r["vs"]) == set(PIVOTS.split(",")) - {r["pivot"]}
        for d in r["vs"].values():
            assert {"mean_diff", "ci95", "pairs"} <= set(d)
    keep = next(r for r in rows if r["pivot"] == "keep")
    assert keep["surprise_renoise_tick_fraction"] == 0.0


def test_progress_lines_per_cell_and_the_markdown_table(
        tiny: tuple[dict[str, Any], Path, str]) -> None:
    _, d, err = tiny
    for p in PIVOTS.split(","):
        assert f"bench pivot: double-pendulum {p}: success " in err
    table = (d / "table.md").read_text()
    assert "| double-pendulum | decay | 1 |" in table
    assert "| double-pendulum | shift | keep |" in table  # a pair, the later rule first
    assert "| double-pendulum | keep | shift |" not in table


def test_the_benchmarks_page_renders_the_pivot_section(
        tiny: tuple[dict[str, Any], Path, str]) -> None:
    out, d, _ = tiny
    page = render_page(d / "results")
    assert "## Pivot rules after a push" in page
    line = next(x for x in page.splitlines()
                if x.startswith("| double-pendulum | task defaults | decay |"))
    decay = next(r for r in out["rows"] if r["pivot"] == "decay")
    assert f"| 1 | 1 | {100 * decay['success_rate']:.1f} | - |" in line
    assert "Runs:" in page and "host steal" in page


# ------------------------------------------------------------------ pairing, on scripted data


def _record(seed: int, pushes: list[tuple[int, int | None]], success: bool = True) -> dict:
    """An episode record as `score_episode` makes it: pushes as (first tick, ticks or None)."""
    return {
        "seed": seed, "success": success, "return": 1.0, "ticks": 100, "scored_ticks": 99,
        "renoise_ticks": 3, "renoise_goal_ticks": 0, "recovery": "angles", "wall_s": 0.5,
        "pushes": {"recover": [t for _, t in pushes if t is not None], "recover_left": [],
                   "censored": sum(t is None for _, t in pushes), "left_tolerance": 0,
                   "jump_before_settled": 0, "jump_during_recovery": 0,
                   "log": [[k, t] for k, t in pushes]},
    }


def test_rows_pair_the_same_pushes_and_give_this_rule_minus_the_other() -> None:
    records = {
        ("dp", "keep"): [_record(1, [(10, 8), (50, 12)]), _record(2, [(20, 6), (70, None)])],
        ("dp", "decay"): [_record(1, [(10, 5), (50, 10)]),
                          _record(2, [(20, 4), (70, 9)], success=False)],
    }
    rows = pivot_rows(records, seed=0)
    keep, decay = rows
    assert (keep["pivot"], decay["pivot"]) == ("keep", "decay")
    assert keep["pushes"] == {"counted": 4, "censored": 1, "recovered": 3, "left_tolerance": 0,
                              "excluded_jump": 0}
    assert keep["recovery_ticks"]["mean"] == pytest.approx((8 + 12 + 6) / 3, abs=0.01)
    assert decay["recovery_ticks"]["mean"] == 7.0 and decay["success_rate"] == 0.5
    # pairs: the three pushes both recovered from (the censored one is left out)
    d = decay["vs"]["keep"]
    assert d["pairs"] == 3 and d["mean_diff"] == pytest.approx((-3 - 2 - 2) / 3, abs=0.01)
    assert d["faster"] == 3 and d["ci95"][1] < 0
    back = keep["vs"]["decay"]
    assert back["mean_diff"] == pytest.approx(-d["mean_diff"])
    assert back["ci95"] == pytest.approx([-d["ci95"][1], -d["ci95"][0]], abs=0.011)
    table = markdown_table({"pivots": ["keep", "decay"], "rows": rows})
    assert "| dp | decay | keep | 3 | -2.33 |" in table


def test_tasks_are_paired_only_with_themselves_and_the_bootstrap_is_seeded() -> None:
    records = {("a", "uniform"): [_record(1, [(5, 3)])], ("b", "uniform"): [_record(1, [(5, 9)])],
               ("a", "shift"): [_record(1, [(5, 1)])]}
    rows = {(r["task"], r["pivot"]): r for r in pivot_rows(records, seed=0)}
    assert rows[("b", "uniform")]["vs"] == {}
    assert rows[("a", "shift")]["vs"]["uniform"]["mean_diff"] == -2.0
    values = [3.0, 5.0, 9.0, 4.0]
    assert bootstrap_mean(values, seed=7) == bootstrap_mean(values, seed=7)
    assert bootstrap_mean([], seed=0) == {"mean": None, "ci95": None}


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--pivots", "uniform,first"], "unknown rule 'first' (known: uniform, keep, blank, "
                                        "decay, shift)"),
        (["--pivots", ","], "no rule given"),
        (["--set", "pivot=decay"], "chosen with --pivots"),
        (["--tasks", "nosuch"], "unknown task 'nosuch'"),
    ],
)
def test_bad_input_is_a_one_line_error(extra: list[str], needle: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "pivot", "--episodes", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


def test_the_page_gives_ranges_over_runs_of_one_setting_and_keeps_settings_apart(
        tmp_path: Path) -> None:
    rows = pivot_rows({("dp", "keep"): [_record(1, [(10, 8)])],
                       ("dp", "blank"): [_record(1, [(10, 7)])],
                       ("dp", "decay"): [_record(1, [(10, 5)])]}, seed=0)
    for force in (None, None, [5.0, 15.0]):
        record_result(tmp_path, "pivot", {"pivots": ["keep", "blank", "decay"], "rows": rows,
                                          "push_force_n": force, "set": [], "steal_s": 0.0},
                      argv=["bench", "pivot", "--episodes", "1"])
    page = render_page(tmp_path).splitlines()
    line = next(x for x in page if x.startswith("| dp | task defaults | decay | keep |"))
    assert "| 2 | 2 | -3 |" in line  # two runs, their pairs summed, the mean diff of both
    line = next(x for x in page if x.startswith("| dp | push 5-15 N | decay | keep |"))
    assert "| 1 | 1 | -3 |" in line
    assert ("- run 1, dp, decay: **pays** faster than keep (-3 ticks, 95 % [-3, -3]); "
            "faster than blank (-2 ticks, 95 % [-2, -2])") in page
    assert not any(x.startswith("- run 1, dp, blank") for x in page)  # a baseline: no verdict
