"""Training the discrete planners: `dllm` (masked-token cross entropy) and `ar` (next-sub-token
cross entropy), on the same windows, optimizer, steps, batch, EMA and seeding as the other kinds.

`policies.train.train` hands kinds `dllm` and `ar` to `train_discrete`; `rtdiff train --policy
dllm|ar` reaches it the same way (`parse_discrete_settings` reads its `--set` options). Per step:

  1. draw a batch of windows (context, goal, H future tokens); the context and goal are
     normalized as for the continuous models, the tokens are sub-token ids (`tokenize`);
  2. dllm: draw per-token masking levels like the rolling planner's training levels
     (`schedule.sample_train_levels`, profile `forcing`: independent levels, ramps, re-masked
     ramps) and mask each sub-token of token j with probability tau_j, token 0's state never
     (the planner always knows it); cross entropy on the masked sub-tokens;
     ar: teacher forcing, the cross entropy of every sub-token after token 0's state given
     everything before it (the causal mask);
  3. the state and action halves of the loss weigh the same (as the continuous loss), plan
     token j by `token_weights(H, token_decay)`;
  4. AdamW step, EMA update; DDP over ranks as `policies.train` does.

The tokenizer (`policies.tokenizer.BinTokenizer`, `bins` and `tokenizer` in the model config:
`--set tokenizer.bins=64 --set tokenizer.kind=quantile`) is fitted on the dataset's raw
states and actions before training and kept in the model; its round-trip error per dimension
goes in the checkpoint's training record (`train.tokenizer`).

After training a dllm's surprise scale is calibrated on the data: the surprise the planner
would measure (the share of token 1's state sub-tokens whose predicted bin is more than one bin
off, predicted with token 1's state masked and the rest at the steady-state ramp) has its 90th
percentile as the re-mask threshold.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from policies.checkpoint import Checkpoint
from policies.config import PlannerConfig
from policies.data import EpisodeLike, fit_normalizer, make_windows
from policies.discrete import MASKS, DiscreteConfig, SubTokenTransformer
from policies.schedule import ramp_levels, sample_train_levels
from policies.tokenizer import BinTokenizer
from policies.train import (
    LossLog,
    Ranks,
    TrainConfig,
    TrainResult,
    _parse_value,
    _ranks_in_sync,
    evaluate_if_due,
    optimizer_step,
    rank_share,
    token_weights,
    training_parts,
)

DISCRETE_KINDS = ("dllm", "ar")
# `--set tokenizer.NAME=...` names the model config field it sets
TOKENIZER_SETTINGS = {"bins": "bins", "kind": "tokenizer"}


def default_mask(kind: str) -> str:
    return "causal" if kind == "ar" else "full"


def fit_tokenizer(
    episodes: Sequence[EpisodeLike], *, bins: int, kind: str
) -> tuple[BinTokenizer, dict[str, Any]]:
    """Bins for [state dims, action dims] fitted on every raw state and action of `episodes`,
    and its round-trip error per dimension (`BinTokenizer.round_trip_error`) on that data."""
    states = np.concatenate([np.asarray(ep.states, np.float64) for ep in episodes])
    actions = np.concatenate([np.asarray(ep.actions, np.float64) for ep in episodes])
    tok_s = BinTokenizer.fit(states, bins=bins, kind=kind)
    tok_a = BinTokenizer.fit(actions, bins=bins, kind=kind)
    tok = BinTokenizer(
        np.concatenate([tok_s.edges, tok_a.edges]), np.concatenate([tok_s.centers, tok_a.centers]),
        kind,
    )
    record = {
        "kind": kind,
        "bins": bins,
        "round_trip_state": tok_s.round_trip_error(states),
        "round_trip_action": tok_a.round_trip_error(actions),
    }
    return tok, record


def tokenize(plan: npt.NDArray[np.float32], tok: BinTokenizer) -> npt.NDArray[np.int64]:
    """Raw plan tokens (N, H, G) -> flattened sub-token ids (N, H * G)."""
    ids = tok.encode(plan)  # (N, H, G)
    return ids.reshape(ids.shape[0], -1)


def _halves_mean(
    ce: torch.Tensor,
    counted: torch.Tensor,
    is_state: torch.Tensor,
    weights: torch.Tensor | None,
    action_weight: float,
) -> torch.Tensor:
    """Mean cross entropy of the counted state sub-tokens + action_weight x the same over the
    action sub-tokens. ce, counted (B, L); is_state (L,) bool; weights (L,) per position."""
    c = counted.float()
    w = c if weights is None else c * weights
    st = is_state.float()
    state = (ce * w * st).sum() / (c * st).sum().clamp(min=1.0)
    action = (ce * w * (1.0 - st)).sum() / (c * (1.0 - st)).sum().clamp(min=1.0)
    return state + action_weight * action


def dllm_loss(
    net: Callable[..., torch.Tensor],
    cfg: DiscreteConfig,
    ctx: torch.Tensor,
    goal: torch.Tensor | None,
    ids: torch.Tensor,
    tau: torch.Tensor,
    draw: torch.Tensor,
    *,
    action_weight: float = 1.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked-token cross entropy. ids (B, P); tau (B, H) masking levels; draw (B, P) uniform
    numbers (sub-token p is masked where draw < tau of its token; token 0's state never)."""
    G, Ds, K = cfg.group, cfg.state_dim, cfg.bins
    masked = draw < tau.repeat_interleave(G, dim=1)  # (B, P)
    masked[:, :Ds] = False
    logits = net(torch.where(masked, torch.full_like(ids, K), ids), ctx, goal)  # (B, P, K)
    ce = F.cross_entropy(logits.reshape(-1, K), ids.reshape(-1), reduction="none")
    is_state = torch.arange(cfg.n_plan, device=ids.device) % G < Ds
    return _halves_mean(ce.view(ids.shape), masked, is_state, weights, action_weight)


