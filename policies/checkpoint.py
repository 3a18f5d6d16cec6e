"""Checkpoints: a directory with `config.json`, `model.safetensors` and `stats.safetensors`.

No pickle anywhere (`torch.load` is pickle, so it is never called): weights and normalization
statistics are safetensors, everything else is JSON. `config.json` records the sha256 of both
tensor files, so a truncated or edited file is refused with a one-line `ValueError` before any
tensor is read into a model.

    config.json       {"format": "rtdiff-policy", "version": 1, "kind": "rolling", "task": ...,
                       "model_type": "denoiser" | "mlp" | "discrete", "model": {...},
                       "planner": {...},
                       "train": {...}, "sha256": {"model.safetensors": ..., ...}}
    model.safetensors the EMA weights (state_dict names); a discrete model's tokenizer too
    stats.safetensors state_mean/std, action_mean/std, goal_mean/std (float32)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

from policies.config import KINDS, PlannerConfig
from policies.discrete import DiscreteConfig, SubTokenTransformer
from policies.model import Denoiser, DenoiserConfig, MLPConfig, MLPPolicy
from policies.normalize import Normalizer

FORMAT = "rtdiff-policy"
VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
STATS_FILE = "stats.safetensors"


@dataclass
class Checkpoint:
    """A loaded (or about to be saved) policy: model in eval mode, stats, settings."""

    kind: str  # one of config.KINDS: the planner this checkpoint was trained for
    task: str
    model: Denoiser | MLPPolicy | SubTokenTransformer
    normalizer: Normalizer
    planner: PlannerConfig
    train: dict[str, Any] = field(default_factory=dict)  # how it was made (command, loss...)

    @property
    def model_type(self) -> str:
        if isinstance(self.model, SubTokenTransformer):
            return "discrete"
        return "mlp" if isinstance(self.model, MLPPolicy) else "denoiser"

    @property
    def dims(self) -> tuple[int, int, int]:
        c = self.model.cfg
        return c.state_dim, c.action_dim, c.goal_dim


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(ckpt: Checkpoint, directory: str | Path) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt.model.state_dict().items()}
    save_torch(state, str(out / MODEL_FILE))
    save_numpy(ckpt.normalizer.to_arrays(), str(out / STATS_FILE))
    config = {
        "format": FORMAT,
        "version": VERSION,
        "kind": ckpt.kind,
        "task": ckpt.task,
        "model_type": ckpt.model_type,
        "model": ckpt.model.cfg.to_dict(),
        "planner": ckpt.planner.to_dict(),
        "train": ckpt.train,
        "sha256": {MODEL_FILE: _sha256(out / MODEL_FILE), STATS_FILE: _sha256(out / STATS_FILE)},
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def load_checkpoint(directory: str | Path, *, device: str = "cpu") -> Checkpoint:
    """Load and verify a checkpoint directory; any problem is a one-line `ValueError`."""
    path = Path(directory)
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise ValueError(f"not a checkpoint: {path} has no {CONFIG_FILE}")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"corrupt checkpoint {path}: {CONFIG_FILE} is not JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"not a checkpoint: {cfg_path} is not an {FORMAT} config")
    if config.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has version {config.get('version')}, want {VERSION}")
    kind = config.get("kind")
    if kind not in KINDS:
        raise ValueError(f"checkpoint {path} has unknown kind {kind!r} (known: {KINDS})")
    hashes = config.get("sha256", {})
    for name in (MODEL_FILE, STATS_FILE):
        f = path / name
        if not f.is_file():
            raise ValueError(f"corrupt checkpoint {path}: {name} is missing")
        if hashes.get(name) != _sha256(f):
            raise ValueError(f"corrupt checkpoint {path}: {name} does not match its sha256")
    try:
        model_type = config["model_type"]
        model: Denoiser | MLPPolicy | SubTokenTransformer
        if model_type == "denoiser":
            model = Denoiser(DenoiserConfig(**config["model"]))
        elif model_type == "mlp":
            model = MLPPolicy(MLPConfig(**config["model"]))
        elif model_type == "discrete":
            model = SubTokenTransformer(DiscreteConfig(**config["model"]))
        else:
            raise ValueError(f"unknown model_type {model_type!r}")
        planner = PlannerConfig.from_dict(config.get("planner", {}))
        state = load_torch(str(path / MODEL_FILE))
        model.load_state_dict(state, strict=True)
        normalizer = Normalizer.from_arrays(load_numpy(str(path / STATS_FILE)))
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"bad checkpoint {path}: {first}") from None
    if normalizer.dims != (model.cfg.state_dim, model.cfg.action_dim, model.cfg.goal_dim):
        raise ValueError(
            f"bad checkpoint {path}: stats dims {normalizer.dims} do not match the model's"
        )
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Checkpoint(
        kind=kind,
        task=str(config.get("task", "")),
        model=model,
        normalizer=normalizer,
        planner=planner,
        train=dict(config.get("train", {})),
    )


def state_dict_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """True when both modules hold bit-identical tensors under the same names."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)
