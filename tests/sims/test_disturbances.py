"""Disturbances are seeded, recorded, switchable, and independent of the controller."""

from __future__ import annotations

import numpy as np
import pytest

from sims.disturbances import DisturbanceConfig, Disturber
from sims.registry import make_env


def _pushes_and_switches(name, seed, policy, ticks=250, **config):
    env = make_env(name, **config)
    env.reset(seed=seed)
    pushes, switches = [], []
    for k in range(ticks):
        _, _, term, trunc, info = env.step(policy(k))
        pushes.append(info.get("push", np.zeros(3)))
        switches.append("goal_switch" in info)
        if term or trunc:
            break
    return np.array(pushes), np.array(switches)


def test_disturbances_are_reproducible_and_do_not_depend_on_the_actions():
    cfg = {"push_rate_hz": 2.0, "goal_switch_rate_hz": 1.0}
    p1, s1 = _pushes_and_switches("reacher-moving", 3, lambda k: np.zeros(2), disturbances=cfg)
    p2, s2 = _pushes_and_switches(
        "reacher-moving", 3, lambda k: np.full(2, np.sin(k)), disturbances=cfg
    )
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(s1, s2)
    assert np.any(p1) and np.any(s1)
    p3, _ = _pushes_and_switches("reacher-moving", 4, lambda k: np.zeros(2), disturbances=cfg)
    assert not np.array_equal(p1, p3)


def test_disturbances_false_turns_every_disturbance_off():
    p, s = _pushes_and_switches(
        "reacher-moving", 3, lambda k: np.zeros(2), disturbances=False
    )
    assert not np.any(p) and not np.any(s)
    env = make_env("reacher-moving", disturbances=False)
    o1, _ = env.reset(seed=1)
    np.testing.assert_array_equal(o1["state"], env.unwrapped.true_state())


def test_a_push_lasts_its_duration_and_has_a_magnitude_in_range():
    cfg = DisturbanceConfig(push_rate_hz=1.0, push_force_n=(5.0, 6.0), push_duration_s=0.05)
    d = Disturber(cfg, rate_hz=100.0, state_dim=2, action_dim=1)
    d.reset(seed=0, neutral_action=np.zeros(1))
    forces = np.array([d.push_force() for _ in range(2000)])
    on = np.abs(forces[:, 0]) > 0
    assert 5.0 <= np.abs(forces[on, 0]).min() and np.abs(forces[on, 0]).max() <= 6.0
    starts = np.flatnonzero(on[1:] & ~on[:-1]) + 1
    assert len(starts) > 5
    for s in starts:
        assert on[s : s + 5].all()


def test_actuation_delay_shifts_the_action_by_its_ticks():
    cfg = DisturbanceConfig(action_delay_ticks=2)
    d = Disturber(cfg, rate_hz=50.0, state_dim=2, action_dim=1)
    d.reset(seed=0, neutral_action=np.zeros(1))
    out = [float(d.delay(np.array([float(k + 1)]))[0]) for k in range(4)]
    assert out == [0.0, 0.0, 1.0, 2.0]


def test_sensor_noise_changes_the_observation_not_the_true_state():
    env = make_env("reacher-moving", disturbances={"sensor_noise_std": 0.1})
    obs, _ = env.reset(seed=0)
    assert not np.allclose(obs["state"], env.unwrapped.true_state())


def test_bad_disturbance_configs_name_the_value():
    with pytest.raises(ValueError, match="push_force_n"):
        DisturbanceConfig(push_force_n=(3.0, 1.0))
    with pytest.raises(ValueError, match="action_delay_ticks=-1"):
        DisturbanceConfig(action_delay_ticks=-1)
