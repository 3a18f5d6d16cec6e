"""MujocoPlant: lockstep stepping and the realtime plant's own miss accounting (FakeClock)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from runtime import Command, EpisodeOver, FakeClock, LateCommand, Plant
from sims.plant import MujocoPlant, make_plant

PERIOD_NS = 10_000_000  # double-pendulum: 100 Hz


def _cmd(seq, value, deadline_ns):
    return Command(seq=seq, t_ns=0, action=np.array([value]), deadline_ns=deadline_ns)


def test_the_plant_implements_the_runtime_protocol():
    plant = make_plant("sim:double-pendulum")
    assert isinstance(plant, Plant)
    assert plant.spec().rate_hz == 100.0 and plant.spec().period_ns == PERIOD_NS
    plant.close()


def test_lockstep_apply_steps_one_period_and_counts_it():
    clock = FakeClock()
    plant = MujocoPlant("double-pendulum", clock=clock, seed=3)
    obs0 = plant.reset()
    plant.apply(_cmd(0, 0.5, 0))  # lockstep ignores deadlines: the plant waits
    obs1 = plant.observe()
    assert obs1.seq == obs0.seq + 1
    assert obs1.info["tick"] == 1
    np.testing.assert_array_equal(obs1.info["executed"], [0.5])
    assert plant.counters()["ticks"] == 1 and plant.counters()["applied"] == 1
    assert obs1.goal.shape == (0,) and obs1.state.dtype == np.float64


def test_lockstep_is_deterministic_under_the_seed():
    def run():
        plant = MujocoPlant("reacher-moving", seed=7)
        plant.reset()
        for k in range(30):
            plant.apply(Command(k, 0, np.array([0.3, -0.2]), 0))
        return plant.observe().state

    np.testing.assert_array_equal(run(), run())


def test_lockstep_refuses_commands_after_the_episode_ended():
    plant = MujocoPlant("double-pendulum", seed=0)
    plant.reset()
    k = 0
    while not plant.observe().done:
        plant.apply(_cmd(k, 1.0, 0))  # full force: it falls
        k += 1
    with pytest.raises(RuntimeError, match="call reset"):
        plant.apply(_cmd(k, 0.0, 0))


def test_realtime_refuses_a_command_that_crossed_the_episodes_end_and_counts_it():
    """The episode ends on the plant's own clock, possibly between a controller's observation
    and its command: `EpisodeOver` (a RuntimeError), counted, nothing applied."""
    clock = FakeClock(start_ns=1_000)
    plant = MujocoPlant("double-pendulum", mode="realtime", clock=clock, run_thread=False)
    plant.reset(seed=0)
    t0, k = clock.now_ns(), 0
    while not plant.observe().done:
        k += 1
        clock.set_ns(t0 + k * PERIOD_NS)
        assert plant.step_realtime_tick()
    before = plant.counters()
    with pytest.raises(EpisodeOver, match="send reset"):
        plant.apply(_cmd(k, 0.5, deadline_ns=clock.now_ns() + PERIOD_NS))
    after = plant.counters()
    assert after["after_end"] == before["after_end"] + 1
    assert after["applied"] == before["applied"] and after["late"] == before["late"]
    assert isinstance(EpisodeOver("x"), RuntimeError)


def test_realtime_applies_in_time_commands_and_counts_late_ones_without_applying_them():
    clock = FakeClock(start_ns=1_000)
    plant = MujocoPlant("double-pendulum", mode="realtime", clock=clock, run_thread=False)
    plant.reset(seed=0)
    t0 = clock.now_ns()

    # tick 1: command 0 arrives before its deadline -> applied
    plant.apply(_cmd(0, 0.2, deadline_ns=t0 + PERIOD_NS))
    clock.set_ns(t0 + PERIOD_NS)
    assert plant.step_realtime_tick()
    np.testing.assert_array_equal(plant.observe().info["executed"], [0.2])

    # tick 2: command 1 arrives after its deadline -> never applied, previous one held
    clock.set_ns(t0 + 2 * PERIOD_NS - 1_000)
    with pytest.raises(LateCommand):
        plant.apply(_cmd(1, -0.7, deadline_ns=t0 + 2 * PERIOD_NS - 2_000))
    clock.set_ns(t0 + 2 * PERIOD_NS)
    plant.step_realtime_tick()
    np.testing.assert_array_equal(plant.observe().info["executed"], [0.2])

    # tick 3: nothing arrives -> held again; tick 4: two arrive, the newest wins
    clock.set_ns(t0 + 3 * PERIOD_NS)
    plant.step_realtime_tick()
    plant.apply(_cmd(2, 0.1, deadline_ns=t0 + 4 * PERIOD_NS))
    plant.apply(_cmd(3, 0.3, deadline_ns=t0 + 4 * PERIOD_NS))
    plant.apply(_cmd(2, 0.9, deadline_ns=t0 + 4 * PERIOD_NS))  # older than one held: stale
    clock.set_ns(t0 + 4 * PERIOD_NS)
    plant.step_realtime_tick()
    np.testing.assert_array_equal(plant.observe().info["executed"], [0.3])

    c = plant.counters()
    assert c["ticks"] == 4
    assert c["applied"] == 2
    assert c["late"] == 1
    assert c["held"] == 2
    assert c["superseded"] == 1
    assert c["stale"] == 1
    assert c["overruns"] == 0


def test_realtime_counts_its_own_overruns_and_keeps_the_tick_schedule():
    clock = FakeClock()
    plant = MujocoPlant("double-pendulum", mode="realtime", clock=clock, run_thread=False)
    plant.reset(seed=0)
    t0 = clock.now_ns()
    clock.set_ns(t0 + 3 * PERIOD_NS)  # the plant wakes two periods late
    plant.step_realtime_tick()
    assert plant.counters()["overruns"] == 1
    assert plant.next_tick_ns == t0 + 2 * PERIOD_NS  # catches up tick by tick
    plant.step_realtime_tick()
    plant.step_realtime_tick()
    assert plant.next_tick_ns == t0 + 4 * PERIOD_NS
    assert plant.pacing()["sim_s"] == pytest.approx(0.03)


def test_realtime_thread_runs_on_a_fake_clock_and_stops_at_close():
    clock = FakeClock()
    plant = MujocoPlant(
        "bimodal", mode="realtime", clock=clock, disturbances=False, seed=0
    )
    plant.reset()
    # FakeClock sleeps return at once, so the thread runs the episode to its end as fast as
    # it can; wait for that (a bounded wait for a thread, not a timing check)
    give_up = time.perf_counter() + 30.0
    while not plant.observe().done and time.perf_counter() < give_up:
        time.sleep(0.001)
    plant.close()
    c = plant.counters()
    assert plant.observe().done
    assert c["ticks"] == c["held"] > 0  # no command was sent: every tick held
    assert c["applied"] == 0


def test_bad_commands_and_modes_are_refused():
    with pytest.raises(ValueError, match="mode='fast'"):
        MujocoPlant("double-pendulum", mode="fast")
    plant = MujocoPlant("double-pendulum")
    plant.reset()
    with pytest.raises(ValueError, match="shape \\(1,\\)"):
        plant.apply(Command(0, 0, np.zeros(3), 0))


def test_a_realtime_tick_that_is_not_due_yet_does_nothing():
    clock = FakeClock()
    plant = MujocoPlant("double-pendulum", mode="realtime", clock=clock, run_thread=False)
    plant.reset(seed=0)
    clock.advance_ns(PERIOD_NS // 2)
    assert not plant.step_realtime_tick()
    assert plant.counters()["ticks"] == 0
