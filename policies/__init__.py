"""Torch planners: the rolling-buffer denoiser, its trainer, checkpoints and baselines.

`load_planner("rolling:double-pendulum", spec=spec)` gives a `runtime.Planner` from a checkpoint
shipped in `policies/checkpoints/<kind>-<task>/`, or from a checkpoint directory path.
Planner kinds: rolling, chunked, chunked-async, pertick (these three share the chunked
checkpoint when no checkpoint of their own ships), mlp, and the discrete planners over binned
sub-tokens: dllm (masked discrete diffusion), ar (autoregressive).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch

from policies.ar import ARPlanner
from policies.base import check_dims
from policies.baselines import ChunkedAsyncPlanner, ChunkedPlanner, MLPPlanner, PerTickPlanner
from policies.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from policies.config import KINDS, PlannerConfig
from policies.discrete import DiscreteConfig, SubTokenTransformer
from policies.dllm import DLLMPlanner
from policies.frozen import freeze_for_cpu
from policies.model import Denoiser, DenoiserConfig, MLPConfig, MLPPolicy
from policies.normalize import Normalizer
from policies.rolling import RollingPlanner
from policies.tokenrate import RateAdapter
from runtime.protocols import Planner, PlantSpec

CHECKPOINT_ROOT = Path(__file__).resolve().parent / "checkpoints"
# Planner kinds that can run a checkpoint trained for another kind, in order of preference.
_FALLBACK_DIRS = {
    "chunked-async": ("chunked-async", "chunked"),
    "pertick": ("pertick", "chunked"),
}

__all__ = [
    "CHECKPOINT_ROOT",
    "KINDS",
    "ARPlanner",
    "Checkpoint",
    "ChunkedAsyncPlanner",
    "ChunkedPlanner",
    "DLLMPlanner",
    "Denoiser",
    "DenoiserConfig",
    "DiscreteConfig",
    "MLPConfig",
    "MLPPlanner",
    "MLPPolicy",
    "Normalizer",
    "PerTickPlanner",
    "PlannerConfig",
    "RateAdapter",
    "RollingPlanner",
    "SubTokenTransformer",
    "load_checkpoint",
    "load_planner",
    "model_rate_hz",
    "planner_from_checkpoint",
    "resolve_policy",
    "save_checkpoint",
    "shipped_policies",
]


def shipped_policies() -> list[str]:
    """`KIND:TASK` names of the checkpoints shipped inside the package."""
    if not CHECKPOINT_ROOT.is_dir():
        return []
    out = []
    for d in sorted(CHECKPOINT_ROOT.iterdir()):
        if (d / "config.json").is_file():
            for kind in sorted(KINDS, key=len, reverse=True):
                if d.name.startswith(kind + "-"):
                    out.append(f"{kind}:{d.name[len(kind) + 1 :]}")
                    break
    return out


def resolve_policy(policy: str) -> tuple[Path, str | None]:
    """`KIND:TASK` or a directory -> (checkpoint dir, planner kind or None = the checkpoint's)."""
    path = Path(policy)
    if path.is_dir():
        return path, None
    kind, sep, task = policy.partition(":")
    if not sep or not task:
        raise ValueError(f"policy {policy!r} is neither KIND:TASK nor a checkpoint directory")
    if kind not in KINDS:
        raise ValueError(f"unknown policy kind {kind!r} in {policy!r} (known: {', '.join(KINDS)})")
    for name in _FALLBACK_DIRS.get(kind, (kind,)):
        d = CHECKPOINT_ROOT / f"{name}-{task}"
        if (d / "config.json").is_file():
            return d, kind
    shipped = ", ".join(shipped_policies()) or "none"
    raise ValueError(f"no shipped checkpoint for {policy!r} (shipped: {shipped})")


def load_planner(
    policy: str,
    *,
    spec: PlantSpec,
    device: str = "cpu",
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    cpu_threads: int | None = 1,
    frozen: bool = True,
) -> Planner:
    """A ready `runtime.Planner` for `policy` (KIND:TASK or a checkpoint dir) on `spec`'s plant.

    `overrides` replaces fields of the checkpoint's `PlannerConfig` (e.g. `{"chunk_steps": 50}`
    for the chunked baseline's K). Unknown, corrupt or mismatched checkpoints and unknown
    override names raise a one-line `ValueError`.

    `cpu_threads` sets torch's intra-op thread count (process-wide) when `device` is "cpu";
    None leaves it alone. The default is 1: these models are far too small to gain from a
    second thread, and on a loaded 2-core machine torch's extra thread spins against the plant
    and everything else (training runs about 16x slower per step on 2 threads than on 1 there).
    """
    if device == "cpu" and cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    directory, kind = resolve_policy(policy)
    ckpt = load_checkpoint(directory, device=device)
    return planner_from_checkpoint(
        ckpt, spec=spec, kind=kind, device=device, seed=seed, overrides=overrides, frozen=frozen
    )


def model_rate_hz(ckpt: Checkpoint) -> float | None:
    """The control rate the checkpoint's demonstrations were recorded at (one plan token).

    `rate_hz` in its training record (`config.json`'s `train.rate_hz`): every shipped
    checkpoint and every one `rtdiff train` writes from an `rtdiff collect` dataset has it, so
    loading those imports no simulator. A checkpoint without it (written before the trainer
    recorded the rate, or trained on data of unknown rate) gets the rate of its task in the
    simulated-task registry, the one place this package reads `sims` while loading; None when
    that is unknown too (then the planner runs at whatever rate the plant has, unwrapped).
    """
    recorded = (ckpt.train or {}).get("rate_hz")
    if isinstance(recorded, (int, float)) and recorded > 0:
        return float(recorded)
    return _registry_rate_hz(ckpt.task)


def _registry_rate_hz(task: str) -> float | None:
    """The simulated task's own control rate, for checkpoints that do not record theirs."""
    try:
        from sims.registry import get_task
    except ImportError:
        return None
    try:
        return float(get_task(task).rate_hz)
    except (KeyError, ValueError):
        return None


def planner_from_checkpoint(
    ckpt: Checkpoint,
    *,
    spec: PlantSpec,
    kind: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    frozen: bool = True,
) -> Planner:
    """The planner of `kind` (default: the checkpoint's own) around an in-memory checkpoint.

    On CPU the model runs traced and frozen (`policies.frozen`, same outputs, less overhead)
    unless `frozen=False`.

    When `spec`'s plant runs faster than the model's rate (`model_rate_hz`), the planner comes
    wrapped in `RateAdapter`, which keeps the plan on the model's time base; a slower plant is a
    ValueError.

    Any plant whose state, action and goal dimensions are the checkpoint's fits, whatever its
    name; other dimensions are a one-line ValueError, which names the checkpoint's task (the
    plant its dataset came from) and the plant.
    """
    check_dims(spec, ckpt.dims, f"checkpoint for {ckpt.kind}:{ckpt.task}")
    planner = _build_planner(ckpt, spec=spec, kind=kind, device=device, seed=seed,
                             overrides=overrides, frozen=frozen)
    rate = model_rate_hz(ckpt)
    if rate is None or abs(spec.rate_hz - rate) <= 1e-6 * rate:
        return planner
    try:
        return RateAdapter(planner, spec.rate_hz, rate)
    except ValueError:
        close = getattr(planner, "close", None)
        if close is not None:
            close()
        raise


def _build_planner(
    ckpt: Checkpoint,
    *,
    spec: PlantSpec,
    kind: str | None,
    device: str,
    seed: int,
    overrides: Mapping[str, Any] | None,
    frozen: bool,
) -> Planner:
    kind = kind or ckpt.kind
    model, norm, cfg = ckpt.model, ckpt.normalizer, ckpt.planner
    where = f"checkpoint for {ckpt.kind}:{ckpt.task}"
    if overrides:
        known = {f.name for f in dataclasses.fields(cfg)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"unknown planner setting(s) {bad}; known: {sorted(known)}")
        cfg = dataclasses.replace(cfg, **overrides)
    if kind in ("dllm", "ar") or isinstance(model, SubTokenTransformer):
        if kind not in ("dllm", "ar") or not isinstance(model, SubTokenTransformer):
            raise ValueError(f"{where} holds a {ckpt.model_type} model, not a {kind} one")
        if frozen and device == "cpu":
            model.freeze_for_cpu()  # in place; keeps eager if tracing fails or differs
        discrete = DLLMPlanner if kind == "dllm" else ARPlanner
        return discrete(model, norm, spec, cfg, device=device, seed=seed)
    if kind == "mlp":
        if not isinstance(model, MLPPolicy):
            raise ValueError(f"{where} holds a denoiser, not an mlp policy")
        if frozen and device == "cpu":
            model = cast(MLPPolicy, freeze_for_cpu(model))  # same call signature and cfg
        return MLPPlanner(model, norm, spec, cfg, device=device, seed=seed)
    if not isinstance(model, Denoiser):
        raise ValueError(f"{where} holds an mlp policy, not a denoiser")
    if frozen and device == "cpu":
        model = cast(Denoiser, freeze_for_cpu(model))  # same call signature and cfg
    if kind == "rolling":
        return RollingPlanner(model, norm, spec, cfg, device=device, seed=seed)
    if kind == "chunked":
        return ChunkedPlanner(model, norm, spec, cfg, device=device, seed=seed)
    if kind == "chunked-async":
        return ChunkedAsyncPlanner(model, norm, spec, cfg, device=device, seed=seed)
    return PerTickPlanner(model, norm, spec, cfg, device=device, seed=seed)
