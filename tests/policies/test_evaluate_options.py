"""The push-recovery evaluator's `--set` planner overrides and the bimodal `course` recovery
rule, on hand-made values (the CLI test stops before any episode runs)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import policies.evaluate as ev
import policies.recovery as rec
from policies.config import PlannerConfig
from policies.evaluate import PushTracker, planner_settings, variant_config
from policies.recovery import (
    BimodalCourse,
    bimodal_course_side,
    bimodal_on_course,
    recovery_predicate,
)

NO_GOAL = np.zeros(0)


def test_set_replaces_planner_fields_with_the_fields_types() -> None:
    base = PlannerConfig(surprise_threshold=0.1, surprise_full=1.0)
    cfg = planner_settings(["surprise_full=0.4", "planner.renoise_max=1", "clean_ticks=3"], base)
    assert cfg.surprise_full == 0.4 and cfg.renoise_max == 1.0 and cfg.clean_ticks == 3
    assert isinstance(cfg.renoise_max, float) and isinstance(cfg.clean_ticks, int)
    assert cfg.surprise_threshold == 0.1 and cfg.goal_renoise == base.goal_renoise
    assert planner_settings([], base) == base
    # the variants are made from the overridden map: blank keeps its threshold only
    blank = variant_config(planner_settings(["surprise_threshold=0.2"], base), "blank")
    assert blank.surprise_threshold == 0.2 and blank.renoise_max == 1.0


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("foo=1", "unknown planner setting"),
        ("surprise_full", "expected KEY=VALUE"),
        ("surprise_full=", "expected KEY=VALUE"),
        ("surprise_full=abc", "takes float"),
        ("clean_ticks=1.5", "takes int"),
        ("renoise_max=nan", "finite"),
        ("renoise_max=1.5", "renoise_max"),
        ("surprise_full=0.05", "surprise_threshold < surprise_full"),
    ],
)
def test_set_refuses_bad_items_in_one_line(item: str, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        planner_settings([item], PlannerConfig(surprise_threshold=0.1, surprise_full=1.0))
    assert needle in str(err.value) and "\n" not in str(err.value)


class _Stop(Exception):
    pass


def test_set_reaches_the_planner_the_cli_makes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[PlannerConfig] = []

    def fake_planner(model: Any, norm: Any, spec: Any, cfg: PlannerConfig, **kw: Any) -> None:
        seen.append(cfg)
        raise _Stop

    monkeypatch.setattr(ev, "RollingPlanner", fake_planner)
    with pytest.raises(_Stop):
        ev.main(["--variants", "renoise", "--set", "surprise_full=0.5", "--set", "renoise_max=1.0"])
    assert seen[0].surprise_full == 0.5 and seen[0].renoise_max == 1.0


def test_unknown_set_field_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert ev.main(["--set", "no_such_field=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_field" in err and "unknown" in err


def test_bimodal_geometry_matches_the_task() -> None:
    from sims.tasks import bimodal

    assert rec.BIMODAL_BLOCK_Y_M == pytest.approx(
        (bimodal.BLOCK_Y_M - bimodal.BLOCK_HALF_M[1], bimodal.BLOCK_Y_M + bimodal.BLOCK_HALF_M[1])
    )
    assert rec.BIMODAL_CLEAR_X_M == pytest.approx(bimodal.BLOCK_HALF_M[0] + bimodal.AGENT_RADIUS_M)
    assert rec.BIMODAL_DT_S == pytest.approx(1.0 / bimodal.INFO.rate_hz)
    assert recovery_predicate("bimodal", angle_idx=(0,), tol_rad=0.1, tol_m=0.02)[0] == "course"


def test_course_side_is_where_the_straight_course_meets_the_block() -> None:
    # from x = +0.1 heading left-forward: meets y = 0.85 at x = 0.1 - 0.85 = -0.75 -> left
    assert bimodal_course_side(np.array([0.1, 0.0]), np.array([-0.8, 0.8])) == -1
    assert bimodal_course_side(np.array([-0.1, 0.0]), np.array([0.8, 0.8])) == 1
    # not moving forward: the side it is on; beside the block: the side it is on
    assert bimodal_course_side(np.array([-0.1, 0.5]), np.array([0.8, 0.0])) == -1
    assert bimodal_course_side(np.array([0.45, 0.95]), np.array([-0.5, 0.8])) == 1


def test_on_course_means_a_forward_course_clear_of_the_block_on_that_side() -> None:
    v_diag = np.array([0.42, 0.68])  # meets y = 0.85 at x = 0.06 + 0.525 = 0.585 from (0.06, 0)
    assert bimodal_on_course(np.array([0.06, 0.0]), v_diag, 1, 0.3)
    assert not bimodal_on_course(np.array([0.06, 0.0]), v_diag, -1, 0.3)  # the other side
    assert not bimodal_on_course(np.array([0.06, 0.0]), np.array([0.0, 0.8]), 1, 0.3)  # head on
    assert not bimodal_on_course(np.array([0.06, 0.0]), v_diag * 0.3, 1, 0.3)  # too slow
    # beside the block: out by >= 0.35 m on that side, straight up is fine
    assert bimodal_on_course(np.array([0.36, 0.95]), np.array([0.0, 0.8]), 1, 0.3)
    assert not bimodal_on_course(np.array([0.34, 0.95]), np.array([0.0, 0.8]), 1, 0.3)
    # past the far face (1.15 m): any forward course
    assert bimodal_on_course(np.array([0.0, 1.2]), np.array([-0.3, 0.8]), 1, 0.3)
    assert not bimodal_on_course(np.array([0.0, 1.2]), np.array([0.0, -0.8]), 1, 0.3)


def _xy(x: float, y: float, push: float = 0.0) -> dict[str, Any]:
    info: dict[str, Any] = {"xy": np.array([x, y])}
    if push:
        info["push"] = np.array([push, 0.0, 0.0])
    return info


def test_course_rule_fixes_the_side_when_a_push_begins_and_times_recovery() -> None:
    dt = rec.BIMODAL_DT_S
    course = BimodalCourse()
    tracker = PushTracker(course)
    course.reset(_xy(0.0, 0.0))
    tracker.start(np.zeros(2), NO_GOAL)
    # heading right-forward (clear on the right), then a push to the left bends the course,
    # then the disc heads right again; then it passes the block on the right
    vx, vy = 0.5, 0.6
    x = y = 0.0
    ticks: list[tuple[float, float, float]] = []
    for _ in range(3):
        x, y = x + vx * dt, y + vy * dt
        ticks.append((x, y, 0.0))
    for _ in range(2):
        x, y = x - 2.0 * dt, y + vy * dt
        ticks.append((x, y, -9.0))
    x, y = x - 0.5 * dt, y + vy * dt  # still drifting left after the push: off course
    ticks.append((x, y, 0.0))
    x, y = x + vx * dt, y + vy * dt  # back on the right course
    ticks.append((x, y, 0.0))
    for k, (x_, y_, push) in enumerate(ticks, start=1):
        info = _xy(x_, y_, push)
        course.update(info)
        tracker.tick(k, np.zeros(2), NO_GOAL, info)
        if k == 4:
            assert course.side == 1  # from the course before the push
    tracker.end()
    course.end({"side": 1})
    assert tracker.recover == [3]  # first push tick 4, off course at 6, back on course at 7
    s = tracker.summary()
    assert s["pushes_left_tolerance"] == 1
    assert s["recover_ticks_left_tolerance"]["mean"] == 3.0
    assert course.summary() == {
        "pushes_before_block": 1,
        "side_kept": 1,
        "side_switched": 0,
        "side_not_passed": 0,
    }


def test_course_summary_counts_a_switched_side_and_no_pass() -> None:
    course = BimodalCourse()
    for ep_side, passed in ((1, -1), (-1, 0), (1, 1)):
        course.reset(_xy(0.1 * ep_side, 0.0))
        course.update(_xy(0.1 * ep_side, 0.01, push=3.0))
        course.end({"side": passed})
    # a push beside the block is not a "before the block" push
    course.reset(_xy(0.4, 0.95))
    course.update(_xy(0.4, 0.96, push=3.0))
    course.end({"side": 1})
    assert course.summary() == {
        "pushes_before_block": 3,
        "side_kept": 1,
        "side_switched": 1,
        "side_not_passed": 1,
    }
