"""`rtdiff run` and `rtdiff serve` with a user's plant, model and policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hw_bridge import RemotePlant
from runtime import Command
from runtime.cli import main
from runtime.cli.plantproc import wait_for_server

MOTOR = "py:tests.byo.userstuff:motor"
TINY = """<mujoco model="slider">
  <option timestep="0.005"/>
  <worldbody><body><joint name="x" type="slide" axis="1 0 0" damping="1"/>
  <geom type="box" size=".1 .1 .1" mass="1"/></body></worldbody>
  <actuator><motor name="push" joint="x" ctrlrange="-1 1"/></actuator>
</mujoco>"""


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["run", *argv, "--json", "--no-rt"]) == 0
    out: dict = json.loads(capsys.readouterr().out)
    return out


def test_a_py_plant_and_a_py_policy_run_in_lockstep(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(["--plant", MOTOR, "--plant-arg", "episode_ticks=40", "--policy",
                "py:tests.byo.userstuff:pd", "--policy-arg", "kp=3", "--episodes", "2"], capsys)
    assert out["ticks"] == 80 and out["episodes"] == 2 and out["task"] == "first-order-motor"
    assert out["user_policy"]["calls"] >= 80 and out["user_policy"]["errors"] == 0


def test_a_buggy_policy_is_a_one_line_error_in_lockstep(
    capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "--plant", MOTOR, "--policy", "py:tests.byo.userstuff:Buggy",
                 "--policy-arg", "every=5", "--episodes", "1", "--no-rt"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rtdiff run: error: policy py:tests.byo.userstuff:Buggy raised "
                          "ZeroDivisionError: bad luck at tick")
    assert len(err.splitlines()) == 1


def test_a_buggy_policy_yields_counted_fallbacks_in_realtime(
    capsys: pytest.CaptureFixture[str]
) -> None:
    out = _run(["--plant", MOTOR, "--plant-arg", "episode_ticks=1000", "--mode", "realtime",
                "--policy", "py:tests.byo.userstuff:Buggy", "--policy-arg", "every=4",
                "--policy-arg", "how=nan", "--seconds", "0.5"], capsys)
    up = out["user_policy"]
    assert up["nonfinite"] >= 10 and up["errors"] == 0
    # every failed call of the run's ticks is a counted fallback; the policy's own count also
    # holds the loop's warm-up calls (they measure its latency before the first tick)
    assert 10 <= out["fallbacks"]["nonfinite"] <= up["nonfinite"]
    assert "non-finite action" in up["first_error"]


def test_a_tiny_mjcf_runs_in_lockstep_and_realtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    xml = tmp_path / "slider.xml"
    xml.write_text(TINY)
    policy = tmp_path / "push.py"
    policy.write_text("import numpy as np\ndef policy(state):\n    return np.ones(1)\n")
    for mode, extra in (("lockstep", ["--episodes", "1"]), ("realtime", ["--seconds", "0.4"])):
        out = _run(["--plant", f"mjcf:{xml}", "--plant-arg", "episode_s=0.3", "--rate", "50",
                    "--policy", f"py:{policy}:policy", "--mode", mode, *extra], capsys)
        assert out["task"] == "slider" and out["rate_hz"] == 50
        assert out["ticks"] >= 15 if mode == "realtime" else out["ticks"] == 15


@pytest.mark.parametrize(("argv", "needle"), [
    (["--plant", "mjcf:/nope/arm.xml", "--policy", "expert"], "no MJCF file /nope/arm.xml"),
    (["--plant", MOTOR, "--plant-arg", "wheels=4", "--policy", "expert"],
     "unknown plant arg"),
    (["--plant", "py:tests.byo.userstuff:NOT_A_PLANT", "--policy", "expert"],
     "neither a Plant, a Driver class nor a factory"),
    (["--plant", "sim:double-pendulum", "--policy", "py:tests.byo.userstuff:nothing"],
     "has no attribute 'nothing'"),
    (["--plant", "gym:NoSuchEnv-v0", "--policy", "expert"], "gym:NoSuchEnv-v0"),
    (["--plant", "sim:double-pendulum", "--policy", "expert", "--policy-arg", "a=1"],
     "--policy-arg applies to py: policies"),
])
def test_bad_specs_exit_2_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *argv, "--episodes", "1", "--no-rt"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_serve_takes_a_py_driver(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/plant"
    server = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", "--plant", MOTOR, "--plant-arg",
         "episode_ticks=1000", "--realtime", "--bind", address],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for_server(server)
        with RemotePlant(address) as plant:
            assert plant.spec().name == "first-order-motor" and plant.spec().rate_hz == 200
            plant.reset(0)
            obs = plant.next_observation(1.0)
            for k in range(20):
                now = plant.clock.now_ns()
                plant.apply(Command(k, now, np.ones(1), now + 4_000_000, obs_t_ns=obs.t_ns))
                obs = plant.next_observation(1.0)
            assert obs.state[1] > 0  # the motor turns under the commands
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_serve_needs_one_plant(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--seconds", "0.1"]) == 2
    assert "give one of --plant SPEC or --task TASK" in capsys.readouterr().err
    assert main(["serve", "--plant", "tcp://127.0.0.1:1", "--seconds", "0.1"]) == 2
    assert "an endpoint cannot be served" in capsys.readouterr().err


def test_collect_records_any_plant_driven_by_any_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sims.datasets import load_episodes

    out = tmp_path / "motor"
    assert main(["collect", "--plant", MOTOR, "--plant-arg", "episode_ticks=30", "--policy",
                 "py:tests.byo.userstuff:pd", "--episodes", "2", "--out", str(out)]) == 0
    assert "wrote 2 episodes (60 ticks) of first-order-motor (200 Hz)" in capsys.readouterr().out
    meta = json.loads((out / "rtdiff.json").read_text())
    assert meta["rate_hz"] == 200 and meta["action_low"] == [-1.0] and meta["dart_prob"] == 0
    eps = list(load_episodes(str(out)))
    assert len(eps) == 2 and eps[0].states.shape == (31, 2) and eps[0].actions.shape == (30, 1)
    # the labels are the policy's actions: pd(state) at each recorded state
    from tests.byo.userstuff import pd
    np.testing.assert_allclose(eps[0].actions[0], pd(eps[0].states[0].astype(np.float64)),
                               rtol=1e-6)


@pytest.mark.parametrize(("argv", "needle"), [
    ([], "give one of --task TASK"),
    (["--plant", MOTOR], "--plant needs --policy SPEC"),
    (["--task", "double-pendulum", "--policy", "expert"], "--policy goes with --plant"),
    (["--plant", MOTOR, "--policy", "py:tests.byo.userstuff:Buggy"], "raised ZeroDivisionError"),
])
def test_collect_errors_are_one_line(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["collect", *argv, "--episodes", "1", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "d").exists()


def test_bench_deadline_measures_a_users_plant_and_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bench", "deadline", "--plant", MOTOR, "--plant-arg", "episode_ticks=100000",
                 "--rates", "100", "--planners", "py:tests.byo.userstuff:pd", "--seeds", "1",
                 "--seconds", "1", "--out", str(tmp_path), "--json"])
    assert code == 0
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert [(c["task"], c["planner"], c["rate_hz"]) for c in cells] == [
        ("motor", "pd", 100.0)]
    assert "error" not in cells[0] and cells[0]["ticks"] >= 50
    run = json.loads((tmp_path / "runs" / "motor_pd_100hz_s0.json").read_text())
    assert run["plant_spec"] == MOTOR and run["user_policy"]["errors"] == 0
