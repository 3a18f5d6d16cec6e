"""`LinkLatency`: the transport margin a controller keeps from measured send-to-plant times."""

from __future__ import annotations

import numpy as np
import pytest

from hw_bridge.linklatency import LinkLatency


def test_no_margin_until_enough_samples_then_quantile_plus_guard() -> None:
    lat = LinkLatency(window=100, quantile=0.99, guard_frac=0.1, guard_ns=20_000,
                      min_samples=10, refresh=1)
    for v in range(9):
        lat.add(100_000 + v)
    assert lat.margin_ns() is None  # the loop keeps its configured margin meanwhile
    for v in range(91):
        lat.add(200_000 + 1000 * v)  # 9 at ~100 us, then 200..290 us
    # 'higher' p99 of 100 samples: the 99th smallest = 289 us; guard max(20 us, 28.9 us)
    assert lat.quantile_ns() == 289_000
    assert lat.margin_ns() == 289_000 + 28_900
    assert lat.max_ns == 290_000


def test_the_window_forgets_old_latencies() -> None:
    lat = LinkLatency(window=64, min_samples=64, refresh=1, guard_ns=0, guard_frac=0.0)
    for _ in range(64):
        lat.add(5_000_000)  # a slow stretch of the link
    assert lat.margin_ns() == 5_000_000
    for _ in range(64):
        lat.add(300_000)
    assert lat.margin_ns() == 300_000
    assert lat.max_ns == 5_000_000  # the worst seen is still reported
    lat.reset()
    assert len(lat) == 0 and lat.margin_ns() is None


def test_margin_is_recomputed_at_most_once_per_refresh_samples() -> None:
    lat = LinkLatency(window=64, min_samples=8, refresh=16, guard_ns=0, guard_frac=0.0)
    for _ in range(8):
        lat.add(100_000)
    assert lat.margin_ns() == 100_000
    for _ in range(15):
        lat.add(900_000)
    assert lat.margin_ns() == 100_000  # cached: 15 < 16 new samples
    lat.add(900_000)
    assert lat.margin_ns() == 900_000


def test_matches_a_plain_sorted_reference() -> None:
    rng = np.random.default_rng(3)
    lat = LinkLatency(window=512, min_samples=1, refresh=1, guard_ns=0, guard_frac=0.0)
    xs = rng.integers(50_000, 3_000_000, size=700)
    for x in xs:
        lat.add(int(x))
    last = np.sort(xs[-512:])
    assert lat.quantile_ns() == int(last[-6])  # p99 of 512: the 6th largest, never interpolated
    s = lat.summary_us()
    assert s["max"] == xs.max() / 1e3 and s["n"] == 700


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        LinkLatency(window=0)
    with pytest.raises(ValueError):
        LinkLatency(quantile=1.5)
    with pytest.raises(ValueError):
        LinkLatency(guard_ns=-1)
