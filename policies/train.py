"""Training: diffusion forcing for the rolling denoiser, plain diffusion for the chunked ones, BC.

`train(episodes, TrainConfig(...), task=..., rate_hz=...)` returns a `Checkpoint` holding the
EMA weights and the control rate of the data (`train["rate_hz"]`, which loading reads instead
of asking the simulator); `train_from_args` does the work of `rtdiff train` and raises
`TrainError` (a `ValueError`, one line) for a request it cannot run, which the CLI layer
(`runtime.cli.train`) prints as its one-line error. The loop, per step:

  1. draw a batch of windows (context, goal, H future tokens), normalized;
  2. draw per-token levels: `forcing` profile for `rolling` (independent levels mixed with the
     ramps and re-noised ramps the planner produces), one shared level for `chunked`/`pertick`;
  3. noise the tokens, `x = (1 - tau) z + tau eps`, and inpaint token 0's state (the planner
     always knows it: it is the observation);
  4. regress the clean tokens; state and action halves of the loss weigh the same, so a 1-D
     action is not drowned by a 6-D state;
  5. AdamW step, EMA update.

Everything random draws from one seeded `torch.Generator`, and the model is initialised under
`torch.manual_seed(seed)`, so two runs with the same seed, data and thread count give bit-equal
weights (tests check it).

After training the rolling planner's surprise scale is calibrated on the data: the surprise the
planner would measure (the error of its clean estimate of the next state, at the steady-state
ramp levels) has its 90th percentile as the re-noise threshold, so re-noising stays off in
ordinary ticks and fires when the world departs from the plan.

Several processes (`rtdiff train --nproc N`, which starts this under torchrun): each process is
one rank (`Ranks.from_env`), the model is wrapped in DistributedDataParallel (gloo on CPU, nccl
on CUDA) and `batch_size` stays the global batch: each rank draws `batch_size / world_size`
windows from its own generator (seed `rank_seed(seed, rank)`; rank 0 draws what a single
process draws), DDP averages the gradients, so every rank takes the same optimizer step on the
same number of windows per step as one process. The logged losses are means over all ranks.
Rank 0 alone keeps the EMA, logs, evaluates and writes the checkpoint (the same format); the
weights of all ranks are compared bit for bit at the end (`ranks_in_sync` in the record).

Any dataset whose state and action spaces are 1-D Boxes trains: the plant's name, dimensions,
action limits and control rate come from the dataset (`rtdiff.json` and the Minari spaces,
`dataset_plant`) and go into the checkpoint's `train["plant"]`; a planner loads on any plant
whose dimensions match. The lockstep evaluation runs only on a built-in task of the same name
and dimensions.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from policies.checkpoint import Checkpoint, save_checkpoint
from policies.config import PlannerConfig
from policies.data import EpisodeLike, Windows, fit_normalizer, make_windows
from policies.discrete import DiscreteConfig, SubTokenTransformer
from policies.model import Denoiser, DenoiserConfig, MLPConfig, MLPPolicy
from policies.normalize import Normalizer
from policies.schedule import ramp_levels, sample_train_levels

TRAIN_KINDS = ("rolling", "chunked", "pertick", "mlp", "dllm", "ar")
DEFAULT_STEPS = {"rolling": 6000, "chunked": 6000, "pertick": 6000, "mlp": 4000, "dllm": 6000,
                 "ar": 6000}
DISCRETE = ("dllm", "ar")  # trained by `policies.train_discrete`


class TrainError(ValueError):
    """A training request that cannot run (arguments, dataset, settings); the message is one
    line for the user."""


@dataclass(frozen=True)
class TrainConfig:
    kind: str = "rolling"  # rolling | chunked | pertick | mlp | dllm | ar
    steps: int = 6000  # optimizer steps
    batch_size: int = 256  # windows per step
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_steps: int = 200  # linear LR warm-up, then cosine down to 10%
    ema_decay: float = 0.999  # EMA of the weights (what the checkpoint keeps)
    p_ramp: float = 0.5  # forcing profile: share of ramp-shaped level profiles
    p_renoise: float = 0.3  # forcing profile: share of ramps lifted to a re-noise floor
    action_weight: float = 1.0  # weight of the action half of the loss (the state half has 1)
    # plan token j's share of the loss is proportional to exp(-token_decay * j) (mean weight 1);
    # 0 = every token counts the same. The planner only ever executes token 0's action.
    token_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    log_every: int = 250  # progress every N steps (0 = silent)

    def __post_init__(self) -> None:
        if self.kind not in TRAIN_KINDS:
            raise ValueError(f"{self.kind=} must be one of {TRAIN_KINDS}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be >= 1")
        if not (self.lr > 0 and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"need lr > 0 and 0 <= ema_decay < 1: {self.lr=}, {self.ema_decay=}")
        if not (0.0 <= self.p_ramp <= 1.0 and 0.0 <= self.p_renoise <= 1.0):
            raise ValueError(f"{self.p_ramp=} and {self.p_renoise=} must be in [0, 1]")
        if not (self.token_decay >= 0.0 and math.isfinite(self.token_decay)):
            raise ValueError(f"{self.token_decay=} must be finite and >= 0")


@dataclass
class TrainResult:
    checkpoint: Checkpoint | None  # None on the ranks other than 0 of a distributed run
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last)
    first_loss: float = float("nan")  # loss of the first step
    final_loss: float = float("nan")  # mean loss over the last log interval
    seconds: float = 0.0
    samples_per_s: float = float("nan")  # windows per second over all ranks, first steps excluded
    ranks_in_sync: bool | None = None  # distributed: all ranks ended with bit-equal weights


@dataclass(frozen=True)
class Ranks:
    """This process's place in a distributed job: global rank, world size, rank on its node."""

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ranks | None:
        """From torchrun's `RANK`, `WORLD_SIZE` and `LOCAL_RANK`; None outside such a job."""
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env or "RANK" not in env:
            return None
        try:
            ranks = cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
        except ValueError:
            raise TrainError(
                f"RANK={env['RANK']!r}, WORLD_SIZE={env['WORLD_SIZE']!r}: not integers"
            ) from None
        if not 0 <= ranks.rank < ranks.world_size:
            raise TrainError(f"RANK={ranks.rank} is not in [0, WORLD_SIZE={ranks.world_size})")
        return ranks

    @property
    def leader(self) -> bool:
        return self.rank == 0


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s batch generator; rank 0's is `seed` itself."""
    return seed + 1_000_003 * rank


