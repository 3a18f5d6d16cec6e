"""The robot side needs only the core dependencies (numpy, pyzmq, msgpack): `runtime` and
`hw_bridge` import, check and serve a `py:` driver in a process where torch, MuJoCo,
gymnasium and every other extra cannot be imported at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from hw_bridge import RemotePlant
from runtime import Command
from runtime.cli.plantproc import wait_for_server

# every import of these (or their submodules) fails in the child as in a venv without them
FORBIDDEN = ("torch", "mujoco", "gymnasium", "gymnasium_robotics", "minari", "h5py",
             "matplotlib", "safetensors", "ray", "mcap", "dynamixel_sdk")

BLOCKER = f"""
import sys
FORBIDDEN = {FORBIDDEN!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
from runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _core_only(*argv: str, **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", BLOCKER, *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def test_a_simulated_plant_says_which_extra_it_needs() -> None:
    proc = _core_only("run", "--plant", "sim:double-pendulum", "--policy", "expert")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.startswith("rtdiff run: error: this needs ") and err.count("\n") == 1
    assert err.endswith("which is not installed (pip install 'rtdiff[sim]')\n"), err


def test_a_learned_policy_says_which_extra_it_needs() -> None:
    proc = _core_only("run", "--plant", "py:tests.byo.userstuff:motor", "--policy",
                      "rolling:double-pendulum", "--episodes", "1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err == ("rtdiff run: error: this needs torch, which is not installed "
                   "(pip install 'rtdiff[learn]')\n")


def test_check_runs_a_py_driver_with_only_the_core() -> None:
    proc = _core_only("check", "--plant", "py:tests.byo.userstuff:motor")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip().endswith("rtdiff check: passed")


def test_serve_runs_a_py_driver_with_only_the_core(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/robot"
    server = _core_only("serve", "--plant", "py:tests.byo.userstuff:motor", "--plant-arg",
                        "episode_ticks=1000", "--realtime", "--bind", address)
    try:
        wait_for_server(server)
        with RemotePlant(address) as plant:
            plant.reset(0)
            obs = plant.next_observation(1.0)
            for k in range(10):
                now = plant.clock.now_ns()
                plant.apply(Command(k, now, np.ones(1), now + 4_000_000, obs_t_ns=obs.t_ns))
                obs = plant.next_observation(1.0)
            assert obs.state[1] > 0
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=10)
        assert server.returncode == 0, err
        assert "not installed" not in err and "Traceback" not in err
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_module_not_found_names_the_extra(capsys: object, monkeypatch: object) -> None:
    import runtime.cli as cli

    def missing(args: object) -> int:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(cli, "_resolve", lambda target: missing)  # type: ignore[attr-defined]
    assert cli.main(["tasks"]) == 2
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert err == ("rtdiff tasks: error: this needs torch, which is not installed "
                   "(pip install 'rtdiff[learn]')\n")
