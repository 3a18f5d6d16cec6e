"""`rtdiff bench bridge`: quantile helper (default run) and a short smoke run (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from hw_bridge.bench import run_bench
from hw_bridge.platform import quantiles_us


def test_quantiles_are_in_microseconds_interpolated_and_rounded_to_tenths() -> None:
    ns = np.arange(1000, 0, -1, dtype=np.int64) * 1000  # 1..1000 us, descending
    q = quantiles_us(ns)
    # ranks 499.5, 989.01 and 998.001 of the sorted samples, in us, to 0.1 us
    assert q == {"n": 1000, "p50": 500.5, "p99": 990.0, "p999": 999.0, "max": 1000.0}
    q = quantiles_us(np.array([5678, 1234], dtype=np.int64))
    # 1.234 and 5.678 us: the median 3.456 and the p99 5.63156 round to tenths
    assert q == {"n": 2, "p50": 3.5, "p99": 5.6, "p999": 5.7, "max": 5.7}
    empty = quantiles_us(np.zeros(0, dtype=np.int64))
    assert empty["n"] == 0 and all(np.isnan(empty[k]) for k in ("p50", "p99", "p999", "max"))


@pytest.mark.slow
def test_bench_smoke_run_reports_both_links_on_both_transports() -> None:
    res = run_bench(1.0, rounds=1)
    for transport in ("tcp", "ipc"):
        r = res[transport]
        assert r["bare"]["round_trip_us"]["n"] > 100
        assert r["bridge"]["round_trip_us"]["n"] > 100
        assert r["bridge"]["server"]["send_dropped"] == 0
        assert set(r["bridge_over_bare"]) == {"p50", "p99"}
