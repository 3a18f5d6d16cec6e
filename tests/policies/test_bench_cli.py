"""`python -m policies.bench`: the refine-step latency benchmark's options (tiny runs)."""

from __future__ import annotations

import json
import time

import pytest

from policies import bench


def test_idle_gap_is_left_between_ticks(capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    assert bench.main(["--policy", "mlp:double-pendulum", "--ticks", "20", "--idle-us", "5000",
                       "--json"]) == 0
    took = time.perf_counter() - t0
    out = json.loads(capsys.readouterr().out)
    assert out["idle_us"] == 5000.0 and out["idle_spin"] is False
    assert out["tick"]["n"] == 20
    assert took >= 20 * 5e-3  # twenty 5 ms gaps were really left


def test_idle_spin_waits_without_sleeping() -> None:
    t0 = time.perf_counter_ns()
    c0 = time.thread_time_ns()
    bench._idle(3_000_000, spin=True)
    assert time.perf_counter_ns() - t0 >= 3_000_000
    assert time.thread_time_ns() - c0 >= 500_000  # the thread was busy, not asleep (~0)


def test_negative_idle_is_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--policy", "mlp:double-pendulum", "--idle-us", "-1"])
    assert exc.value.code == 2
