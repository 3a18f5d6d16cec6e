"""Per-dimension normalization of states, actions and goals (z-scores from the training data).

Stats are float32 numpy arrays; they travel in the checkpoint as `stats.safetensors`. A
dimension that barely varies in the data (std below `min_std`) keeps std 1 so it is centred,
not blown up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
_NAMES = ("state", "action", "goal")


@dataclass(frozen=True)
class Normalizer:
    state_mean: F32  # (Ds,)
    state_std: F32  # (Ds,)
    action_mean: F32  # (Da,)
    action_std: F32  # (Da,)
    goal_mean: F32  # (Dg,), Dg may be 0
    goal_std: F32  # (Dg,)

    @classmethod
    def fit(
        cls,
        states: npt.ArrayLike,
        actions: npt.ArrayLike,
        goals: npt.ArrayLike,
        *,
        min_std: float = 1e-3,
    ) -> Normalizer:
        """states (N, Ds), actions (M, Da), goals (N, Dg) stacked over all episodes."""
        out: dict[str, F32] = {}
        for name, arr in zip(_NAMES, (states, actions, goals), strict=True):
            a = np.asarray(arr, dtype=np.float64)
            if a.ndim != 2 or (a.shape[0] == 0 and a.shape[1] > 0):
                raise ValueError(f"{name}s must be a non-empty (N, D) array, got {a.shape}")
            if a.shape[1] == 0:
                mean, std = np.zeros(0), np.ones(0)
            else:
                mean, std = a.mean(axis=0), a.std(axis=0)
            std = np.where(std < min_std, 1.0, std)
            out[f"{name}_mean"] = mean.astype(np.float32)
            out[f"{name}_std"] = std.astype(np.float32)
        return cls(**out)

    @property
    def dims(self) -> tuple[int, int, int]:
        return len(self.state_mean), len(self.action_mean), len(self.goal_mean)

    def norm_state(self, s: npt.ArrayLike) -> F32:
        return ((np.asarray(s, dtype=np.float32) - self.state_mean) / self.state_std).astype(
            np.float32
        )

    def denorm_state(self, ns: npt.ArrayLike) -> F32:
        return (np.asarray(ns, dtype=np.float32) * self.state_std + self.state_mean).astype(
            np.float32
        )

    def norm_action(self, a: npt.ArrayLike) -> F32:
        return ((np.asarray(a, dtype=np.float32) - self.action_mean) / self.action_std).astype(
            np.float32
        )

    def denorm_action(self, na: npt.ArrayLike) -> F32:
        return (np.asarray(na, dtype=np.float32) * self.action_std + self.action_mean).astype(
            np.float32
        )

    def norm_goal(self, g: npt.ArrayLike) -> F32:
        return ((np.asarray(g, dtype=np.float32) - self.goal_mean) / self.goal_std).astype(
            np.float32
        )

    def to_arrays(self) -> dict[str, F32]:
        return {f"{n}_{k}": getattr(self, f"{n}_{k}") for n in _NAMES for k in ("mean", "std")}

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[np.float32]]) -> Normalizer:
        want = [f"{n}_{k}" for n in _NAMES for k in ("mean", "std")]
        missing = [k for k in want if k not in arrays]
        if missing:
            raise ValueError(f"normalization stats lack {missing}")
        vals = {k: np.asarray(arrays[k], dtype=np.float32) for k in want}
        for n in _NAMES:
            m, s = vals[f"{n}_mean"], vals[f"{n}_std"]
            if m.ndim != 1 or m.shape != s.shape:
                raise ValueError(f"{n} stats have shapes {m.shape} and {s.shape}")
            if not (np.all(np.isfinite(m)) and np.all(np.isfinite(s)) and np.all(s > 0)):
                raise ValueError(f"{n} stats must be finite with std > 0")
        return cls(**vals)
