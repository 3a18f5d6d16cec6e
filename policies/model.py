"""The denoiser: a small transformer over a rolling buffer of future (state, action) tokens.

Read it top to bottom like nanoGPT's `model.py`. Shape letters: B batch, H plan tokens,
C context tokens (`n_past + 1` states, plus one goal token when the task has a goal),
N = C + H, Ds/Da/Dg state/action/goal sizes, Dz = Ds + Da, d embedding width, nh heads,
hs head size.

What it computes: given noisy plan tokens `x` (B, H, Dz), each at its own noise level `tau`
(B, H) in [0, 1] (flow matching: `x_j = (1 - tau_j) z_j + tau_j eps_j`), and clean context
(the current and a few past normalized states, the goal), it predicts the clean tokens
`z_hat` (B, H, Dz). We predict the clean token rather than the velocity because the planner
reads its action straight from the clean estimate of token 0 (docs/architecture.md, "The
rolling buffer"); the velocity is `(x - z_hat) / tau` whenever a sampler wants it.

Attention aligned with token roles (docs/architecture.md, "Aligned attention", after the
finding of "DLLM Agent: See Farther, Run Faster", 2026): context tokens attend only to context,
plan tokens attend to context and plan. So the context representation never depends on the
noisy plan, in any layer. `aligned_attention=False` lets every token see every token, for the
ablation.

With `global_cond=True` the whole context, flattened (states and goal), also goes through one
linear layer into every plan token's input embedding (Diffusion Policy's global conditioning):
each plan token's first MLP then sees the joint state-goal input directly instead of having to
gather it through attention first. It reads only the clean context, so the aligned-attention
property is untouched.

`angle_dims` names state dimensions that are angles in radians (a hinge that may wrap, like
reacher-moving's unlimited base joint, whose angle drifts over several turns). Every state the
model embeds (context states and the state half of each plan token) is then extended with
`sin q` and `cos q` of those dims, computed from the denormalized angle (the model keeps the
angles' normalization mean and std as buffers, which the trainer sets). The z-scored raw angle
alone forces the network to learn a periodic function of an unbounded input; the features give
it the geometry directly. The outputs are unchanged: the model still predicts normalized tokens.

The noise level enters as a per-token embedding (sinusoidal features of `tau` through a small
MLP) added to the plan token's input embedding: every token knows how noisy it is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DenoiserConfig:
    state_dim: int  # Ds: size of the plant's state vector
    action_dim: int  # Da: size of the action vector
    goal_dim: int = 0  # Dg: size of the goal vector; 0 = no goal token
    horizon: int = 8  # H: plan tokens z_j = [s_{t+j}, a_{t+j}], j = 0..H-1
    n_past: int = 2  # past states in the context besides the current one
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 64  # d: embedding width (divisible by n_head)
    aligned_attention: bool = True  # context attends to context only (False: full attention)
    global_cond: bool = False  # also add Linear(all context, flattened) to every plan token
    angle_dims: tuple[int, ...] = ()  # state dims that are angles (rad): add sin/cos features

    def __post_init__(self) -> None:
        check_transformer_config(self)

    @property
    def token_dim(self) -> int:
        return self.state_dim + self.action_dim

    @property
    def n_context(self) -> int:
        return self.n_past + 1 + (1 if self.goal_dim > 0 else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_transformer_config(cfg: Any) -> None:
    """The checks every plan transformer's config shares (`DenoiserConfig`,
    `policies.discrete.DiscreteConfig`): positive sizes, heads dividing the width, valid
    angle dims (normalized to a tuple in place)."""
    kind = type(cfg).__name__
    for name in ("state_dim", "action_dim", "horizon", "n_layer", "n_head", "n_embd"):
        value = getattr(cfg, name)
        if not (isinstance(value, int) and value > 0):
            raise ValueError(f"{kind}.{name}={value!r} must be a positive int")
    if cfg.goal_dim < 0 or cfg.n_past < 0:
        raise ValueError(f"{cfg.goal_dim=} and {cfg.n_past=} must be >= 0")
    if cfg.n_embd % cfg.n_head != 0:
        raise ValueError(f"{cfg.n_embd=} must be divisible by {cfg.n_head=}")
    object.__setattr__(cfg, "angle_dims", _check_angle_dims(cfg.angle_dims, cfg.state_dim))


def _check_angle_dims(dims: Any, state_dim: int) -> tuple[int, ...]:
    """`angle_dims` as a sorted tuple of distinct ints in [0, state_dim) (JSON gives a list)."""
    if isinstance(dims, int):
        dims = (dims,)
    out = tuple(dims)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in out):
        raise ValueError(f"angle_dims={dims!r} must be ints")
    if len(set(out)) != len(out) or not all(0 <= i < state_dim for i in out):
        raise ValueError(f"angle_dims={dims!r} must be distinct state dims in [0, {state_dim})")
    return tuple(sorted(out))


class AngleFeatures(nn.Module):
    """(..., Ds) normalized states -> (..., Ds + 2 na): the states, then sin and cos of the
    denormalized angle dims. With no angle dims it returns its input unchanged.

    `angle_mean`/`angle_std` (na,) are persistent buffers (saved with the weights); the trainer
    sets them from the normalizer. An empty `dims` adds no parameters and no buffers, so
    checkpoints without angle dims load unchanged.
    """

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.n = len(dims)
        self.angle_idx: torch.Tensor
        self.angle_mean: torch.Tensor
        self.angle_std: torch.Tensor
        if self.n:
            idx = torch.tensor(dims, dtype=torch.long)
            self.register_buffer("angle_idx", idx, persistent=False)
            self.register_buffer("angle_mean", torch.zeros(self.n))
            self.register_buffer("angle_std", torch.ones(self.n))

    def set_stats(self, state_mean: Any, state_std: Any) -> None:
        """Take the angles' normalization from the full (Ds,) state mean and std."""
        if self.n:
            idx = self.angle_idx.cpu()
            mean = torch.as_tensor(state_mean, dtype=torch.float32)[idx]
            std = torch.as_tensor(state_std, dtype=torch.float32)[idx]
            self.angle_mean.copy_(mean)
            self.angle_std.copy_(std)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if not self.n:
            return s
        q = s.index_select(-1, self.angle_idx) * self.angle_std + self.angle_mean  # (..., na)
        return torch.cat([s, q.sin(), q.cos()], dim=-1)  # (..., Ds + 2 na)


