"""End to end: a served plant applies the controller's plan while the controller is stopped.

A realtime `rtdiff serve` process and a `rtdiff run` controller process with the shipped rolling
planner, on loopback; the test stops the controller (SIGSTOP/SIGCONT) for three 100 Hz periods,
twice, and reads the run's JSON: the plant fed planned actions on those ticks and says so.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("mujoco")

from runtime.cli.bench_stalls import run_one
from runtime.cli.plantproc import plant_server


def test_a_stopped_controllers_ticks_are_fed_from_its_plan() -> None:
    with plant_server("double-pendulum", seed=0) as address:
        out = run_one("rolling:double-pendulum", address, seed=0, seconds=3.0, plan_ahead=True,
                      stall_ms=30.0, every_s=1.0, quota=None, rt=None, extra={})
        off = run_one("rolling:double-pendulum", address, seed=0, seconds=3.0,
                      plan_ahead=False, stall_ms=30.0, every_s=1.0, quota=None, rt=None,
                      extra={})
    assert out["stalls_injected"] >= 2 and out["plan_ahead"] is True
    plant = out["plant"]
    # each 30 ms stop leaves about two plant ticks without a fresh command
    assert plant["plan_fed"] >= 2
    # no stopped tick was held or made safe: the plan covered them all
    assert plant["fallback"] == 0 and plant["safe"] == 0
    # `dry`: the episode's first plant tick, when the controller's first command came after
    # it (on a slow stretch of the machine); never a stopped tick
    assert plant["dry"] <= 1
    assert plant["fresh"] > 200
    assert out["action_age_ms"]["p99"] is not None and out["action_age_ms"]["p99"] > 10.0
    assert "steal_s" in out
    # without plan-ahead the same stops are held, never fed
    assert off["plan_ahead"] is False and off["plant"]["plan_fed"] == 0
    assert off["plant"]["fallback"] >= 2
