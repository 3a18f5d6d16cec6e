"""Per-token noise levels: the ramp, the refine step, re-noising, and training-time levels.

Flow matching with per-token time: token j of the plan is `x_j = (1 - tau_j) z_j + tau_j eps_j`,
`tau_j = 0` clean, `tau_j = 1` pure noise (docs/architecture.md, "The rolling buffer").

- Ramp: `l(j) = min(1, j / Hc)`. At the end of a tick token j sits at `l(j)`; after the shift
  it sits at `l(j + 1)` and must get back down to `l(j)` by the end of the next tick.
- Refine step (x-prediction form of the Euler/DDIM flow step): from level `tau` to `tau' < tau`
  with the clean estimate `z_hat`, `x' = z_hat + (tau' / tau) (x - z_hat)`. With an exact
  `z_hat` this lands exactly on the flow path at `tau'`.
- Re-noising from `tau` up to `tau' >= tau` (forward process, exact in distribution):
  `x' = a x + b eps`, `a = (1 - tau') / (1 - tau)`, `b = sqrt(tau'^2 - (a tau)^2)`. Where
  `tau' == tau` it is the identity (`a = 1, b = 0`), so it runs branch-free every tick.

The in-place kernels write only into caller-owned buffers (`out=` and `_` ops), so the planner
calls them on the per-tick path without allocating storage and a CUDA graph can capture them.
Tests check them against plain per-token loops.
"""

from __future__ import annotations

import torch

_EPS = 1e-6


def check_rolling_buffer(horizon: int, clean_ticks: int) -> None:
    """A rolling buffer (the rolling and dllm planners) needs H >= 2 tokens and a ramp that
    fits in it, Hc <= H - 1; ValueError naming the bad value otherwise."""
    if horizon < 2:
        raise ValueError(f"the rolling buffer needs H >= 2 tokens, got {horizon=}")
    if clean_ticks > max(1, horizon - 1):
        raise ValueError(f"{clean_ticks=} must be <= H - 1 = {horizon - 1}")


def ramp_levels(horizon: int, clean_ticks: int) -> torch.Tensor:
    """(H,) float32 `l(j) = min(1, j / Hc)` for j = 0..H-1."""
    if not 1 <= clean_ticks <= max(1, horizon - 1):
        raise ValueError(f"{clean_ticks=} must be in [1, H-1={horizon - 1}]")
    j = torch.arange(horizon, dtype=torch.float32)
    return torch.clamp(j / clean_ticks, max=1.0)


def surprise_to_level(surprise: float, threshold: float, full: float, max_level: float) -> float:
    """Re-noising level for a surprise: 0 below `threshold`, rising linearly to `max_level` at
    `full` and staying there. Non-decreasing in `surprise` (the property the planner relies on).
    """
    if not surprise > threshold:  # also catches NaN: a NaN surprise re-noises fully below
        return max_level if surprise != surprise else 0.0
    span = max(full - threshold, _EPS)
    return min(max_level, max_level * (surprise - threshold) / span)


def refine_step_(
    x: torch.Tensor,
    z_hat: torch.Tensor,
    tau: torch.Tensor,
    target: torch.Tensor,
    delta: torch.Tensor,
    *,
    tau_new: torch.Tensor,
    ratio: torch.Tensor,
    scratch: torch.Tensor,
) -> None:
    """One step of every token down its own schedule, in place.

    x, z_hat, scratch (B, H, Dz); tau, target, delta, tau_new, ratio (B, H).
    tau' = max(target, tau - delta); x' = z_hat + (tau'/tau)(x - z_hat); tau <- tau'.
    """
    torch.sub(tau, delta, out=tau_new)
    torch.maximum(tau_new, target, out=tau_new)
    torch.minimum(tau_new, tau, out=tau_new)  # a step never raises a level
    torch.clamp(tau, min=_EPS, out=ratio)
    torch.div(tau_new, ratio, out=ratio)  # (B, H) tau'/tau, 0 where tau == 0
    torch.sub(x, z_hat, out=scratch)
    scratch.mul_(ratio.unsqueeze(-1))
    torch.add(z_hat, scratch, out=x)
    tau.copy_(tau_new)


def renoise_(
    x: torch.Tensor,
    tau: torch.Tensor,
    new_tau: torch.Tensor,
    noise: torch.Tensor,
    *,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
) -> None:
    """Raise every token from `tau` to `max(tau, new_tau)` by the forward process, in place.

    x, noise (B, H, Dz) with noise ~ N(0, 1); tau, new_tau, a, b, c (B, H). `new_tau` is
    overwritten with the level actually reached; `tau` is updated to it.
    """
    torch.maximum(new_tau, tau, out=new_tau)
    # a = (1 - tau' + e) / (1 - tau + e): exactly 1 where tau' == tau (tau == 1 included, where
    # x must stay as it is); the e = 1e-6 bias elsewhere is far below the model's error.
    torch.sub(tau, 1.0 + _EPS, out=b)
    torch.sub(new_tau, 1.0 + _EPS, out=a)  # both negated: the signs cancel in a / b
    a.div_(b)
    # b = sqrt((tau' - a tau)(tau' + a tau)): exactly 0 where tau' == tau (the plain
    # tau'^2 - (a tau)^2 leaves a rounding residual whose sqrt is ~1e-4 of fresh noise).
    torch.mul(a, tau, out=b)
    torch.add(new_tau, b, out=c)
    torch.sub(new_tau, b, out=b)
    b.mul_(c).clamp_(min=0.0).sqrt_()
    x.mul_(a.unsqueeze(-1)).addcmul_(noise, b.unsqueeze(-1))
    tau.copy_(new_tau)


def sample_train_levels(
    batch: int,
    horizon: int,
    clean_ticks: int,
    *,
    profile: str,
    p_ramp: float = 0.5,
    p_renoise: float = 0.3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, H) training levels.

    `profile="forcing"` (rolling planner, diffusion forcing): per sample, with probability
    `p_ramp` a ramp the planner produces mid-tick, `min(1, (j + u) / Hc)` with u ~ U[0, 1),
    lifted with probability `p_renoise` to a uniform re-noise floor; otherwise independent
    uniform levels per token.
    `profile="uniform"` (chunked / per-tick baselines): one level per sample for all tokens.
    """
    if profile == "uniform":
        return torch.rand(batch, 1, generator=generator).expand(batch, horizon).contiguous()
    if profile != "forcing":
        raise ValueError(f"{profile=} must be 'forcing' or 'uniform'")
    independent = torch.rand(batch, horizon, generator=generator)
    u = torch.rand(batch, 1, generator=generator)
    j = torch.arange(horizon, dtype=torch.float32)
    ramp = torch.clamp((j + u) / clean_ticks, max=1.0)  # (B, H)
    floor = torch.rand(batch, 1, generator=generator)
    lift = torch.rand(batch, 1, generator=generator) < p_renoise
    ramp = torch.where(lift, torch.maximum(ramp, floor), ramp)
    use_ramp = torch.rand(batch, 1, generator=generator) < p_ramp
    return torch.where(use_ramp, ramp, independent)