def role_mask(n_context: int, horizon: int) -> torch.Tensor:
    """(N, N) bool, True where query row may attend to key column (SDPA's convention).

    Context rows see the context columns only; plan rows see everything.
    """
    n = n_context + horizon
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[:n_context, n_context:] = False
    return mask


class LevelEmbedding(nn.Module):
    """tau (B, H) in [0, 1] -> (B, H, d): sinusoidal features then a 2-layer MLP."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        half = n_embd // 2
        # Frequencies from 1 to 1000 over [0, 1]: fine enough to tell 1/(K*Hc) steps apart.
        freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half))
        self.freqs: torch.Tensor
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, n_embd), nn.SiLU(), nn.Linear(n_embd, n_embd))

    def forward(self, tau: torch.Tensor) -> torch.Tensor:
        angles = tau.unsqueeze(-1) * self.freqs  # (B, H, d/2)
        feats = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (B, H, d)
        out: torch.Tensor = self.mlp(feats)  # (B, H, d)
        return out


class SelfAttention(nn.Module):
    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, N, d = h.shape
        q, k, v = self.qkv(h).split(d, dim=2)  # each (B, N, d)
        q = q.view(B, N, self.n_head, d // self.n_head).transpose(1, 2)  # (B, nh, N, hs)
        k = k.view(B, N, self.n_head, d // self.n_head).transpose(1, 2)  # (B, nh, N, hs)
        v = v.view(B, N, self.n_head, d // self.n_head).transpose(1, 2)  # (B, nh, N, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, N, hs)
        y = y.transpose(1, 2).contiguous().view(B, N, d)  # (B, N, d)
        out: torch.Tensor = self.proj(y)  # (B, N, d)
        return out


class Block(nn.Module):
    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = h + self.attn(self.ln_1(h), mask)
        out: torch.Tensor = h + self.mlp(self.ln_2(h))
        return out


def init_weights(module: nn.Module) -> None:
    """GPT-style initialization (`nn.Module.apply`): linear and embedding weights N(0, 0.02),
    biases 0."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


