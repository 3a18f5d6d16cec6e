"""The sub-token transformer shared by the discrete planners (`dllm` and `ar`).

Both planners run this one backbone, so width, depth and parameter count match: the
comparison of "DLLM Agent: See Farther, Run Faster" (same data, same model size, same clock).
Its blocks are the `Denoiser`'s own (`policies.model.Block`), so at equal width and depth the
discrete and continuous models also match to within a few percent in size.

Shape letters: B batch, C context positions (`n_past + 1` states, plus a goal position when
Dg > 0), H plan tokens, G = Ds + Da sub-tokens per plan token, P = H * G plan positions,
N = C + P, K bins per dimension, d width.

Inputs:
- context: the same continuous context the `Denoiser` sees: `n_past + 1` normalized states
  (oldest first, with the model's angle features) through `Linear(Ds (+ 2 na), d)` plus a
  learned position each, and the normalized goal through `Linear(Dg, d)`;
- plan: token j = [s_{t+j}, a_{t+j}] is a group of G sub-tokens (state dims, then action
  dims), flattened to position p = j * G + i. A position's input is
  `Embedding(K + 1, d)[id] + Embedding(G, d)[i] + Embedding(H, d)[j]`, id K being MASK.
Output: `Linear(d, K)` logits over the K bins at every plan position.

Attention masks (`DiscreteConfig.mask`), True where a query row may attend to a key column:
- `full` (dllm's default): everything sees everything. The ablation against `aligned` on
  double-pendulum, bimodal and pointmaze decided it (docs/policies.md, "The aligned mask").
- `aligned`: context rows see the context only; plan rows see the context and the whole plan.
  No context representation depends on the (partly masked) plan, in any layer.
- `causal` (ar): context rows see the context; plan position p sees the context and plan
  positions <= p. The logits at plan position p predict the id at position p + 1 (the usual
  one-position shift), so the last position's logits are unused.

The autoregressive planner decodes one sub-token per forward with a key/value cache
(`KVCache`, `prefill`, `step`): `prefill` runs the context and token 0's observed state
sub-tokens at once; `step` embeds one plan position, appends its keys and values to the cache
and attends over the filled slots. Every index is a tensor (`pos`), so a CUDA graph can replay
a step at any position; the logits equal a full causal forward's (tested).

The fitted tokenizer (`policies.tokenizer.BinTokenizer`) lives in the model as two float64
buffers, `tok_edges` (G, K-1) and `tok_centers` (G, K), so it is saved with the weights.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from policies.base import TorchPlannerBase, check_dims
from policies.model import (
    AngleFeatures,
    Block,
    DenoiserConfig,
    check_transformer_config,
    init_weights,
)
from policies.normalize import Normalizer
from policies.tokenizer import KINDS as TOKENIZER_KINDS
from policies.tokenizer import BinTokenizer
from runtime.protocols import PlantSpec

MASKS = ("aligned", "full", "causal")
log = logging.getLogger(__name__)
_FROZEN_ATOL = 1e-5


@dataclass(frozen=True)
class DiscreteConfig:
    state_dim: int  # Ds
    action_dim: int  # Da
    goal_dim: int = 0  # Dg; 0 = no goal position
    horizon: int = 8  # H plan tokens
    n_past: int = 2  # past states in the context besides the current one
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 64  # d
    bins: int = 64  # K bins per dimension (the tokenizer's); id K is MASK
    mask: str = "full"  # full | aligned | causal (module docstring)
    angle_dims: tuple[int, ...] = ()  # state dims that are angles (rad): sin/cos features
    tokenizer: str = "quantile"  # how the bins were fitted (policies.tokenizer.KINDS)

    def __post_init__(self) -> None:
        check_transformer_config(self)
        if not (isinstance(self.bins, int) and self.bins >= 2):
            raise ValueError(f"DiscreteConfig.bins={self.bins!r} must be an int >= 2")
        if self.mask not in MASKS:
            raise ValueError(f"DiscreteConfig.mask={self.mask!r} must be one of {MASKS}")
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer={self.tokenizer!r} must be one of {TOKENIZER_KINDS}")

    @property
    def group(self) -> int:
        """G: sub-tokens per plan token (state dims, then action dims)."""
        return self.state_dim + self.action_dim

    @property
    def n_context(self) -> int:
        return self.n_past + 1 + (1 if self.goal_dim > 0 else 0)

    @property
    def n_plan(self) -> int:
        """P = H * G plan positions."""
        return self.horizon * self.group

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def attention_mask(n_context: int, horizon: int, group: int, mask: str) -> torch.Tensor | None:
    """(N, N) bool, True where row may attend to column; None for `full` (no mask)."""
    if mask not in MASKS:
        raise ValueError(f"mask={mask!r} must be one of {MASKS}")
    if mask == "full":
        return None
    n_plan = horizon * group
    n = n_context + n_plan
    out = torch.ones(n, n, dtype=torch.bool)
    out[:n_context, n_context:] = False  # the context never sees the plan
    if mask == "causal":
        out[n_context:, n_context:] = torch.tril(torch.ones(n_plan, n_plan, dtype=torch.bool))
    return out


@dataclass
class KVCache:
    """Keys and values of every layer, (n_layer, B, nh, N, hs) each; slot = sequence position."""

    k: torch.Tensor
    v: torch.Tensor


class SubTokenTransformer(nn.Module):
    """Logits over K bins at every plan position, from sub-token ids and the context.

    Example:
        net = SubTokenTransformer(DiscreteConfig(state_dim=4, action_dim=1))
        logits = net(ids, ctx_states, goal)   # ids (B, H*G) in [0, K]; -> (B, H*G, K)
    """

    def __init__(self, cfg: DiscreteConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, G, K = cfg.n_embd, cfg.group, cfg.bins
        na = 2 * len(cfg.angle_dims)
        self.angles = AngleFeatures(cfg.angle_dims)
        self.state_in = nn.Linear(cfg.state_dim + na, d)
        self.ctx_pos = nn.Parameter(torch.zeros(cfg.n_past + 1, d))
        self.goal_in = nn.Linear(cfg.goal_dim, d) if cfg.goal_dim > 0 else None
        self.goal_pos = nn.Parameter(torch.zeros(1, d)) if cfg.goal_dim > 0 else None
        self.tok_emb = nn.Embedding(K + 1, d)  # bin ids, then MASK = K
        self.dim_emb = nn.Embedding(G, d)  # which dimension a sub-token codes
        self.pos_emb = nn.Embedding(cfg.horizon, d)  # which plan token it belongs to
        # the Denoiser's block, so the two backbones match layer for layer
        block_cfg = DenoiserConfig(
            state_dim=cfg.state_dim, action_dim=cfg.action_dim, n_layer=cfg.n_layer,
            n_head=cfg.n_head, n_embd=d,
        )
        self.blocks = nn.ModuleList(Block(block_cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, K)
        p = torch.arange(cfg.n_plan)
        self.dim_idx: torch.Tensor
        self.tok_idx: torch.Tensor
        self.seq_idx: torch.Tensor
        self.attn_mask: torch.Tensor | None
        self.register_buffer("dim_idx", p % G, persistent=False)  # (P,)
        self.register_buffer("tok_idx", p // G, persistent=False)  # (P,)
        n = cfg.n_context + cfg.n_plan
        self.register_buffer("seq_idx", torch.arange(n), persistent=False)  # (N,)
        self.register_buffer(
            "attn_mask", attention_mask(cfg.n_context, cfg.horizon, G, cfg.mask), persistent=False
        )  # (N, N) or None
        self.tok_edges: torch.Tensor
        self.tok_centers: torch.Tensor
        self.register_buffer("tok_edges", torch.zeros(G, K - 1, dtype=torch.float64))
        self.register_buffer(
            "tok_centers", torch.arange(K, dtype=torch.float64).expand(G, K).clone()
        )
        # traced, frozen CPU versions of forward / prefill / step (`freeze_for_cpu`)
        self._frozen: dict[str, Any] = {}
        self.apply(init_weights)
        for prm in (self.ctx_pos, self.goal_pos):
            if prm is not None:
                nn.init.normal_(prm, std=0.02)

    # -- the tokenizer it was trained with ---------------------------------------------------
    def set_tokenizer(self, tok: BinTokenizer) -> None:
        """Keep `tok` (fitted on [states, actions], G dims, K bins) in the model's buffers."""
        if (tok.dims, tok.bins) != (self.cfg.group, self.cfg.bins):
            raise ValueError(
                f"tokenizer has {tok.dims} dims x {tok.bins} bins, the model "
                f"{self.cfg.group} x {self.cfg.bins}"
            )
        self.tok_edges.copy_(torch.from_numpy(tok.edges))
        self.tok_centers.copy_(torch.from_numpy(tok.centers))

    def tokenizer(self) -> BinTokenizer:
        edges = self.tok_edges.detach().cpu().numpy().astype(np.float64)
        centers = self.tok_centers.detach().cpu().numpy().astype(np.float64)
        return BinTokenizer(edges, centers, self.cfg.tokenizer)

    # -- full forward ------------------------------------------------------------------------
    def _context(self, ctx_states: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor:
        """(B, C, d) context embeddings."""
        parts = [self.state_in(self.angles(ctx_states)) + self.ctx_pos]  # (B, P+1, d)
        if self.goal_in is not None and self.goal_pos is not None:
            if goal is None:
                raise ValueError(f"this model needs a goal of size {self.cfg.goal_dim}")
            parts.append(self.goal_in(goal).unsqueeze(1) + self.goal_pos)  # (B, 1, d)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _plan(self, ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, d) embeddings of `ids` (B, L) at plan positions `positions` (L,) (all P)."""
        dim_idx = self.dim_idx if positions is None else self.dim_idx.index_select(0, positions)
        tok_idx = self.tok_idx if positions is None else self.tok_idx.index_select(0, positions)
        out: torch.Tensor = self.tok_emb(ids) + self.dim_emb(dim_idx) + self.pos_emb(tok_idx)
        return out

    def encode(
        self, ids: torch.Tensor, ctx_states: torch.Tensor, goal: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, N, d): every position's representation after the last block, context first.

        ids (B, P) in [0, K] (K = MASK), ctx_states (B, n_past + 1, Ds) normalized, oldest
        first, goal (B, Dg) normalized or None when Dg = 0."""
        h = torch.cat([self._context(ctx_states, goal), self._plan(ids)], dim=1)  # (B, N, d)
        for block in self.blocks:
            h = block(h, self.attn_mask)
        return h

    def forward(
        self, ids: torch.Tensor, ctx_states: torch.Tensor, goal: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, P, K) logits at every plan position (for `causal`: of the next position)."""
        frozen = self._frozen_fn("forward", ids)
        if frozen is not None:
            out_f: torch.Tensor = frozen(ids, ctx_states, *self._goal_args(goal))
            return out_f
        h = self.encode(ids, ctx_states, goal)[:, self.cfg.n_context :]  # (B, P, d)
        out: torch.Tensor = self.head(self.ln_f(h))
        return out

    # -- incremental decoding (causal) -------------------------------------------------------
    def new_cache(self, batch: int = 1, device: torch.device | str = "cpu") -> KVCache:
        c = self.cfg
        n = c.n_context + c.n_plan
        shape = (c.n_layer, batch, c.n_head, n, c.n_embd // c.n_head)
        dtype = self.head.weight.dtype
        return KVCache(torch.zeros(shape, device=device, dtype=dtype),
                       torch.zeros(shape, device=device, dtype=dtype))

    def _attend(
        self,
        block: Block,
        h: torch.Tensor,
        k_all: torch.Tensor,
        v_all: torch.Tensor,
        write: Callable[[torch.Tensor, torch.Tensor], None],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """One block on `h` (B, L, d): its keys and values go into the cache by `write`, the
        queries attend over the cache `k_all`/`v_all` (B, nh, S, hs) under `mask` (L, S)."""
        B, L, d = h.shape
        nh = self.cfg.n_head
        x = block.ln_1(h)
        q, k, v = block.attn.qkv(x).split(d, dim=2)  # each (B, L, d)
        q = q.view(B, L, nh, d // nh).transpose(1, 2)  # (B, nh, L, hs)
        write(k.view(B, L, nh, d // nh).transpose(1, 2), v.view(B, L, nh, d // nh).transpose(1, 2))
        y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)  # (B, nh, L, hs)
        h = h + block.attn.proj(y.transpose(1, 2).reshape(B, L, d))
        out: torch.Tensor = h + block.mlp(block.ln_2(h))
        return out

    def prefill(
        self,
        state_ids: torch.Tensor,
        ctx_states: torch.Tensor,
        goal: torch.Tensor | None,
        cache: KVCache,
    ) -> torch.Tensor:
        """Run the context and token 0's state sub-tokens `state_ids` (B, Ds) into `cache`;
        (B, K) logits of plan position Ds (token 0's first action sub-token)."""
        frozen = self._frozen_fn("prefill", state_ids)
        if frozen is not None:
            out_f: torch.Tensor = frozen(state_ids, ctx_states, *self._goal_args(goal), cache.k,
                                         cache.v)
            return out_f
        c = self.cfg
        n0 = c.n_context + c.state_dim
        plan = self._plan(state_ids, self.seq_idx[: c.state_dim])  # (B, Ds, d)
        h = torch.cat([self._context(ctx_states, goal), plan], dim=1)  # (B, C + Ds, d)
        mask = None if self.attn_mask is None else self.attn_mask[:n0, :n0]
        for i, block in enumerate(self.blocks):
            k_l, v_l = cache.k[i, :, :, :n0], cache.v[i, :, :, :n0]

            def write(k: torch.Tensor, v: torch.Tensor, k_l: torch.Tensor = k_l,
                      v_l: torch.Tensor = v_l) -> None:
                k_l.copy_(k)
                v_l.copy_(v)

            h = self._attend(cast(Block, block), h, k_l, v_l, write, mask)
        out: torch.Tensor = self.head(self.ln_f(h[:, -1]))  # (B, K)
        return out

    def step(self, pos: torch.Tensor, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Embed plan position `pos` (1,) long holding `ids` (B, 1), append its keys and values
        to `cache` and attend over slots <= its own; (B, K) logits of position pos + 1."""
        frozen = self._frozen_fn("step", ids)
        if frozen is not None:
            out_f: torch.Tensor = frozen(pos, ids, cache.k, cache.v)
            return out_f
        c = self.cfg
        slot = pos + c.n_context  # (1,) sequence position
        n = c.n_context + c.n_plan
        mask = (self.seq_idx <= slot).view(1, 1, 1, n)  # (1, 1, 1, N): filled slots, own too
        h = self._plan(ids, pos)  # (B, 1, d)
        for i, block in enumerate(self.blocks):
            k_l, v_l = cache.k[i], cache.v[i]

            def write(k: torch.Tensor, v: torch.Tensor, k_l: torch.Tensor = k_l,
                      v_l: torch.Tensor = v_l) -> None:
                k_l.index_copy_(2, slot, k)
                v_l.index_copy_(2, slot, v)

            h = self._attend(cast(Block, block), h, k_l, v_l, write, mask)
        out: torch.Tensor = self.head(self.ln_f(h[:, -1]))  # (B, K)
        return out

    # -- CPU inference: traced and frozen ----------------------------------------------------
    def _goal_args(self, goal: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if self.cfg.goal_dim == 0:
            return ()
        if goal is None:
            raise ValueError(f"this model needs a goal of size {self.cfg.goal_dim}")
        return (goal,)

    def _frozen_fn(self, name: str, like: torch.Tensor) -> Any:
        """The frozen `name`, when there is one and it applies (eval mode, CPU tensors)."""
        if not self._frozen or self.training or like.device.type != "cpu":
            return None
        return self._frozen.get(name)

    def freeze_for_cpu(self) -> bool:
        """Trace and freeze `forward` (and, for a causal model, `prefill` and `step`) for
        batch-1 CPU inference, as `policies.frozen` does for the continuous models: the same
        kernels from one C++ call (the dllm forward about 25 % faster, the ar step about 2x,
        on one thread). Each is checked against the eager one on two probe inputs (to 1e-5);
        any failure keeps the eager path. True when frozen. Used in eval mode on CPU only."""
        if self._frozen:
            return True
        c = self.cfg
        self.to("cpu").eval()
        gen = torch.Generator().manual_seed(0)
        goal = torch.randn(1, c.goal_dim, generator=gen)
        g = self._goal_args(goal)
        ids = torch.randint(0, c.bins + (0 if c.mask == "causal" else 1), (1, c.n_plan),
                            generator=gen)
        ctx = torch.randn(1, c.n_past + 1, c.state_dim, generator=gen)
        frozen: dict[str, Any] = {}
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's tracer notices
                frozen["forward"] = _trace(self, (ids, ctx, *g))
                if c.mask == "causal":
                    frozen.update(self._freeze_decoding(ids, ctx, g))
                for args in ((ids, ctx, *g), (ids.flip(1), ctx * 3.0, *(x * 3.0 for x in g))):
                    _check(frozen["forward"](*args), self(*args))
        except Exception as exc:  # an optimisation: any failure means "eager"
            log.warning("policies: cannot freeze the discrete model for CPU (%s); eager", exc)
            return False
        self._frozen.update(frozen)
        return True

    def _freeze_decoding(
        self, ids: torch.Tensor, ctx: torch.Tensor, g: tuple[torch.Tensor, ...]
    ) -> dict[str, Any]:
        """Frozen `prefill` and `step`, checked against eager decoding of `ids`."""
        c = self.cfg
        Ds = c.state_dim
        probe = self.new_cache(1)
        prefill = _trace(_Prefill(self), (ids[:, :Ds], ctx, *g, probe.k, probe.v))
        step = _trace(_Step(self), (torch.tensor([Ds]), ids[:, Ds : Ds + 1], probe.k, probe.v))
        eager, traced = self.new_cache(1), self.new_cache(1)
        _check(prefill(ids[:, :Ds], ctx, *g, traced.k, traced.v),
               self.prefill(ids[:, :Ds], ctx, g[0] if g else None, eager))
        for p in range(Ds, c.n_plan - 1):
            pos = torch.tensor([p])
            _check(step(pos, ids[:, p : p + 1], traced.k, traced.v),
                   self.step(pos, ids[:, p : p + 1], eager))
        return {"prefill": prefill, "step": step}


class _Prefill(nn.Module):
    """`prefill` with the cache as two tensors, for tracing."""

    def __init__(self, net: SubTokenTransformer) -> None:
        super().__init__()
        self.net = net

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        ids, ctx, *rest = args
        goal = rest[0] if len(rest) == 3 else None
        return self.net.prefill(ids, ctx, goal, KVCache(rest[-2], rest[-1]))


class _Step(nn.Module):
    """`step` with the cache as two tensors, for tracing."""

    def __init__(self, net: SubTokenTransformer) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, pos: torch.Tensor, ids: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        return self.net.step(pos, ids, KVCache(k, v))


def _trace(module: nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
    traced = torch.jit.trace(module, args)  # type: ignore[no-untyped-call]
    return torch.jit.freeze(traced.eval())


def _check(got: torch.Tensor, want: torch.Tensor) -> None:
    if got.shape != want.shape or not torch.allclose(got, want, atol=_FROZEN_ATOL, rtol=0):
        raise ValueError("the frozen module differs from the eager one")


def param_count(model: nn.Module) -> int:
    """Trainable parameters (the tokenizer's buffers are not parameters)."""
    return sum(p.numel() for p in model.parameters())


class SubTokenPlanner(TorchPlannerBase):
    """What the discrete planners share on top of `TorchPlannerBase`: the tokenizer's tables
    (the state bins' edges on the host, to encode observations; every bin's centre, normalized,
    on the device, to decode actions and plans), and the counters of `malformed()`."""

    def __init__(
        self,
        model: SubTokenTransformer,
        normalizer: Normalizer,
        spec: PlantSpec,
        *,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        mc = model.cfg
        check_dims(spec, (mc.state_dim, mc.action_dim, mc.goal_dim), "this model")
        super().__init__(normalizer, spec, n_past=mc.n_past, device=device, seed=seed)
        self.model = model.to(self.device).eval()
        Ds, G, K = mc.state_dim, mc.group, mc.bins
        self.H, self.G, self.K, self.P = mc.horizon, G, K, mc.n_plan
        tok = model.tokenizer()
        self.tokenizer = tok
        self._state_edges = np.ascontiguousarray(tok.edges[:Ds])  # (Ds, K-1) float64
        self._ge = np.zeros((Ds, K - 1), dtype=bool)
        self._obs_ids_np = np.zeros(Ds, dtype=np.int64)  # the observed state's bins
        self._obs_ids_cpu = torch.from_numpy(self._obs_ids_np)
        self._obs_ids = torch.zeros(Ds, dtype=torch.long, device=self.device)
        # every bin's centre in normalized units, flattened: id k of dim i is entry i * K + k
        mean = np.concatenate([normalizer.state_mean, normalizer.action_mean]).astype(np.float64)
        std = np.concatenate([normalizer.state_std, normalizer.action_std]).astype(np.float64)
        centers_n = (tok.centers - mean[:, None]) / std[:, None]  # (G, K)
        self._centers_n = torch.as_tensor(centers_n.reshape(-1), dtype=torch.float32).to(
            self.device
        )
        self._dim_base = torch.arange(G, device=self.device) * K  # (G,) offsets into it
        self.decisions = 0  # ticks whose action was asked for (counted once a tick)
        self._counted = False  # this tick's decision is counted

    def _encode_state(self, state: npt.NDArray[np.float64]) -> None:
        """The bins of a (finite) raw state into `_obs_ids_np` and, on the device, `_obs_ids`
        (the tokenizer's `encode`: the count of inner edges <= the value)."""
        np.greater_equal(state[:, None], self._state_edges, out=self._ge)
        np.sum(self._ge, axis=1, out=self._obs_ids_np)
        self._obs_ids.copy_(self._obs_ids_cpu)

    def _decode_n(self, ids: torch.Tensor, first_dim: int) -> torch.Tensor:
        """Normalized bin centres of `ids` (..., n), whose last axis holds dimensions
        `first_dim .. first_dim + n - 1` of a plan token."""
        offsets = self._dim_base[first_dim : first_dim + ids.shape[-1]]  # (n,) a view
        flat = (ids + offsets).reshape(-1)
        return self._centers_n.index_select(0, flat).view(ids.shape)

    def malformed(self) -> dict[str, int]:
        """Counts since the planner was built. `out_of_vocab` is 0 by construction: the head
        has exactly K logits, so an argmax is always a bin and MASK is never decoded."""
        return {"decisions": self.decisions, "out_of_vocab": 0}
