"""`rtdiff collect`: record expert demonstrations with DART-style perturbed execution.

DART (Laskey et al. 2017): on a share `dart_prob` of the ticks the plant executes the expert's
action plus Gaussian noise (std `dart_noise` times the action half-range), while the dataset
keeps the expert's clean action as the label. The policy then sees the off-nominal states its
own errors lead to, labelled with how the expert gets back. The perturbation draws come from a
generator seeded with the base seed and draw the same numbers every tick, so a collection is
reproducible.

`collect_from_args` does the work of `rtdiff collect` and raises `CollectError` (a
`ValueError`, one line) for a request it cannot run; the CLI layer (`runtime.cli.collect`)
prints it as its one-line error.

Atomicity: episodes are written into a hidden temp directory beside `--out` and renamed into
place only when complete (`rtdiff.json`, written last, marks completeness). An interrupted or
failed collection removes its temp directory; a killed one leaves only the hidden `.NAME.tmp-*`
directory, which `load_episodes` refuses (no marker).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime import Command
from sims.datasets import Episode, is_dataset, require_hdf5, write_dataset
from sims.experts import make_expert
from sims.plant import MujocoPlant
from sims.registry import get_task

NO_DEADLINE_NS = 2**62  # lockstep: the plant waits for the controller


class CollectError(ValueError):
    """A collection request that cannot run (unknown task, bad settings or output directory,
    no HDF5 backend); the message is one line for the user."""


@dataclass(frozen=True)
class CollectConfig:
    task: str
    episodes: int
    out: Path
    seed: int = 0  # episode i is reset with seed + i
    dart_prob: float | None = None  # None: the task's default
    refine_steps: int = 1  # `refine` calls per tick (sampling experts iterate this often)

    def __post_init__(self) -> None:
        get_task(self.task)  # KeyError naming the known tasks
        if self.episodes <= 0:
            raise ValueError(f"--episodes must be > 0, got {self.episodes}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.dart_prob is not None and not (0.0 <= self.dart_prob <= 1.0):
            raise ValueError(f"--dart-prob must be in [0, 1], got {self.dart_prob}")
        if self.refine_steps < 0:
            raise ValueError(f"{self.refine_steps=} must be >= 0")


def collect_episodes(
    cfg: CollectConfig, progress: Callable[[int, int, int], None] | None = None
) -> tuple[list[Episode], list[tuple[np.ndarray, bool]]]:
    """Run the expert for `cfg.episodes` episodes; returns the episodes and, per episode,
    (the expert's label (Da,) at the final observation, terminated?)."""
    info = get_task(cfg.task)
    dart_prob = info.dart_prob if cfg.dart_prob is None else cfg.dart_prob
    plant = MujocoPlant(cfg.task, seed=cfg.seed)
    spec = plant.spec()
    expert = make_expert(cfg.task, spec, seed=cfg.seed)
    half = (spec.action_high - spec.action_low) / 2  # (Da,)
    rng = np.random.default_rng([cfg.seed, 0xDA27])
    episodes: list[Episode] = []
    ends: list[tuple[np.ndarray, bool]] = []
    n_success = 0
    try:
        for i in range(cfg.episodes):
            obs = plant.reset(seed=cfg.seed + i)
            expert.reset(obs)
            states, goals = [obs.state.copy()], [obs.goal.copy()]
            labels, executed, rewards = [], [], []
            push, switch, acted, mode = [], [], [], []
            k = 0
            while not obs.done:
                for _ in range(cfg.refine_steps):
                    if expert.refine(NO_DEADLINE_NS) == 0:
                        break
                label = expert.action()
                u, eps = rng.random(), rng.standard_normal(spec.action_dim)
                a = label + (eps * info.dart_noise * half if u < dart_prob else 0.0)
                a = np.clip(a, spec.action_low, spec.action_high)
                plant.apply(Command(seq=k, t_ns=0, action=a, deadline_ns=NO_DEADLINE_NS))
                k += 1
                obs = plant.observe()
                expert.observe(obs)
                states.append(obs.state.copy())
                goals.append(obs.goal.copy())
                labels.append(label)
                executed.append(a)
                rewards.append(obs.reward)
                push.append(obs.info.get("push", np.zeros(3)))
                switch.append("goal_switch" in obs.info)
                acted.append(obs.info["executed"])
                mode.append(int(getattr(expert, "mode", 0)))
            success = bool(obs.info.get("success", False))
            n_success += success
            dist: dict[str, np.ndarray] = {
                "push_n": np.array(push, dtype=np.float32),
                "goal_switch": np.array(switch, dtype=bool),
                "acted": np.array(acted, dtype=np.float32),
            }
            if hasattr(expert, "mode"):
                dist["mode"] = np.array(mode, dtype=np.int8)
            episodes.append(
                Episode(
                    task=cfg.task,
                    states=np.array(states, dtype=np.float32),
                    goals=np.array(goals, dtype=np.float32).reshape(len(goals), -1),
                    actions=np.array(labels, dtype=np.float32),
                    executed=np.array(executed, dtype=np.float32),
                    rewards=np.array(rewards, dtype=np.float32),
                    success=success,
                    disturbances=dist,
                )
            )
            ends.append((expert.action(), bool(obs.terminated)))
            if progress is not None:
                progress(i + 1, cfg.episodes, n_success)
    finally:
        plant.close()
    return episodes, ends


class _Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.tty = sys.stderr.isatty()
        self._last_decile = -1

    def __call__(self, done: int, total: int, n_success: int) -> None:
        width = 30
        fill = round(width * done / total)
        line = (
            f"collect {self.task}: [{'#' * fill}{'.' * (width - fill)}] {done}/{total} "
            f"episodes, expert success {n_success / done:.0%}"
        )
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if done == total else ""))
            sys.stderr.flush()
        elif done * 10 // total != self._last_decile:
            self._last_decile = done * 10 // total
            sys.stderr.write(line + "\n")