class Denoiser(nn.Module):
    """Predicts clean plan tokens from noisy ones, per-token levels and clean context.

    Example:
        cfg = DenoiserConfig(state_dim=6, action_dim=1)
        net = Denoiser(cfg)
        z_hat = net(x, tau, ctx_states, goal)   # (B, H, 7)
    """

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.n_embd
        na = 2 * len(cfg.angle_dims)  # extra input features per embedded state
        self.angles = AngleFeatures(cfg.angle_dims)
        self.state_in = nn.Linear(cfg.state_dim + na, d)
        self.ctx_pos = nn.Parameter(torch.zeros(cfg.n_past + 1, d))
        self.goal_in = nn.Linear(cfg.goal_dim, d) if cfg.goal_dim > 0 else None
        self.goal_pos = nn.Parameter(torch.zeros(1, d)) if cfg.goal_dim > 0 else None
        self.plan_in = nn.Linear(cfg.token_dim + na, d)
        n_flat = (cfg.n_past + 1) * (cfg.state_dim + na) + cfg.goal_dim
        self.cond_in = nn.Linear(n_flat, d) if cfg.global_cond else None
        self.plan_pos = nn.Parameter(torch.zeros(cfg.horizon, d))
        self.level = LevelEmbedding(d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.token_dim)
        self.register_buffer(
            "mask", role_mask(cfg.n_context, cfg.horizon), persistent=False
        )  # (N, N)
        self.apply(init_weights)
        for p in (self.ctx_pos, self.plan_pos, self.goal_pos):
            if p is not None:
                nn.init.normal_(p, std=0.02)

    def encode(
        self,
        x: torch.Tensor,
        tau: torch.Tensor,
        ctx_states: torch.Tensor,
        goal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """All token representations after the last block, (B, N, d); context rows first.

        x (B, H, Dz) noisy plan, tau (B, H) levels, ctx_states (B, n_past + 1, Ds) oldest
        first with the current state last, goal (B, Dg) or None when Dg = 0.
        """
        Ds = self.cfg.state_dim
        ctx_feats = self.angles(ctx_states)  # (B, n_past+1, Ds + 2 na)
        parts = [self.state_in(ctx_feats) + self.ctx_pos]  # (B, n_past+1, d)
        if self.goal_in is not None and self.goal_pos is not None:
            if goal is None:
                raise ValueError(f"this model needs a goal of size {self.cfg.goal_dim}")
            parts.append(self.goal_in(goal).unsqueeze(1) + self.goal_pos)  # (B, 1, d)
        if self.angles.n:
            x = torch.cat([self.angles(x[..., :Ds]), x[..., Ds:]], dim=-1)  # (B, H, Dz + 2 na)
        plan = self.plan_in(x) + self.plan_pos + self.level(tau)  # (B, H, d)
        if self.cond_in is not None:
            flat = ctx_feats.flatten(1)  # (B, (n_past+1)*(Ds + 2 na))
            if goal is not None and self.cfg.goal_dim > 0:
                flat = torch.cat([flat, goal], dim=1)  # (B, (n_past+1)*Ds + Dg)
            plan = plan + self.cond_in(flat).unsqueeze(1)  # (B, H, d)
        parts.append(plan)
        h = torch.cat(parts, dim=1)  # (B, N, d)
        mask = self.mask if self.cfg.aligned_attention else None
        for block in self.blocks:
            h = block(h, mask)
        return h  # (B, N, d)

    def forward(
        self,
        x: torch.Tensor,
        tau: torch.Tensor,
        ctx_states: torch.Tensor,
        goal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.encode(x, tau, ctx_states, goal)  # (B, N, d)
        h = self.ln_f(h[:, self.cfg.n_context :])  # (B, H, d)
        out: torch.Tensor = self.head(h)  # (B, H, Dz) clean-token estimate
        return out


@dataclass(frozen=True)
class MLPConfig:
    state_dim: int  # Ds
    action_dim: int  # Da
    goal_dim: int = 0  # Dg
    n_past: int = 2  # past states in the input besides the current one
    hidden: int = 192  # width of each hidden layer (~ the transformer's parameter count)
    n_hidden: int = 3  # hidden layers
    angle_dims: tuple[int, ...] = ()  # state dims that are angles (rad): add sin/cos features

    def __post_init__(self) -> None:
        for name in ("state_dim", "action_dim", "hidden", "n_hidden"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"MLPConfig.{name}={value!r} must be a positive int")
        if self.goal_dim < 0 or self.n_past < 0:
            raise ValueError(f"{self.goal_dim=} and {self.n_past=} must be >= 0")
        object.__setattr__(self, "angle_dims", _check_angle_dims(self.angle_dims, self.state_dim))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MLPPolicy(nn.Module):
    """Single-step behaviour cloning: (ctx_states, goal) -> normalized action (B, Da)."""

    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.angles = AngleFeatures(cfg.angle_dims)
        n_in = (cfg.n_past + 1) * (cfg.state_dim + 2 * len(cfg.angle_dims)) + cfg.goal_dim
        layers: list[nn.Module] = []
        for i in range(cfg.n_hidden):
            layers += [nn.Linear(n_in if i == 0 else cfg.hidden, cfg.hidden), nn.GELU()]
        layers.append(nn.Linear(cfg.hidden, cfg.action_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, ctx_states: torch.Tensor, goal: torch.Tensor | None = None) -> torch.Tensor:
        inp = self.angles(ctx_states).flatten(1)  # (B, (n_past+1)*(Ds + 2 na))
        if self.cfg.goal_dim > 0:
            if goal is None:
                raise ValueError(f"this model needs a goal of size {self.cfg.goal_dim}")
            inp = torch.cat([inp, goal], dim=1)  # (B, (n_past+1)*Ds + Dg)
        out: torch.Tensor = self.net(inp)  # (B, Da)
        return out
