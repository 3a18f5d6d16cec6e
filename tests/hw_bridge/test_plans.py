"""Protocol v2: a command's plan, negotiated, checked like the action, fed to a `Driver` plant
on the server's ticks; a v1 client keeps working (ServerCore on a FakeClock, no sockets)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hw_bridge import FirstOrderMotor, ServerConfig, ServerCore
from hw_bridge.codec import encode, encode_array, message
from runtime import FakeClock

from .helpers import replies

MS = 1_000_000
T = 5 * MS  # the motor at 200 Hz
A = b"client-a"


def _core(versions: list[int] = [1, 2]) -> tuple[ServerCore, FakeClock, FirstOrderMotor]:  # noqa: B006
    clock = FakeClock(start_ns=10**9)
    motor = FirstOrderMotor(mode="realtime", clock=clock, rate_hz=200.0)
    core = ServerCore(motor, ServerConfig(mode="realtime", watchdog_ms=100.0), clock=clock)
    core.start()
    core.handle(A, encode(message("hello", 1, 0, v=1, versions=versions, role="control")))
    return core, clock, motor


def _command(seq: int, action: float, deadline: int, *, v: int = 2, plan: Any = None,
             t0: int | None = None, dt: int = T, obs_seq: int = -1) -> bytes:
    fields: dict[str, Any] = dict(stream=7, tick=seq, obs_seq=obs_seq,
                                  action=encode_array(np.array([action])), deadline_ns=deadline)
    if plan is not None:
        fields.update(plan=encode_array(np.asarray(plan, dtype=float).reshape(-1, 1)),
                      plan_t0_ns=deadline + dt if t0 is None else t0, plan_dt_ns=dt)
    return encode(message("command", seq, 0, v=v, **fields))


def test_the_server_picks_v2_for_a_v2_client_and_v1_for_a_v1_client() -> None:
    core, _, _ = _core()
    welcome = replies(core.outbox, A, "welcome")[0]
    assert welcome["version"] == 2 and welcome["v"] == 2
    assert replies(core.outbox, A, "state")[0]["v"] == 2
    old, _, _ = _core(versions=[1])
    assert replies(old.outbox, A, "welcome")[0]["version"] == 1


def test_a_v1_session_ignores_plan_fields_and_its_commands_still_apply() -> None:
    core, clock, motor = _core(versions=[1])
    now = clock.now_ns()
    core.handle(A, _command(2, 0.2, now + T, v=1, plan=[0.3, 0.4]))
    assert core.counters["applied"] == 1 and motor.last_action[0] == pytest.approx(0.2)
    assert core.feed.n == 0  # the plan of a v1 message is an unknown field: ignored
    core.handle(A, _command(3, 0.2, now + T, v=2))  # a v2 header in a v1 session
    assert core.counters["bad_version"] == 1


def test_the_server_feeds_the_plan_to_a_driver_on_ticks_without_a_command() -> None:
    core, clock, motor = _core()
    now = clock.now_ns()
    core.tick()  # before any command: dry
    core.handle(A, _command(2, 0.1, now + T, plan=[0.2, 0.3]))
    clock.set_ns(now + T)
    core.tick()  # the command arrived since the last tick: fresh
    clock.set_ns(now + 2 * T)
    core.tick()
    assert motor.last_action[0] == pytest.approx(0.2)
    clock.set_ns(now + 3 * T)
    core.tick()
    assert motor.last_action[0] == pytest.approx(0.3)
    clock.set_ns(now + 4 * T)
    core.tick()  # the plan ran out: the driver holds its last write
    assert motor.last_action[0] == pytest.approx(0.3)
    c = core.all_counters()
    assert [c[k] for k in ("fresh", "plan_fed", "fallback", "safe", "dry")] == [1, 2, 1, 0, 1]
    assert c["applied"] == 1  # planned actions are not commands: the watchdog is not fed


def test_the_watchdog_still_trips_while_a_plan_runs_and_the_plan_is_dropped() -> None:
    core, clock, motor = _core()
    now = clock.now_ns()
    core.handle(A, _command(2, 0.5, now + T, plan=[0.5] * 100))  # 500 ms of plan
    for k in range(1, 30):  # 145 ms: past the 100 ms watchdog
        clock.set_ns(now + k * T)
        core.tick()
    c = core.all_counters()
    assert c["watchdog_trips"] == 1 and c["safe"] >= 8
    assert motor.last_action[0] == 0.0  # the safe action, not the plan's 0.5
    assert c["plan_fed"] <= 20  # fed only until the trip (100 ms / 5 ms)


@pytest.mark.parametrize(
    ("plan", "why"),
    [([[0.2], [np.nan]], "NaN"), ([[np.inf]], "NaN"), (np.zeros((2, 2)), "shape"),
     (np.zeros(2), "shape")],
)
def test_a_plan_with_a_bad_row_rejects_the_whole_command(plan: Any, why: str) -> None:
    core, clock, motor = _core()
    now = clock.now_ns()
    fields: dict[str, Any] = dict(stream=7, tick=2, obs_seq=-1,
                                  action=encode_array(np.array([0.5])), deadline_ns=now + T,
                                  plan=encode_array(np.asarray(plan, dtype=float)),
                                  plan_t0_ns=now + 2 * T, plan_dt_ns=T)
    core.handle(A, encode(message("command", 2, 0, v=2, **fields)))
    assert core.counters["rejected"] == 1 and core.counters["applied"] == 0
    assert why in replies(core.outbox, A, "error")[-1]["message"]
    assert motor.last_action[0] == 0.0 and core.limiter.last is not None
    assert core.limiter.last[0] == 0.0  # the rejected action left no trace in the limiter


def test_a_plan_for_the_commands_own_tick_or_earlier_is_rejected() -> None:
    core, clock, _ = _core()
    now = clock.now_ns()
    core.handle(A, _command(2, 0.5, now + T, plan=[0.5], t0=now + T))
    assert core.counters["rejected"] == 1


def test_plan_rows_are_clamped_and_rate_limited_like_actions() -> None:
    core, clock, _ = _core()  # the motor: effort in [-1, 1], at most 50 /s (0.25 per tick)
    now = clock.now_ns()
    core.handle(A, _command(2, 0.0, now + T, plan=[5.0, -5.0]))
    assert core.counters["plans_limited"] == 1
    np.testing.assert_allclose(core.feed._buf[:2, 0], [0.25, 0.0])  # clamp, then the chain
    assert core.feed.n == 2
