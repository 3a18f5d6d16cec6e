"""Lockstep episodes through `ControlLoop`: the one evaluation path of training, the push
ablation and data collection.

`run_lockstep(plant, planner, episodes=N, seed=S)` runs `ControlLoop` in lockstep mode with no
warm-up: episode i starts at `plant.reset(seed=S + i)`, and every tick observes (after the
episode's first), runs `steps_per_tick` refine steps, sends the planner's action (the fallback
replaces a non-finite one; clipped into the limits) and steps the plant once. Under a seed
every run gives the same numbers.

The loop resets the planner before its first tick and again inside it (that order keeps
`rtdiff run --mode lockstep` reproducible). The planner here sits behind `ResetOnce`, which
makes a second reset on the observation the planner was just reset on a no-op: each episode
starts from exactly one reset, so a planner with a random generator draws one initial plan per
episode.

What the loop does not record per tick (the observations an evaluation scores, the labels a
collection keeps) a `PlantTap` sees on its way through: subclasses override `started` (after
each reset), `applied` (after each command) and `observed` (after each observation).
"""

from __future__ import annotations

from typing import Any

from runtime.clock import MonotonicClock
from runtime.loop import ControlLoop
from runtime.loopconfig import LoopConfig
from runtime.protocols import Command, FloatArray, Observation, Planner, Plant, PlantSpec
from runtime.result import RunResult

__all__ = ["PlantTap", "ResetOnce", "run_lockstep"]


class ResetOnce:
    """`planner`, with a reset on the observation it was just reset on (nothing in between)
    skipped. Every other attribute is the planner's, so the loop finds its capabilities."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self._reset_on: Observation | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.planner, name)

    def reset(self, obs: Observation) -> None:
        if obs is not self._reset_on:
            self.planner.reset(obs)
            self._reset_on = obs

    def observe(self, obs: Observation) -> None:
        self._reset_on = None
        self.planner.observe(obs)

    def refine(self, budget_ns: int) -> int:
        self._reset_on = None
        return self.planner.refine(budget_ns)

    def action(self) -> FloatArray:
        return self.planner.action()


class PlantTap:
    """`plant`, calling `started(obs)` after each reset, `applied(cmd)` after each command and
    `observed(obs)` after each observation; `last` is the newest observation."""

    def __init__(self, plant: Plant) -> None:
        self.plant = plant
        self.last: Observation | None = None

    def spec(self) -> PlantSpec:
        return self.plant.spec()

    def reset(self, seed: int | None = None) -> Observation:
        obs = self.plant.reset(seed=seed)
        self.last = obs
        self.started(obs)
        return obs

    def observe(self) -> Observation:
        obs = self.plant.observe()
        self.last = obs
        self.observed(obs)
        return obs

    def apply(self, cmd: Command) -> None:
        self.plant.apply(cmd)
        self.applied(cmd)

    def counters(self) -> dict[str, int]:
        return self.plant.counters()

    def close(self) -> None:
        self.plant.close()

    def started(self, obs: Observation) -> None:
        """An episode started at `obs`."""

    def applied(self, cmd: Command) -> None:
        """`cmd` stepped the plant; `self.last` is the observation it was computed from."""

    def observed(self, obs: Observation) -> None:
        """`obs` is the plant's state after the last command."""


def run_lockstep(
    plant: Plant, planner: Planner, *, episodes: int | None, seed: int, steps_per_tick: int = 1,
    ticks: int | None = None,
) -> RunResult:
    """`episodes` lockstep episodes of `planner` on `plant`, seeded `seed`, `seed + 1`, ...
    (or `ticks` ticks, whatever episodes they make)."""
    config = LoopConfig(mode="lockstep", steps_per_tick=steps_per_tick, warmup_steps=0)
    loop = ControlLoop(plant, ResetOnce(planner), MonotonicClock(), config)
    return loop.run(episodes=episodes, ticks=ticks, seed=seed)
