"""Baselines on the same data, backbone size and clock as the rolling planner.

- `ChunkedPlanner` (Diffusion Policy style): every `Ta` ticks, `refine` denoises a fresh chunk of
  H tokens from pure noise with K flow steps, blocking, then the chunk's actions run open loop.
- `PerTickPlanner` (Diffusion Policy with Ta = 1): K steps from pure noise every tick, no warm
  start.
- `ChunkedAsyncPlanner` (LeRobot's asynchronous inference, in spirit): a worker thread denoises
  the next chunk from a recent observation while the current chunk keeps executing; the new
  chunk takes over when it is ready, skipping the actions whose time has already passed.
- `MLPPlanner`: single-step behaviour cloning, one forward per tick.

All share the denoiser of `policies.model` (trained with one shared level per sample, the
"uniform" profile) except the MLP. The sampler is the same flow step as the rolling planner's
(`schedule.refine_step_`), with every token on the same level.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import torch

from policies.base import TorchPlannerBase, check_dims
from policies.config import PlannerConfig
from policies.model import Denoiser, MLPPolicy
from policies.normalize import Normalizer
from policies.schedule import refine_step_
from runtime.protocols import Observation, PlantSpec


class ChunkSampler:
    """K flow steps from pure noise to a clean chunk, on preallocated buffers.

    `sample(ctx, goal, obs_n)` -> `z_hat` (1, H, Dz), the clean chunk (a planner-owned buffer).
    """

    def __init__(
        self, model: Denoiser, steps: int, device: torch.device, generator: torch.Generator
    ) -> None:
        c = model.cfg
        self.model, self.steps, self.generator = model, steps, generator
        self.Ds = c.state_dim
        self.x = torch.zeros(1, c.horizon, c.token_dim, device=device)
        self.z_hat = torch.zeros_like(self.x)
        self._scratch = torch.zeros_like(self.x)
        self.tau = torch.zeros(1, c.horizon, device=device)
        self._target = torch.zeros_like(self.tau)
        self._delta = torch.full_like(self.tau, 1.0 / steps)
        self._tau_new, self._ratio = torch.zeros_like(self.tau), torch.zeros_like(self.tau)

    def sample(self, ctx: torch.Tensor, goal: torch.Tensor | None, obs_n: torch.Tensor) -> None:
        Ds = self.Ds
        with torch.no_grad():
            self.x.normal_(generator=self.generator)  # 1. start from pure noise
            self.tau.fill_(1.0)
            self.x[0, 0, :Ds].copy_(obs_n)  # 2. token 0's state is the observation
            for _ in range(self.steps):  # 3. K Euler steps of the flow, all tokens together
                self.z_hat.copy_(self.model(self.x, self.tau, ctx, goal))
                self.z_hat[0, 0, :Ds].copy_(obs_n)
                refine_step_(
                    self.x,
                    self.z_hat,
                    self.tau,
                    self._target,
                    self._delta,
                    tau_new=self._tau_new,
                    ratio=self._ratio,
                    scratch=self._scratch,
                )


class ChunkedPlanner(TorchPlannerBase):
    """Every `exec_ticks` ticks a blocking `refine` samples a new chunk; open loop in between.

    `refine` returns K (the steps it ran) on a chunk tick and 0 otherwise. Until it runs on a
    chunk tick, `action()` keeps stepping through the old chunk (its last token at worst).
    """

    def __init__(
        self,
        model: Denoiser,
        normalizer: Normalizer,
        spec: PlantSpec,
        cfg: PlannerConfig,
        *,
        device: str = "cpu",
        seed: int = 0,
        exec_ticks: int | None = None,
    ) -> None:
        mc = model.cfg
        check_dims(spec, (mc.state_dim, mc.action_dim, mc.goal_dim), "this model")
        super().__init__(normalizer, spec, n_past=mc.n_past, device=device, seed=seed)
        self.cfg = cfg
        self.model = model.to(self.device).eval()
        self.H = mc.horizon
        self.exec_ticks = cfg.exec_ticks if exec_ticks is None else exec_ticks
        if not 1 <= self.exec_ticks <= self.H:
            raise ValueError(f"exec_ticks={self.exec_ticks} must be in [1, H={self.H}]")
        self.sampler = ChunkSampler(model, cfg.chunk_steps, self.device, self.generator)
        self.chunk = torch.zeros(self.H, mc.action_dim, device=self.device)  # (H, Da) normalized
        self._rows = [self.chunk[i] for i in range(self.H)]
        self._idx = 0
        self._due = True
        self.chunks_sampled = 0

    def _new_chunk(self) -> None:
        self.sampler.sample(self.ctx, self.goal_arg, self.obs_n)
        self.chunk.copy_(self.sampler.z_hat[0, :, self.Ds :])
        self._idx, self._due = 0, False
        self.chunks_sampled += 1
        self._point()

    def _point(self) -> None:
        self._act_n = self._rows[min(self._idx, self.H - 1)]
        self._action_dirty = True

    def reset(self, obs: Observation) -> None:
        if not self._stage(obs):
            raise ValueError("reset needs a finite observation state")
        self._fill_context()
        self._goal_changed()
        self.surprise = 0.0
        self._new_chunk()

    def observe(self, obs: Observation) -> None:
        if (not obs.stale) and self._stage(obs):
            self._push_context()
        else:
            self.stale_observations += 1
        self._idx += 1
        self._due = self._idx >= self.exec_ticks
        self._point()

    def refine(self, budget_ns: int) -> int:
        if not self._due:
            return 0
        self._new_chunk()
        return self.sampler.steps

    def plan_into(self, out: npt.NDArray[np.float64]) -> int:
        """`runtime.PlanSource`: the rest of the current chunk, after the row executing now."""
        return self._plan_rows(self.chunk[self._idx + 1 :], out)


class PerTickPlanner(ChunkedPlanner):
    """Diffusion Policy with Ta = 1: a fresh chunk from pure noise every tick, token 0 executed."""

    def __init__(
        self,
        model: Denoiser,
        normalizer: Normalizer,
        spec: PlantSpec,
        cfg: PlannerConfig,
        *,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__(model, normalizer, spec, cfg, device=device, seed=seed, exec_ticks=1)

    def refresh(self, obs: Observation) -> bool:
        """A sub-token tick: per-tick sampling means a fresh chunk from this tick's state."""
        if not super().refresh(obs):
            return False
        self._due = True
        return True


