"""docs/benchmarks.md is generated from benchmarks/results/*.json, and matches them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.cli import CliError, main
from runtime.cli.benchpage import render_page
from runtime.files import record_result

ROOT = Path(__file__).resolve().parents[2]


def _cell(planner: str, on: bool, success: float, steal: float) -> dict:
    return {"planner": planner, "plan_ahead": on, "stall_ms": 80.0, "every_s": 0.25,
            "seeds": 3, "episodes": 6, "success_rate": success,
            "falls": round(6 * (1 - success)), "miss_rate": 0.29,
            "plant": {"fresh": 4000, "plan_fed": 1600 if on else 0,
                      "fallback": 60 if on else 1700, "safe": 0, "dry": 0},
            "action_age_ms": {"p50": 9.4, "p99": 80.0}, "steal_s": steal}


def test_a_page_gives_the_range_over_runs_and_lists_each_runs_steal(tmp_path: Path) -> None:
    for success, steal in ((1.0, 0.5), (5 / 6, 2.25)):
        record_result(tmp_path, "stalls", {
            "task": "double-pendulum", "inject": "stop", "steal_s": steal,
            "cells": [_cell("rolling", True, success, steal),
                      _cell("rolling", False, 0.5, steal)]},
            argv=["bench", "stalls", "--stall-ms", "80"])
    page = render_page(tmp_path)
    assert "## Stalls and plan-ahead" in page
    on = next(line for line in page.splitlines() if line.startswith("| rolling | on |"))
    assert "| 83-100 |" in on  # success over the two runs
    assert "| 1/12 |" in on  # falls summed over both runs' episodes
    assert "8000 / 3200 / 120 / 0 / 0" in on
    assert "| 0.50-2.25 |" in on  # the cells' host steal
    off = next(line for line in page.splitlines() if line.startswith("| rolling | off |"))
    assert "| 50 |" in off and "| 6/12 |" in off
    assert "`rtdiff bench stalls --stall-ms 80`" in page and "host steal 2.25 s" in page


def test_the_demo_section_says_whether_learned_planners_matched_the_expert(tmp_path: Path) -> None:
    def row(success: float) -> dict:
        q = {"p99": 0.1}
        return {"rate_hz": 100.0, "ticks": 2000, "misses": 0, "miss_rate": 0.0,
                "lateness_ms": q, "compute_ms": q, "replans_per_s": 100.0, "episodes": 2,
                "success_rate": success, "steal_s": 0.1}
    record_result(tmp_path, "demo", {"steal_s": 1.0, "rows": {
        "expert": row(1.0), "rolling": row(1.0), "chunked": row(0.5), "mlp": row(1.0)}},
        argv=["demo"])
    page = render_page(tmp_path)
    assert "run 1: every learned planner at 100 Hz **below** the expert's success" in page


def test_check_fails_on_a_stale_page_and_passes_after_regenerating(tmp_path: Path) -> None:
    results, page = tmp_path / "results", tmp_path / "page.md"
    record_result(results, "tick", {"steal_s": 0.0, "variants": {"spin+frozen": {
        "miss_rate": 0.0006, "lateness_ms": {"p99": 0.0013, "max": 0.5},
        "overhead_us": {"p50": 21.25}}}}, argv=["bench"])
    page.write_text("# stale\n")
    args = ["report", "--benchmarks", "--results", str(results), "--out", str(page)]
    assert main([*args, "--check"]) == 1
    assert main(args) == 0
    assert main([*args, "--check"]) == 0
    assert "| spin+frozen | current | 1 | 0.060 | 1.3 | 500 | 21.2 |" in page.read_text()


def test_a_file_that_is_not_a_result_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"bench": "nope"}))
    with pytest.raises(CliError, match="not a benchmark result"):
        render_page(tmp_path)


def test_the_committed_benchmarks_page_matches_the_committed_results() -> None:
    results = ROOT / "benchmarks" / "results"
    assert results.is_dir() and any(results.glob("*.json"))
    assert (ROOT / "docs" / "benchmarks.md").read_text() == render_page(results)
