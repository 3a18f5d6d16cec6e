"""The package layers at run time: what importing the floor, or loading a planner, pulls in.

Each check runs in a fresh interpreter, so that modules other tests imported do not count.
`.importlinter` states the same layers for the static imports (`make lint`).
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "mujoco", "gymnasium", "zmq")


def _loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    """Run `code` in a fresh interpreter; which of `names` are in its sys.modules after it."""
    report = f"print(json.dumps([m for m in {names!r} if m in sys.modules]))"
    probe = f"{code}\nimport json, sys\n{report}"
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def test_the_runtime_floor_imports_no_heavy_library_and_no_upper_package() -> None:
    code = "import runtime, runtime.loop, runtime.protocols"
    assert _loaded_after(code, (*HEAVY, "policies", "sims", "hw_bridge")) == []


def test_every_runtime_core_module_imports_no_heavy_library() -> None:
    code = (
        "import importlib, pkgutil, runtime\n"
        "for m in pkgutil.iter_modules(runtime.__path__):\n"
        "    if m.name != 'cli':\n"
        "        importlib.import_module('runtime.' + m.name)"
    )
    assert _loaded_after(code, (*HEAVY, "policies", "sims", "hw_bridge")) == []


def test_loading_a_shipped_planner_imports_no_simulator() -> None:
    code = """
import dataclasses
import numpy as np
import policies
from runtime.protocols import PlantSpec

ckpt = policies.load_checkpoint(policies.resolve_policy("rolling:double-pendulum")[0])
Ds, Da, Dg = ckpt.dims
rate = policies.model_rate_hz(ckpt)
assert rate == 100.0, rate
spec = PlantSpec(
    name="double-pendulum", state_dim=Ds, action_dim=Da, goal_dim=Dg,
    action_low=-np.ones(Da), action_high=np.ones(Da), rate_hz=rate,
)
for rate_hz in (rate, 2 * rate):  # the model's own rate, and a faster plant (RateAdapter)
    s = dataclasses.replace(spec, rate_hz=rate_hz)
    planner = policies.load_planner("rolling:double-pendulum", spec=s)
    getattr(planner, "close", lambda: None)()
"""
    assert _loaded_after(code, ("mujoco", "sims", "gymnasium")) == []


def test_every_shipped_checkpoint_gives_its_rate_without_a_simulator() -> None:
    code = """
import policies

for name in policies.shipped_policies():
    ckpt = policies.load_checkpoint(policies.resolve_policy(name)[0])
    assert ckpt.train.get("rate_hz", 0) > 0, name
    assert policies.model_rate_hz(ckpt) == ckpt.train["rate_hz"], name
"""
    assert _loaded_after(code, ("mujoco", "sims", "gymnasium")) == []