def ar_loss(
    net: Callable[..., torch.Tensor],
    cfg: DiscreteConfig,
    ctx: torch.Tensor,
    goal: torch.Tensor | None,
    ids: torch.Tensor,
    *,
    action_weight: float = 1.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-sub-token cross entropy (teacher forcing) of plan positions Ds..P-1: the logits at
    position p - 1 predict position p (`policies.discrete`, the causal mask)."""
    G, Ds, K = cfg.group, cfg.state_dim, cfg.bins
    logits = net(ids, ctx, goal)[:, Ds - 1 : -1]  # (B, P - Ds, K)
    target = ids[:, Ds:]  # (B, P - Ds)
    ce = F.cross_entropy(logits.reshape(-1, K), target.reshape(-1), reduction="none")
    is_state = torch.arange(Ds, cfg.n_plan, device=ids.device) % G < Ds
    counted = torch.ones_like(target, dtype=torch.bool)
    w = None if weights is None else weights[Ds:]
    return _halves_mean(ce.view(target.shape), counted, is_state, w, action_weight)


def calibrate_dllm_surprise(
    model: SubTokenTransformer,
    ids: torch.Tensor,
    ctx: torch.Tensor,
    goal: torch.Tensor,
    pcfg: PlannerConfig,
    *,
    seed: int = 0,
    n: int = 4096,
) -> PlannerConfig:
    """The re-mask threshold: the 90th percentile of the surprise on training windows (module
    docstring); the surprise reaches `renoise_max` at 1 (every state sub-token off)."""
    c = model.cfg
    G, Ds, K, H = c.group, c.state_dim, c.bins, c.horizon
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(len(ids), generator=gen)[:n]
    x, cx = ids[idx].to(dev), ctx[idx].to(dev)
    g = goal[idx].to(dev) if c.goal_dim > 0 else None
    share = (ramp_levels(H, pcfg.clean_ticks) * G).floor() / G  # steady-state masked share
    draw = torch.rand(x.shape, generator=gen).to(dev)
    masked = draw < share.to(dev).repeat_interleave(G).unsqueeze(0)
    masked[:, :Ds] = False
    masked[:, G : G + Ds] = True  # token 1's state: what the planner predicts
    with torch.no_grad():
        pred = model(torch.where(masked, torch.full_like(x, K), x), cx, g).argmax(-1)
    moved = (pred[:, G : G + Ds] - x[:, G : G + Ds]).abs() > 1
    q90 = float(torch.quantile(moved.float().mean(dim=1), 0.9))
    return replace(pcfg, surprise_threshold=min(q90, 0.9), surprise_full=1.0)


def parse_discrete_settings(
    settings: Sequence[str], kind: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`--set` options of `rtdiff train --policy dllm|ar` -> (model, train, planner) overrides.

    As `policies.train.parse_settings`, with the model config `DiscreteConfig`, the prefix
    `tokenizer.` (`tokenizer.bins=64`, `tokenizer.kind=quantile|uniform`), and
    `aligned_attention=true|false` as another name for `mask=aligned|full` (dllm; an ar model
    is always causal)."""
    defaults: dict[str, dict[str, Any]] = {
        g: {f.name: f.default for f in fields(c)}
        for g, c in (("model", DiscreteConfig), ("train", TrainConfig), ("planner", PlannerConfig))
    }
    groups: dict[str, set[str]] = {
        "model": set(defaults["model"]) - {"state_dim", "action_dim", "goal_dim"}
        | {"aligned_attention"},
        "train": set(defaults["train"]) - {"kind", "device", "seed", "steps"},
        "planner": set(defaults["planner"]),
        "tokenizer": set(TOKENIZER_SETTINGS),
    }
    out: dict[str, dict[str, Any]] = {g: {} for g in groups}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        group, dot, name = key.rpartition(".")
        if dot and group not in groups:
            raise ValueError(
                f"--set {item!r}: prefix must be model., train., planner. or tokenizer."
            )
        candidates = [group] if dot else [g for g in groups if name in groups[g]]
        if not candidates or name not in groups[candidates[0]]:
            known = ", ".join(sorted(set().union(*groups.values())))
            raise ValueError(f"--set {item!r}: unknown setting for {kind} (known: {known})")
        where = candidates[0]
        default = defaults.get(where, {}).get(name)
        out[where][name] = _parse_value(value, default)
    model = out["model"]
    for name, value in out["tokenizer"].items():
        model[TOKENIZER_SETTINGS[name]] = value
    if "aligned_attention" in model:
        aligned = model.pop("aligned_attention")
        if not isinstance(aligned, bool):
            raise ValueError(f"--set aligned_attention={aligned!r}: expected true or false")
        model.setdefault("mask", "aligned" if aligned else "full")
    mask = model.get("mask", default_mask(kind))
    if mask not in MASKS:
        raise ValueError(f"--set mask={mask!r}: expected one of {', '.join(MASKS)}")
    if (kind == "ar") != (mask == "causal"):
        want = "causal" if kind == "ar" else "aligned or full"
        raise ValueError(f"--set mask={mask}: a {kind} model's mask is {want}")
    return model, out["train"], out["planner"]


def train_discrete(
    episodes: Sequence[EpisodeLike],
    cfg: TrainConfig,
    *,
    task: str,
    model_cfg: DiscreteConfig | None = None,
    planner_cfg: PlannerConfig | None = None,
    log: Callable[[str], None] | None = None,
    evaluate: Callable[[Checkpoint], str] | None = None,
    eval_every: int = 0,
    model_overrides: dict[str, Any] | None = None,
    planner_overrides: dict[str, Any] | None = None,
    rate_hz: float | None = None,
    ranks: Ranks | None = None,
) -> TrainResult:
    """`policies.train.train` for kinds `dllm` and `ar` (same arguments, same result)."""
    if cfg.kind not in DISCRETE_KINDS:
        raise ValueError(f"{cfg.kind=} is not a discrete kind {DISCRETE_KINDS}")
    share = rank_share(cfg, ranks, rate_hz)
    batch, dev = share.batch, share.device
    if not share.leader:
        log = evaluate = None
    t_start = time.perf_counter()
    norm = fit_normalizer(episodes)
    Ds, Da, Dg = norm.dims
    if model_cfg is None:
        model_cfg = DiscreteConfig(state_dim=Ds, action_dim=Da, goal_dim=Dg,
                                   mask=default_mask(cfg.kind))
    if model_overrides:
        model_cfg = replace(model_cfg, **model_overrides)
    if not isinstance(model_cfg, DiscreteConfig):
        raise ValueError(f"kind {cfg.kind!r} does not go with {type(model_cfg).__name__}")
    if (model_cfg.state_dim, model_cfg.action_dim, model_cfg.goal_dim) != (Ds, Da, Dg):
        raise ValueError(f"model dims differ from the data's {(Ds, Da, Dg)}")
    if (cfg.kind == "ar") != (model_cfg.mask == "causal"):
        raise ValueError(f"a {cfg.kind} model cannot have mask {model_cfg.mask!r}")
    H, G = model_cfg.horizon, model_cfg.group
    pcfg = planner_cfg or PlannerConfig(clean_ticks=max(1, min(7, H - 1)))
    if planner_overrides:
        pcfg = replace(pcfg, **planner_overrides)
    tok, tok_record = fit_tokenizer(episodes, bins=model_cfg.bins, kind=model_cfg.tokenizer)
    record: dict[str, Any] = {} if rate_hz is None else {"rate_hz": float(rate_hz)}
    record["tokenizer"] = tok_record
    raw = make_windows(episodes, horizon=H, n_past=model_cfg.n_past)
    win = raw.normalized(norm)

    torch.manual_seed(cfg.seed)
    model = SubTokenTransformer(model_cfg)
    model.set_tokenizer(tok)
    net, ema, opt, gen = training_parts(model, norm, cfg, share, ranks)
    ctx_all = torch.from_numpy(win.ctx).to(dev)  # (N, P+1, Ds)
    goal_all = torch.from_numpy(win.goal).to(dev)  # (N, Dg)
    ids_all = torch.from_numpy(tokenize(raw.plan, tok)).to(dev)  # (N, H*G)
    tok_w = token_weights(H, cfg.token_decay)
    weights = None if tok_w is None else tok_w.repeat_interleave(G).to(dev)  # (H*G,)
    losses = LossLog(cfg, ranks, dev, log, t_start)

    def snapshot(m: SubTokenTransformer) -> Checkpoint:
        snap = copy.deepcopy(m).cpu().eval()
        scfg = pcfg
        if cfg.kind == "dllm":
            scfg = calibrate_dllm_surprise(snap, ids_all.cpu(), ctx_all.cpu(), goal_all.cpu(),
                                           pcfg, seed=cfg.seed)
        return Checkpoint(cfg.kind, task, snap, norm, scfg, dict(record))

    for step in range(cfg.steps):
        losses.timing(step)
        idx = torch.randint(len(win), (batch,), generator=gen).to(dev)
        ctx, ids = ctx_all[idx], ids_all[idx]
        goal = goal_all[idx] if Dg > 0 else None
        if cfg.kind == "dllm":
            tau = sample_train_levels(
                batch, H, pcfg.clean_ticks, profile="forcing", p_ramp=cfg.p_ramp,
                p_renoise=cfg.p_renoise, generator=gen,
            ).to(dev)
            draw = torch.rand(ids.shape, generator=gen).to(dev)
            loss = dllm_loss(net, model_cfg, ctx, goal, ids, tau, draw,
                             action_weight=cfg.action_weight, weights=weights)
        else:
            loss = ar_loss(net, model_cfg, ctx, goal, ids, action_weight=cfg.action_weight,
                           weights=weights)
        last = losses.add(step, optimizer_step(loss, opt, model, ema, step, cfg))
        evaluate_if_due(step, last, cfg, eval_every, ema, evaluate, snapshot, log, losses)
    samples_per_s = losses.samples_per_s()
    in_sync = None if ranks is None else _ranks_in_sync(model, dev)
    ckpt = None if ema is None else snapshot(ema)
    return TrainResult(ckpt, losses.losses, losses.first_loss, losses.final_loss,
                       time.perf_counter() - t_start, samples_per_s, in_sync)
