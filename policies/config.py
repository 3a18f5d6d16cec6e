"""Planner settings stored in every checkpoint beside the model config.

One dataclass for every planner kind so a checkpoint's `planner` section reads the same for all;
each kind uses the fields named in its comment. Validated once, here, with errors that name the
bad value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

KINDS = ("rolling", "chunked", "chunked-async", "pertick", "mlp", "dllm", "ar")
# rolling: what a surprise does to the plan (`policies.rolling`, "Pivot rules")
PIVOTS = ("uniform", "decay", "shift")


@dataclass(frozen=True)
class PlannerConfig:
    # rolling, dllm: ticks a token spends being cleaned, Hc in l(j) = min(1, j / Hc); <= H - 1
    clean_ticks: int = 7
    # rolling, dllm: most refine steps in one tick; past it `refine` returns 0
    max_steps_per_tick: int = 8
    # rolling, dllm: steps per tick the level gaps are split over; 0 = adapt to the steps the
    # loop granted in the previous tick (at least 1)
    steps_per_tick: int = 0
    # rolling, dllm: tokens that get the extra (corrector) steps once the ramp is reached
    near_tokens: int = 2
    # rolling, dllm: denoising steps `reset` spends bringing the buffer from noise to the ramp
    warmup_steps: int = 16
    # rolling, dllm: surprise below which nothing is re-noised (rolling: RMS normalized state
    # error; dllm: share of state sub-tokens more than one bin off the plan)
    surprise_threshold: float = 0.1
    # rolling, dllm: surprise at which the re-noise level reaches `renoise_max`
    surprise_full: float = 1.0
    # rolling, dllm: highest re-noise level from surprise (< 1 keeps something of the old plan)
    renoise_max: float = 0.9
    # rolling, dllm: re-noise level on a goal change
    goal_renoise: float = 0.9
    # chunked / chunked-async / pertick: flow steps from pure noise to a clean chunk (K)
    chunk_steps: int = 8
    # chunked / chunked-async: ticks a chunk is executed open loop before the next (Ta <= H)
    exec_ticks: int = 4
    # dllm: a masked sub-token whose top probability is at least this is unmasked in a step
    # even beyond what the schedule asks (Fast-dLLM's threshold); above 1 = off
    unmask_confidence: float = 1.01
    # rolling: the pivot rule, what a surprise does to the plan (one of PIVOTS): `uniform`
    # raises every token to sigma(surprise); `decay` to sigma * pivot_decay**j; `shift`
    # translates the plan's states by the observed error, then re-noises lightly
    pivot: str = "uniform"
    # rolling, pivot decay and shift: per-token fall-off of the re-noise floor with lookahead
    pivot_decay: float = 0.7
    # rolling, pivot shift: per-token fall-off of the share of the observed error added to
    # the plan's states (token j gets pivot_carry**j of it)
    pivot_carry: float = 0.9
    # rolling, pivot shift: its re-noise floor as a share of decay's (0: translate only)
    pivot_light: float = 0.5

    def __post_init__(self) -> None:
        for name in ("clean_ticks", "max_steps_per_tick", "chunk_steps", "exec_ticks"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"PlannerConfig.{name}={value!r} must be an int >= 1")
        for name in ("steps_per_tick", "near_tokens", "warmup_steps"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"PlannerConfig.{name}={value!r} must be an int >= 0")
        if not 0.0 <= self.surprise_threshold < self.surprise_full:
            raise ValueError(
                f"need 0 <= surprise_threshold < surprise_full: "
                f"{self.surprise_threshold=}, {self.surprise_full=}"
            )
        if not self.unmask_confidence > 0.0:
            raise ValueError(
                f"PlannerConfig.unmask_confidence={self.unmask_confidence!r} must be > 0"
            )
        for name in ("renoise_max", "goal_renoise"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"PlannerConfig.{name}={value!r} must be in [0, 1]")
        if self.pivot not in PIVOTS:
            raise ValueError(
                f"PlannerConfig.pivot={self.pivot!r} is not a pivot rule (known: "
                f"{', '.join(PIVOTS)})"
            )
        for name in ("pivot_decay", "pivot_carry"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
                raise ValueError(f"PlannerConfig.{name}={value!r} must be in (0, 1]")
        if not (isinstance(self.pivot_light, (int, float)) and 0.0 <= self.pivot_light <= 1.0):
            raise ValueError(f"PlannerConfig.pivot_light={self.pivot_light!r} must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlannerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown planner settings {unknown}")
        return cls(**data)