def _check_out(out: Path) -> None:
    if out.exists() and not is_dataset(out) and not (out.is_dir() and not any(out.iterdir())):
        raise ValueError(
            f"--out {str(out)!r} exists and is not an rtdiff dataset; refusing to overwrite it"
        )


def collect(cfg: CollectConfig, *, progress: bool = True) -> dict[str, Any]:
    """Collect and write a dataset atomically to `cfg.out`; returns a summary."""
    out = cfg.out.absolute()  # minari joins the dataset path onto itself when it is relative
    _check_out(out)
    require_hdf5()  # before the collection, not after it
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        episodes, ends = collect_episodes(cfg, _Progress(cfg.task) if progress else None)
        env = MujocoPlant(cfg.task).env
        info = get_task(cfg.task)
        meta = {
            "task": cfg.task,
            "episodes": len(episodes),
            "ticks": int(sum(e.ticks for e in episodes)),
            "seed": cfg.seed,
            "seeds": [cfg.seed + i for i in range(len(episodes))],
            "dart_prob": info.dart_prob if cfg.dart_prob is None else cfg.dart_prob,
            "dart_noise": info.dart_noise,
            "rate_hz": info.rate_hz,
            "state_dim": info.state_dim,
            "goal_dim": info.goal_dim,
            "action_dim": info.action_dim,
            "expert": info.expert,
            "success_rate": float(np.mean([e.success for e in episodes])),
        }
        write_dataset(tmp, episodes, ends, env.observation_space, env.action_space, meta)
        env.close()
        # swap into place: an existing dataset is replaced only once the new one is complete
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def cli_collect(args: argparse.Namespace) -> int:
    """`rtdiff collect`, the target the subcommand table names: runs `runtime.cli.collect`,
    which calls `collect_from_args` and prints its `CollectError` as the CLI's one-line error."""
    from runtime.cli.collect import cli_collect as run_cli

    return run_cli(args)


def collect_from_args(args: argparse.Namespace) -> int:
    """`rtdiff collect --task T --episodes N --out DIR [--seed S] [--dart-prob P]`.

    Raises `CollectError` (one line) for a request it cannot run.
    """
    try:
        cfg = CollectConfig(
            task=args.task,
            episodes=args.episodes,
            out=Path(args.out),
            seed=args.seed,
            dart_prob=args.dart_prob,
        )
        _check_out(cfg.out)
    except KeyError as exc:
        raise CollectError(exc.args[0]) from None
    except ValueError as exc:
        raise CollectError(str(exc)) from None
    try:
        meta = collect(cfg)
    except ImportError as exc:
        raise CollectError(str(exc)) from None
    print(
        f"wrote {meta['episodes']} episodes ({meta['ticks']} ticks) of {cfg.task} to "
        f"{cfg.out}; expert success {meta['success_rate']:.0%}"
    )
    return 0