class ChunkedAsyncPlanner(ChunkedPlanner):
    """The next chunk is sampled by a worker thread while the current one executes.

    When the current chunk has run `exec_ticks // 2` ticks (and no job is in flight), the
    latest context is handed to the worker. When its chunk is ready, `observe` switches to it at
    the index matching the ticks elapsed since that observation. `refine` never blocks and
    returns 0. `starved_ticks` counts ticks past the end of a chunk (its last action is held).
    Call `close()` to stop the worker (it is a daemon thread, so exiting also ends it).
    """

    def __init__(
        self,
        model: Denoiser,
        normalizer: Normalizer,
        spec: PlantSpec,
        cfg: PlannerConfig,
        *,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__(model, normalizer, spec, cfg, device=device, seed=seed)
        self._job_ctx = torch.zeros_like(self.ctx)
        self._job_goal = torch.zeros_like(self.goal_n)
        self._job_obs = torch.zeros_like(self.obs_n)
        self._result = torch.zeros_like(self.chunk)
        self._cond = threading.Condition()
        self._job_tick = -1  # tick of the observation the pending/finished job used
        self._pending = False  # a job waits for / runs in the worker
        self._ready = False  # a finished chunk waits to be switched in
        self._stop = False
        self._tick = 0
        self._chunk_tick = 0
        self.starved_ticks = 0
        self._worker = threading.Thread(target=self._run, name="chunked-async", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._stop):
                    self._cond.wait()
                if self._stop:
                    return
            goal = self._job_goal if self.Dg > 0 else None
            self.sampler.sample(self._job_ctx, goal, self._job_obs)
            with self._cond:
                self._result.copy_(self.sampler.z_hat[0, :, self.Ds :])
                self._pending, self._ready = False, True
                self._cond.notify_all()  # `wait_idle`

    def _submit(self) -> None:
        with self._cond:
            self._job_ctx.copy_(self.ctx)
            self._job_goal.copy_(self.goal_n)
            self._job_obs.copy_(self.obs_n)
            self._job_tick = self._tick
            self._pending = True
            self._cond.notify()

    def reset(self, obs: Observation) -> None:
        with self._cond:  # wait out a job from the last episode, then drop its result
            while self._pending:
                self._cond.wait(timeout=0.01)
            self._ready = False
        self._tick = self._chunk_tick = 0
        super().reset(obs)

    def observe(self, obs: Observation) -> None:
        if (not obs.stale) and self._stage(obs):
            self._push_context()
        else:
            self.stale_observations += 1
        self._tick += 1
        with self._cond:
            if self._ready:
                self.chunk.copy_(self._result)
                self._chunk_tick, self._ready = self._job_tick, False
                self.chunks_sampled += 1
            busy = self._pending or self._ready
        self._idx = self._tick - self._chunk_tick
        if self._idx >= self.H:
            self.starved_ticks += 1
        if not busy and self._idx >= max(1, self.exec_ticks // 2):
            self._submit()
        self._point()

    def refine(self, budget_ns: int) -> int:
        return 0

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until no job is in flight (its chunk, if any, waits to be switched in at the
        next `observe`); False on timeout. Not for the control loop: for runs that must not
        depend on the worker's speed (tests, reproducible evaluation)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout=timeout_s)

    def refresh(self, obs: Observation) -> bool:
        """A sub-token tick changes nothing: the chunks run open loop, and the context is read
        by the worker (under the lock, in `_submit`), which a write from this thread must not
        race."""
        return False

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._worker.join(timeout=5.0)


class MLPPlanner(TorchPlannerBase):
    """Single-step BC: `refine` runs the MLP once per tick (returns 1, then 0)."""

    def __init__(
        self,
        model: MLPPolicy,
        normalizer: Normalizer,
        spec: PlantSpec,
        cfg: PlannerConfig,
        *,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        mc = model.cfg
        check_dims(spec, (mc.state_dim, mc.action_dim, mc.goal_dim), "this model")
        super().__init__(normalizer, spec, n_past=mc.n_past, device=device, seed=seed)
        self.cfg = cfg
        self.model = model.to(self.device).eval()
        self._pred = torch.zeros(1, mc.action_dim, device=self.device)
        self._act_n = self._pred[0]
        self._done = False

    def _forward(self) -> None:
        with torch.no_grad():
            self._pred.copy_(self.model(self.ctx, self.goal_arg))
        self._done, self._action_dirty = True, True

    def reset(self, obs: Observation) -> None:
        if not self._stage(obs):
            raise ValueError("reset needs a finite observation state")
        self._fill_context()
        self._forward()

    def observe(self, obs: Observation) -> None:
        if (not obs.stale) and self._stage(obs):
            self._push_context()
        else:
            self.stale_observations += 1
        self._done = False

    def refresh(self, obs: Observation) -> bool:
        """A sub-token tick: the next `refine` computes the action from this tick's state."""
        if not super().refresh(obs):
            return False
        self._done = False
        return True

    def refine(self, budget_ns: int) -> int:
        if self._done:
            return 0
        self._forward()
        return 1
