"""`BinTokenizer`: states and actions as discrete sub-tokens, one per dimension.

The discrete planners (`dllm`, `ar`) see a plan token `z_j = [s_{t+j}, a_{t+j}]` as a group of
`Ds + Da` sub-tokens, each an integer in `[0, K)` naming a bin of its dimension. The bins are
fitted per dimension on the training data:

- `quantile` (the default): edges at the data's quantiles, so every bin holds about the same
  share of the data. Where the data is dense (a pendulum's small angles near upright) the bins
  are narrow, where it is sparse they are wide: the round-trip error follows the data's
  density, which is what a model trained on it can use (Discrete Diffusion VLA and RT-2 bin
  actions the same way).
- `uniform`: K equal bins between the 1st and 99th percentile (outliers go to the end bins).
  Its error is the same everywhere, half a bin width at most inside the range.

A sub-token decodes to its bin's centre: the mean of the training values that fell in it
(the midpoint for an empty bin), so the round trip is unbiased on the data. Values beyond the
fitted range go to the end bins. `round_trip_error` states the error per dimension; the
trainer writes it into the checkpoint's training record, and docs/policies.md lists it per
task.

A fitted tokenizer is two arrays, `edges` (D, K-1) (the inner edges) and `centers` (D, K),
saved with the checkpoint's tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

KINDS = ("quantile", "uniform")


@dataclass(frozen=True)
class BinTokenizer:
    """Per-dimension bins: `edges` (D, K-1) inner edges, `centers` (D, K) decode values."""

    edges: npt.NDArray[np.float64]
    centers: npt.NDArray[np.float64]
    kind: str = "quantile"

    def __post_init__(self) -> None:
        e, c = np.asarray(self.edges, np.float64), np.asarray(self.centers, np.float64)
        if c.ndim != 2 or c.shape[1] < 2 or e.shape != (c.shape[0], c.shape[1] - 1):
            raise ValueError(f"edges {e.shape} and centers {c.shape} must be (D, K-1), (D, K)")
        if not (np.all(np.isfinite(e)) and np.all(np.isfinite(c))):
            raise ValueError("tokenizer edges and centers must be finite")
        if np.any(np.diff(e, axis=1) < 0):
            raise ValueError("tokenizer edges must be sorted per dimension")
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} must be one of {KINDS}")
        object.__setattr__(self, "edges", e)
        object.__setattr__(self, "centers", c)

    @property
    def dims(self) -> int:
        return int(self.centers.shape[0])

    @property
    def bins(self) -> int:
        return int(self.centers.shape[1])

    @classmethod
    def fit(cls, data: npt.ArrayLike, bins: int = 64, kind: str = "quantile") -> BinTokenizer:
        """Fit on `data` (N, D)."""
        x = np.asarray(data, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"fit needs data of shape (N >= 2, D), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("fit needs finite data")
        if bins < 2:
            raise ValueError(f"{bins=} must be >= 2")
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} must be one of {KINDS}")
        d = x.shape[1]
        edges = np.empty((d, bins - 1))
        centers = np.empty((d, bins))
        inner = np.arange(1, bins) / bins
        for i in range(d):
            col = x[:, i]
            if kind == "quantile":
                e = np.quantile(col, inner)
            else:
                lo, hi = np.quantile(col, [0.01, 0.99])
                e = lo + (hi - lo) * inner if hi > lo else np.full(bins - 1, lo)
            edges[i] = e
            ids = np.searchsorted(e, col, side="right")
            sums = np.bincount(ids, weights=col, minlength=bins)
            counts = np.bincount(ids, minlength=bins)
            # an empty bin decodes to its midpoint (the end bins: to their inner edge)
            padded = np.concatenate([[e[0]], e, [e[-1]]])
            mid = (padded[:-1] + padded[1:]) / 2
            centers[i] = np.where(counts > 0, sums / np.maximum(counts, 1), mid)
        return cls(edges, centers, kind)

    def encode(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """(..., D) values -> (..., D) sub-token ids in [0, K)."""
        v = np.asarray(x, dtype=np.float64)
        if v.shape[-1] != self.dims:
            raise ValueError(f"encode: last axis {v.shape[-1]} != {self.dims} dims")
        flat = v.reshape(-1, self.dims)
        out = np.empty(flat.shape, dtype=np.int64)
        for i in range(self.dims):
            out[:, i] = np.searchsorted(self.edges[i], flat[:, i], side="right")
        return out.reshape(v.shape)

    def decode(self, ids: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(..., D) sub-token ids -> (..., D) bin centres."""
        t = np.asarray(ids, dtype=np.int64)
        if t.shape[-1] != self.dims:
            raise ValueError(f"decode: last axis {t.shape[-1]} != {self.dims} dims")
        if t.size and (t.min() < 0 or t.max() >= self.bins):
            raise ValueError(f"decode: ids must be in [0, {self.bins})")
        return self.centers[np.arange(self.dims), t]

    def round_trip_error(self, data: npt.ArrayLike) -> dict[str, list[float]]:
        """Per dimension: mean and max |decode(encode(x)) - x| over `data` (N, D), and both
        relative to the data's standard deviation."""
        x = np.asarray(data, dtype=np.float64)
        err = np.abs(self.decode(self.encode(x)) - x)
        std = np.maximum(x.std(axis=0), 1e-12)
        return {
            "mean_abs": err.mean(axis=0).tolist(),
            "max_abs": err.max(axis=0).tolist(),
            "mean_over_std": (err.mean(axis=0) / std).tolist(),
        }

    def arrays(self) -> dict[str, npt.NDArray[np.float64]]:
        """What a checkpoint stores."""
        return {"tokenizer.edges": self.edges, "tokenizer.centers": self.centers}

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any], kind: str = "quantile") -> BinTokenizer:
        return cls(np.asarray(arrays["tokenizer.edges"], np.float64),
                   np.asarray(arrays["tokenizer.centers"], np.float64), kind)