def backend_for(device: str) -> str:
    """The process-group backend for a training device: nccl on CUDA, gloo on CPU."""
    return "nccl" if device.startswith("cuda") else "gloo"


def check_world(world_size: int, *, device: str, batch_size: int, local_size: int) -> None:
    """Raise `TrainError` (one line) when `world_size` processes cannot train: a batch that
    does not split evenly, a missing backend, fewer CUDA devices than processes on a node."""
    if batch_size % world_size:
        raise TrainError(
            f"batch_size {batch_size} does not split over {world_size} processes "
            f"(the global batch is divided evenly: --set batch_size=K with K % {world_size} == 0)"
        )
    if not tdist.is_available():
        raise TrainError("this torch build has no torch.distributed")
    backend = backend_for(device)
    if backend == "nccl" and not tdist.is_nccl_available():
        raise TrainError("--device cuda on several processes needs NCCL, which this torch lacks")
    if backend == "gloo" and not tdist.is_gloo_available():
        raise TrainError("several CPU processes need the gloo backend, which this torch lacks")
    if backend == "nccl" and torch.cuda.device_count() < local_size:
        raise TrainError(
            f"--nproc {local_size} on CUDA needs {local_size} CUDA devices on this node, "
            f"torch sees {torch.cuda.device_count()}"
        )


@contextmanager
def process_group(ranks: Ranks | None, device: str) -> Iterator[None]:
    """Join the job's default process group (env:// from torchrun) for the block; a no-op for
    a single process."""
    if ranks is None:
        yield
        return
    if device.startswith("cuda"):
        torch.cuda.set_device(ranks.local_rank)
    tdist.init_process_group(backend_for(device))
    try:
        yield
        # every rank leaves together: a rank that tore its group down while another still
        # trained or evaluated aborted in gloo's threads now and then ("terminate called
        # without an active exception", SIGABRT)
        tdist.barrier()
    finally:
        tdist.destroy_process_group()


def _mean_over_ranks(total: float, count: int, ranks: Ranks | None, dev: torch.device) -> float:
    """`total / count` summed over all ranks (a collective: every rank calls it)."""
    if ranks is None:
        return total / count
    t = torch.tensor([total, float(count)], dtype=torch.float64, device=dev)
    tdist.all_reduce(t)
    return float(t[0] / t[1])


def optimizer_step(
    loss: torch.Tensor, opt: torch.optim.Optimizer, model: torch.nn.Module,
    ema: torch.nn.Module | None, step: int, cfg: TrainConfig,
) -> float:
    """One AdamW step of every trainer: the learning-rate schedule, gradient clipping at 1.0,
    the EMA update. Returns the step's loss."""
    for group in opt.param_groups:
        group["lr"] = _lr_at(step, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if ema is not None:
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1.0 - decay)
    return float(loss.detach())


