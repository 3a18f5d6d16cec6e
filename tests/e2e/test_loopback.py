"""End to end over loopback: a realtime MuJoCo plant served in its own process, a tiny rolling
checkpoint driving it through `rtdiff run` in another, a few seconds at 50 Hz.

Asserts the expected number of ticks, a clean exit, the JSON contract, controller and plant miss
counts in agreement (within the tolerance documented in docs/runtime.md) and a readable trace.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from policies import Checkpoint, Denoiser, DenoiserConfig, Normalizer, PlannerConfig
from policies.checkpoint import save_checkpoint
from runtime.sidecar import load_sidecar
from runtime.trace import read_trace
from sims import plant_spec

RATE_HZ = 50
SECONDS = 3
CONTRACT_KEYS = {"ticks", "misses", "miss_rate", "compute_ms", "lateness_ms", "steps_per_tick",
                 "episodes", "success_rate", "mean_return", "fallbacks", "plant_misses"}


@pytest.fixture(scope="module")
def tiny_rolling(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights are enough here: this checks plumbing and timing, not control quality."""
    torch.manual_seed(0)
    spec = plant_spec("double-pendulum")
    cfg = DenoiserConfig(state_dim=spec.state_dim, action_dim=spec.action_dim,
                         goal_dim=spec.goal_dim, horizon=4, n_layer=1, n_head=2, n_embd=16)
    rng = np.random.default_rng(0)
    norm = Normalizer.fit(rng.normal(size=(64, spec.state_dim)),
                          rng.normal(size=(64, spec.action_dim)),
                          np.zeros((64, spec.goal_dim)))
    ckpt = Checkpoint("rolling", "double-pendulum", Denoiser(cfg).eval(), norm,
                      PlannerConfig(clean_ticks=3), train={"rate_hz": RATE_HZ})
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "rolling-tiny")


@pytest.fixture
def served_plant() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", "--task", "double-pendulum",
         "--realtime", "--rate", str(RATE_HZ), "--bind", address],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert server.stderr is not None
    line = server.stderr.readline()
    assert "rtdiff serve:" in line, line
    try:
        yield address
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_rolling_planner_drives_a_served_plant_over_loopback(
    tiny_rolling: Path, served_plant: str, tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "run", "--policy", str(tiny_rolling),
         "--plant", served_plant, "--mode", "realtime", "--rate", str(RATE_HZ),
         "--seconds", str(SECONDS), "--trace", str(trace), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert CONTRACT_KEYS <= set(out)
    # the rolling planner is anytime: by default its command leaves after the tick's first
    # step and it refines on for later ticks (more than one step per tick in total)
    assert out["emit_after_steps"] == 1 and out["steps_per_tick"]["max"] > 1, out
    # Skipped ticks count as ticks (and misses); the last tick may jump past the end.
    assert RATE_HZ * SECONDS <= out["ticks"] <= RATE_HZ * SECONDS + out["skipped"]
    # docs/runtime.md, "Controller and plant miss counts": the plant never sees many more late
    # commands than the controller counted, and while the controller keeps up (<= 1 % misses)
    # the two agree within max(3, 3 % of the ticks).
    tolerance = max(3, round(0.03 * out["ticks"]))
    assert out["plant_misses"] <= out["misses"] + tolerance, out
    if out["miss_rate"] <= 0.01:
        assert abs(out["misses"] - out["plant_misses"]) <= tolerance, out
    # the bridge measured its commands' send-to-plant times, and the margin followed them
    assert out["link_latency_us"]["n"] >= out["ticks_run"] // 2, out["link_latency_us"]
    m = out["transport_margin_us"]
    assert m["start"] == 300.0 and m["start"] <= m["end"] <= m["max"] <= 1e6 / RATE_HZ / 2
    data = read_trace(trace)
    assert data.complete and data.warning is None
    assert len(data.records) == out["ticks_run"]
    assert np.all(np.isfinite(data.records["action"]))
    steps = data.records["steps"]
    # the trace holds the steps the run reported
    assert steps.mean() == pytest.approx(out["steps_per_tick"]["mean"])
    assert steps.max() == out["steps_per_tick"]["max"]
    # a tick that spent time refining before its command counts that step
    refined = data.records["refine_ns"] > 0
    assert refined.sum() > out["ticks_run"] // 2 and np.all(steps[refined] >= 1)
    # re-plans: the ticks that refined and sent their own action, per second of run
    replans = np.count_nonzero((steps > 0) & (data.records["fallback"] == 0))
    assert out["replans_per_s"] == pytest.approx(replans * RATE_HZ / out["ticks_run"])
    side = load_sidecar(trace)
    assert side is not None and side["levels"].shape == (out["ticks_run"], 4)


def test_run_refuses_a_mode_that_differs_from_the_served_plant() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    server = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", "--task", "double-pendulum",
         "--bind", address],  # lockstep
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stderr is not None and "rtdiff serve:" in server.stderr.readline()
        proc = subprocess.run(
            [sys.executable, "-m", "runtime.cli", "run", "--policy", "expert", "--plant",
             address, "--mode", "realtime", "--seconds", "1"],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(
        "runs in lockstep mode but --mode is realtime; use --mode lockstep or serve it with "
        "--realtime"
    )
