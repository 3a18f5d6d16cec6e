"""Training windows cut from demonstration episodes.

An episode is anything with `states (T+1, Ds)`, `goals (T+1, Dg)` (Dg may be 0) and
`actions (T, Da)` arrays (duck-typed on `sims.datasets.Episode`, which this module never
imports). `actions` are the expert's clean labels; the states are the ones actually visited.

For every tick t with a full horizon (t + H <= T) one window:
    ctx  (P+1, Ds)  s_{t-P} .. s_t, indices clamped at 0 (the first state repeats, as the
                    planner's context ring does at an episode's start)
    goal (Dg,)      g_t
    plan (H, Dz)    z_j = [s_{t+j}, a_{t+j}], j = 0..H-1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from policies.normalize import Normalizer

F32 = npt.NDArray[np.float32]


class EpisodeLike(Protocol):
    states: npt.NDArray[Any]
    goals: npt.NDArray[Any]
    actions: npt.NDArray[Any]


@dataclass(frozen=True)
class Windows:
    ctx: F32  # (N, P+1, Ds)
    goal: F32  # (N, Dg)
    plan: F32  # (N, H, Dz)

    def __len__(self) -> int:
        return int(self.ctx.shape[0])

    def normalized(self, norm: Normalizer) -> Windows:
        Ds = self.ctx.shape[-1]
        plan = np.concatenate(
            [norm.norm_state(self.plan[..., :Ds]), norm.norm_action(self.plan[..., Ds:])], axis=-1
        )
        return Windows(norm.norm_state(self.ctx), norm.norm_goal(self.goal), plan)


def _check(ep: EpisodeLike, i: int) -> tuple[F32, F32, F32]:
    s = np.asarray(ep.states, dtype=np.float32)
    g = np.asarray(ep.goals, dtype=np.float32)
    a = np.asarray(ep.actions, dtype=np.float32)
    if s.ndim != 2 or a.ndim != 2 or a.shape[0] + 1 != s.shape[0]:
        raise ValueError(
            f"episode {i}: want states (T+1, Ds), actions (T, Da); got {s.shape}, {a.shape}"
        )
    if g.ndim == 1 and g.size == 0:
        g = np.zeros((s.shape[0], 0), dtype=np.float32)
    if g.ndim != 2 or g.shape[0] != s.shape[0]:
        raise ValueError(f"episode {i}: want goals (T+1, Dg); got {g.shape}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(a)) and np.all(np.isfinite(g))):
        raise ValueError(f"episode {i} holds NaN or inf")
    return s, g, a


def fit_normalizer(episodes: Sequence[EpisodeLike]) -> Normalizer:
    parts = [_check(ep, i) for i, ep in enumerate(episodes)]
    if not parts:
        raise ValueError("no episodes")
    return Normalizer.fit(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        np.concatenate([p[1] for p in parts]),
    )


def make_windows(episodes: Sequence[EpisodeLike], *, horizon: int, n_past: int) -> Windows:
    """All windows of all episodes (raw units). Episodes shorter than `horizon` give none."""
    ctxs, goals, plans = [], [], []
    dims: tuple[int, int, int] | None = None
    for i, ep in enumerate(episodes):
        s, g, a = _check(ep, i)
        d = (s.shape[1], a.shape[1], g.shape[1])
        if dims is not None and d != dims:
            raise ValueError(f"episode {i} has dims {d}, earlier episodes {dims}")
        dims = d
        T = a.shape[0]
        if T < horizon:
            continue
        t = np.arange(T - horizon + 1)  # (N,)
        past = np.clip(t[:, None] + np.arange(-n_past, 1)[None, :], 0, None)  # (N, P+1)
        ctxs.append(s[past])  # (N, P+1, Ds)
        goals.append(g[t])  # (N, Dg)
        fut = t[:, None] + np.arange(horizon)[None, :]  # (N, H)
        plans.append(np.concatenate([s[fut], a[fut]], axis=-1))  # (N, H, Dz)
    if not ctxs:
        raise ValueError(f"no episode is at least {horizon} ticks long")
    return Windows(np.concatenate(ctxs), np.concatenate(goals), np.concatenate(plans))