class LossLog:
    """The losses a trainer reports: the first step's, the mean of each log interval (over
    all ranks), the last interval's mean; one progress line per interval. And its throughput:
    samples per second over the steps after the first few (allocation, DDP buckets), less the
    time spent evaluating (`timing(step)` at the top of each step, `evaluated(seconds)`)."""

    def __init__(self, cfg: TrainConfig, ranks: Ranks | None, dev: torch.device,
                 log: Callable[[str], None] | None, t_start: float) -> None:
        self.cfg, self.ranks, self.dev, self.log = cfg, ranks, dev, log
        self.losses: list[tuple[int, float]] = []
        self.first_loss = self.final_loss = float("nan")
        self._running, self._n = 0.0, 0
        self.t_start = t_start  # when training started (the progress lines' clock)
        self.skip = min(5, cfg.steps - 1)  # steps left out of the throughput
        self._t_timed, self._eval_s = time.perf_counter(), 0.0

    def timing(self, step: int) -> None:
        if step == self.skip:
            self._t_timed, self._eval_s = time.perf_counter(), 0.0

    def evaluated(self, seconds: float) -> None:
        self._eval_s += seconds

    def samples_per_s(self) -> float:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        timed_s = time.perf_counter() - self._t_timed - self._eval_s
        cfg = self.cfg
        return cfg.batch_size * (cfg.steps - self.skip) / timed_s if timed_s > 0 else float("nan")

    def add(self, step: int, value: float) -> bool:
        """Count step `step`'s loss; True on the last step."""
        cfg = self.cfg
        if step == 0:
            self.first_loss = _mean_over_ranks(value, 1, self.ranks, self.dev)
        self._running, self._n = self._running + value, self._n + 1
        last = step == cfg.steps - 1
        if (cfg.log_every and (step + 1) % cfg.log_every == 0) or last:
            mean = _mean_over_ranks(self._running, self._n, self.ranks, self.dev)
            self.losses.append((step + 1, mean))
            self.final_loss = mean
            self._running, self._n = 0.0, 0
            if self.log is not None:
                el = time.perf_counter() - self.t_start
                self.log(f"step {step + 1}/{cfg.steps}  loss {mean:.4f}  {el:.0f} s")
        return last


def _ranks_in_sync(model: torch.nn.Module, dev: torch.device) -> bool:
    """Whether every rank holds rank 0's weights bit for bit (a collective)."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ref = flat.clone()
    tdist.broadcast(ref, src=0)
    same = torch.tensor([int(torch.equal(flat, ref))], device=dev)
    tdist.all_reduce(same, op=tdist.ReduceOp.MIN)
    return bool(same.item())


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def denoiser_loss(
    model: Denoiser,
    ctx: torch.Tensor,
    goal: torch.Tensor | None,
    z: torch.Tensor,
    tau: torch.Tensor,
    eps: torch.Tensor,
    *,
    action_weight: float = 1.0,
    token_weights: torch.Tensor | None = None,
    forward: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """ctx (B, P+1, Ds), goal (B, Dg) | None, z/eps (B, H, Dz), tau (B, H) -> scalar loss.

    `token_weights` (H,) with mean 1 reweights the plan tokens (None: all weigh 1). `forward`
    runs the model instead of `model` itself (its DistributedDataParallel wrapper).
    """
    Ds = model.cfg.state_dim
    t = tau.unsqueeze(-1)  # (B, H, 1)
    x = (1.0 - t) * z + t * eps  # (B, H, Dz)
    x[:, 0, :Ds] = z[:, 0, :Ds]  # inpainted: the current state is observed
    z_hat = (model if forward is None else forward)(x, tau, ctx, goal)  # (B, H, Dz)
    if token_weights is None:
        state_loss = F.mse_loss(z_hat[..., :Ds], z[..., :Ds])
        return state_loss + action_weight * F.mse_loss(z_hat[..., Ds:], z[..., Ds:])
    sq = (z_hat - z).square()  # (B, H, Dz)
    per_token = sq[..., :Ds].mean(dim=(0, 2)) + action_weight * sq[..., Ds:].mean(dim=(0, 2))
    loss: torch.Tensor = (per_token * token_weights).mean()
    return loss


@dataclass
class RankShare:
    """This process's part of a (possibly distributed) training run."""

    batch: int  # windows per step on this rank
    rank: int
    leader: bool  # rank 0: keeps the EMA, logs, evaluates and returns the checkpoint
    device: torch.device


