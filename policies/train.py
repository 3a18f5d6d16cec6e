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
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from policies.checkpoint import Checkpoint, save_checkpoint
from policies.config import PlannerConfig
from policies.data import EpisodeLike, Windows, fit_normalizer, make_windows
from policies.model import Denoiser, DenoiserConfig, MLPConfig, MLPPolicy
from policies.schedule import ramp_levels, sample_train_levels

TRAIN_KINDS = ("rolling", "chunked", "pertick", "mlp")
DEFAULT_STEPS = {"rolling": 6000, "chunked": 6000, "pertick": 6000, "mlp": 4000}


class TrainError(ValueError):
    """A training request that cannot run (arguments, dataset, settings); the message is one
    line for the user."""


@dataclass(frozen=True)
class TrainConfig:
    kind: str = "rolling"  # rolling | chunked | pertick | mlp
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
    checkpoint: Checkpoint
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last)
    first_loss: float = float("nan")  # loss of the first step
    final_loss: float = float("nan")  # mean loss over the last log interval
    seconds: float = 0.0


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
) -> torch.Tensor:
    """ctx (B, P+1, Ds), goal (B, Dg) | None, z/eps (B, H, Dz), tau (B, H) -> scalar loss.

    `token_weights` (H,) with mean 1 reweights the plan tokens (None: all weigh 1).
    """
    Ds = model.cfg.state_dim
    t = tau.unsqueeze(-1)  # (B, H, 1)
    x = (1.0 - t) * z + t * eps  # (B, H, Dz)
    x[:, 0, :Ds] = z[:, 0, :Ds]  # inpainted: the current state is observed
    z_hat = model(x, tau, ctx, goal)  # (B, H, Dz)
    if token_weights is None:
        state_loss = F.mse_loss(z_hat[..., :Ds], z[..., :Ds])
        return state_loss + action_weight * F.mse_loss(z_hat[..., Ds:], z[..., Ds:])
    sq = (z_hat - z).square()  # (B, H, Dz)
    per_token = sq[..., :Ds].mean(dim=(0, 2)) + action_weight * sq[..., Ds:].mean(dim=(0, 2))
    loss: torch.Tensor = (per_token * token_weights).mean()
    return loss


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
    model_cfg: DenoiserConfig | MLPConfig | None = None,
    planner_cfg: PlannerConfig | None = None,
    log: Callable[[str], None] | None = None,
    evaluate: Callable[[Checkpoint], str] | None = None,
    eval_every: int = 0,
    model_overrides: dict[str, Any] | None = None,
    planner_overrides: dict[str, Any] | None = None,
    rate_hz: float | None = None,
) -> TrainResult:
    """Train a policy of `cfg.kind` on `episodes`; the checkpoint holds the EMA weights.

    `rate_hz` is the control rate the episodes were recorded at (one plan token per tick at
    that rate); the checkpoint records it as `train["rate_hz"]` (and every evaluation snapshot
    carries it), so a planner loaded from it runs on that time base without asking the
    simulator. None records nothing (loading then falls back to the task's registered rate).

    With `evaluate` and `eval_every > 0`, every `eval_every` steps a snapshot of the EMA weights
    (surprise-calibrated like the final one) is handed to `evaluate` and its one-line answer
    logged. It draws no randomness from the training generator, so it does not change the
    weights. `model_overrides` / `planner_overrides` replace fields of the default model and
    planner configs (the dims always come from the data).
    """
    if rate_hz is not None and not (rate_hz > 0 and math.isfinite(rate_hz)):
        raise ValueError(f"{rate_hz=} must be a positive finite rate")
    record: dict[str, Any] = {} if rate_hz is None else {"rate_hz": float(rate_hz)}
    t_start = time.perf_counter()
    dev = torch.device(cfg.device)
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
    model.angles.set_stats(norm.state_mean, norm.state_std)  # no-op without angle dims
    model.to(dev).train()
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    ctx_all = torch.from_numpy(win.ctx).to(dev)  # (N, P+1, Ds)
    goal_all = torch.from_numpy(win.goal).to(dev)  # (N, Dg)
    plan_all = torch.from_numpy(win.plan).to(dev)  # (N, H, Dz)
    profile = "forcing" if cfg.kind == "rolling" else "uniform"
    tok_w = token_weights(horizon, cfg.token_decay)
    if tok_w is not None:
        tok_w = tok_w.to(dev)
    losses: list[tuple[int, float]] = []
    first_loss = final_loss = float("nan")
    running, n_running = 0.0, 0
    for step in range(cfg.steps):
        idx = torch.randint(len(win), (cfg.batch_size,), generator=gen).to(dev)
        ctx, z = ctx_all[idx], plan_all[idx]
        goal = goal_all[idx] if Dg > 0 else None
        if isinstance(model, MLPPolicy):
            loss = F.mse_loss(model(ctx, goal), z[:, 0, Ds:])
        else:
            tau = sample_train_levels(
                cfg.batch_size,
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
                token_weights=tok_w,
            )
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1.0 - decay)
        value = float(loss.detach())
        if step == 0:
            first_loss = value
        running, n_running = running + value, n_running + 1
        last = step == cfg.steps - 1
        if (cfg.log_every and (step + 1) % cfg.log_every == 0) or last:
            mean = running / n_running
            losses.append((step + 1, mean))
            final_loss = mean
            running, n_running = 0.0, 0
            if log is not None:
                el = time.perf_counter() - t_start
                log(f"step {step + 1}/{cfg.steps}  loss {mean:.4f}  {el:.0f} s")
        if evaluate is not None and eval_every > 0 and (step + 1) % eval_every == 0 and not last:
            snap = copy.deepcopy(ema).cpu()
            snap_cfg = (
                calibrate_surprise(snap, win, pcfg, seed=cfg.seed)
                if isinstance(snap, Denoiser)
                else pcfg
            )
            line = evaluate(Checkpoint(cfg.kind, task, snap, norm, snap_cfg, dict(record)))
            if log is not None:
                log(f"step {step + 1}/{cfg.steps}  {line}")
    if isinstance(ema, Denoiser):
        pcfg = calibrate_surprise(ema, win, pcfg, seed=cfg.seed)
    ema.cpu()
    ckpt = Checkpoint(
        kind=cfg.kind, task=task, model=ema, normalizer=norm, planner=pcfg, train=dict(record)
    )
    return TrainResult(ckpt, losses, first_loss, final_loss, time.perf_counter() - t_start)


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
    """Run `episodes` lockstep episodes, one refine step per tick; success rate and return."""
    from runtime.lockstep import run_lockstep

    done = run_lockstep(plant, planner, episodes=episodes, seed=seed).episodes
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
    Raises ValueError naming the bad setting.
    """
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


def train_from_args(args: Any) -> int:
    """`rtdiff train --task T --policy KIND --data DIR --out DIR [--steps N] [--device D]`.

    Raises `TrainError` (one line) for a request it cannot run.
    """
    if args.policy not in TRAIN_KINDS:
        raise TrainError(f"--policy {args.policy!r} must be one of {', '.join(TRAIN_KINDS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda asked for, but torch sees no CUDA device")
    try:
        from sims.datasets import load_episodes
    except ImportError as exc:
        raise TrainError(f"cannot load datasets: sims.datasets is unavailable ({exc})") from None
    try:
        episodes = list(load_episodes(args.data))
    except (OSError, ValueError, KeyError) as exc:
        raise TrainError(f"cannot read dataset {args.data}: {exc}") from None
    if not episodes:
        raise TrainError(f"dataset {args.data} holds no episodes")
    tasks = sorted({str(getattr(ep, "task", args.task)) for ep in episodes})
    if tasks != [args.task]:
        raise TrainError(f"dataset {args.data} holds task(s) {tasks}, not {args.task!r}")
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
    _progress(f"{len(episodes)} episodes of {args.task}; {cfg.kind} for {cfg.steps} steps")
    eval_every = int(getattr(args, "eval_every", 0) or 0)
    eval_episodes = int(getattr(args, "eval_episodes", 5) or 0)
    rate_hz = _dataset_rate_hz(args.data)
    evaluate = _sim_evaluator(args.task, episodes=eval_episodes, seed=10_000 + args.seed)
    if evaluate is None:
        _progress("no simulated plant available: no lockstep evaluation")
    try:
        res = train(
            episodes, cfg, task=args.task, log=_progress, evaluate=evaluate, eval_every=eval_every,
            model_overrides=model_set, planner_overrides=planner_set, rate_hz=rate_hz,
        )
    except (TypeError, ValueError) as exc:
        raise TrainError(str(exc)) from None
    ckpt = res.checkpoint
    ckpt.train = {
        "command": "rtdiff " + " ".join(sys.argv[1:]),
        # one plan token = one step of the data: `policies.tokenrate` runs faster plants
        "rate_hz": rate_hz,
        "config": asdict(cfg),
        "episodes": len(episodes),
        "first_loss": res.first_loss,
        "final_loss": res.final_loss,
        "seconds": round(res.seconds, 1),
        "torch": torch.__version__,
    }
    out = save_checkpoint(ckpt, args.out)
    summary = f"saved {out}  loss {res.first_loss:.4f} -> {res.final_loss:.4f}  {res.seconds:.0f} s"
    _progress(summary)
    if evaluate is not None:
        _progress(f"final: {evaluate(ckpt)}")
    return 0


def _dataset_rate_hz(path: str) -> float | None:
    """The control rate the dataset was recorded at (`rtdiff collect`'s `rtdiff.json`)."""
    try:
        meta = json.loads((Path(path) / "rtdiff.json").read_text())
        rate = float(meta["rate_hz"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rate if rate > 0 else None


def _sim_evaluator(task: str, *, episodes: int, seed: int) -> Callable[[Checkpoint], str] | None:
    """A lockstep evaluation on `sims.make_plant(task)`, or None without a simulator."""
    if episodes <= 0:
        return None
    try:
        from sims import make_plant
    except ImportError:
        return None
    from policies import planner_from_checkpoint

    def evaluate(ckpt: Checkpoint) -> str:
        plant = make_plant(task)
        planner: Any = None
        try:
            planner = planner_from_checkpoint(ckpt, spec=plant.spec(), seed=seed)
            ev = lockstep_eval(planner, plant, episodes=episodes, seed=seed)
        finally:
            plant.close()
            close = getattr(planner, "close", None)
            if close is not None:
                close()
        return (
            f"lockstep eval, {episodes} episodes, 1 step/tick: "
            f"success {ev['success_rate']:.0%}, mean return {ev['mean_return']:.1f}"
        )

    return evaluate
