"""RemoteEnv under gymnasium's checker; the `rtdiff serve` and `rtdiff keys` faces."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hw_bridge import RemoteEnv, RemotePlant
from runtime import Command
from runtime.cli import main


def test_remote_env_passes_check_env_and_steps(serve) -> None:
    from gymnasium.utils.env_checker import check_env

    rs = serve(mode="lockstep")
    env = RemoteEnv(rs.address)
    try:
        check_env(env, skip_render_check=True)
        obs, info = env.reset(seed=1)
        assert obs.shape == (2,) and info["stale"] is False
        for _ in range(5):
            obs, reward, _, _, info = env.step(np.array([0.2]))
        assert env.observation_space.contains(obs) and reward <= 0.0
    finally:
        env.close()


def test_remote_env_in_realtime_returns_the_next_state(serve) -> None:
    rs = serve(mode="realtime")
    env = RemoteEnv(rs.address)
    try:
        env.reset(seed=0)
        t = [env.step(np.array([0.1]))[4]["t_ns"] for _ in range(3)]
        assert t[0] < t[1] < t[2]
    finally:
        env.close()


def test_rtdiff_keys_writes_a_key_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "--out", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "authorized_clients" / "client.key").exists()
    assert main(["keys", "--out", str(tmp_path / "k"), "--client", "bad name!"]) == 2
    assert "--client" in capsys.readouterr().err


def test_rtdiff_serve_refuses_a_missing_key_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--task", "double-pendulum", "--keys", str(tmp_path / "none")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "server.key_secret" in err[0]


def test_rtdiff_serve_serves_a_sim_task(tmp_path: Path) -> None:
    pytest.importorskip("mujoco")
    address = f"ipc://{tmp_path}/serve.sock"
    codes: list[int] = []
    argv = ["serve", "--task", "double-pendulum", "--bind", address, "--seconds", "1.5"]
    th = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    th.start()
    plant = RemotePlant(address, connect_timeout_s=10.0)
    try:
        spec = plant.spec()
        assert spec.name == "double-pendulum" and plant.mode == "lockstep"
        plant.reset(seed=0)
        for k in range(5):
            now = plant.clock.now_ns()
            plant.apply(
                Command(seq=k, t_ns=now, action=np.zeros(spec.action_dim), deadline_ns=now + 10**7)
            )
        c = plant.counters()
        assert c["applied"] == 5 and c["plant_applied"] == 5
    finally:
        plant.close()
    th.join(10.0)
    assert codes == [0]


def test_rtdiff_serve_bad_task_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("mujoco")
    t0 = time.perf_counter()
    assert main(["serve", "--task", "no-such-task", "--bind", "tcp://127.0.0.1:*"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert time.perf_counter() - t0 < 30
