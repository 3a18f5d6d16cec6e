"""The commands docs/byo.md walks a new user through, on the shipped examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.cli import main

ROOT = Path(__file__).resolve().parents[2]
EX = ROOT / "examples" / "byo"


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main([*argv, "--json"]) == 0
    out: dict = json.loads(capsys.readouterr().out)
    return out


def test_my_mjcf_with_my_policy_reaches_its_target(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(["run", "--plant", f"mjcf:{EX}/arm.xml", "--plant-arg", "keyframe=folded",
                 "--policy", f"py:{EX}/arm_policy.py:reach", "--episodes", "1"], capsys)
    assert out["task"] == "two-link-arm" and out["rate_hz"] == 100 and out["ticks"] == 300
    from sims import MujocoPlant
    from sims.generic import MjcfEnv

    plant = MujocoPlant(env=MjcfEnv(str(EX / "arm.xml"), keyframe="folded"))
    obs = plant.reset()
    import importlib.util

    spec = importlib.util.spec_from_file_location("arm_policy", EX / "arm_policy.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from runtime import Command

    for k in range(300):
        plant.apply(Command(k, 0, np.clip(mod.reach(obs.state), [-2, -1], [2, 1]), 2**62))
        obs = plant.observe()
    np.testing.assert_allclose(obs.state[:2], [1.0, 0.5], atol=0.05)  # at the target
    plant.close()


def test_a_gymnasium_env_with_my_policy(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(["run", "--plant", "gym:InvertedPendulum-v5", "--policy",
                 f"py:{EX}/pendulum_policy.py:policy", "--episodes", "1"], capsys)
    assert out["rate_hz"] == 25 and out["ticks"] == 1000  # balanced the whole episode
    assert out["mean_return"] == 1000


def test_my_robot_passes_the_checker(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(["check", "--plant", f"py:{EX}/my_robot.py:MyRobot", "--mode", "realtime",
                 "--seconds", "0.3"], capsys)
    assert out["failed"] == 0
