"""`mjcf:` and `gym:` plants (sims.generic): the generic path runs the built-in tasks' physics
bit for bit, and a user's model with its own rate, state and reset."""

from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np
import pytest

from runtime import Command
from sims import MujocoPlant, task_names
from sims.generic import GymEnv, MjcfEnv, control_substeps, default_rate_hz, export_task
from sims.registry import make_task_env

ARM = """
<mujoco model="two-link">
  <option timestep="0.005"/>
  <worldbody>
    <body name="l1">
      <joint name="shoulder" type="hinge" axis="0 0 1" damping="0.1"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02"/>
      <body name="l2" pos="0.3 0 0">
        <joint name="elbow" type="hinge" axis="0 0 1" damping="0.1"/>
        <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02"/>
        <site name="tip" pos="0.3 0 0"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor name="m_shoulder" joint="shoulder" ctrlrange="-2 2"/>
    <motor name="m_elbow" joint="elbow" ctrlrange="-1 1"/>
  </actuator>
  <sensor>
    <framepos name="tip_pos" objtype="site" objname="tip"/>
  </sensor>
  <keyframe>
    <key name="bent" qpos="0.5 -1.0"/>
  </keyframe>
</mujoco>
"""


@pytest.fixture
def arm_xml(tmp_path: Path) -> str:
    path = tmp_path / "arm.xml"
    path.write_text(ARM)
    return str(path)


def _cmd(k: int, a: np.ndarray) -> Command:
    return Command(seq=k, t_ns=0, action=a, deadline_ns=2**62)


def test_a_user_model_takes_its_limits_rate_state_and_keyframe(arm_xml: str) -> None:
    env = MjcfEnv(arm_xml, keyframe="bent")
    info = env.task
    assert info.name == "two-link"
    assert info.action_low == (-2.0, -1.0) and info.action_high == (2.0, 1.0)
    assert info.rate_hz == pytest.approx(100.0) and env.n_substeps == 2
    assert info.state_names == ("shoulder_pos", "elbow_pos", "shoulder_vel", "elbow_vel")
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["state"], [0.5, -1.0, 0.0, 0.0])
    sensors = MjcfEnv(arm_xml, state="sensors", rate_hz=40)
    assert sensors.task.state_dim == 3 and sensors.n_substeps == 5
    elbow = MjcfEnv(arm_xml, joints="elbow")
    assert elbow.task.state_dim == 2


