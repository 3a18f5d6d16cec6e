"""Shared drivers for the disc tasks (`bimodal`, `swerve`): the expert in a chosen mode, and
the mean of the two modes' commands."""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime import Command, Observation
from sims.experts import make_expert
from sims.plant import MujocoPlant
from sims.registry import make_task_env


def expert_rollout(task: str, x0: float, mode: int, *, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The task's expert in `mode` (-1 left, +1 right) from `x0`, disturbances off, on the env
    directly. Returns the observed states (T+1, 2), the true positions (T+1, 2) and the
    final info."""
    env = make_task_env(task, disturbances=False)
    ex = make_expert(task)
    o, info = env.reset(seed=seed, options={"x0": x0})
    obs = Observation(0, 0, o["state"], info=info)
    ex.reset(obs)
    ex.mode = mode  # type: ignore[attr-defined]
    ex.observe(obs)
    states, xys, done, k = [o["state"]], [info["xy"]], False, 0
    while not done:
        o, _, term, trunc, info = env.step(ex.action())
        k += 1
        done = term or trunc
        ex.observe(Observation(k, 0, o["state"], info=info))
        states.append(o["state"])
        xys.append(info["xy"])
    return np.array(states), np.array(xys), info


def mean_of_the_modes(task: str, *, disturbances: bool, seeds: range,
                      lateral: bool = True) -> list[dict[str, Any]]:
    """Drive each seed's episode with the mean of the two modes' expert commands (`lateral`
    False: with its lateral part zeroed); the end info of each episode."""
    plant = MujocoPlant(task, disturbances=disturbances)
    left, right = make_expert(task), make_expert(task)
    ends = []
    try:
        for seed in seeds:
            obs = plant.reset(seed=seed)
            left.reset(obs)
            right.reset(obs)
            left.mode, right.mode = -1, 1  # type: ignore[attr-defined]
            k = 0
            while not obs.done:
                left.observe(obs)
                right.observe(obs)
                mean = (left.action() + right.action()) / 2
                if not lateral:
                    mean[0] = 0.0
                plant.apply(Command(k, 0, mean, 0))
                k += 1
                obs = plant.observe()
            ends.append(obs.info)
    finally:
        plant.close()
    return ends


def modes_drawn(task: str, seeds: range) -> set[int]:
    """The sides the task's expert (seed 0) drew over episodes on `seeds`."""
    ex = make_expert(task, seed=0)
    plant = MujocoPlant(task, seed=0)
    try:
        modes = set()
        for s in seeds:
            ex.reset(plant.reset(seed=s))
            modes.add(ex.mode)  # type: ignore[attr-defined]
    finally:
        plant.close()
    return modes
