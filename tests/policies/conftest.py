"""Shared fixtures: a tiny synthetic task in numpy (no sims import), small models, a spec."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from policies import Denoiser, DenoiserConfig, Normalizer, PlannerConfig
from runtime.protocols import Observation, PlantSpec

DS, DA = 4, 1


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Each test runs torch on one thread and gives the process its thread count back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class FakeEpisode:
    """Duck-typed like sims.datasets.Episode."""

    states: np.ndarray
    goals: np.ndarray
    actions: np.ndarray
    task: str = "toy"
    executed: np.ndarray | None = None
    rewards: np.ndarray | None = None
    success: bool = True
    disturbances: dict[str, np.ndarray] = field(default_factory=dict)


def toy_episodes(n: int = 4, T: int = 40, *, goal_dim: int = 0, seed: int = 0) -> list[FakeEpisode]:
    """A damped 2-mass system under a linear expert: s_{t+1} = A s + B a, a = -K s (+ goal)."""
    rng = np.random.default_rng(seed)
    A = np.eye(DS) + 0.05 * np.array(
        [[0, 1, 0, 0], [-1, -0.2, 0.5, 0], [0, 0, 0, 1], [0.5, 0, -1, -0.2]]
    )
    B = np.array([[0.0], [0.05], [0.0], [0.02]])
    K = np.array([[1.0, 0.8, 0.3, 0.2]])
    eps = []
    for _ in range(n):
        s = np.zeros((T + 1, DS))
        a = np.zeros((T, DA))
        g = rng.normal(size=(T + 1, goal_dim)) if goal_dim else np.zeros((T + 1, 0))
        s[0] = rng.normal(size=DS)
        for t in range(T):
            a[t] = -K @ s[t] + (g[t, :1].sum() if goal_dim else 0.0)
            s[t + 1] = A @ s[t] + B @ a[t] + 0.01 * rng.normal(size=DS)
        eps.append(
            FakeEpisode(
                s.astype(np.float32),
                g.astype(np.float32),
                a.astype(np.float32),
                executed=a.astype(np.float32),
                rewards=np.zeros(T, np.float32),
            )
        )
    return eps


def toy_spec(goal_dim: int = 0, low: float = -2.0, high: float = 2.0) -> PlantSpec:
    return PlantSpec(
        name="toy",
        state_dim=DS,
        action_dim=DA,
        goal_dim=goal_dim,
        action_low=np.full(DA, low),
        action_high=np.full(DA, high),
        rate_hz=100.0,
    )


def toy_normalizer(goal_dim: int = 0) -> Normalizer:
    rng = np.random.default_rng(1)
    return Normalizer.fit(
        rng.normal(size=(50, DS)), rng.normal(size=(50, DA)), rng.normal(size=(50, goal_dim))
    )


def small_model(goal_dim: int = 0, *, seed: int = 0, **kw: object) -> Denoiser:
    torch.manual_seed(seed)
    args: dict[str, object] = dict(horizon=6, n_layer=1, n_embd=32)
    args.update(kw)
    cfg = DenoiserConfig(state_dim=DS, action_dim=DA, goal_dim=goal_dim, **args)  # type: ignore[arg-type]
    return Denoiser(cfg).eval()


def small_planner_cfg(**kw: object) -> PlannerConfig:
    base: dict[str, object] = dict(clean_ticks=4, warmup_steps=4, chunk_steps=3, exec_ticks=3)
    base.update(kw)
    return PlannerConfig(**base)  # type: ignore[arg-type]


def obs(
    state: np.ndarray, seq: int = 0, goal: np.ndarray | None = None, **kw: object
) -> Observation:
    return Observation(
        seq=seq,
        t_ns=seq * 10_000_000,
        state=np.asarray(state, dtype=np.float64),
        goal=np.zeros(0) if goal is None else np.asarray(goal, dtype=np.float64),
        **kw,  # type: ignore[arg-type]
    )