def test_a_user_model_runs_in_lockstep_and_realtime(arm_xml: str) -> None:
    for mode in ("lockstep", "realtime"):
        plant = MujocoPlant(env=MjcfEnv(arm_xml, episode_ticks=20), mode=mode, run_thread=False)
        obs = plant.reset(seed=1)
        for k in range(20):
            plant.apply(_cmd(k, np.array([1.0, -0.5])))
            if mode == "realtime":
                plant._next_tick_ns = 0  # due now: the test steps the plant itself
                assert plant.step_realtime_tick()
            obs = plant.observe()
        assert obs.truncated and obs.info["success"] is False
        assert obs.state[2] > 0 and obs.state[3] < 0  # the motors turned the joints
        plant.close()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"state": "pixels"}, "must be 'joints' or 'sensors'"),
    ({"keyframe": "nope"}, "no keyframe named 'nope'"),
    ({"joints": ["wrist"]}, "no joint named 'wrist'"),
    ({"rate_hz": 30.0}, "not a whole number"),
    ({"reset_noise": -1.0}, "reset_noise"),
])
def test_bad_settings_are_one_line_errors(arm_xml: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        MjcfEnv(arm_xml, **kwargs)
    assert "\n" not in str(err.value)


def test_a_model_without_limits_or_actuators_is_refused(tmp_path: Path) -> None:
    free = tmp_path / "free.xml"
    free.write_text(ARM.replace(' ctrlrange="-2 2"', ""))
    with pytest.raises(ValueError, match="m_shoulder have no ctrlrange"):
        MjcfEnv(str(free))
    none = tmp_path / "none.xml"
    none.write_text("<mujoco><worldbody><body><joint/><geom size='.1'/></body></worldbody>"
                    "</mujoco>")
    with pytest.raises(ValueError, match="no actuators"):
        MjcfEnv(str(none))
    with pytest.raises(ValueError, match="no MJCF file"):
        MjcfEnv(str(tmp_path / "missing.xml"))


def test_rates_and_substeps() -> None:
    assert control_substeps(0.002, 100.0) == 5
    assert default_rate_hz(0.002) == pytest.approx(100.0)
    assert default_rate_hz(0.03) == pytest.approx(1 / 0.03)
    with pytest.raises(ValueError):
        control_substeps(0.002, 300.0)


# pointmaze's env clips the ball's speed before each step (gymnasium-robotics' PointEnv), which
# a plain MJCF model cannot say: its exported model runs, with free-speed physics
SAME_PHYSICS = [t for t in task_names() if t != "pointmaze"]


@pytest.mark.parametrize("task", SAME_PHYSICS)
def test_a_built_in_task_as_mjcf_steps_bit_equal(task: str, tmp_path: Path) -> None:
    """From the same start and with the same actions, `mjcf:` on the exported model and `sim:`
    give the same qpos/qvel, tick after tick: the generic path is the task's physics."""
    path = export_task(task, str(tmp_path / f"{task}.xml"))
    sim = make_task_env(task, disturbances=False)
    gen = MjcfEnv(path)
    assert gen.task.name == task and gen.task.rate_hz == sim.task.rate_hz
    assert gen.task.episode_ticks == sim.task.episode_ticks
    assert gen.n_substeps == sim.n_substeps
    sim.reset(seed=3)
    gen.reset(seed=3)
    for src, dst in ((sim.data.qpos, gen.data.qpos), (sim.data.qvel, gen.data.qvel)):
        dst[:] = src
    mujoco.mj_forward(gen.model, gen.data)
    rng = np.random.default_rng(0)
    low, high = np.array(sim.task.action_low), np.array(sim.task.action_high)
    ticks = 0
    for ticks in range(1, 101):  # noqa: B007 (counted after the loop)
        a = 0.3 * rng.uniform(low, high)
        _, _, terminated, _, _ = sim.step(a)
        gen.step(a)
        np.testing.assert_array_equal(gen.data.qpos, sim.data.qpos)
        np.testing.assert_array_equal(gen.data.qvel, sim.data.qvel)
        if terminated:  # the task's own end (a fallen pendulum); the model has none
            break
    assert ticks >= 20


def test_double_pendulum_as_mjcf_gives_the_same_run_for_the_same_seed(tmp_path: Path) -> None:
    """Its state is qpos, qvel and its reset gymnasium's (reset_noise 0.1): the expert's whole
    lockstep episode matches `sim:double-pendulum` with disturbances off."""
    path = export_task("double-pendulum", str(tmp_path / "double-pendulum.xml"))
    from sims.experts import make_expert

    states = []
    for plant in (MujocoPlant("double-pendulum", disturbances=False, seed=7),
                  MujocoPlant(env=MjcfEnv(path, reset_noise=0.1), seed=7)):
        spec = plant.spec()
        expert = make_expert(spec.name, spec)
        obs = plant.reset()
        expert.reset(obs)
        run = [obs.state.copy()]
        for k in range(300):
            expert.observe(obs)
            expert.refine(10**9)
            plant.apply(_cmd(k, np.asarray(expert.action(), dtype=np.float64).copy()))
            obs = plant.observe()
            run.append(obs.state.copy())
        plant.close()
        states.append(np.array(run))
    np.testing.assert_array_equal(states[0], states[1])


def test_a_gymnasium_env_is_a_plant_at_its_own_rate() -> None:
    env = GymEnv("InvertedPendulum-v5")
    assert env.task.rate_hz == pytest.approx(25.0)  # dt = 0.002 s x frame_skip 20
    assert env.task.state_dim == 4 and env.task.action_low == (-3.0,)
    plant = MujocoPlant(env=env, seed=0)
    obs = plant.reset()
    for k in range(5):
        plant.apply(_cmd(k, np.array([0.1])))
        obs = plant.observe()
    assert obs.state.shape == (4,) and not obs.done
    plant.close()
    with pytest.raises(ValueError, match="faster or slower than real time"):
        GymEnv("InvertedPendulum-v5", rate_hz=100.0)
    with pytest.raises(ValueError, match="not a Box"):
        GymEnv("CartPole-v1")


def test_rtdiff_tasks_exports_every_model(tmp_path: Path) -> None:
    from runtime.cli import main

    assert main(["tasks", "--export-mjcf", str(tmp_path)]) == 0
    for task in task_names():
        env = MjcfEnv(str(tmp_path / f"{task}.xml"))
        assert env.task.name == task and env.task.rate_hz == make_task_env(task).task.rate_hz
