"""The sidecar's size (every tick of a short run, at most `MAX_SECONDS` of a long one), its
predicted states, and the lookahead error computed from them."""

from __future__ import annotations

import numpy as np

from runtime.protocols import Observation
from runtime.sidecar import EVENT_PUSH, EVENT_RESET, MAX_SECONDS, Sidecar, capacity_for


def test_capacity_is_the_run_up_to_the_cap() -> None:
    assert capacity_for(1_000, 100.0) == 1_000
    assert capacity_for(3_600 * 500, 500.0) == round(MAX_SECONDS * 500)


def test_ticks_past_the_capacity_are_counted_not_stored() -> None:
    car = Sidecar(3, state_dim=2)
    obs = Observation(seq=0, t_ns=0, state=np.ones(2), goal=np.zeros(0))
    for _ in range(5):
        car.record(obs, levels=None, reset=False)
    assert car.n == 3 and car.dropped == 2
    assert np.all(car.arrays()["state"] == 1.0)


def _obs(x: float) -> Observation:
    return Observation(seq=0, t_ns=0, state=np.full(2, x), goal=np.zeros(0))


def test_predicted_states_are_recorded_with_their_count_and_nan_past_it() -> None:
    car = Sidecar(4, state_dim=2, predicted_ticks=3)
    assert car.predicted.shape == (4, 3, 2) and np.all(np.isnan(car.predicted))

    def two_rows(out: np.ndarray) -> int:
        out[:2] = [[1.0, 2.0], [3.0, 4.0]]
        return 2

    car.record(_obs(0.0), levels=None, reset=True, predict=two_rows)
    car.record(_obs(1.0), levels=None, reset=False, predict=lambda out: 0)
    car.record(_obs(2.0), levels=None, reset=False)  # no planner that predicts
    a = car.arrays()
    assert list(a["predicted_n"]) == [2, 0, 0]
    np.testing.assert_array_equal(a["predicted"][0, :2], [[1, 2], [3, 4]])
    assert np.all(np.isnan(a["predicted"][0, 2])) and np.all(np.isnan(a["predicted"][1:]))


def test_the_prediction_block_is_capped_in_bytes_and_keeps_the_first_ticks() -> None:
    from runtime.sidecar import MAX_PREDICTION_BYTES

    per_tick = 4 * 50 * 8  # float32 (Hmax=50, Ds=8)
    car = Sidecar(MAX_PREDICTION_BYTES // per_tick + 100, state_dim=8, predicted_ticks=50)
    assert car.predicted.nbytes <= MAX_PREDICTION_BYTES
    assert len(car.predicted) == len(car.predicted_n) == MAX_PREDICTION_BYTES // per_tick
    assert Sidecar(10, state_dim=1).predicted.shape == (0, 0, 1)


def _error_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Five ticks of a 2-D state and hand-made predictions with whole-number errors."""
    # dim 0: [0, 4, 0, 4, 2] -> mean 2, std sqrt((4+4+4+4+0)/5) = sqrt(3.2)
    # dim 1: constant 7 -> std 0, left out
    state = np.array([[0, 7], [4, 7], [0, 7], [4, 7], [2, 7]], dtype=np.float64)
    pred = np.full((5, 2, 2), np.nan)
    n = np.zeros(5, dtype=np.int64)
    # tick 0 predicts ticks 1, 2 with errors (dim 0) 1 and 2; dim 1 is off by 100 (ignored)
    pred[0] = [[5, 107], [2, 107]]
    n[0] = 2
    # tick 1 predicts tick 2 only, error 3
    pred[1, 0] = [3, 7]
    n[1] = 1
    # tick 2: no plan (its rows are left NaN and its count 0)
    # tick 3 predicts tick 4 with error 4, and a second row that lies past the run
    pred[3] = [[6, 7], [0, 7]]
    n[3] = 2
    events = np.zeros(5, dtype=np.int8)
    return state, pred, n, events


def test_lookahead_error_by_hand() -> None:
    from runtime.sidecar import lookahead_error

    state, pred, n, events = _error_case()
    std = np.sqrt(3.2)
    err = lookahead_error(state, pred, n, events)
    # j = 1: pairs (0,1) error 1, (1,2) error 3, (3,4) error 4; tick 2 had no plan
    # j = 2: pair (0,2) error 2; (3,5) lies past the run
    assert list(err.pairs) == [3, 1]
    np.testing.assert_allclose(err.mean, [8 / 3 / std, 2 / std])
    # p90 of [1, 3, 4] (linear): 3 + 0.8 * (4 - 3) = 3.8
    np.testing.assert_allclose(err.p90, [3.8 / std, 2 / std])
    rows = err.to_json(rate_hz=100.0)
    assert [(r["j"], r["lookahead_s"], r["pairs"]) for r in rows] == [(1, 0.01, 3), (2, 0.02, 1)]


def test_lookahead_error_leaves_out_pairs_across_an_episode_start_or_a_skipped_tick() -> None:
    from runtime.sidecar import lookahead_error

    state, pred, n, events = _error_case()
    std = np.sqrt(3.2)
    events[2] = EVENT_RESET  # an episode starts at tick 2: (0,2) and (1,2) cross it; (0,1) not
    err = lookahead_error(state, pred, n, events)
    assert list(err.pairs) == [2, 0]
    np.testing.assert_allclose(err.mean[0], (1 + 4) / 2 / std)
    assert np.isnan(err.mean[1]) and np.isnan(err.p90[1])
    assert [r["j"] for r in err.to_json(100.0)] == [1]
    events[2] = EVENT_PUSH  # a push is no episode start: every pair counts again
    assert list(lookahead_error(state, pred, n, events).pairs) == [3, 1]
    skipped = np.array([0, 0, 0, 0, 1])  # record 4 came after a skipped tick: (3,4) goes
    err = lookahead_error(state, pred, n, events, skipped=skipped)
    assert list(err.pairs) == [2, 1]
    np.testing.assert_allclose(err.mean[0], (1 + 3) / 2 / std)


def test_lookahead_error_without_any_moving_dimension_has_no_pairs() -> None:
    from runtime.sidecar import lookahead_error

    state = np.ones((4, 2))
    pred = np.ones((4, 2, 2))
    err = lookahead_error(state, pred, np.full(4, 2), np.zeros(4, dtype=np.int8))
    assert list(err.pairs) == [0, 0] and np.all(np.isnan(err.mean))
