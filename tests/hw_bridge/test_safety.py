"""Limits and the watchdog, alone and inside `ServerCore`, on a FakeClock (no sockets)."""

from __future__ import annotations

import numpy as np
import pytest

from hw_bridge import ActionLimiter, ActionRejected, FirstOrderMotor, ServerConfig, ServerCore
from hw_bridge.safety import Watchdog
from runtime import FakeClock

from .helpers import command, heartbeat, hello, replies

MS = 1_000_000


def test_limiter_rejects_nan_inf_and_wrong_shape() -> None:
    lim = ActionLimiter(low=np.array([-1.0, -1.0]), high=np.array([1.0, 1.0]))
    for bad in (np.array([np.nan, 0.0]), np.array([0.0, np.inf]), np.array([0.0])):
        with pytest.raises(ActionRejected):
            lim.limit(bad, dt_s=0.01)
    assert lim.last is None  # nothing was recorded as applied


def test_limiter_clamps_then_rate_limits_against_a_plain_reference() -> None:
    low, high, rate = np.array([-1.0, -2.0]), np.array([1.0, 2.0]), np.array([10.0, 100.0])
    lim = ActionLimiter(low=low, high=high, max_rate_per_s=rate)
    rng = np.random.default_rng(0)
    last = None
    for _ in range(200):
        a = rng.uniform(-5, 5, size=2)
        dt = float(rng.uniform(0.001, 0.05))
        res = lim.limit(a, dt_s=dt)
        want = np.clip(a, low, high)  # the obviously-correct reference, element by element
        if last is not None:
            want = np.array(
                [
                    min(max(w, p - r * dt), p + r * dt)
                    for w, p, r in zip(want, last, rate, strict=True)
                ]
            )
        np.testing.assert_allclose(res.action, want)
        assert res.clamped == bool(np.any((a < low) | (a > high)))
        last = want


def test_watchdog_trips_once_after_timeout_and_latches_the_stream() -> None:
    wd = Watchdog(timeout_ns=100 * MS)
    assert not wd.check(now_ns=10**12)  # not armed before the first command
    wd.feed(stream=1, now_ns=0)
    assert not wd.check(now_ns=100 * MS)  # exactly the timeout: not yet
    assert wd.check(now_ns=100 * MS + 1)
    assert not wd.check(now_ns=500 * MS)  # once per silence
    assert not wd.accepts(1) and wd.accepts(2)
    wd.feed(stream=2, now_ns=600 * MS)
    assert wd.armed and not wd.tripped and wd.trips == 1


def _core(mode: str = "realtime", **kw: object) -> tuple[ServerCore, FakeClock, FirstOrderMotor]:
    clock = FakeClock(start_ns=10**9)
    motor = FirstOrderMotor(mode="realtime", clock=clock, rate_hz=200.0)
    core = ServerCore(motor, ServerConfig(mode=mode, watchdog_ms=100.0, **kw), clock=clock)  # type: ignore[arg-type]
    core.start()
    return core, clock, motor


def test_watchdog_applies_the_safe_action_within_timeout_plus_one_period() -> None:
    core, clock, motor = _core()
    period = core.spec.period_ns  # 5 ms
    core.handle(b"A", hello())
    core.handle(b"A", command(2, [0.2]))
    assert motor.last_action[0] == pytest.approx(0.2)
    last_cmd_ns = clock.now_ns()
    while not core.events:  # the server loop: one tick per period
        clock.advance_ns(period)
        core.tick()
        assert clock.now_ns() - last_cmd_ns <= 100 * MS + period
    ev = core.events[0]
    assert ev.kind == "watchdog" and ev.t_ns - last_cmd_ns <= 100 * MS + period
    assert motor.last_action[0] == 0.0  # the motor's safe action: zero effort
    assert core.counters["watchdog_trips"] == 1 and core.safe
    states = replies(core.outbox, b"A", "state")
    assert states[-1]["safe"] is True


def test_after_a_trip_only_a_fresh_stream_resumes_control() -> None:
    core, clock, motor = _core()
    core.handle(b"A", hello())
    core.handle(b"A", command(2, [0.5], stream=7))
    clock.advance_ns(150 * MS)
    core.tick()
    assert core.safe
    core.outbox.clear()
    core.handle(b"A", command(3, [0.5], stream=7))  # the old stream trickling in: refused
    assert core.counters["stale_stream"] == 1 and motor.last_action[0] == 0.0
    assert replies(core.outbox, b"A", "error")[0]["code"] == "stream_tripped"
    core.handle(b"A", command(4, [0.2], stream=8))  # a fresh stream: resumes
    assert motor.last_action[0] == pytest.approx(0.2) and not core.safe


def test_limits_are_counted_and_reported_in_heartbeat_counters() -> None:
    core, clock, motor = _core()
    core.handle(b"A", hello())
    core.handle(b"A", command(2, [5.0]))  # clamped to 1, and rate-limited from 0 (50/s * 5 ms)
    assert motor.last_action[0] == pytest.approx(0.25)
    core.handle(b"A", command(3, [float("nan")]))
    core.handle(b"A", command(4, [0.0, 0.0]))  # wrong shape
    clock.advance_ns(1 * MS)
    core.outbox.clear()
    core.handle(b"A", heartbeat(5))
    hb = replies(core.outbox, b"A", "heartbeat")[0]
    c = hb["counters"]
    assert (c["clamped"], c["rate_limited"], c["rejected"], c["applied"]) == (1, 1, 2, 1)
    assert c["plant_applied"] == 1


