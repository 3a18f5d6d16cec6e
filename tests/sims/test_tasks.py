"""Every registered task: a valid gymnasium env, deterministic under a seed, stated once."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sims
from runtime import PlantSpec
from sims.registry import get_task, make_env, plant_spec, task_names

TASKS = task_names()


def test_the_registry_holds_the_five_benchmark_tasks():
    assert set(TASKS) >= {"double-pendulum", "reacher-moving", "pointmaze", "pusher", "bimodal"}


@pytest.mark.parametrize("name", TASKS)
def test_every_task_passes_gymnasium_check_env(name):
    env = make_env(name)
    check_env(env, skip_render_check=True)
    env.close()


def _rollout(name, seed, ticks=40):
    env = make_env(name)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(123)
    states = [obs["state"]]
    rewards = []
    for _ in range(ticks):
        obs, r, term, trunc, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        states.append(obs["state"])
        rewards.append(r)
        if term or trunc:
            break
    env.close()
    return np.array(states), np.array(rewards)


@pytest.mark.parametrize("name", TASKS)
def test_every_task_is_deterministic_under_a_seed(name):
    s1, r1 = _rollout(name, seed=5)
    s2, r2 = _rollout(name, seed=5)
    s3, _ = _rollout(name, seed=6)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(r1, r2)
    assert s1.shape != s3.shape or not np.array_equal(s1, s3)


@pytest.mark.parametrize("name", TASKS)
def test_task_info_states_rate_length_limits_and_sizes_in_one_place(name):
    info = get_task(name)
    spec = plant_spec(name)
    assert isinstance(spec, PlantSpec)
    assert spec.rate_hz == info.rate_hz and spec.episode_ticks == info.episode_ticks
    assert spec.state_dim == info.state_dim and spec.goal_dim == info.goal_dim
    env = make_env(name, seed=0)
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (info.state_dim,)
    assert obs.get("goal", np.zeros(0)).shape == (info.goal_dim,)
    assert env.action_space.shape == (info.action_dim,)
    np.testing.assert_array_equal(env.action_space.low, spec.action_low)
    assert info.success_metric and info.description and info.expert


def test_an_episode_is_truncated_at_the_tasks_length_and_reports_success():
    env = make_env("double-pendulum", seed=0, disturbances=False)
    env.reset(seed=0)
    info = {}
    for _ in range(get_task("double-pendulum").episode_ticks):
        _, _, term, trunc, info = env.step(np.zeros(1))
        if term or trunc:
            break
    assert "success" in info and isinstance(info["success"], bool)


def test_changing_the_rate_keeps_the_episode_duration():
    env = make_env("double-pendulum", rate_hz=200.0)
    assert env.unwrapped.task.rate_hz == 200.0
    assert env.unwrapped.task.episode_ticks == 2000
    assert env.unwrapped.model.opt.timestep == pytest.approx(0.005)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown task 'nope'; known: double-pendulum"):
        get_task("nope")
    with pytest.raises(KeyError, match="unknown task"):
        make_env("nope")


def test_a_nonfinite_action_is_refused():
    env = sims.make_env("reacher-moving", seed=0)
    with pytest.raises(ValueError, match="action must be finite"):
        env.step(np.array([np.nan, 0.0]))