def rank_share(cfg: TrainConfig, ranks: Ranks | None, rate_hz: float | None) -> RankShare:
    """Check `rate_hz` and the batch split, and pick this rank's device (its local GPU)."""
    if rate_hz is not None and not (rate_hz > 0 and math.isfinite(rate_hz)):
        raise ValueError(f"{rate_hz=} must be a positive finite rate")
    world, rank = (1, 0) if ranks is None else (ranks.world_size, ranks.rank)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} does not split over {world} processes")
    dev = torch.device(cfg.device)
    if ranks is not None and dev.type == "cuda":
        dev = torch.device("cuda", ranks.local_rank)
    return RankShare(cfg.batch_size // world, rank, rank == 0, dev)


def training_parts(
    model: Denoiser | MLPPolicy | SubTokenTransformer, norm: Normalizer, cfg: TrainConfig,
    share: RankShare, ranks: Ranks | None,
) -> tuple[Callable[..., torch.Tensor], Any, torch.optim.Optimizer, torch.Generator]:
    """(the forward to train through (DDP on several ranks), the EMA copy (leader only, else
    None), AdamW, the rank's seeded generator) for a freshly built `model`, moved to the
    rank's device in training mode."""
    dev = share.device
    model.angles.set_stats(norm.state_mean, norm.state_std)  # no-op without angle dims
    model.to(dev).train()
    net: Callable[..., torch.Tensor] = model
    if ranks is not None:  # same initial weights everywhere: DDP also broadcasts rank 0's
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    ema = None
    if share.leader:
        ema = copy.deepcopy(model).eval()
        for p in ema.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(rank_seed(cfg.seed, share.rank))
    return net, ema, opt, gen


def evaluate_if_due(
    step: int, last: bool, cfg: TrainConfig, eval_every: int, ema: Any,
    evaluate: Callable[[Checkpoint], str] | None, snapshot: Callable[[Any], Checkpoint],
    log: Callable[[str], None] | None, losses: LossLog,
) -> None:
    """Every `eval_every` steps (not at the last, which the final checkpoint covers) hand a
    snapshot of the EMA weights to `evaluate` and log its line; the time is kept out of the
    throughput."""
    if (ema is None or evaluate is None or eval_every <= 0 or (step + 1) % eval_every
            or last):
        return
    t_eval = time.perf_counter()
    line = evaluate(snapshot(ema))
    if log is not None:
        log(f"step {step + 1}/{cfg.steps}  {line}")
    losses.evaluated(time.perf_counter() - t_eval)


def token_weights(horizon: int, decay: float) -> torch.Tensor | None:
    """(H,) weights proportional to exp(-decay * j), mean 1; None for decay 0 (all equal)."""
    if decay == 0.0:
        return None
    w = torch.exp(-decay * torch.arange(horizon, dtype=torch.float32))
    return w * (horizon / w.sum())


def train(
    episodes: Sequence[EpisodeLike],
    cfg: TrainConfig,
    *,
    task: str,
    model_cfg: DenoiserConfig | MLPConfig | DiscreteConfig | None = None,
    planner_cfg: PlannerConfig | None = None,
    log: Callable[[str], None] | None = None,
    evaluate: Callable[[Checkpoint], str] | None = None,
    eval_every: int = 0,
    model_overrides: dict[str, Any] | None = None,
    planner_overrides: dict[str, Any] | None = None,
    rate_hz: float | None = None,
    ranks: Ranks | None = None,
) -> TrainResult:
    """Train a policy of `cfg.kind` on `episodes`; the checkpoint holds the EMA weights.
    Kinds `dllm` and `ar` are trained by `policies.train_discrete.train_discrete`.

    `rate_hz` is the control rate the episodes were recorded at (one plan token per tick at
    that rate); the checkpoint records it as `train["rate_hz"]` (and every evaluation snapshot
    carries it), so a planner loaded from it runs on that time base without asking the
    simulator. None records nothing (loading then falls back to the task's registered rate).

    With `evaluate` and `eval_every > 0`, every `eval_every` steps a snapshot of the EMA weights
    (surprise-calibrated like the final one) is handed to `evaluate` and its one-line answer
    logged. It draws no randomness from the training generator, so it does not change the
    weights. `model_overrides` / `planner_overrides` replace fields of the default model and
    planner configs (the dims always come from the data).

    With `ranks` this process is one rank of a distributed run whose default process group is
    up (`process_group`): DDP as the module docstring says; `log` and `evaluate` are used on
    rank 0 only, and the other ranks get a result without a checkpoint.
    """
    if cfg.kind in DISCRETE:
        from policies.train_discrete import train_discrete

        if model_cfg is not None and not isinstance(model_cfg, DiscreteConfig):
            raise ValueError(f"kind {cfg.kind!r} does not go with {type(model_cfg).__name__}")
        return train_discrete(
            episodes, cfg, task=task, model_cfg=model_cfg, planner_cfg=planner_cfg, log=log,
            evaluate=evaluate, eval_every=eval_every, model_overrides=model_overrides,
            planner_overrides=planner_overrides, rate_hz=rate_hz, ranks=ranks,
        )
    if isinstance(model_cfg, DiscreteConfig):
        raise ValueError(f"kind {cfg.kind!r} does not go with DiscreteConfig")
    share = rank_share(cfg, ranks, rate_hz)
    batch, dev = share.batch, share.device
    if not share.leader:
        log = evaluate = None
    record: dict[str, Any] = {} if rate_hz is None else {"rate_hz": float(rate_hz)}
    t_start = time.perf_counter()
    norm = fit_normalizer(episodes)
    Ds, Da, Dg = norm.dims
    is_mlp = cfg.kind == "mlp"
    if model_cfg is None:
        model_cfg = (
            MLPConfig(state_dim=Ds, action_dim=Da, goal_dim=Dg)
            if is_mlp
            else DenoiserConfig(state_dim=Ds, action_dim=Da, goal_dim=Dg)
        )
    if model_overrides:
        model_cfg = replace(model_cfg, **model_overrides)
    if (model_cfg.state_dim, model_cfg.action_dim, model_cfg.goal_dim) != (Ds, Da, Dg):
        raise ValueError(f"model dims differ from the data's {(Ds, Da, Dg)}")
    if is_mlp != isinstance(model_cfg, MLPConfig):
        raise ValueError(f"kind {cfg.kind!r} does not go with {type(model_cfg).__name__}")
    horizon = 1 if isinstance(model_cfg, MLPConfig) else model_cfg.horizon
    pcfg = planner_cfg or PlannerConfig(clean_ticks=max(1, min(7, horizon - 1)))
    if planner_overrides:
        pcfg = replace(pcfg, **planner_overrides)
    win = make_windows(episodes, horizon=horizon, n_past=model_cfg.n_past).normalized(norm)

    torch.manual_seed(cfg.seed)
    model: Denoiser | MLPPolicy = (
        MLPPolicy(model_cfg) if isinstance(model_cfg, MLPConfig) else Denoiser(model_cfg)
    )
    net, ema, opt, gen = training_parts(model, norm, cfg, share, ranks)
    ctx_all = torch.from_numpy(win.ctx).to(dev)  # (N, P+1, Ds)
    goal_all = torch.from_numpy(win.goal).to(dev)  # (N, Dg)
    plan_all = torch.from_numpy(win.plan).to(dev)  # (N, H, Dz)
    profile = "forcing" if cfg.kind == "rolling" else "uniform"
    tok_w = token_weights(horizon, cfg.token_decay)
    if tok_w is not None:
        tok_w = tok_w.to(dev)
    losses = LossLog(cfg, ranks, dev, log, t_start)

    def snapshot(m: Denoiser | MLPPolicy) -> Checkpoint:
        snap = copy.deepcopy(m).cpu()
        snap_cfg = (calibrate_surprise(snap, win, pcfg, seed=cfg.seed)
                    if isinstance(snap, Denoiser) else pcfg)
        return Checkpoint(cfg.kind, task, snap, norm, snap_cfg, dict(record))

    for step in range(cfg.steps):
        losses.timing(step)
        idx = torch.randint(len(win), (batch,), generator=gen).to(dev)
        ctx, z = ctx_all[idx], plan_all[idx]
        goal = goal_all[idx] if Dg > 0 else None
        if isinstance(model, MLPPolicy):
            loss = F.mse_loss(net(ctx, goal), z[:, 0, Ds:])
        else:
            tau = sample_train_levels(
                batch,
                horizon,
                pcfg.clean_ticks,
                profile=profile,
                p_ramp=cfg.p_ramp,
                p_renoise=cfg.p_renoise,
                generator=gen,
            ).to(dev)
            eps = torch.randn(z.shape, generator=gen).to(dev)
            loss = denoiser_loss(
                model, ctx, goal, z, tau, eps, action_weight=cfg.action_weight,
                token_weights=tok_w, forward=None if ranks is None else net,
            )
        last = losses.add(step, optimizer_step(loss, opt, model, ema, step, cfg))
        evaluate_if_due(step, last, cfg, eval_every, ema, evaluate, snapshot, log, losses)
    samples_per_s = losses.samples_per_s()
    in_sync = None if ranks is None else _ranks_in_sync(model, dev)
    if ema is None:
        return TrainResult(None, losses.losses, losses.first_loss, losses.final_loss,
                           time.perf_counter() - t_start, samples_per_s, in_sync)
    if isinstance(ema, Denoiser):
        pcfg = calibrate_surprise(ema, win, pcfg, seed=cfg.seed)
    ema.cpu()
    ckpt = Checkpoint(
        kind=cfg.kind, task=task, model=ema, normalizer=norm, planner=pcfg, train=dict(record)
    )
    return TrainResult(ckpt, losses.losses, losses.first_loss, losses.final_loss,
                       time.perf_counter() - t_start, samples_per_s, in_sync)


def calibrate_surprise(
    model: Denoiser, win: Windows, pcfg: PlannerConfig, *, seed: int = 0, n: int = 4096
) -> PlannerConfig:
    """Set the re-noise threshold to the 90th percentile of the in-distribution surprise."""
    c, Ds = model.cfg, model.cfg.state_dim
    if c.horizon < 2:
        return pcfg
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(len(win), generator=gen)[:n]
    ctx = torch.from_numpy(win.ctx)[idx].to(dev)
    goal = torch.from_numpy(win.goal)[idx].to(dev) if c.goal_dim > 0 else None
    z = torch.from_numpy(win.plan)[idx].to(dev)
    tau = ramp_levels(c.horizon, pcfg.clean_ticks).expand(len(idx), -1).to(dev)
    eps = torch.randn(z.shape, generator=gen).to(dev)
    with torch.no_grad():
        t = tau.unsqueeze(-1)
        x = (1.0 - t) * z + t * eps
        x[:, 0, :Ds] = z[:, 0, :Ds]
        z_hat = model(x, tau, ctx, goal)
        err = (z_hat[:, 1, :Ds] - z[:, 1, :Ds]).square().mean(dim=1).sqrt()  # (n,)
    q90 = float(torch.quantile(err, 0.9))
    threshold = max(q90, 1e-3)
    return replace(pcfg, surprise_threshold=threshold, surprise_full=5.0 * threshold)


# -- evaluation (needs a simulated plant; only the CLI reaches for one) ------------------------


def lockstep_eval(planner: Any, plant: Any, *, episodes: int, seed: int) -> dict[str, float]:
    """Run `episodes` lockstep episodes, one refine step per tick (an ar planner: the steps of
    one complete action, `steps_per_decision`); success rate and return."""
    from runtime.lockstep import run_lockstep

    steps = int(getattr(planner, "steps_per_decision", 1))
    done = run_lockstep(plant, planner, episodes=episodes, seed=seed,
                        steps_per_tick=steps).episodes
    return {
        "success_rate": sum(e.success for e in done) / episodes,
        "mean_return": float(np.mean([e.episode_return for e in done])),
    }


def _progress(line: str) -> None:
    sys.stderr.write(f"rtdiff train: {line}\n")
    sys.stderr.flush()


def _parse_value(text: str, default: Any = None) -> Any:
    if isinstance(default, tuple):  # e.g. angle_dims=0,1 (empty: "none")
        if text.lower() in ("none", "()", ""):
            return ()
        try:
            return tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a comma-separated list of ints") from None
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_settings(
    settings: Sequence[str], kind: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`["n_embd=128", "train.p_ramp=0.3"]` -> (model, train, planner) overrides.

    A bare key goes to whichever of the model config (`MLPConfig` for `mlp`, else
    `DenoiserConfig`), `TrainConfig` or `PlannerConfig` has that field, in that order; a
    `model.`, `train.` or `planner.` prefix picks one. The dims and the kind are not settable.
    Raises ValueError naming the bad setting. Kinds `dllm` and `ar`:
    `policies.train_discrete.parse_discrete_settings`.
    """
    if kind in DISCRETE:
        from policies.train_discrete import parse_discrete_settings

        return parse_discrete_settings(settings, kind)
    model_cls = MLPConfig if kind == "mlp" else DenoiserConfig
    model_fields = {f.name for f in fields(model_cls)}
    defaults: dict[str, dict[str, Any]] = {
        g: {f.name: f.default for f in fields(c)}
        for g, c in (("model", model_cls), ("train", TrainConfig), ("planner", PlannerConfig))
    }
    groups: dict[str, set[str]] = {
        "model": model_fields - {"state_dim", "action_dim", "goal_dim"},
        "train": {f.name for f in fields(TrainConfig)} - {"kind", "device", "seed", "steps"},
        "planner": {f.name for f in fields(PlannerConfig)},
    }
    out: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "planner": {}}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        group, dot, name = key.rpartition(".")
        if dot and group not in groups:
            raise ValueError(f"--set {item!r}: prefix must be model., train. or planner.")
        candidates = [group] if dot else [g for g in groups if name in groups[g]]
        if not candidates or name not in groups[candidates[0]]:
            known = ", ".join(sorted(set().union(*groups.values())))
            raise ValueError(f"--set {item!r}: unknown setting for {kind} (known: {known})")
        out[candidates[0]][name] = _parse_value(value, defaults[candidates[0]].get(name))
    return out["model"], out["train"], out["planner"]


COMMAND_ENV = "RTDIFF_TRAIN_COMMAND"  # the command a launcher ran, recorded by every rank


def train_from_args(args: Any) -> int:
    """`rtdiff train --policy KIND --data DIR --out DIR [--task T] [--steps N] [--device D]`.

    Inside a torchrun job (`Ranks.from_env`) this process trains as one rank; `rtdiff train
    --nproc N` (`runtime.cli.train`) starts such a job. Raises `TrainError` (one line) for a
    request it cannot run.
    """
    ranks = Ranks.from_env()
    leader = ranks is None or ranks.leader
    say = _progress if leader else _quiet
    if args.policy not in TRAIN_KINDS:
        raise TrainError(f"--policy {args.policy!r} must be one of {', '.join(TRAIN_KINDS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda asked for, but torch sees no CUDA device")
    try:
        from sims.datasets import load_episodes
    except ImportError as exc:
        raise TrainError(f"cannot load datasets: sims.datasets is unavailable ({exc})") from None
    spaces = dataset_spaces(args.data)
    try:
        episodes = list(load_episodes(args.data))
    except (OSError, ValueError, KeyError) as exc:
        raise TrainError(f"cannot read dataset {args.data}: {exc}") from None
    if not episodes:
        raise TrainError(f"dataset {args.data} holds no episodes")
    task = getattr(args, "task", None)
    tasks = sorted({str(getattr(ep, "task", task)) for ep in episodes})
    if task is not None and tasks != [task]:
        raise TrainError(f"dataset {args.data} holds task(s) {tasks}, not {task!r}")
    if len(tasks) != 1:
        raise TrainError(f"dataset {args.data} holds several plants {tasks}: name one with --task")
    task = tasks[0]
    plant = dataset_plant(args.data, episodes, spaces)
    if args.device == "cpu":
        # One thread: on a small shared VM a second thread mostly fights the other processes
        # (measured: 49 ms/step on 1 thread vs 800 ms/step on 2 under load).
        torch.set_num_threads(1)
    try:
        model_set, train_set, planner_set = parse_settings(
            getattr(args, "settings", None) or [], args.policy
        )
        cfg = TrainConfig(
            kind=args.policy,
            steps=args.steps or DEFAULT_STEPS[args.policy],
            seed=args.seed,
            device=args.device,
            **train_set,
        )
    except (TypeError, ValueError) as exc:
        raise TrainError(str(exc)) from None
    if ranks is not None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world_size))
        check_world(ranks.world_size, device=args.device, batch_size=cfg.batch_size,
                    local_size=local)
    where = "" if ranks is None else f" on {ranks.world_size} processes"
    say(f"{len(episodes)} episodes of {task}; {cfg.kind} for {cfg.steps} steps{where}")
    eval_every = int(getattr(args, "eval_every", 0) or 0)
    eval_episodes = int(getattr(args, "eval_episodes", 5) or 0)
    evaluate: Callable[[Checkpoint], str] | None = None
    if leader and eval_episodes > 0:
        evaluate, why_not = _sim_evaluator(plant, episodes=eval_episodes, seed=10_000 + args.seed)
        if evaluate is None:
            say(f"{why_not}: no lockstep evaluation")
    try:
        with process_group(ranks, args.device):
            res = train(
                episodes, cfg, task=task, log=say if leader else None, evaluate=evaluate,
                eval_every=eval_every, model_overrides=model_set, planner_overrides=planner_set,
                rate_hz=plant["rate_hz"], ranks=ranks,
            )
    except (TypeError, ValueError) as exc:
        raise TrainError(str(exc)) from None
    ckpt = res.checkpoint
    if ckpt is None:  # a rank other than 0: rank 0 writes the checkpoint
        return 0
    ckpt.train = {
        **ckpt.train,  # what training recorded (a discrete model: its tokenizer)
        "command": os.environ.get(COMMAND_ENV) or "rtdiff " + " ".join(sys.argv[1:]),
        # one plan token = one step of the data: `policies.tokenrate` runs faster plants
        "rate_hz": plant["rate_hz"],
        "plant": plant,
        "config": asdict(cfg),
        "episodes": len(episodes),
        "first_loss": res.first_loss,
        "final_loss": res.final_loss,
        "seconds": round(res.seconds, 1),
        "samples_per_s": round(res.samples_per_s, 1),
        "torch": torch.__version__,
    }
    if ranks is not None:
        ckpt.train["distributed"] = {
            "world_size": ranks.world_size,
            "backend": backend_for(args.device),
            "per_rank_batch": cfg.batch_size // ranks.world_size,
            "ranks_in_sync": res.ranks_in_sync,
        }
        if not res.ranks_in_sync:
            say("warning: the ranks' weights differ at the end (gradients not all-reduced?)")
    try:
        out = save_checkpoint(ckpt, args.out)
    except OSError as exc:
        raise TrainError(f"cannot write checkpoint {args.out}: {exc}") from None
    say(
        f"saved {out}  loss {res.first_loss:.4f} -> {res.final_loss:.4f}  {res.seconds:.0f} s, "
        f"{res.samples_per_s:.0f} samples/s"
    )
    if evaluate is not None:
        say(f"final: {evaluate(ckpt)}")
    return 0


def _quiet(line: str) -> None:
    """The progress sink of ranks other than 0: they log nothing."""


def _dataset_rate_hz(path: str) -> float | None:
    """The control rate the dataset was recorded at (`rtdiff collect`'s `rtdiff.json`)."""
    try:
        meta = json.loads((Path(path) / "rtdiff.json").read_text())
        rate = float(meta["rate_hz"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rate if rate > 0 and math.isfinite(rate) else None


def _minari_space(path: str, key: str) -> dict[str, Any] | None:
    """The Minari dataset's `observation_space` / `action_space` (Minari's JSON form of a
    gymnasium space, kept in `metadata.json`), or None where it does not say."""
    try:
        meta = json.loads((Path(path) / "metadata.json").read_text())
        space = json.loads(meta[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return space if isinstance(space, dict) else None


def _box_dim(space: Any, what: str, path: str) -> int:
    """The size of a 1-D Box space (Minari's JSON form); TrainError for anything else."""
    kind, shape = (space.get("type"), space.get("shape")) if isinstance(space, dict) else (
        type(space).__name__, None)
    if kind != "Box" or not isinstance(shape, list) or len(shape) != 1:
        of = f" of shape {shape}" if kind == "Box" else ""
        raise TrainError(f"dataset {path}: its {what} space is a {kind}{of}, not a 1-D Box")
    return int(shape[0])


def _limits(values: Any, n: int) -> list[float | None]:
    """A Box bound as JSON: n floats, None for an unbounded (or missing) element."""
    vals = values if isinstance(values, list) and len(values) == n else [None] * n
    return [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None for v in vals]


def dataset_spaces(path: str) -> dict[str, Any]:
    """What the dataset's Minari spaces say, as far as it has them: `state_dim`, `goal_dim`,
    `action_dim`, `action_low`, `action_high`. Raises `TrainError` for a space that is not a
    1-D Box (before any episode is read: such data does not make windows)."""
    out: dict[str, Any] = {}
    action = _minari_space(path, "action_space")
    if action is not None:
        out["action_dim"] = _box_dim(action, "action", path)
        out["action_low"], out["action_high"] = action.get("low"), action.get("high")
    obs = _minari_space(path, "observation_space")
    if obs is not None:
        subs = obs.get("subspaces") if obs.get("type") == "Dict" else {"state": obs}
        if not isinstance(subs, dict) or "state" not in subs:
            raise TrainError(f"dataset {path}: its observation space has no 'state' Box")
        out["state_dim"] = _box_dim(subs["state"], "state", path)
        out["goal_dim"] = _box_dim(subs["goal"], "goal", path) if "goal" in subs else 0
    return out


def dataset_plant(
    path: str, episodes: Sequence[EpisodeLike], spaces: Mapping[str, Any]
) -> dict[str, Any]:
    """What the dataset says about its plant: name, state/action/goal dims, action limits and
    control rate, from the episodes, `rtdiff.json` and its `spaces` (`dataset_spaces`).
    Raises `TrainError` when they disagree about a dimension."""
    first = episodes[0]
    dims = {
        "state_dim": int(np.asarray(first.states).shape[-1]),
        "action_dim": int(np.asarray(first.actions).shape[-1]),
        "goal_dim": int(np.asarray(first.goals).shape[-1]),
    }
    try:
        meta = json.loads((Path(path) / "rtdiff.json").read_text())
    except (OSError, ValueError):
        meta = {}
    for key, value in dims.items():
        for said in (spaces.get(key), meta.get(key) if isinstance(meta, dict) else None):
            if said is not None and int(said) != value:
                raise TrainError(
                    f"dataset {path}: {key} {said} in its description, {value} in its episodes"
                )
    n, said = dims["action_dim"], meta if isinstance(meta, dict) else {}
    return {
        "name": str(getattr(first, "task", "")),
        **dims,
        "action_low": _limits(spaces.get("action_low", said.get("action_low")), n),
        "action_high": _limits(spaces.get("action_high", said.get("action_high")), n),
        "rate_hz": _dataset_rate_hz(path),
    }


def _sim_evaluator(
    plant: Mapping[str, Any], *, episodes: int, seed: int
) -> tuple[Callable[[Checkpoint], str] | None, str]:
    """A lockstep evaluation on the built-in task `plant` names, or (None, why not): no
    simulator, or a plant that is no built-in task (or one of another shape)."""
    task = str(plant["name"])
    try:
        from sims import get_task, make_plant
    except ImportError:
        return None, "no simulated plant available"
    try:
        info = get_task(task)
    except KeyError:
        return None, f"plant {task!r} is not a built-in task"
    if (info.state_dim, info.action_dim, info.goal_dim) != (
        plant["state_dim"], plant["action_dim"], plant["goal_dim"]
    ):
        return None, f"plant {task!r} differs in its dims from the built-in task of that name"
    from policies import planner_from_checkpoint

    def evaluate(ckpt: Checkpoint) -> str:
        sim = make_plant(task)
        planner: Any = None
        try:
            planner = planner_from_checkpoint(ckpt, spec=sim.spec(), seed=seed)
            ev = lockstep_eval(planner, sim, episodes=episodes, seed=seed)
        finally:
            sim.close()
            close = getattr(planner, "close", None)
            if close is not None:
                close()
        return (
            f"lockstep eval, {episodes} episodes, 1 step/tick: "
            f"success {ev['success_rate']:.0%}, mean return {ev['mean_return']:.1f}"
        )

    return evaluate, ""
