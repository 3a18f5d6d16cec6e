"""`rtdiff bench ddp`: training throughput of N DistributedDataParallel processes against one.

Two runs of `rtdiff train`, one after the other, on the same data, model, seed, global batch
and number of steps: the plain single process, then `--nproc N` under torchrun. Each run's
throughput is what its trainer measured (windows per second over all ranks, the first five
steps and any evaluation left out: `train.samples_per_s` in the checkpoint), so process
start-up, the dataset read and torchrun's rendezvous are not in it. The result gives both
throughputs, their ratio and each run's final loss (mean over its last log interval).

The data is `--data DIR`, or by default a synthetic dataset written first
(`write_linear_dataset`): a made-up plant (`bench-plant`, 6-D state, 2-D action, 100 Hz) under
a linear expert, in the format `rtdiff collect` writes; training speed depends on the sizes,
not on what the numbers mean.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli import CliError
from runtime.rt import read_steal_s


def write_linear_dataset(
    path: Path,
    *,
    name: str,
    state_dim: int,
    action_dim: int,
    rate_hz: float,
    episodes: int = 8,
    ticks: int = 60,
    action_limit: float = 2.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a dataset of a made-up plant `name` (no goal) in `rtdiff collect`'s format: a
    stable linear system `s' = A s + B a + noise` under the expert `a = clip(-K s)`. Returns
    the `rtdiff.json` record."""
    import gymnasium as gym

    from sims.datasets import Episode, write_dataset

    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(state_dim, state_dim)))
    a_mat = 0.97 * q  # a damped rotation: the states keep moving, nothing blows up
    b_mat = 0.1 * rng.normal(size=(state_dim, action_dim))
    k_mat = 0.5 * rng.normal(size=(action_dim, state_dim))
    eps, ends = [], []
    for _ in range(episodes):
        s = np.zeros((ticks + 1, state_dim))
        a = np.zeros((ticks, action_dim))
        s[0] = rng.normal(size=state_dim)
        for t in range(ticks):
            a[t] = np.clip(-k_mat @ s[t], -action_limit, action_limit)
            s[t + 1] = a_mat @ s[t] + b_mat @ a[t] + 0.01 * rng.normal(size=state_dim)
        last = np.clip(-k_mat @ s[ticks], -action_limit, action_limit)
        eps.append(Episode(
            task=name, states=s.astype(np.float32), goals=np.zeros((ticks + 1, 0), np.float32),
            actions=a.astype(np.float32), executed=a.astype(np.float32),
            rewards=-np.square(s[1:]).sum(axis=1).astype(np.float32), success=True,
        ))
        ends.append((last.astype(np.float32), False))
    obs_space = gym.spaces.Dict(
        {"state": gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float64)}
    )
    act_space = gym.spaces.Box(-action_limit, action_limit, (action_dim,), np.float64)
    meta: dict[str, Any] = {
        "task": name, "episodes": episodes, "ticks": episodes * ticks, "seed": seed,
        "seeds": [seed + i for i in range(episodes)], "rate_hz": rate_hz,
        "state_dim": state_dim, "goal_dim": 0, "action_dim": action_dim,
        "expert": "linear", "success_rate": 1.0,
    }
    write_dataset(path.absolute(), eps, ends, obs_space, act_space, meta)
    return meta


def _train(data: str, out: Path, args: argparse.Namespace, nproc: int) -> dict[str, Any]:
    """One `rtdiff train` run in a child process; its checkpoint's training record."""
    cmd = [sys.executable, "-m", "runtime.cli", "train", "--policy", args.policy,
           "--data", data, "--out", str(out), "--steps", str(args.steps), "--device", args.device,
           "--seed", str(args.seed), "--eval-episodes", "0",
           "--set", f"batch_size={args.batch}", "--set", f"log_every={args.steps}"]
    for item in args.settings:
        cmd += ["--set", item]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        lines = [s for s in done.stderr.splitlines() if s.strip()]
        raise CliError(f"the {nproc}-process run failed: {lines[-1] if lines else done.returncode}")
    record: dict[str, Any] = json.loads((out / "config.json").read_text())["train"]
    return record


def cli_bench_ddp(args: argparse.Namespace) -> int:
    if args.nproc < 2:
        raise CliError(f"--nproc {args.nproc}: the comparison needs at least 2 processes")
    if args.batch % args.nproc:
        raise CliError(f"--batch {args.batch} does not split over --nproc {args.nproc}")
    steal0 = read_steal_s()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rtdiff-bench-ddp-") as tmp:
        data = args.data
        if data is None:
            data = str(Path(tmp) / "data")
            write_linear_dataset(Path(data), name="bench-plant", state_dim=6, action_dim=2,
                                 rate_hz=100.0, episodes=20, ticks=200, seed=args.seed)
        runs = {}
        for label, n in (("one", 1), ("ddp", args.nproc)):
            rec = _train(data, Path(tmp) / label, args, n)
            runs[label] = {
                "processes": n, "samples_per_s": rec["samples_per_s"],
                "final_loss": rec["final_loss"], "first_loss": rec["first_loss"],
                "seconds": rec["seconds"], "ranks_in_sync": rec.get("distributed", {}).get(
                    "ranks_in_sync"),
            }
            sys.stderr.write(f"bench ddp: {n} process(es): {rec['samples_per_s']:.0f} samples/s, "
                             f"final loss {rec['final_loss']:.4f}\n")
    steal1 = read_steal_s()
    ratio = runs["ddp"]["samples_per_s"] / runs["one"]["samples_per_s"]
    summary: dict[str, Any] = {
        "policy": args.policy, "device": args.device, "nproc": args.nproc, "steps": args.steps,
        "batch": args.batch, "settings": list(args.settings), "data": args.data or "synthetic",
        "cpus": os.cpu_count(), "one": runs["one"], "ddp": runs["ddp"], "ratio": ratio,
        "seconds": round(time.perf_counter() - t0, 1),
        "steal_s": None if steal0 is None or steal1 is None else steal1 - steal0,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{args.nproc} DDP processes vs 1: {ratio:.2f}x the samples/s "
              f"({runs['ddp']['samples_per_s']:.0f} vs {runs['one']['samples_per_s']:.0f}); "
              f"final loss {runs['ddp']['final_loss']:.4f} vs {runs['one']['final_loss']:.4f}")
    if args.results:
        from runtime.files import record_result

        print(f"recorded {record_result(args.results, 'ddp', summary)}")
    return 0
