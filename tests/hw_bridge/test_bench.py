"""`rtdiff bench bridge`: quantile helper (default run) and a short smoke run (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from hw_bridge.baseline import quantiles_us
from hw_bridge.bench import run_bench


def test_quantiles_are_in_microseconds_and_match_numpy() -> None:
    ns = np.arange(1, 1001, dtype=np.int64) * 1000  # 1..1000 us
    q = quantiles_us(ns)
    assert q["n"] == 1000 and q["max"] == 1000.0
    assert q["p50"] == round(float(np.percentile(ns / 1e3, 50)), 1)
    assert np.isnan(quantiles_us(np.zeros(0, dtype=np.int64))["p50"])


@pytest.mark.slow
def test_bench_smoke_run_reports_both_links_on_both_transports() -> None:
    res = run_bench(1.0, rounds=1)
    for transport in ("tcp", "ipc"):
        r = res[transport]
        assert r["bare"]["round_trip_us"]["n"] > 100
        assert r["bridge"]["round_trip_us"]["n"] > 100
        assert r["bridge"]["server"]["send_dropped"] == 0
        assert set(r["bridge_over_bare"]) == {"p50", "p99"}
