"""The Driver base class and the example motor, checked against a plain reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hw_bridge import Driver, FirstOrderMotor, motor_spec
from hw_bridge.driver import DriverNotConnected
from runtime import Command, FakeClock, LateCommand, Plant


class _Frozen(Driver):
    """A device whose reading never changes: observations must be flagged stale, not faked."""

    def connect(self) -> None:
        self.t = 5

    def read(self) -> tuple[np.ndarray, int]:
        return np.array([1.0, 2.0]), self.t

    def write(self, action: np.ndarray) -> None:
        self.last = action

    def disconnect(self) -> None:
        pass


def test_driver_is_a_plant_and_flags_repeated_readings_stale() -> None:
    d = _Frozen(motor_spec())
    assert isinstance(d, Plant)
    with pytest.raises(DriverNotConnected):
        d.observe()
    first = d.reset(seed=0)
    again = d.observe()
    assert not first.stale and again.stale and again.t_ns == first.t_ns
    np.testing.assert_array_equal(again.state, first.state)
    assert d.counters()["stale_reads"] == 1
    np.testing.assert_array_equal(d.safe_action(again.state), [0.0])


def test_driver_counts_and_refuses_late_commands_instead_of_writing_them() -> None:
    clock = FakeClock(start_ns=100)
    d = FirstOrderMotor(mode="realtime", clock=clock)
    d.reset(seed=0)
    with pytest.raises(LateCommand):
        d.apply(Command(seq=0, t_ns=0, action=np.array([0.5]), deadline_ns=50))
    assert d.counters()["late"] == 1 and d.writes == 0


def test_motor_matches_a_fine_euler_reference() -> None:
    clock = FakeClock()
    m = FirstOrderMotor(mode="realtime", clock=clock, gain_rad_s=10.0, tau_s=0.05)
    m.reset(seed=0)
    p, v = float(m.observe().state[0]), 0.0
    m.apply(Command(seq=0, t_ns=0, action=np.array([0.6]), deadline_ns=10**9))
    clock.advance_ns(200_000_000)  # 0.2 s under effort 0.6
    got = m.observe().state
    dt = 1e-5
    for _ in range(20_000):  # the slow, obviously-correct integration
        v += dt * (10.0 * 0.6 - v) / 0.05
        p += dt * v
    np.testing.assert_allclose(got, [p, v], rtol=1e-3)
    assert math.isclose(m.reward(got), -((got[0] - 1.0) ** 2))


def test_motor_lockstep_advances_one_period_per_apply_and_truncates() -> None:
    m = FirstOrderMotor(mode="lockstep", episode_ticks=3)
    m.reset(seed=0)
    for k in range(3):
        m.apply(Command(seq=k, t_ns=0, action=np.array([0.1]), deadline_ns=0))
    obs = m.observe()
    assert obs.t_ns == 3 * m.spec().period_ns and obs.truncated
