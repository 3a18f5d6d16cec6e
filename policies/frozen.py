"""CPU inference with less interpreter overhead: the model traced and frozen by TorchScript.

These models are tiny (a 2 x 64 transformer over ~11 tokens): a forward pass is ~60 small
kernels, and on a CPU the time goes to PyTorch's per-operator dispatch from Python rather
than to arithmetic. Tracing the forward once and freezing it (weights folded in as constants,
the graph optimized for inference) runs the same kernels from one C++ call: for
`rolling:double-pendulum` on a 2-core CPU the refine step's p50 drops by about 40 %
(`python -m policies.bench`, figures in docs/benchmarks.md).

`freeze_for_cpu(model)` returns a drop-in module (same call signature, same `cfg`) or the
model itself when tracing is unavailable or the traced module does not reproduce the eager
output on a probe input (checked at build time, to 1e-5), so the result is never wrong, only
sometimes not faster. CUDA keeps its own path (CUDA graphs in `RollingPlanner`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

from policies.model import Denoiser, DenoiserConfig, MLPPolicy

log = logging.getLogger(__name__)
_ATOL = 1e-5


class FrozenDenoiser(nn.Module):
    """A traced, frozen `Denoiser`: `forward(x, tau, ctx_states, goal=None)` as the original."""

    def __init__(self, scripted: Any, cfg: Any) -> None:
        super().__init__()
        self.scripted = scripted
        self.cfg = cfg

    def forward(
        self,
        x: torch.Tensor,
        tau: torch.Tensor,
        ctx_states: torch.Tensor,
        goal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.cfg.goal_dim > 0:
            out: torch.Tensor = self.scripted(x, tau, ctx_states, goal)
        else:
            out = self.scripted(x, tau, ctx_states)
        return out


class FrozenMLP(nn.Module):
    """A traced, frozen `MLPPolicy`: `forward(ctx_states, goal=None)` as the original."""

    def __init__(self, scripted: Any, cfg: Any) -> None:
        super().__init__()
        self.scripted = scripted
        self.cfg = cfg

    def forward(self, ctx_states: torch.Tensor, goal: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.goal_dim > 0:
            out: torch.Tensor = self.scripted(ctx_states, goal)
        else:
            out = self.scripted(ctx_states)
        return out


def _probe(model: Denoiser | MLPPolicy, batch: int) -> tuple[torch.Tensor, ...]:
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    ctx = torch.randn(batch, cfg.n_past + 1, cfg.state_dim, generator=gen)
    goal = torch.randn(batch, cfg.goal_dim, generator=gen)
    if isinstance(model, MLPPolicy):
        return (ctx, goal) if cfg.goal_dim > 0 else (ctx,)
    assert isinstance(cfg, DenoiserConfig)
    x = torch.randn(batch, cfg.horizon, cfg.token_dim, generator=gen)
    tau = torch.rand(batch, cfg.horizon, generator=gen)
    return (x, tau, ctx, goal) if cfg.goal_dim > 0 else (x, tau, ctx)


def freeze_for_cpu(model: nn.Module) -> nn.Module:
    """`model` traced and frozen for batch-1 CPU inference, or `model` unchanged (see above)."""
    if not isinstance(model, (Denoiser, MLPPolicy)):
        return model
    model = model.to("cpu").eval()
    args = _probe(model, 1)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notices
            traced = torch.jit.trace(model, args)  # type: ignore[no-untyped-call]
            scripted = torch.jit.freeze(traced.eval())
            want = model(*args)
            check = [(args, want)]
            other = tuple(a * 3.0 for a in args)  # a second point: no value baked into the trace
            check.append((other, model(*other)))
            for inp, ref in check:
                got = scripted(*inp)
                if got.shape != ref.shape or not torch.allclose(got, ref, atol=_ATOL, rtol=0):
                    log.warning("policies: the frozen model differs from the eager one; eager")
                    return model
    except Exception as exc:  # tracing is an optimisation: any failure means "eager"
        log.warning("policies: cannot freeze the model for CPU inference (%s); eager", exc)
        return model
    wrapper = FrozenMLP if isinstance(model, MLPPolicy) else FrozenDenoiser
    return wrapper(scripted, model.cfg).eval()
