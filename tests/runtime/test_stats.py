"""percentiles, histograms, DeadlineStats on hand-computed values; SlidingQuantile vs numpy."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.fallback import CODE_HOLD, CODE_NONFINITE
from runtime.stats import DeadlineStats, SlidingQuantile, histogram, percentiles
from runtime.trace import TICK_DTYPE

DIST_KEYS = {"p50", "p99", "p999", "max"}


@pytest.mark.parametrize(
    "x,want",
    [
        # 0..1000 shuffled: the ranks land on samples (rank q * (n - 1))
        (np.random.default_rng(7).permutation(1001), (500.0, 990.0, 999.0, 1000.0)),
        # between samples the value interpolates linearly: rank 1.5, 2.97, 2.997
        ([4.0, 1.0, 3.0, 2.0], (2.5, 3.97, 3.997, 4.0)),
        # a single outlier in 100: rank 98.01 is 1 % and rank 98.901 is 90.1 % of the way to it
        ([0.0] * 60 + [1000.0] + [0.0] * 39, (0.0, 10.0, 901.0, 1000.0)),
        ([[4, 1], [3, 2]], (2.5, 3.97, 3.997, 4.0)),  # any shape, flattened
        ([3.0], (3.0, 3.0, 3.0, 3.0)),
    ],
)
def test_percentiles_interpolate_linearly_between_ranks(
    x: object, want: tuple[float, float, float, float]
) -> None:
    got = percentiles(x)  # type: ignore[arg-type]
    assert set(got) == DIST_KEYS
    assert [got["p50"], got["p99"], got["p999"], got["max"]] == pytest.approx(want, abs=1e-9)
    assert all(type(v) is float for v in got.values())


def test_percentiles_of_nothing_are_zeros() -> None:
    assert percentiles([]) == {"p50": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0}
    assert percentiles([], (50, 90)) == {"p50": 0.0, "p90": 0.0, "max": 0.0}


def test_percentiles_take_other_quantiles_and_the_higher_method() -> None:
    x = [4.0, 1.0, 3.0, 2.0]
    # keys in the order asked, the point dropped; ranks 0.03, 1.5 and 2.7
    assert list(percentiles(x, (1, 50, 90))) == ["p1", "p50", "p90", "max"]
    assert percentiles(x, (1, 50, 90)) == pytest.approx(
        {"p1": 1.03, "p50": 2.5, "p90": 3.7, "max": 4.0}, abs=1e-12)
    # 'higher': the sample at or above the rank, never interpolated
    assert percentiles(x, (50, 99), method="higher") == {"p50": 3.0, "p99": 4.0, "max": 4.0}


def test_histogram_counts_equal_bins_and_given_edges_and_handles_empty() -> None:
    x = [4.0, 0.0, 1.0, 2.0, 1.0, 3.0]
    h = histogram(x, 4)
    assert h.edges == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert h.counts == [1, 2, 1, 2]  # the last bin is closed: 3 and 4 both count
    given = histogram(x, [0.0, 2.0, 10.0])
    assert given.edges == [0.0, 2.0, 10.0] and given.counts == [3, 3]
    empty = histogram([], 4)
    assert empty.counts == [0, 0, 0, 0] and len(empty.edges) == 5
    with pytest.raises(ValueError, match="bins=0 must be >= 1"):
        histogram(x, 0)


def handmade_records() -> np.ndarray:
    """Six ticks at 1 kHz, every number chosen by hand (ns)."""
    r = np.zeros(6, dtype=TICK_DTYPE(2))
    r["tick"] = [0, 1, 2, 5, 6, 7]
    r["skipped"] = [0, 0, 0, 2, 0, 0]  # ticks 3 and 4 were skipped
    r["scheduled_ns"] = r["tick"] * 1_000_000
    r["lateness_ns"] = [10_000, 20_000, 30_000, 40_000, 50_000, 60_000]
    r["start_ns"] = r["scheduled_ns"] + r["lateness_ns"]
    compute_ns = np.array([500_000, 600_000, 700_000, 1_200_000, 400_000, 300_000])
    r["emit_ns"] = r["start_ns"] + compute_ns
    r["refine_ns"] = compute_ns - [20_000, 20_000, 20_000, 20_000, 20_000, 50_000]
    r["deadline_ns"] = r["scheduled_ns"] + 1_000_000
    r["missed"] = r["emit_ns"] > r["deadline_ns"]  # only tick 5 (1.24 ms after its start)
    r["steps"] = [4, 5, 6, 9, 3, 0]
    r["fallback"] = [0, 0, 0, CODE_HOLD, CODE_HOLD, CODE_NONFINITE]
    return r


def test_deadline_stats_on_handmade_records() -> None:
    s = DeadlineStats.from_records(handmade_records(), period_ns=1_000_000)
    assert s.ticks == 8 and s.ticks_run == 6 and s.skipped == 2
    assert s.misses_late == 1 and s.misses == 3
    assert s.miss_rate == 3 / 8
    assert s.lateness_ms["max"] == pytest.approx(0.06)
    assert s.lateness_ms["p50"] == pytest.approx(0.035)
    assert s.compute_ms["max"] == pytest.approx(1.2)
    assert s.compute_ms["p50"] == pytest.approx(0.55)
    assert s.overhead_us["p50"] == pytest.approx(20.0)
    assert s.overhead_us["max"] == pytest.approx(50.0)
    assert s.refine_ms["max"] == pytest.approx(1.18)
    assert s.steps_per_tick == {"mean": 4.5, "min": 0.0, "max": 9.0}
    assert s.fallbacks == {"hold": 2, "decay": 0, "safe": 0, "nonfinite": 1, "zero": 0}
    # lateness 10..60 us: population std 10 us * sqrt(35 / 12); p1 at rank 0.05 is 10.5 us,
    # p99 at rank 4.95 is 59.5 us
    assert s.jitter_ms["std"] == pytest.approx(0.01 * (35 / 12) ** 0.5)
    assert s.jitter_ms["p99_p1"] == pytest.approx(0.049)
    assert sum(s.histograms["compute_ms"].counts) == 6


def test_to_json_has_the_contract_keys_and_is_plain_json() -> None:
    s = DeadlineStats.from_records(handmade_records(), period_ns=1_000_000)
    out = s.to_json(include_histograms=True)
    for key in ("ticks", "misses", "miss_rate", "compute_ms", "lateness_ms", "steps_per_tick"):
        assert key in out
    assert "fallbacks" in out and "overhead_us" in out and "jitter_ms" in out
    assert set(out["compute_ms"]) == DIST_KEYS and set(out["lateness_ms"]) == DIST_KEYS
    assert set(out["steps_per_tick"]) == {"mean", "min", "max"}
    assert json.loads(json.dumps(out, allow_nan=False)) == out  # no numpy scalars, no NaN
    assert "histograms" not in s.to_json()


def test_empty_records_give_zeros_not_nan() -> None:
    s = DeadlineStats.from_records(np.zeros(0, dtype=TICK_DTYPE(3)), period_ns=10_000_000)
    out = s.to_json(include_histograms=True)
    json.dumps(out, allow_nan=False)
    assert out["ticks"] == 0 and out["misses"] == 0 and out["miss_rate"] == 0.0
    assert out["lateness_ms"] == {"p50": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0}
    assert out["steps_per_tick"] == {"mean": 0.0, "min": 0.0, "max": 0.0}


def test_deadline_stats_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="period_ns=0 must be > 0"):
        DeadlineStats.from_records(np.zeros(0, dtype=TICK_DTYPE(1)), period_ns=0)
    with pytest.raises(ValueError, match="records lack TickRecord fields"):
        DeadlineStats.from_records(np.zeros(3, dtype=[("tick", "i8")]), period_ns=1)


def reference_quantiles(xs: list[int], window: int, q: float) -> list[int]:
    """The slow obvious answer after each push."""
    return [
        int(np.quantile(xs[max(0, i + 1 - window) : i + 1], q, method="higher"))
        for i in range(len(xs))
    ]


@pytest.mark.parametrize("window,q", [(1, 0.99), (7, 0.5), (64, 0.99), (100, 0.999), (33, 1.0)])
def test_sliding_quantile_matches_numpy_on_a_seeded_stream(window: int, q: float) -> None:
    rng = random.Random(window)
    # Heavy-tailed step latencies in ns, with repeats, and a 5x jump half way through.
    xs = [int(rng.paretovariate(1.5) * 100_000) for _ in range(300)]
    xs += [5 * int(rng.paretovariate(1.5) * 100_000) for _ in range(300)]
    xs += [rng.choice([100, 200, 300]) for _ in range(100)]
    sq = SlidingQuantile(window, q)
    got = []
    for x in xs:
        sq.push(x)
        got.append(sq.value())
    assert got == reference_quantiles(xs, window, q)
    assert sq.count == min(window, len(xs))


@settings(max_examples=60, deadline=None)
@given(
    xs=st.lists(st.integers(min_value=-(10**12), max_value=10**12), min_size=1, max_size=120),
    window=st.integers(min_value=1, max_value=40),
    q=st.floats(min_value=0.0, max_value=1.0),
)
def test_sliding_quantile_matches_numpy_for_any_stream(
    xs: list[int], window: int, q: float
) -> None:
    sq = SlidingQuantile(window, q)
    got = []
    for x in xs:
        sq.push(x)
        got.append(sq.value())
    assert got == reference_quantiles(xs, window, q)


def test_sliding_quantile_empty_and_bad_config() -> None:
    sq = SlidingQuantile(4, 0.9)
    with pytest.raises(ValueError, match="empty window"):
        sq.value()
    sq.push(5)
    sq.reset()
    assert sq.count == 0
    sq.push(7)
    assert sq.value() == 7
    with pytest.raises(ValueError, match="window=0 must be an int >= 1"):
        SlidingQuantile(0, 0.5)
    with pytest.raises(ValueError, match=r"q=1\.5 must be in \[0, 1\]"):
        SlidingQuantile(3, 1.5)


def test_int_ring_keeps_the_newest_samples_in_order() -> None:
    from runtime.stats import IntRing

    ring = IntRing(4)
    assert len(ring) == 0 and ring.values().tolist() == []
    for x in range(3):
        ring.append(x)
    assert ring.values().tolist() == [0, 1, 2]
    for x in range(3, 10):
        ring.append(x)
    assert len(ring) == 4 and ring.values().tolist() == [6, 7, 8, 9]
    ring.clear()
    assert len(ring) == 0
