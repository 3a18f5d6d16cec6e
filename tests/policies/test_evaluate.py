"""The push-recovery ablation's recovery predicates and push bookkeeping, on hand-made
observations (no simulator)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies.evaluate import PushTracker, paired_difference
from policies.recovery import (
    angles_within,
    fingertip_on_target,
    reacher_fingertip_xy,
    recovery_predicate,
)

NO_GOAL = np.zeros(0)
PUSH = {"push": np.array([1.0, 0.0, 0.0])}


def test_angle_rule_needs_every_watched_angle_strictly_within_tolerance() -> None:
    ok = angles_within((1, 2), 0.05)
    assert ok(np.array([3.0, 0.01, -0.04, 9.0, 9.0, 9.0]), NO_GOAL)  # x and rates ignored
    assert not ok(np.array([0.0, 0.01, -0.06, 0.0, 0.0, 0.0]), NO_GOAL)
    assert not ok(np.array([0.0, 0.05, 0.0, 0.0, 0.0, 0.0]), NO_GOAL)  # strict, as before


def test_fingertip_kinematics_of_the_reacher() -> None:
    np.testing.assert_allclose(reacher_fingertip_xy(0.0, 0.0), [0.21, 0.0], atol=1e-12)
    np.testing.assert_allclose(reacher_fingertip_xy(math.pi / 2, 0.0), [0.0, 0.21], atol=1e-12)
    # elbow bent back by 90 degrees: link0 along x, link1 along -y
    np.testing.assert_allclose(reacher_fingertip_xy(0.0, -math.pi / 2), [0.1, -0.11], atol=1e-12)


def test_fingertip_rule_is_the_task_tolerance_around_the_current_target() -> None:
    ok = fingertip_on_target(0.02)
    arm = np.array([0.0, 0.0, 5.0, -5.0])  # tip at (0.21, 0); velocities do not matter
    assert ok(arm, np.array([0.21, 0.0]))
    assert ok(arm, np.array([0.21, 0.0199]))
    assert ok(arm, np.array([0.23, 0.0]))  # the task counts distance <= tol
    assert not ok(arm, np.array([0.21, 0.0201]))
    assert not ok(arm, np.array([0.0, 0.21]))  # the target jumped away: out of tolerance


def test_task_chooses_the_rule_and_double_pendulum_keeps_the_angle_rule() -> None:
    rule, ok = recovery_predicate("double-pendulum", angle_idx=(1, 2), tol_rad=0.05, tol_m=0.02)
    assert rule == "angles" and ok(np.zeros(6), NO_GOAL)
    rule, ok = recovery_predicate("reacher-moving", angle_idx=(1, 2), tol_rad=0.05, tol_m=0.02)
    assert rule == "fingertip"
    assert ok(np.array([0.0, 0.0, 0.0, 0.0]), np.array([0.21, 0.0]))
    assert not ok(np.array([0.0, 0.0, 0.0, 0.0]), np.array([0.0, 0.0]))  # angles 0, far away
    assert recovery_predicate("other", angle_idx=(0,), tol_rad=0.1, tol_m=0.02)[0] == "angles"


def _run(tracker: PushTracker, ticks: list[tuple[float, dict]], goal: np.ndarray) -> None:
    """Feed ticks of (scalar 'error', info) to a tracker whose predicate is |error| < 1."""
    tracker.start(np.array([0.0]), goal)
    for k, (err, info) in enumerate(ticks, start=1):
        tracker.tick(k, np.array([err]), goal, info)
    tracker.end()


def _scalar_rule(state: np.ndarray, goal: np.ndarray) -> bool:
    return bool(abs(state[0]) < 1.0)


def test_tracker_times_a_push_from_its_first_tick_to_back_within_tolerance() -> None:
    t = PushTracker(_scalar_rule)
    # push on ticks 2-3 knocks the state out; back within tolerance on tick 6
    _run(t, [(0, {}), (2, PUSH), (3, PUSH), (2, {}), (1.5, {}), (0.5, {}), (0, {})], NO_GOAL)
    s = t.summary()
    assert s["pushes"] == 1 and s["recovered"] == 1 and s["recover_ticks"]["mean"] == 4.0
    assert s["pushes_left_tolerance"] == 1 and s["pushes_excluded_jump"] == 0


def test_tracker_counts_a_push_that_never_left_tolerance_as_its_own_length() -> None:
    t = PushTracker(_scalar_rule)
    _run(t, [(0, {}), (0.5, PUSH), (0.5, PUSH), (0.2, {})], NO_GOAL)
    s = t.summary()
    assert s["recover_ticks"]["mean"] == 2.0 and s["pushes_left_tolerance"] == 0


def test_tracker_censors_pushes_cut_by_the_next_push_or_the_episode_end() -> None:
    t = PushTracker(_scalar_rule)
    _run(t, [(0, {}), (2, PUSH), (2, {}), (3, PUSH), (2, {})], NO_GOAL)
    s = t.summary()
    assert s["pushes"] == 2 and s["recovered"] == 0 and s["recover_ticks"]["mean"] is None


def test_tracker_excludes_pushes_that_overlap_a_target_jump() -> None:
    goal = np.array([0.0])
    jump = {"goal_switch": np.array([1.0])}
    # a jump while recovering: excluded
    t = PushTracker(_scalar_rule)
    _run(t, [(0, {}), (2, PUSH), (2, jump), (0, {})], goal)
    s = t.summary()
    assert s["pushes"] == 0 and s["jump_during_recovery"] == 1 and s["pushes_total"] == 1
    # a push while still reaching for a jumped target: excluded; once there, pushes count
    t = PushTracker(_scalar_rule)
    _run(t, [(0, {}), (5, jump), (3, PUSH), (2, {}), (0, {}), (2, PUSH), (0, {})], goal)
    s = t.summary()
    assert s["jump_before_settled"] == 1 and s["pushes"] == 1 and s["recover_ticks"]["p50"] == 1
    # a push on the jump's own tick: excluded
    t = PushTracker(_scalar_rule)
    _run(t, [(0, {}), (3, {**PUSH, **jump}), (0, {})], goal)
    assert t.summary()["jump_before_settled"] == 1 and t.summary()["pushes"] == 0


@pytest.mark.parametrize("start_err, counted", [(0.0, 1), (5.0, 0)])
def test_the_target_at_reset_counts_as_a_jump(start_err: float, counted: int) -> None:
    t = PushTracker(_scalar_rule)
    goal = np.array([0.0])
    t.start(np.array([start_err]), goal)
    t.tick(1, np.array([start_err]), goal, PUSH)
    t.tick(2, np.array([0.0]), goal, {})
    t.end()
    assert t.summary()["pushes"] == counted


def test_tasks_without_a_goal_never_exclude_a_push() -> None:
    t = PushTracker(_scalar_rule)
    t.start(np.array([5.0]), NO_GOAL)  # out of tolerance at reset, no goal: still counted
    t.tick(1, np.array([5.0]), NO_GOAL, PUSH)
    t.tick(2, np.array([0.0]), NO_GOAL, {})
    assert t.summary()["pushes"] == 1 and t.summary()["recovered"] == 1


def test_tracker_logs_each_counted_push_by_episode_and_first_tick() -> None:
    t = PushTracker(_scalar_rule)
    _run(t, [(0, {}), (2, PUSH), (0, {})], NO_GOAL)
    _run(t, [(0, {}), (0, {}), (2, PUSH), (2, {})], NO_GOAL)
    assert t.log == {(0, 2): 1, (1, 3): None}


def test_paired_difference_compares_the_same_pushes_only() -> None:
    base = {(0, 5): 5, (0, 40): 10, (1, 7): None, (2, 9): 6}
    other = {(0, 5): 7, (0, 40): 12, (1, 7): 8, (3, 1): 4}
    d = paired_difference(base, other, seed=0)
    assert d["pairs"] == 2 and d["mean"] == 2.0 and d["ci95"] == [2.0, 2.0]
    assert d["slower"] == 2 and d["faster"] == 0
    assert paired_difference({}, other)["pairs"] == 0
