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

`--workers N` (task collections) splits the episodes over N processes, each a contiguous
run of seeds with its own expert and DART generator (seeded with its first episode's seed);
the dataset keeps seed order. A collection is reproducible for a given N; another N draws
other DART perturbations for the same seeds.

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

import gymnasium
import numpy as np

from runtime import Command, Observation, Planner, Plant, PlantSpec
from runtime.lockstep import PlantTap, run_lockstep
from sims.datasets import Episode, is_dataset, require_hdf5, write_dataset
from sims.experts import make_expert
from sims.plant import MujocoPlant
from sims.registry import get_task


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
    refine_steps: int = 1  # `refine` steps per tick (sampling experts iterate this often)
    workers: int = 1  # processes, each a contiguous run of seeds (module docstring)

    def __post_init__(self) -> None:
        get_task(self.task)  # KeyError naming the known tasks
        if self.episodes <= 0:
            raise ValueError(f"--episodes must be > 0, got {self.episodes}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.dart_prob is not None and not (0.0 <= self.dart_prob <= 1.0):
            raise ValueError(f"--dart-prob must be in [0, 1], got {self.dart_prob}")
        if self.refine_steps < 1:
            raise ValueError(f"{self.refine_steps=} must be >= 1")
        if not 1 <= self.workers <= self.episodes:
            raise ValueError(f"--workers must be in [1, --episodes], got {self.workers}")


def worker_shares(episodes: int, seed: int, workers: int) -> list[tuple[int, int]]:
    """(first seed, episodes) per worker: contiguous runs covering seeds seed..seed+episodes-1,
    sizes differing by at most one."""
    base, extra = divmod(episodes, workers)
    shares, first = [], seed
    for w in range(workers):
        n = base + (w < extra)
        shares.append((first, n))
        first += n
    return shares


def _collect_share(cfg: CollectConfig) -> tuple[list[Episode], list[tuple[np.ndarray, bool]]]:
    """One worker's episodes (runs in a child process; a progress line per 10 %)."""
    import torch

    torch.set_num_threads(1)
    seeds = f"{cfg.task} seeds {cfg.seed}-{cfg.seed + cfg.episodes - 1}"
    return collect_episodes(cfg, _Progress(seeds, redraw=False))


def collect_parallel(cfg: CollectConfig) -> tuple[list[Episode], list[tuple[np.ndarray, bool]]]:
    """`collect_episodes` over `cfg.workers` processes (spawned: a fresh MuJoCo per worker);
    the episodes in seed order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from dataclasses import replace

    shares = [replace(cfg, seed=first, episodes=n, workers=1)
              for first, n in worker_shares(cfg.episodes, cfg.seed, cfg.workers)]
    sys.stderr.write(f"collect {cfg.task}: {cfg.episodes} episodes over {cfg.workers} "
                     f"processes ...\n")
    with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_collect_share, shares))
    episodes = [e for eps, _ in parts for e in eps]
    ends = [x for _, end in parts for x in end]
    return episodes, ends


class _Dart:
    """The expert as the loop's planner, executed DART-style: on a share `prob` of the ticks
    `action()` adds Gaussian noise (std `noise` times the action half-range) to the expert's
    action, clipped into the limits. The clean action stays in `label`. Every tick draws the
    same numbers from `rng`, perturbed or not."""

    def __init__(
        self, expert: Any, spec: PlantSpec, rng: np.random.Generator, prob: float, noise: float
    ) -> None:
        self.expert, self.spec, self.rng, self.prob, self.noise = expert, spec, rng, prob, noise
        self.half = (spec.action_high - spec.action_low) / 2  # (Da,)
        self.label = np.zeros(spec.action_dim)  # the expert's action of the last tick

    def reset(self, obs: Observation) -> None:
        self.expert.reset(obs)

    def observe(self, obs: Observation) -> None:
        self.expert.observe(obs)

    def refine(self, budget_ns: int) -> int:
        return int(self.expert.refine(budget_ns))

    def action(self) -> np.ndarray:
        # a copy: a planner may hand out the same buffer every tick
        self.label = np.array(self.expert.action(), dtype=np.float64)
        u, eps = self.rng.random(), self.rng.standard_normal(self.spec.action_dim)
        a = self.label + (eps * self.noise * self.half if u < self.prob else 0.0)
        return np.clip(a, self.spec.action_low, self.spec.action_high)


class _Recorder(PlantTap):
    """The collection's plant: records each step (the expert's label, the executed action and
    what the plant did) and closes each episode into an `Episode`."""

    def __init__(
        self,
        plant: Plant,
        dart: _Dart,
        task: str,
        progress: Callable[[int, int, int], None] | None,
        total: int,
    ) -> None:
        super().__init__(plant)
        self.dart, self.task, self.progress, self.total = dart, task, progress, total
        self.episodes: list[Episode] = []
        self.ends: list[tuple[np.ndarray, bool]] = []
        self.successes = 0
        self._steps: dict[str, list[Any]] = {}
        self._sent: np.ndarray = np.zeros(plant.spec().action_dim)

    def started(self, obs: Observation) -> None:
        self._steps = {k: [] for k in ("states", "goals", "labels", "executed", "rewards",
                                       "push", "switch", "acted", "mode")}
        self._steps["states"].append(obs.state.copy())
        self._steps["goals"].append(obs.goal.copy())

    def applied(self, cmd: Command) -> None:
        self._steps["labels"].append(self.dart.label)
        self._steps["executed"].append(cmd.action)
        self._sent = cmd.action
        self._steps["mode"].append(int(getattr(self.dart.expert, "mode", 0)))

    def observed(self, obs: Observation) -> None:
        st = self._steps
        st["states"].append(obs.state.copy())
        st["goals"].append(obs.goal.copy())
        st["rewards"].append(obs.reward)
        st["push"].append(obs.info.get("push", np.zeros(3)))
        st["switch"].append("goal_switch" in obs.info)
        # what acted: a simulated plant says (an action delay may hold an older one), any
        # other plant acted on what was sent
        st["acted"].append(obs.info.get("executed", self._sent))
        if obs.done:
            self._end(obs)

    def _end(self, obs: Observation) -> None:
        st = self._steps
        expert = self.dart.expert
        success = bool(obs.info.get("success", False))
        self.successes += success
        dist: dict[str, np.ndarray] = {
            "push_n": np.array(st["push"], dtype=np.float32),
            "goal_switch": np.array(st["switch"], dtype=bool),
            "acted": np.array(st["acted"], dtype=np.float32),
        }
        if hasattr(expert, "mode"):
            dist["mode"] = np.array(st["mode"], dtype=np.int8)
        goals = st["goals"]
        self.episodes.append(
            Episode(
                task=self.task,
                states=np.array(st["states"], dtype=np.float32),
                goals=np.array(goals, dtype=np.float32).reshape(len(goals), -1),
                actions=np.array(st["labels"], dtype=np.float32),
                executed=np.array(st["executed"], dtype=np.float32),
                rewards=np.array(st["rewards"], dtype=np.float32),
                success=success,
                disturbances=dist,
            )
        )
        # the label at the final observation, which the loop hands no planner
        expert.observe(obs)
        self.ends.append((np.array(expert.action(), dtype=np.float64), bool(obs.terminated)))
        if self.progress is not None:
            self.progress(len(self.episodes), self.total, self.successes)


def collect_episodes(
    cfg: CollectConfig, progress: Callable[[int, int, int], None] | None = None
) -> tuple[list[Episode], list[tuple[np.ndarray, bool]]]:
    """Run the expert for `cfg.episodes` lockstep episodes; returns the episodes and, per
    episode, (the expert's label (Da,) at the final observation, terminated?)."""
    info = get_task(cfg.task)
    dart_prob = info.dart_prob if cfg.dart_prob is None else cfg.dart_prob
    plant = MujocoPlant(cfg.task, seed=cfg.seed)
    try:
        spec = plant.spec()
        expert = make_expert(cfg.task, spec, seed=cfg.seed)
        return record_episodes(plant, expert, name=cfg.task, episodes=cfg.episodes,
                               seed=cfg.seed, dart_prob=dart_prob, dart_noise=info.dart_noise,
                               refine_steps=cfg.refine_steps, progress=progress)
    finally:
        plant.close()


def record_episodes(
    plant: Plant,
    policy: Planner,
    *,
    name: str,
    episodes: int,
    seed: int,
    dart_prob: float = 0.0,
    dart_noise: float = 0.3,
    refine_steps: int = 1,
    progress: Callable[[int, int, int], None] | None = None,
) -> tuple[list[Episode], list[tuple[np.ndarray, bool]]]:
    """Any plant driven by any planner for `episodes` lockstep episodes (DART-perturbed on a
    share `dart_prob` of the ticks); the episodes and their final labels, as
    `collect_episodes` returns them. The caller owns (and closes) the plant."""
    spec = plant.spec()
    dart = _Dart(policy, spec, np.random.default_rng([seed, 0xDA27]), dart_prob, dart_noise)
    recorder = _Recorder(plant, dart, name, progress, episodes)
    run_lockstep(recorder, dart, episodes=episodes, seed=seed, steps_per_tick=refine_steps)
    return recorder.episodes, recorder.ends


class _Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise."""

    def __init__(self, task: str, *, redraw: bool = True) -> None:
        self.task = task
        self.tty = redraw and sys.stderr.isatty()  # worker processes share stderr: lines only
        self._last_decile = -1

    def __call__(self, done: int, total: int, n_success: int) -> None:
        width = 30
        fill = round(width * done / total)
        line = (
            f"collect {self.task}: [{'#' * fill}{'.' * (width - fill)}] {done}/{total} "
            f"episodes, success {n_success / done:.0%}"
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
    if cfg.workers > 1:
        episodes, ends = collect_parallel(cfg)
    else:
        episodes, ends = collect_episodes(cfg, _Progress(cfg.task) if progress else None)
    env = MujocoPlant(cfg.task).env
    info = get_task(cfg.task)
    meta = _meta(info.spec(), episodes, seed=cfg.seed, expert=info.expert,
                 dart_prob=info.dart_prob if cfg.dart_prob is None else cfg.dart_prob,
                 dart_noise=info.dart_noise)
    try:
        _write_atomically(out, episodes, ends, env.observation_space, env.action_space, meta)
    finally:
        env.close()
    return meta


def collect_plant(
    plant: Plant,
    policy: Planner,
    *,
    out: Path,
    episodes: int,
    seed: int = 0,
    dart_prob: float = 0.0,
    dart_noise: float = 0.3,
    plant_text: str = "",
    policy_text: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Any plant driven by any planner, written atomically to `out` as a dataset named after
    the plant's spec (`rtdiff collect --plant SPEC --policy SPEC`); returns a summary. The
    dataset's spaces and `rtdiff.json` come from the spec: its dimensions, action limits and
    rate are what `rtdiff train` reads. The caller owns (and closes) the plant."""
    out = out.absolute()
    _check_out(out)
    require_hdf5()
    spec = plant.spec()
    eps, ends = record_episodes(
        plant, policy, name=spec.name, episodes=episodes, seed=seed, dart_prob=dart_prob,
        dart_noise=dart_noise, progress=_Progress(spec.name) if progress else None,
    )
    obs_spaces: dict[str, gymnasium.spaces.Space[Any]] = {
        "state": gymnasium.spaces.Box(-np.inf, np.inf, (spec.state_dim,), np.float64)}
    if spec.goal_dim:
        obs_spaces["goal"] = gymnasium.spaces.Box(-np.inf, np.inf, (spec.goal_dim,), np.float64)
    act_space = gymnasium.spaces.Box(spec.action_low, spec.action_high, dtype=np.float64)
    meta = _meta(spec, eps, seed=seed, expert=policy_text, dart_prob=dart_prob,
                 dart_noise=dart_noise, plant=plant_text or spec.name, policy=policy_text)
    _write_atomically(out, eps, ends, gymnasium.spaces.Dict(obs_spaces), act_space, meta)
    return meta


def _meta(
    spec: PlantSpec, episodes: list[Episode], *, seed: int, expert: str, dart_prob: float,
    dart_noise: float, **extra: str,
) -> dict[str, Any]:
    """A dataset's `rtdiff.json`: what was recorded (the plant's dimensions, limits and rate,
    which `rtdiff train` reads), by what, with which seeds and perturbation, how well."""
    return {
        "task": spec.name,
        **extra,
        "episodes": len(episodes),
        "ticks": int(sum(e.ticks for e in episodes)),
        "seed": seed,
        "seeds": [seed + i for i in range(len(episodes))],
        "dart_prob": dart_prob,
        "dart_noise": dart_noise,
        "rate_hz": spec.rate_hz,
        "state_dim": spec.state_dim,
        "goal_dim": spec.goal_dim,
        "action_dim": spec.action_dim,
        "action_low": spec.action_low.tolist(),
        "action_high": spec.action_high.tolist(),
        "expert": expert,
        "success_rate": float(np.mean([e.success for e in episodes])) if episodes else 0.0,
    }


def _write_atomically(
    out: Path,
    episodes: list[Episode],
    ends: list[tuple[np.ndarray, bool]],
    observation_space: Any,
    action_space: Any,
    meta: dict[str, Any],
) -> None:
    """Write the dataset into a hidden temp directory beside `out`, then swap it into place:
    an existing dataset is replaced only once the new one is complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        write_dataset(tmp, episodes, ends, observation_space, action_space, meta)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
            workers=getattr(args, "workers", 1),
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