def test_second_controller_is_refused_until_lease_lapses_or_it_takes_over() -> None:
    core, clock, _ = _core(lease_ms=500.0)
    core.handle(b"A", hello())
    core.handle(b"B", hello())
    assert replies(core.outbox, b"B", "error")[0]["code"] == "busy"
    core.handle(b"B", command(2, [0.1]))
    assert core.counters["unknown_peer"] == 1  # refused: no session at all
    core.handle(b"C", hello(role="observe"))
    core.handle(b"C", command(2, [0.1]))
    assert core.counters["unauthorized"] == 1 and core.counters["applied"] == 0
    core.handle(b"D", hello(takeover=True))
    assert core.controller == b"D"
    assert replies(core.outbox, b"A", "error")[-1]["code"] == "taken_over"
    clock.advance_ns(600 * MS)  # D goes silent past its lease
    core.outbox.clear()
    core.handle(b"B", hello(seq=9))
    assert core.controller == b"B" and replies(core.outbox, b"B", "welcome")


def test_lockstep_command_steps_once_and_acknowledges() -> None:
    clock = FakeClock()
    motor = FirstOrderMotor(mode="lockstep", clock=clock)
    core = ServerCore(motor, ServerConfig(mode="lockstep"), clock=clock)
    core.start()
    core.handle(b"A", hello())
    core.outbox.clear()
    core.handle(b"A", command(2, [0.5]))
    (state,) = replies(core.outbox, b"A", "state")
    assert state["ack_seq"] == 2 and state["obs"]["t_ns"] == motor.spec().period_ns


def test_late_commands_are_counted_not_applied_in_realtime() -> None:
    core, clock, motor = _core()
    core.handle(b"A", hello())
    core.handle(b"A", command(2, [0.5], deadline_ns=clock.now_ns() - 1))
    assert core.counters["late"] == 1 and motor.writes == 0


def test_states_and_late_errors_say_how_long_commands_took() -> None:
    """`ack_lag_ns` (state) and `lag_ns` (late error): the server-clock instant minus the
    command's own `t_ns`, so a client can learn its send-to-plant latency."""
    core, clock, _ = _core()
    core.handle(b"A", hello())
    core.outbox.clear()
    core.publish()
    (state,) = replies(core.outbox, b"A", "state")
    assert state["ack_lag_ns"] is None  # nothing acknowledged yet
    sent = clock.now_ns() - 250_000  # left the client 250 us ago (same clock here)
    core.handle(b"A", command(2, [0.5], t_ns=sent, deadline_ns=clock.now_ns() + MS))
    core.outbox.clear()
    core.publish()
    (state,) = replies(core.outbox, b"A", "state")
    assert state["ack_seq"] == 2 and state["ack_lag_ns"] == 250_000
    core.outbox.clear()
    core.handle(b"A", command(3, [0.5], t_ns=sent - 2 * MS, deadline_ns=clock.now_ns() - 1))
    (err,) = replies(core.outbox, b"A", "error")
    assert err["code"] == "late" and err["lag_ns"] == 2 * MS + 250_000
    core.handle(b"A", hello(seq=10))  # a new session: its acks start afresh
    core.outbox.clear()
    core.publish()
    (state,) = replies(core.outbox, b"A", "state")
    assert state["ack_seq"] == -1 and state["ack_lag_ns"] is None


def test_limiter_scalar_path_matches_the_numpy_path_exactly() -> None:
    """Small actions are limited on Python floats; the result, the flags and what is recorded
    as the last action must be exactly those of the numpy reference, ties and signed zeros
    included, and NaN/inf still rejected."""
    rng = np.random.default_rng(1)
    for da in (1, 2, 5):
        low, high = -rng.uniform(0.5, 2, da), rng.uniform(0.5, 2, da)
        rate = rng.uniform(1, 50, da)
        fast = ActionLimiter(low=low, high=high, max_rate_per_s=rate)
        ref = ActionLimiter(low=low, high=high, max_rate_per_s=rate)
        assert fast._scalar
        for k in range(3000):
            a = rng.uniform(-3, 3, da)
            if k % 7 == 0:  # exactly on a bound, or on the rate limit's edge
                a = np.where(rng.random(da) < 0.5, low, high)
            if k % 11 == 0:
                a = np.array([-0.0, 0.0] * da)[:da]
            dt = float(rng.choice([0.0, -0.01, 0.001, float(rng.uniform(0, 0.1))]))
            if k % 13 == 0:
                a[rng.integers(da)] = rng.choice([np.nan, np.inf, -np.inf])
                for lim in (fast, ref):
                    with pytest.raises(ActionRejected, match="NaN or inf"):
                        lim.limit(a, dt_s=dt)
                continue
            got, want = fast.limit(a.copy(), dt_s=dt), ref._limit_arrays(a.copy(), dt_s=dt)
            np.testing.assert_array_equal(got.action, want.action)
            assert got.action.dtype == np.float64 and got.action.shape == (da,)
            assert (got.clamped, got.rate_limited) == (want.clamped, want.rate_limited)
            np.testing.assert_array_equal(fast.last, ref.last)
            if k % 97 == 0:  # the safe action re-bases both
                fast.safe(np.zeros(da))
                ref.safe(np.zeros(da))
    # the numpy path serves what the scalar one does not take
    assert not ActionLimiter(low=np.full(2, -np.inf), high=np.ones(2))._scalar
    assert not ActionLimiter(low=-np.ones(32), high=np.ones(32))._scalar
    lim = ActionLimiter(low=-np.ones(2), high=np.ones(2))
    res = lim.limit(np.array([3.0, -0.5], dtype=np.float32), dt_s=0.01)
    np.testing.assert_array_equal(res.action, [1.0, -0.5])
    with pytest.raises(ActionRejected):
        lim.limit(np.array([0.0, 0.0, 0.0]), dt_s=0.01)
